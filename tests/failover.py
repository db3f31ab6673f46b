"""Failover under load, shared by the Sentinel and the Cluster tests.

CLIENTS clients submit one action at a time and, as agents do, retry an unanswered
call with the same action_id; the ledger keeps every answer. Afterwards every
answer must be in the chain at its audit_seq, no action twice, and the chain must
verify: an answered decision is never lost in a failover.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from clients.agent import bearer
from clients.wire import python_to_struct
from gateway.domain.audit.keys import KeySet
from gateway.domain.audit.verify import verify_export
from tests.harness import token_for

CLIENTS = 4
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}


@dataclass(frozen=True)
class Answer:
    audit_seq: int
    verdict: int
    first_sent_at: float
    answered_at: float


@dataclass
class Ledger:
    answers: dict[str, Answer] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # retried: code, while failing over
    killed_at: float | None = None


def action(n: int) -> tuple[gateway_pb2.ActionRequest, tuple[tuple[str, str], ...]]:
    """Action number n and the credentials of its agent; a quarter are held."""
    agent_id = f"agent-{1 + n % 2}"
    request = gateway_pb2.ActionRequest(
        action_id=f"act-{n}",
        agent_id=agent_id,
        session_id=f"s-{n}",
        action_type="send_email" if n % 4 == 0 else "search",
        parameters=python_to_struct({"n": n}),
    )
    return request, bearer(token_for(agent_id))


async def drive(target: str, ledger: Ledger, done: Callable[[], bool]) -> None:
    """CLIENTS clients submit one action at a time, each retried with its action_id
    until answered, until `done()`."""
    numbers = itertools.count()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def client() -> None:
            while not done():
                request, metadata = action(next(numbers))
                first_sent_at = time.monotonic()
                deadline = first_sent_at + 30
                while True:
                    try:
                        decision = await stub.Submit(request, metadata=metadata, timeout=10)
                    except grpc.aio.AioRpcError as e:
                        assert e.code() in RETRYABLE, f"{request.action_id}: {e.code()}"
                        assert ledger.killed_at is not None, f"before the kill: {e.details()}"
                        assert time.monotonic() < deadline, f"{request.action_id}: never answered"
                        ledger.failures.append(e.code().name)
                        await asyncio.sleep(0.05)  # the agent's backoff before its retry
                        continue
                    ledger.answers[request.action_id] = Answer(
                        decision.audit_seq, decision.verdict, first_sent_at, time.monotonic()
                    )
                    break

        await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def wait_async(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls `condition` (in a thread: it may block on Redis) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await loop.run_in_executor(None, condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def check_every_answer_in_chain(
    lines: Sequence[str], key_set: KeySet, ledger: Ledger
) -> list[dict[str, Any]]:
    """The exported chain verifies, and holds every answer once; returns its entries."""
    report = verify_export(lines, key_set)
    assert report.ok, report.failure
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    for action_id, answer in ledger.answers.items():
        entry = entries[answer.audit_seq - 1]
        assert (entry["action_id"], entry["seq"]) == (action_id, answer.audit_seq)
    decided = [e["action_id"] for e in entries if e["event_type"] == "action_decided"]
    assert len(decided) == len(set(decided)), "an action was recorded twice"
    return entries

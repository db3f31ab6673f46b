"""Many writers: three `agentgw serve` processes append to one audit log in one Redis.

Each replica runs its own group-commit writer; they meet only in commit.lua's
compare-and-append on the log head. Thousands of concurrent Submits across the
replicas must leave one chain: seqs exactly 1..N, one entry per answered decision,
verifying offline against a checkpoint taken at the end, and detection's counters
that count each action once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from clients.agent import bearer
from clients.wire import python_to_struct
from gateway.store.embedded import EmbeddedRedis, find_server_binary
from gateway.store.keys import KeySpace
from tests.harness import token_for
from tests.processes import GatewayProcess, export_and_verify, gateway_processes, server_binary

REPLICAS = 3
CONCURRENCY = 32  # Submits in flight per replica
ACTIONS = 3000


@dataclass(frozen=True)
class Answer:
    replica: int
    action_id: str
    action_type: str
    verdict: int
    audit_seq: int


@pytest.fixture
def shared_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of its own, so its command statistics count only this test's calls."""
    server = EmbeddedRedis(tmp_path / "shared-redis", binary=find_server_binary(server_binary()))
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop_blocking()


@pytest.fixture
def replicas(tmp_path: Path, shared_redis: EmbeddedRedis) -> Iterator[list[GatewayProcess]]:
    # Replicas share the signing key and nothing else but Redis.
    with gateway_processes(
        tmp_path,
        REPLICAS,
        redis={"url": shared_redis.url, "key_prefix": "multi"},
        # 1,500 actions per agent in seconds: far over the default rate limit,
        # which is not what this test is about.
        extra={"detection": {"rates": {"actions_per_minute": 0}}},
    ) as started:
        yield started


def submit_all(
    replicas: list[GatewayProcess],
) -> tuple[list[Answer], list[str], dict[str, set[str]]]:
    """ACTIONS Submits, CONCURRENCY at a time per replica; a quarter are held
    (send_email), the rest allowed. Returns the answers, any errors, and which
    action ids each agent sent."""
    return asyncio.run(_submit_all([r.target for r in replicas]))


async def _submit_all(
    targets: list[str],
) -> tuple[list[Answer], list[str], dict[str, set[str]]]:
    numbers = itertools.count()
    answers: list[Answer] = []
    errors: list[str] = []
    by_agent: dict[str, set[str]] = {"agent-1": set(), "agent-2": set()}

    async def client(replica: int, stub: gateway_pb2_grpc.GatewayStub, agent_id: str) -> None:
        metadata = bearer(token_for(agent_id))
        while (n := next(numbers)) < ACTIONS:
            action_type = "send_email" if n % 4 == 0 else "search"
            request = gateway_pb2.ActionRequest(
                action_id=f"act-{n}",
                agent_id=agent_id,
                session_id=f"s-{n}",
                action_type=action_type,
                parameters=python_to_struct({"n": n}),
            )
            by_agent[agent_id].add(request.action_id)
            try:
                decision = await stub.Submit(request, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as e:
                errors.append(f"{request.action_id}: {e.code().name}: {e.details()}")
                continue
            answers.append(
                Answer(
                    replica, request.action_id, action_type, decision.verdict, decision.audit_seq
                )
            )

    channels = [grpc.aio.insecure_channel(target) for target in targets]
    try:
        await asyncio.gather(
            *(
                client(replica, gateway_pb2_grpc.GatewayStub(channel), f"agent-{1 + i % 2}")
                for replica, channel in enumerate(channels)
                for i in range(CONCURRENCY)
            )
        )
    finally:
        for channel in channels:
            await channel.close()
    return answers, errors, by_agent


def rpush_calls(server: EmbeddedRedis) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_rpush", {}).get("calls", 0))


def test_replicas_append_one_chain_without_forks_gaps_or_duplicates(
    replicas: list[GatewayProcess], shared_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    answers, errors, by_agent = submit_all(replicas)

    assert errors == []
    assert len(answers) == ACTIONS
    assert sorted(a.audit_seq for a in answers) == list(range(1, ACTIONS + 1)), (
        "the decisions' audit_seq are not exactly 1..N"
    )
    assert {a.replica for a in answers} == set(range(REPLICAS))
    expected = {"send_email": gateway_pb2.VERDICT_HOLD, "search": gateway_pb2.VERDICT_ALLOW}
    assert all(a.verdict == expected[a.action_type] for a in answers)

    # Any replica serves the whole log; the checkpoint is taken after the export.
    entries, verified = export_and_verify(replicas[1].target, tmp_path)
    assert verified.returncode == 0, verified.output
    assert verified.report["ok"] is True and verified.report["count"] == ACTIONS

    assert [e["seq"] for e in entries] == list(range(1, ACTIONS + 1))
    by_seq = {a.audit_seq: a for a in answers}
    for entry in entries:
        answer = by_seq[entry["seq"]]
        assert entry["event_type"] == "action_decided"
        assert entry["action_id"] == answer.action_id
        assert entry["outcome"] == ("hold" if answer.action_type == "send_email" else "allow")

    # Group commit, observed from Redis: commit.lua appends a batch's entries with one
    # RPUSH (per 256 entries), and nothing else pushes to a list. Fewer RPUSH calls
    # than entries: replicas appended batches, not one entry per round trip.
    batches = rpush_calls(shared_redis)
    assert 0 < batches < ACTIONS, f"{batches} appends for {ACTIONS} entries"

    # Detection's counters, kept by every replica in the agent's slot, count each
    # action exactly once: the agents' type profiles add up to what was answered.
    raw = redis.Redis.from_url(shared_redis.url, decode_responses=True)
    keys = KeySpace("multi")
    try:
        for agent_id in ("agent-1", "agent-2"):
            mine = [a for a in answers if a.action_id in by_agent[agent_id]]
            profile = raw.hgetall(keys.agent_profile(agent_id))
            assert {t: int(n) for t, n in profile.items()} == dict(
                Counter(a.action_type for a in mine)
            )
            assert raw.llen(keys.agent_marks(agent_id)) == 10
    finally:
        raw.close()

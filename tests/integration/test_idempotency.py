"""An action_id stands for one request: replays, reuse for other content, races and
cancelled calls never get one action decided twice (real gateway, real Redis)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis

from agentgw.v1 import approvals_pb2, audit_pb2, gateway_pb2, gateway_pb2_grpc
from clients.wire import python_to_struct
from gateway.store.embedded import EmbeddedRedis
from gateway.store.keys import KeySpace
from tests.harness import RunningGateway, token_for, wait_for
from tests.redis_proxy import lossy_gateway


def request(**fields: Any) -> gateway_pb2.ActionRequest:
    base: dict[str, Any] = {
        "action_id": "act-1",
        "agent_id": "agent-1",
        "session_id": "s1",
        "action_type": "search",
        "resource": "web",
        "reasoning": "look it up",
        "labels": {"team": "a"},
    }
    base.update(fields)
    parameters = base.pop("parameters", {"q": "weather"})
    return gateway_pb2.ActionRequest(**base, parameters=python_to_struct(parameters))


def log_entries(gw: RunningGateway) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.export_lines()]


def test_reused_action_id_for_another_action_is_refused_and_recorded(
    gw: RunningGateway,
) -> None:
    md = gw.md("agent-1")
    first = gw.gateway.Submit(request(), metadata=md)
    assert first.verdict == gateway_pb2.VERDICT_ALLOW
    attack = request(action_type="send_email", parameters={"to": "attacker@evil.example"})
    with pytest.raises(grpc.RpcError) as refused:
        gw.gateway.Submit(attack, metadata=md)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "act-1" in refused.value.details()
    assert "different content" in refused.value.details()

    entries = log_entries(gw)
    assert [e["event_type"] for e in entries] == ["action_decided", "security_action_id_reused"]
    security = entries[1]
    assert security["actor"] == "agent-1" and security["outcome"] == "refused"
    assert security["action_id"] == "act-1" and security["action_type"] == "send_email"
    report = gw.audit.Report(audit_pb2.ReportRequest(), metadata=gw.md("auditor-1"))
    assert [e.seq for e in report.security_events] == [2]
    # The first decision is untouched and still returned for the first request.
    assert gw.gateway.Submit(request(), metadata=md) == first


@pytest.mark.parametrize(
    "change",
    [
        {"session_id": "s2"},
        {"action_type": "search2"},
        {"resource": "web2"},
        {"parameters": {"q": "weather "}},
        {"parameters": {"q": "weather", "extra": None}},
        {"parameters": {"password": "other"}},  # redacted alike, still another request
        {"reasoning": "look it up."},
        {"labels": {"team": "b"}},
        {"labels": {}},
    ],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
def test_any_change_of_content_is_another_request(
    gw: RunningGateway, change: dict[str, Any]
) -> None:
    md = gw.md("agent-1")
    gw.gateway.Submit(request(parameters={"q": "weather", "password": "one"}), metadata=md)
    changed = {"parameters": {"q": "weather", "password": "one"}, **change}
    with pytest.raises(grpc.RpcError) as refused:
        gw.gateway.Submit(request(**changed), metadata=md)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_identical_resubmission_of_a_held_action_returns_its_current_state(
    gw: RunningGateway,
) -> None:
    md = gw.md("agent-1")
    held = gw.gateway.Submit(request(action_type="send_email"), metadata=md)
    assert held.verdict == gateway_pb2.VERDICT_HOLD
    gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="fine"),
        metadata=gw.md("approver-1"),
    )
    again = gw.gateway.Submit(request(action_type="send_email"), metadata=md)
    assert again.verdict == gateway_pb2.VERDICT_ALLOW and again.hold_id == held.hold_id
    assert [e["event_type"] for e in log_entries(gw)] == ["action_decided", "hold_approved"]


def test_agent_client_retries_with_its_own_action_id(gw: RunningGateway) -> None:
    agent = gw.agent()
    first = agent.submit("send_email", session_id="s", action_id="retry-me")
    again = agent.submit("send_email", session_id="s", action_id="retry-me")
    assert again == first
    generated = agent.submit("search", session_id="s")
    assert generated.action_id  # the id it made up, for the caller to retry with
    assert agent.submit("search", session_id="s", action_id=generated.action_id) == generated


def test_concurrent_identical_submissions_get_one_decision(gw: RunningGateway) -> None:
    async def race() -> list[gateway_pb2.Decision]:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            md = (("authorization", f"Bearer {token_for('agent-1')}"),)
            calls = [
                stub.Submit(request(action_type="send_email"), metadata=md, timeout=20)
                for _ in range(30)
            ]
            return list(await asyncio.gather(*calls))

    decisions = asyncio.run(race())
    assert len({d.SerializeToString() for d in decisions}) == 1
    assert [e["event_type"] for e in log_entries(gw)] == ["action_decided"]
    holds = gw.approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1"))
    assert len(holds.holds) == 1


COMMIT_DELAY = 0.04  # seconds added to every audit commit by the proxy


@pytest.fixture
def slow_commits(
    redis_server: EmbeddedRedis, key_prefix: str, make_gateway: Callable[..., RunningGateway]
) -> Iterator[RunningGateway]:
    """A gateway whose audit commits take COMMIT_DELAY longer than its other Redis
    calls, as with a slow link or a busy Redis: a wide window for a deadline to fire
    while an action's commit is in flight."""
    with lossy_gateway(redis_server, key_prefix, make_gateway) as (gw, proxy):
        proxy.slow_down("commit", COMMIT_DELAY)
        yield gw


def test_cancelled_calls_retried_at_once_are_decided_at_most_once(
    slow_commits: RunningGateway,
) -> None:
    """Deadlines that fire at every point of a call, the commit included, while another
    agent keeps the audit writer busy; each cancelled call is retried at once with the
    same action_id. Every action_id ends with at most one decision and one hold, and
    every answer names the entry of its action."""
    gw, rounds, answers = slow_commits, 200, {}
    cancelled_in_flight = 0

    async def run() -> None:
        nonlocal cancelled_in_flight
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            md1 = (("authorization", f"Bearer {token_for('agent-1')}"),)
            md2 = (("authorization", f"Bearer {token_for('agent-2')}"),)
            stop = asyncio.Event()

            async def background(n: int) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    load = request(
                        agent_id="agent-2",
                        action_id=f"load-{n}-{i}",
                        session_id=f"l{n}-{i}",
                        parameters={"q": f"{n}-{i}"},  # not one input over and over
                    )
                    await stub.Submit(load, metadata=md2, timeout=20)

            async def cancelled_then_retried(i: int) -> None:
                nonlocal cancelled_in_flight
                kind = "send_email" if i % 3 == 0 else "search"
                # Inputs of their own: one input in 10 sessions in a row would be a
                # cross-session loop, and a held search (the flake this once had).
                action = request(
                    action_id=f"c-{i}",
                    action_type=kind,
                    session_id=f"s{i}",
                    parameters={"q": f"weather {i}"},
                )
                deadline = random.uniform(0.001, 1.5 * COMMIT_DELAY)
                try:
                    await stub.Submit(action, metadata=md1, timeout=deadline)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
                    cancelled_in_flight += deadline > COMMIT_DELAY / 4
                answers[action.action_id] = await stub.Submit(action, metadata=md1, timeout=20)

            load = [asyncio.create_task(background(n)) for n in range(2)]
            try:
                for first in range(0, rounds, 20):
                    await asyncio.gather(
                        *(cancelled_then_retried(i) for i in range(first, first + 20))
                    )
            finally:
                stop.set()
                await asyncio.gather(*load)

    asyncio.run(run())
    # Most deadlines fired while the commit was in flight, not before the call began.
    assert cancelled_in_flight > rounds / 4
    entries = log_entries(gw)
    decided = Counter(e["action_id"] for e in entries if e["event_type"] == "action_decided")
    twice = {a: n for a, n in decided.items() if n > 1}
    assert not twice, f"decided more than once: {twice}"
    assert len(answers) == rounds
    for action_id, decision in answers.items():
        assert entries[decision.audit_seq - 1]["action_id"] == action_id
    holds = gw.approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1"))
    per_action = Counter(h.action.action_id for h in holds.holds)
    assert max(per_action.values()) == 1
    assert set(per_action) == {f"c-{i}" for i in range(0, rounds, 3)}


def test_without_the_required_replicas_neither_a_call_nor_its_retry_is_answered(
    make_gateway: Callable[..., RunningGateway], gateway_config: Any
) -> None:
    """redis.min_replicas_acked: 1 on a Redis with no replica. The first call's entry
    is appended but not acknowledged (UNAVAILABLE); its retry finds the stored
    decision and must not answer from it either, as a failover could lose it."""
    from dataclasses import replace as changed

    redis_settings = changed(
        gateway_config.redis, min_replicas_acked=1, replica_ack_timeout_seconds=0.05
    )
    gw = make_gateway(redis=redis_settings)
    md = gw.md("agent-1")
    for attempt in ("first call", "retry"):
        with pytest.raises(grpc.RpcError) as refused:
            gw.gateway.Submit(request(action_id="unreplicated"), metadata=md, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, attempt
        assert "replicas" in refused.value.details(), attempt
    # The entry itself was appended once, by the first call.
    decided = [e for e in log_entries(gw) if e["action_id"] == "unreplicated"]
    assert len(decided) == 1


def test_a_call_whose_claim_lapsed_answers_the_decision_another_call_committed(
    gw: RunningGateway,
    redis_server: EmbeddedRedis,
    key_prefix: str,
    make_gateway: Callable[..., RunningGateway],
    raw: redis.Redis,
) -> None:
    # Call A claims the action_id, then stalls (its claim reply held back) past the
    # claim's TTL; call B, through another gateway, claims it anew and decides it.
    # When A goes on, its commit finds the action decided: it writes nothing and
    # answers B's decision, so the action is decided (and audited) once.
    claim_key = KeySpace(key_prefix).claim("agent-1", "act-1")
    with lossy_gateway(redis_server, key_prefix, make_gateway) as (stalled, proxy):
        release = proxy.hold_replies("observe")
        with ThreadPoolExecutor(1) as pool:
            late = pool.submit(
                stalled.gateway.Submit, request(), metadata=stalled.md("agent-1"), timeout=30
            )
            wait_for(lambda: raw.exists(claim_key), what="call A's claim")
            raw.delete(claim_key)  # what the claim's TTL does, without waiting for it
            first = gw.gateway.Submit(request(), metadata=gw.md("agent-1"))
            release.set()
            answer = late.result(timeout=30)
    assert (answer.verdict, answer.audit_seq) == (first.verdict, first.audit_seq)
    decided = [e["action_id"] for e in log_entries(gw) if e["event_type"] == "action_decided"]
    assert decided.count("act-1") == 1
    # Its claim (its history marks with it) was given back: A did not decide.
    assert str(raw.get(claim_key)).startswith("d|")

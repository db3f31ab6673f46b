"""The approval loop through the real gateway: quorum, separation of duties,
quarantine, the live hold stream, ListHolds filters and pages, paused sessions,
escalation, and thousands of waiters woken by one resolution."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from agentgw.v1 import approvals_pb2, approvals_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from gateway.domain.actions import Verdict
from gateway.domain.audit.events import ActorType
from gateway.domain.holds import approve as approve_hold
from gateway.errors import Conflict
from tests.harness import (
    GatewayLogs,
    ManualClock,
    RunningGateway,
    test_principals,
    token_for,
    wait_for,
)

QUORUM_POLICY = """\
version: 1
default_verdict: allow
rules:
  - name: payments-need-two
    verdict: hold
    quorum: 2
    reason: payments need two approvers
    match:
      action_type: payment
"""

Kind = approvals_pb2.HoldEvent


def entries(gw: RunningGateway) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.export_lines()]


def approve(gw: RunningGateway, hold_id: str, who: str = "approver-1") -> approvals_pb2.Hold:
    hold: approvals_pb2.Hold = gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=hold_id, reason=f"ok by {who}"), metadata=gw.md(who)
    )
    return hold


def reject(gw: RunningGateway, hold_id: str, who: str = "approver-1") -> approvals_pb2.Hold:
    hold: approvals_pb2.Hold = gw.approvals.Reject(
        approvals_pb2.RejectRequest(hold_id=hold_id, reason="no"), metadata=gw.md(who)
    )
    return hold


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


@pytest.fixture
def quorum(make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> RunningGateway:
    policy = tmp_path / "policy.yaml"
    policy.write_text(QUORUM_POLICY)
    return make_gateway(policy_file=policy)


# --- quorum -----------------------------------------------------------------------


def test_a_quorum_hold_needs_distinct_approvers_and_counts_each_once(
    quorum: RunningGateway,
) -> None:
    gw = quorum
    held = gw.agent().submit("payment", session_id="s", parameters={"amount": 9000})
    assert (held.verdict, held.approvals_required) == (gateway_pb2.VERDICT_HOLD, 2)

    first = approve(gw, held.hold_id)
    assert first.status == approvals_pb2.HOLD_STATUS_PENDING
    assert [a.approver for a in first.approvals] == ["approver-1"]
    again = refused(lambda: approve(gw, held.hold_id))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has your approval; it needs 1 more" in str(again.details())
    [listed] = gw.approvals.ListHolds(
        approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-2")
    ).holds
    assert (len(listed.approvals), listed.approvals_required) == (1, 2)

    done = approve(gw, held.hold_id, "approver-2")
    assert done.status == approvals_pb2.HOLD_STATUS_APPROVED
    assert [a.approver for a in done.approvals] == ["approver-1", "approver-2"]
    assert gw.agent().wait(held, timeout=5).verdict == gateway_pb2.VERDICT_ALLOW
    events = [(e["event_type"], e["details"].get("approvals")) for e in entries(gw)[1:]]
    assert events == [("hold_approval_added", 1), ("hold_approved", 2)]


def test_one_rejection_resolves_a_quorum_hold(quorum: RunningGateway) -> None:
    gw = quorum
    held = gw.agent().submit("payment", session_id="s", parameters={"amount": 1})
    approve(gw, held.hold_id)
    assert reject(gw, held.hold_id, "approver-2").status == approvals_pb2.HOLD_STATUS_REJECTED
    assert gw.agent().wait(held, timeout=5).verdict == gateway_pb2.VERDICT_DENY


def test_concurrent_approvals_of_a_quorum_all_count(quorum: RunningGateway) -> None:
    gw = quorum
    held = gw.agent().submit("payment", session_id="s", parameters={"amount": 2})
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda who: approve(gw, held.hold_id, who), ["approver-1", "approver-2"])
        )
    assert {r.status for r in results} == {
        approvals_pb2.HOLD_STATUS_PENDING,
        approvals_pb2.HOLD_STATUS_APPROVED,
    }
    kinds = [e["event_type"] for e in entries(gw)[1:]]
    assert kinds == ["hold_approval_added", "hold_approved"]


def test_an_approval_built_on_a_stale_count_is_refused_not_lost(
    quorum: RunningGateway,
) -> None:
    # Two approvals computed from the same read of the hold (the race, made exact):
    # the second commit finds one approval more than it was built on, so it writes
    # nothing; overwriting would lose the first approval.
    gw = quorum
    held = gw.agent().submit("payment", session_id="s", parameters={"amount": 3})
    desk = gw.app.desk

    async def race() -> None:
        hold = await desk._read(held.hold_id)
        first = approve_hold(hold, "approver-1", "ok", gw.clock())
        second = approve_hold(hold, "approver-2", "ok", gw.clock())
        await desk._commit(hold, first, ActorType.USER)
        with pytest.raises(Conflict):
            await desk._commit(hold, second, ActorType.USER)

    gw.run(race())
    [listed] = gw.approvals.ListHolds(
        approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1")
    ).holds
    assert [a.approver for a in listed.approvals] == ["approver-1"]


def test_two_approvers_racing_on_one_hold_get_one_winner(gw: RunningGateway) -> None:
    held = gw.agent().submit("send_email", session_id="s")

    def decide(i: int) -> str:
        try:
            (approve if i % 2 else reject)(gw, held.hold_id, f"approver-{1 + i % 2}")
            return "won"
        except grpc.RpcError as e:
            return str(e.code())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(decide, range(16)))
    assert results.count("won") == 1
    resolutions = [e for e in entries(gw) if e["event_type"] in ("hold_approved", "hold_rejected")]
    assert len(resolutions) == 1


# --- separation of duties ---------------------------------------------------------


def test_an_owner_may_not_decide_its_own_agents_actions(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    principals = tuple(
        replace(p, owns=frozenset({"agent-1"})) if p.name == "approver-1" else p
        for p in test_principals()
    )
    gw = make_gateway(principals=principals)
    held = gw.agent().submit("send_email", session_id="s")
    for call in (lambda: approve(gw, held.hold_id), lambda: reject(gw, held.hold_id)):
        error = refused(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "you own agent agent-1" in str(error.details())
    security = [e for e in entries(gw) if e["event_type"] == "security_separation_of_duties"]
    assert [(e["actor"], e["details"]["attempted"]) for e in security] == [
        ("approver-1", "approve"),
        ("approver-1", "reject"),
    ]
    # Another approver decides it; the owner's own agent-2 actions are not affected.
    assert approve(gw, held.hold_id, "approver-2").status == approvals_pb2.HOLD_STATUS_APPROVED
    other = gw.agent("agent-2").submit("send_email", session_id="s")
    assert approve(gw, other.hold_id).status == approvals_pb2.HOLD_STATUS_APPROVED


# --- quarantine -------------------------------------------------------------------


def quarantine(gw: RunningGateway, agent_id: str, reason: str = "leaked key") -> Any:
    return gw.approvals.QuarantineAgent(
        approvals_pb2.QuarantineAgentRequest(agent_id=agent_id, reason=reason),
        metadata=gw.md("admin-1"),
    )


def release(gw: RunningGateway, agent_id: str) -> approvals_pb2.ReleaseAgentResponse:
    response: approvals_pb2.ReleaseAgentResponse = gw.approvals.ReleaseAgent(
        approvals_pb2.ReleaseAgentRequest(agent_id=agent_id, reason="rotated"),
        metadata=gw.md("admin-1"),
    )
    return response


def test_a_quarantined_agent_is_held_until_released(gw: RunningGateway) -> None:
    record = quarantine(gw, "agent-1")
    assert (record.agent_id, record.quarantined_by, record.reason) == (
        "agent-1",
        "admin-1",
        "leaked key",
    )
    held = gw.agent().submit("search", session_id="q")
    assert held.verdict == gateway_pb2.VERDICT_HOLD
    assert held.reason == "the agent is quarantined: leaked key"
    assert gw.agent("agent-2").submit("search", session_id="q").verdict == 1
    assert refused(lambda: quarantine(gw, "agent-1")).code() == grpc.StatusCode.FAILED_PRECONDITION

    assert release(gw, "agent-1").was_quarantined
    assert not release(gw, "agent-1").was_quarantined
    assert gw.agent().submit("search", session_id="q").verdict == gateway_pb2.VERDICT_ALLOW
    kinds = [e["event_type"] for e in entries(gw)]
    assert kinds.count("agent_quarantined") == 1 and kinds.count("agent_released") == 1
    blank = refused(lambda: quarantine(gw, "agent-2", reason=" "))
    assert blank.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_quarantine_can_deny(make_gateway: Callable[..., RunningGateway]) -> None:
    gw = make_gateway(quarantine_verdict=Verdict.DENY)
    quarantine(gw, "agent-1")
    assert gw.agent().submit("search", session_id="q").verdict == gateway_pb2.VERDICT_DENY


# --- the live stream ----------------------------------------------------------------


def test_a_late_watcher_sees_pending_holds_then_every_change(
    quorum: RunningGateway,
) -> None:
    gw = quorum
    before = gw.agent().submit("send_email", session_id="s")
    stream = gw.approvals.WatchHolds(
        approvals_pb2.WatchHoldsRequest(), metadata=gw.md("approver-1")
    )
    try:
        first, synced = next(stream), next(stream)
        assert (first.kind, first.hold.hold_id) == (Kind.KIND_PENDING, before.hold_id)
        assert synced.kind == Kind.KIND_SYNCED
        pay = gw.agent().submit("payment", session_id="s")
        assert (next(stream).kind, pay.hold_id) == (Kind.KIND_HELD, pay.hold_id)
        approve(gw, pay.hold_id)
        partly = next(stream)
        assert (partly.kind, len(partly.hold.approvals)) == (Kind.KIND_APPROVED_PARTLY, 1)
        reject(gw, before.hold_id)
        resolved = next(stream)
        assert (resolved.kind, resolved.hold.status) == (
            Kind.KIND_RESOLVED,
            approvals_pb2.HOLD_STATUS_REJECTED,
        )
    finally:
        stream.cancel()
    wait_for(lambda: gw.app.watch.watchers == 0, what="the watcher to be dropped")


def test_many_watchers_share_one_subscription_and_leave_nothing_behind(
    gw: RunningGateway,
) -> None:
    async def watch_all() -> list[list[int]]:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = approvals_pb2_grpc.ApprovalsStub(channel)
            streams = [
                stub.WatchHolds(approvals_pb2.WatchHoldsRequest(), metadata=gw.md("approver-1"))
                for _ in range(50)
            ]
            for s in streams:
                assert (await s.read()).kind == Kind.KIND_SYNCED
            loop = asyncio.get_running_loop()
            held = await loop.run_in_executor(
                None, lambda: gw.agent().submit("send_email", session_id="w")
            )
            kinds = [[(await s.read()).kind] for s in streams]
            for s in streams:
                s.cancel()
            assert held.hold_id
            return kinds

    kinds = asyncio.run(watch_all())
    assert kinds == [[Kind.KIND_HELD]] * 50
    wait_for(lambda: gw.app.watch.watchers == 0, what="the watchers to be dropped")


# --- ListHolds, paused sessions ----------------------------------------------------


def test_list_holds_filters_and_pages(make_gateway: Callable[..., RunningGateway]) -> None:
    clock = ManualClock()
    gw = make_gateway(clock)
    a1, a2 = gw.agent(), gw.agent("agent-2")
    old = [a1.submit("send_email", session_id="x", parameters={"n": n}) for n in range(3)]
    clock.advance(120)
    new = [a2.submit("delete_file", session_id="y", parameters={"n": n}) for n in range(2)]

    def listed(**filters: Any) -> list[str]:
        response = gw.approvals.ListHolds(
            approvals_pb2.ListHoldsRequest(**filters), metadata=gw.md("approver-1")
        )
        return [h.hold_id for h in response.holds]

    assert listed() == [d.hold_id for d in old + new]  # oldest first
    assert listed(agent_id="agent-2") == [d.hold_id for d in new]
    assert listed(session_id="x", action_type="send_email") == [d.hold_id for d in old]
    assert listed(action_type="payment") == []
    assert listed(min_age=duration_pb2.Duration(seconds=60)) == [d.hold_id for d in old]

    pages, token = [], ""
    while True:
        response = gw.approvals.ListHolds(
            approvals_pb2.ListHoldsRequest(page_size=2, page_token=token),
            metadata=gw.md("approver-1"),
        )
        pages.append([h.hold_id for h in response.holds])
        token = response.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [hold for page in pages for hold in page] == [d.hold_id for d in old + new]
    for bad in ({"page_token": "garbage!"}, {"page_size": 5000}):
        error = refused(lambda bad=bad: listed(**bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_paused_sessions_are_listed_until_resumed(gw: RunningGateway) -> None:
    agent = gw.agent()
    looped = [agent.submit("read_file", session_id="loop", action_id=f"r{i}") for i in range(5)]
    response = gw.approvals.ListSessions(
        approvals_pb2.ListSessionsRequest(), metadata=gw.md("approver-1")
    )
    [paused] = response.sessions
    assert (paused.agent_id, paused.session_id, paused.hold_id) == (
        "agent-1",
        "loop",
        looped[-1].hold_id,
    )
    gw.approvals.ResumeSession(
        approvals_pb2.ResumeSessionRequest(agent_id="agent-1", session_id="loop", reason="ok"),
        metadata=gw.md("approver-1"),
    )
    after = gw.approvals.ListSessions(
        approvals_pb2.ListSessionsRequest(agent_id="agent-1"), metadata=gw.md("approver-1")
    )
    assert list(after.sessions) == []


# --- escalation, many waiters ---------------------------------------------------------


def test_a_hold_pending_too_long_is_escalated_once_across_replicas(
    make_gateway: Callable[..., RunningGateway], gateway_logs: GatewayLogs
) -> None:
    clock = ManualClock()
    first = make_gateway(clock, hold_escalation_seconds=30)
    make_gateway(clock, hold_escalation_seconds=30)  # a second replica sweeping too
    held = first.agent().submit("send_email", session_id="s")
    clock.advance(31)

    def escalations() -> list[Any]:
        return [r for r in gateway_logs.records if getattr(r, "event", "") == "hold_escalated"]

    wait_for(lambda: escalations(), what="the hold to be escalated")
    [record] = escalations()
    assert record.hold_id == held.hold_id  # type: ignore[attr-defined]
    # Still one, however many more sweeps run, on either replica: also one that reads
    # every pending hold again (as a replica that just started does) finds it marked.
    first.app.desk._escalated_through = float("-inf")
    assert first.run(first.app.desk.escalate_due(30, first.config.hold_ttl_seconds)) == 0
    assert len(escalations()) == 1


def test_two_thousand_waiters_all_receive_one_resolution(gw: RunningGateway) -> None:
    held = gw.agent().submit("send_email", session_id="crowd")

    async def crowd() -> list[gateway_pb2.Decision]:
        # Four connections (a local subchannel pool each: channels to one target
        # would share one), as the server takes 1,000 calls per connection at once.
        channels = [
            grpc.aio.insecure_channel(gw.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(4)
        ]
        try:
            stubs = [gateway_pb2_grpc.GatewayStub(c) for c in channels]
            md = (("authorization", f"Bearer {token_for('agent-1')}"),)
            calls = [
                stubs[i % 4].Await(
                    gateway_pb2.AwaitRequest(hold_id=held.hold_id), metadata=md, timeout=60
                )
                for i in range(2000)
            ]
            loop = asyncio.get_running_loop()
            # Every waiter is registered on the hold before it is approved.
            await loop.run_in_executor(
                None,
                lambda: wait_for(
                    lambda: len(gw.app.listener._waiters.get(held.hold_id, ())) >= 2000,
                    timeout=60,
                    what="2000 waiters",
                ),
            )
            await loop.run_in_executor(None, lambda: approve(gw, held.hold_id))
            return list(await asyncio.gather(*calls))
        finally:
            for c in channels:
                await c.close()

    decisions = asyncio.run(crowd())
    assert len(decisions) == 2000
    assert {d.verdict for d in decisions} == {gateway_pb2.VERDICT_ALLOW}

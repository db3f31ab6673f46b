"""Holds: approve/reject/expire through gRPC, atomic races, Await wake-ups."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from agentgw.v1 import approvals_pb2, audit_pb2, gateway_pb2
from tests.harness import ManualClock, RunningGateway, wait_for


def approve(
    gw: RunningGateway, hold_id: str, who: str = "approver-1", reason: str = "ok"
) -> approvals_pb2.Hold:
    return gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=hold_id, reason=reason), metadata=gw.md(who)
    )


def reject(gw: RunningGateway, hold_id: str, reason: str = "no") -> approvals_pb2.Hold:
    return gw.approvals.Reject(
        approvals_pb2.RejectRequest(hold_id=hold_id, reason=reason), metadata=gw.md("approver-1")
    )


def event_types(gw: RunningGateway) -> list[str]:
    stream = gw.audit.ReadEntries(audit_pb2.ReadEntriesRequest(), metadata=gw.md("auditor-1"))
    return [e.event_type for e in stream]


def held(gw: RunningGateway, agent: str = "agent-1") -> gateway_pb2.Decision:
    decision = gw.agent(agent).submit("send_email", session_id="s1", parameters={"to": "x@y.z"})
    assert decision.verdict == gateway_pb2.VERDICT_HOLD
    return decision


def test_approval_wakes_the_waiting_agent(gw: RunningGateway) -> None:
    decision = held(gw)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(gw.agent().wait, decision, 30)
        # The waiter is registered with the gateway before the approver acts, so
        # this proves the wake-up path, not a lucky read after the fact.
        wait_for(lambda: decision.hold_id in gw.app.listener._waiters, what="Await to register")
        hold = approve(gw, decision.hold_id, reason="recipient is internal")
        final = waiting.result(timeout=10)
    assert hold.status == approvals_pb2.HOLD_STATUS_APPROVED
    assert final.verdict == gateway_pb2.VERDICT_ALLOW
    assert final.resolution.status == gateway_pb2.RESOLUTION_STATUS_APPROVED
    assert final.resolution.decided_by == "approver-1"
    assert final.resolution.reason == "recipient is internal"
    assert final.resolution.audit_seq == hold.resolution.audit_seq > decision.audit_seq
    assert event_types(gw) == ["action_decided", "hold_approved"]


def test_rejection_is_a_deny_for_the_agent(gw: RunningGateway) -> None:
    decision = held(gw)
    reject(gw, decision.hold_id, reason="not allowed to mail externally")
    final = gw.agent().wait(decision, timeout=10)
    assert final.verdict == gateway_pb2.VERDICT_DENY
    assert final.resolution.status == gateway_pb2.RESOLUTION_STATUS_REJECTED
    # The resubmitted action_id also returns the resolved decision.
    again = gw.agent().submit(
        "send_email", session_id="s1", parameters={"to": "x@y.z"}, action_id=decision.action_id
    )
    assert again.verdict == gateway_pb2.VERDICT_DENY


def test_await_by_action_id(gw: RunningGateway) -> None:
    decision = held(gw)
    approve(gw, decision.hold_id)
    final = gw.gateway.Await(
        gateway_pb2.AwaitRequest(action_id=decision.action_id),
        metadata=gw.md("agent-1"),
        timeout=10,
    )
    assert final.verdict == gateway_pb2.VERDICT_ALLOW


@pytest.mark.parametrize("call", [approve, reject])
def test_a_reason_is_required(gw: RunningGateway, call) -> None:  # type: ignore[no-untyped-def]
    decision = held(gw)
    with pytest.raises(grpc.RpcError) as e:
        call(gw, decision.hold_id, reason="  ")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith("reason")


def test_second_approver_loses_race(gw: RunningGateway) -> None:
    decision = held(gw)
    barrier = threading.Barrier(4)

    def attempt(i: int) -> str:
        barrier.wait()
        try:
            if i % 2:
                reject(gw, decision.hold_id, reason=f"r{i}")
            else:
                approve(gw, decision.hold_id, who=f"approver-{1 + i % 2}", reason=f"a{i}")
            return "won"
        except grpc.RpcError as e:
            return e.code().name

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, range(4)))
    assert sorted(results) == ["FAILED_PRECONDITION"] * 3 + ["won"]
    assert event_types(gw).count("action_decided") == 1
    assert len(event_types(gw)) == 2


def test_late_approval_is_a_failed_precondition(gw: RunningGateway) -> None:
    decision = held(gw)
    approve(gw, decision.hold_id)
    with pytest.raises(grpc.RpcError) as e:
        reject(gw, decision.hold_id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "approved" in (e.value.details() or "")


def test_unknown_hold_is_not_found(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        approve(gw, "hold_doesnotexist")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_hold_expires_to_deny_and_cannot_be_approved(make_gateway) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    gw = make_gateway(clock=clock, hold_ttl_seconds=60)
    decision = held(gw)
    clock.advance(61)
    final = gw.agent().wait(decision, timeout=10)
    assert final.verdict == gateway_pb2.VERDICT_DENY
    assert final.resolution.status == gateway_pb2.RESOLUTION_STATUS_EXPIRED
    assert final.resolution.decided_by == "system"
    with pytest.raises(grpc.RpcError) as e:
        approve(gw, decision.hold_id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert event_types(gw) == ["action_decided", "hold_expired"]


def test_sweeper_expires_holds_nobody_waits_for(make_gateway) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    gw = make_gateway(clock=clock, hold_ttl_seconds=60)
    held(gw)
    clock.advance(61)
    wait_for(lambda: "hold_expired" in event_types(gw), what="the sweeper to expire the hold")
    holds = gw.approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1"))
    assert not holds.holds


def test_approving_after_expiry_time_before_the_sweep_is_refused(make_gateway) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    gw = make_gateway(clock=clock, hold_ttl_seconds=3600)
    decision = held(gw)
    clock.advance(3600)
    with pytest.raises(grpc.RpcError) as e:
        approve(gw, decision.hold_id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in (e.value.details() or "")


def test_another_agent_cannot_await_a_hold(gw: RunningGateway) -> None:
    decision = held(gw, "agent-1")
    with pytest.raises(grpc.RpcError) as e:
        gw.agent("agent-2").wait(decision, timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_await_returns_deadline_exceeded_while_pending(gw: RunningGateway) -> None:
    decision = held(gw)
    with pytest.raises(grpc.RpcError) as e:
        gw.agent().wait(decision, timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    pending = gw.approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1"))
    assert [h.hold_id for h in pending.holds] == [decision.hold_id]


def test_list_holds_filters_by_agent_and_shows_the_action(gw: RunningGateway) -> None:
    one = held(gw, "agent-1")
    held(gw, "agent-2")
    listed = gw.approvals.ListHolds(
        approvals_pb2.ListHoldsRequest(agent_id="agent-1"), metadata=gw.md("approver-1")
    )
    [hold] = listed.holds
    assert hold.hold_id == one.hold_id
    assert hold.action.action_type == "send_email"
    assert hold.action.parameters["to"] == "x@y.z"
    assert hold.status == approvals_pb2.HOLD_STATUS_PENDING
    assert hold.reason

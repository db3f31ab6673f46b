"""Every Redis key the gateway writes has a TTL, or is one of the documented
unbounded families (docs/operations.md): the audit log and the pending-holds index."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from agentgw.v1 import approvals_pb2, gateway_pb2
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.rates import RateSettings
from gateway.store.keys import KeySpace
from gateway.store.log_streams import STREAMS
from tests.harness import ManualClock, RunningGateway, wait_for

RETENTION = 3600.0
IDLE = 600.0
BASELINES = 14 * 86400
IDEMPOTENCY = 1200.0
HOLD_TTL = 300.0


@pytest.fixture
def bounded(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    detection = DetectionSettings(
        rates=RateSettings(action_types={"send_email": 100}), baseline_ttl_seconds=BASELINES
    )
    return make_gateway(
        hold_ttl_seconds=HOLD_TTL,
        hold_retention_seconds=RETENTION,
        session_idle_timeout_seconds=IDLE,
        idempotency_ttl_seconds=IDEMPOTENCY,
        detection=detection,
    )


def unbounded_keys(keys: KeySpace) -> set[str]:
    return {
        keys.audit_head,
        keys.audit_entries,
        keys.audit_tree,
        keys.audit_keys,
        keys.audit_checkpoint,
        keys.pending_holds,  # bounded by the pending holds
        keys.paused_sessions,  # bounded by the paused sessions
        keys.active_alerts,  # at most alerts.max_alerts, younger than the retention
        keys.recent_alerts,
        keys.alert_feed,  # MAXLEN ~10,000
        keys.alert_deliveries,  # bounded by the pending deliveries
        keys.dead_deliveries,  # MAXLEN ~10,000
        *(keys.log_stream(s) for s in STREAMS),  # trimmed by age and logs.max_records
    }


def approve(gw: RunningGateway, hold_id: str) -> None:
    gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=hold_id, reason="ok"), metadata=gw.md("approver-1")
    )


def test_every_key_of_every_flow_expires_or_is_documented(
    bounded: RunningGateway, raw: redis.Redis, key_prefix: str
) -> None:
    gw, keys = bounded, KeySpace(key_prefix)
    agent = gw.agent()
    agent.submit("search", session_id="plain", action_id="allowed")
    approved = agent.submit("send_email", session_id="mail", action_id="approved")
    approve(gw, approved.hold_id)
    rejected = agent.submit("send_email", session_id="mail", action_id="rejected")
    gw.approvals.Reject(
        approvals_pb2.RejectRequest(hold_id=rejected.hold_id, reason="no"),
        metadata=gw.md("approver-1"),
    )
    pending = agent.submit("send_email", session_id="mail", action_id="pending")
    # Five reads in a row are a loop: held, and the session paused for review.
    looped = [agent.submit("read_file", session_id="loop", action_id=f"r{i}") for i in range(5)]
    assert looped[-1].verdict == gateway_pb2.VERDICT_HOLD
    pause_key = keys.session_pause("agent-1", "loop")
    assert raw.exists(pause_key)
    agent.report_outcome(looped[0], success=False, error="boom", tokens=10)

    def ttl_seconds(key: str) -> float:
        return float(raw.pttl(key)) / 1000

    written = {str(k) for k in raw.scan_iter(f"{key_prefix}:*")}
    no_ttl = {k for k in written if raw.pttl(k) < 0}
    assert no_ttl <= unbounded_keys(keys), f"keys without a TTL: {no_ttl - unbounded_keys(keys)}"

    assert 0 < ttl_seconds(keys.hold(approved.hold_id)) <= RETENTION
    assert 0 < ttl_seconds(keys.hold(rejected.hold_id)) <= RETENTION
    assert RETENTION < ttl_seconds(keys.hold(pending.hold_id)) <= HOLD_TTL + RETENTION
    assert 0 < ttl_seconds(keys.claim("agent-1", "allowed")) <= IDEMPOTENCY
    assert 0 < ttl_seconds(keys.decided("agent-1", "allowed")) <= IDEMPOTENCY
    assert IDLE - 60 < ttl_seconds(pause_key) <= IDLE
    assert 0 < ttl_seconds(keys.recent_types("agent-1", "loop")) <= IDLE
    assert 0 < ttl_seconds(keys.recent_fingerprints("agent-1", "loop")) <= IDLE
    assert 0 < ttl_seconds(keys.session_mix("agent-1", "loop")) <= IDLE
    assert 0 < ttl_seconds(keys.agent_marks("agent-1")) <= IDLE
    for window in (
        keys.agent_window("agent-1"),
        keys.session_window("agent-1", "loop"),
        keys.type_window("agent-1", "send_email"),
    ):
        assert 0 < ttl_seconds(window) <= 61
    for learned in (
        keys.agent_stats("agent-1"),
        keys.agent_profile("agent-1"),
        keys.open_tasks("agent-1"),
        keys.task_calls("agent-1"),
        keys.outcomes("agent-1"),
    ):
        assert BASELINES - 60 < ttl_seconds(learned) <= BASELINES, learned
    assert 0 < ttl_seconds(keys.outcome("agent-1", "r0")) <= IDEMPOTENCY
    # The index holds only pending holds: resolved ones left it with their resolution.
    assert set(raw.zrange(keys.pending_holds, 0, -1)) == {pending.hold_id, looped[-1].hold_id}


def test_expired_holds_leave_the_index_and_keep_their_retention(
    make_gateway: Callable[..., RunningGateway], raw: redis.Redis, key_prefix: str
) -> None:
    clock = ManualClock()
    gw = make_gateway(clock=clock, hold_ttl_seconds=60, hold_retention_seconds=RETENTION)
    keys = KeySpace(key_prefix)
    held = gw.agent().submit("send_email", session_id="s", action_id="will-expire")
    clock.advance(61)
    wait_for(
        lambda: not raw.zscore(keys.pending_holds, held.hold_id),
        what="the sweeper to expire the hold",
    )
    assert raw.hget(keys.hold(held.hold_id), "status") == "expired"
    assert 0 < raw.pttl(keys.hold(held.hold_id)) <= RETENTION * 1000


def test_a_pending_hold_whose_record_lapsed_is_dropped_from_the_index(
    make_gateway: Callable[..., RunningGateway], raw: redis.Redis, key_prefix: str
) -> None:
    """A hold left pending while no gateway ran past its TTL and retention: its record
    has expired in Redis; the sweeper must not keep its id in the index forever."""
    clock = ManualClock()
    gw = make_gateway(clock=clock, hold_ttl_seconds=60)
    keys = KeySpace(key_prefix)
    held = gw.agent().submit("send_email", session_id="s", action_id="lapsed")
    raw.delete(keys.hold(held.hold_id))  # what its TTL does, without waiting for it
    clock.advance(61)
    wait_for(
        lambda: raw.zscore(keys.pending_holds, held.hold_id) is None,
        what="the sweeper to drop the lapsed hold from the index",
    )


def test_a_paused_session_stays_paused_while_active(
    bounded: RunningGateway, raw: redis.Redis, key_prefix: str
) -> None:
    gw, keys = bounded, KeySpace(key_prefix)
    agent = gw.agent()
    for i in range(5):
        agent.submit("read_file", session_id="loop", action_id=f"r{i}")
    pause_key = keys.session_pause("agent-1", "loop")
    raw.pexpire(pause_key, 5_000)  # as if the session had been idle for most of its timeout
    agent.submit("search", session_id="loop", action_id="more")
    assert raw.pttl(pause_key) > (IDLE - 60) * 1000

"""Alerts through the real gateway: rules fire on what agents do, once per cooldown,
operators list, watch and acknowledge them (audited), and security events raise them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from agentgw.v1 import alerts_pb2, alerts_pb2_grpc, audit_pb2, gateway_pb2
from clients.agent import AgentClient, bearer
from clients.wire import struct_to_python
from gateway.domain.alerts.settings import AlertSettings
from gateway.domain.yaml_reader import YamlReader
from tests.harness import RunningGateway, wait_for

LOOP = 5  # the default loop window: the fifth same-type action in a session loops


def alerts_stub(gw: RunningGateway) -> alerts_pb2_grpc.AlertsStub:
    return alerts_pb2_grpc.AlertsStub(gw.channel)


def listed(gw: RunningGateway, **fields: Any) -> list[alerts_pb2.Alert]:
    request = alerts_pb2.ListAlertsRequest(**fields)
    return list(alerts_stub(gw).List(request, metadata=gw.md("admin-1")).alerts)


def loop(agent: AgentClient, session: str, **parameters: Any) -> gateway_pb2.Decision:
    decision = None
    for i in range(LOOP):
        decision = agent.submit("read_file", session_id=session, parameters={"i": i, **parameters})
    assert decision is not None and [f.type for f in decision.findings] == ["infinite_loop"]
    return decision


def entries(gw: RunningGateway, event_type: str) -> list[audit_pb2.AuditEntry]:
    query = audit_pb2.QueryRequest(event_type=event_type)
    return list(gw.audit.Query(query, metadata=gw.md("auditor-1")))


def of_rule(gw: RunningGateway, rule: str) -> list[alerts_pb2.Alert]:
    return [a for a in listed(gw) if a.rule == rule]


def test_a_loop_raises_one_alert_per_cooldown(gw: RunningGateway) -> None:
    agent = gw.agent()
    decision = loop(agent, "s1")
    (alert,) = wait_for(lambda: of_rule(gw, "agent_stuck_in_loop"), what="the loop alert")
    assert alert.severity == alerts_pb2.SEVERITY_HIGH
    assert alert.subject == "agent-1" and alert.event_type == "decision"
    assert alert.message.startswith("agent-1: stuck in a loop in session s1 (")
    assert alert.trace_id == decision.trace_id and len(alert.trace_id) == 32
    assert list(alert.channels) == ["log"]
    details = struct_to_python(alert.details)
    assert details["action_type"] == "read_file" and details["verdict"] == "hold"
    assert [f["type"] for f in details["findings"]] == ["infinite_loop"]
    # Another loop within the 5-minute cooldown: no second alert...
    loop(agent, "s2")
    other = gw.agent("agent-2")
    loop(other, "s1")  # ...but another subject has a cooldown of its own.
    wait_for(lambda: len(of_rule(gw, "agent_stuck_in_loop")) == 2, what="agent-2's alert")
    assert sorted(a.subject for a in of_rule(gw, "agent_stuck_in_loop")) == ["agent-1", "agent-2"]
    # Once the cooldown is over, the next loop alerts again.
    gw.clock.advance(301)
    loop(agent, "s3")
    wait_for(lambda: len(of_rule(gw, "agent_stuck_in_loop")) == 3, what="the next alert")


def test_acknowledging_is_recorded_audited_and_happens_once(gw: RunningGateway) -> None:
    loop(gw.agent(), "s")
    (alert,) = wait_for(lambda: listed(gw, unacknowledged_only=True), what="an alert")
    stub = alerts_stub(gw)
    note = "looking into it; api_key=sk_live_abcdefghijklmnop1234"
    acked = stub.Acknowledge(
        alerts_pb2.AcknowledgeRequest(alert_id=alert.alert_id, note=note),
        metadata=gw.md("admin-1"),
    )
    assert acked.acknowledged_by == "admin-1" and acked.acknowledged_at.seconds > 0
    assert "sk_live" not in acked.acknowledgement_note
    assert acked.acknowledgement_note.startswith("looking into it")
    (entry,) = entries(gw, "alert_acknowledged")
    assert entry.seq == acked.acknowledgement_audit_seq
    assert entry.actor == "admin-1" and entry.outcome == "acknowledged"
    details = struct_to_python(entry.details)
    assert details["alert_id"] == alert.alert_id and details["rule"] == "agent_stuck_in_loop"
    assert "sk_live" not in str(details)
    assert listed(gw, unacknowledged_only=True) == []
    (stored,) = listed(gw)
    assert stored.acknowledged_by == "admin-1"
    with pytest.raises(grpc.RpcError) as again:
        stub.Acknowledge(
            alerts_pb2.AcknowledgeRequest(alert_id=alert.alert_id), metadata=gw.md("admin-1")
        )
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "acknowledged by admin-1" in str(again.value.details())
    with pytest.raises(grpc.RpcError) as missing:
        stub.Acknowledge(
            alerts_pb2.AcknowledgeRequest(alert_id="alert_" + "0" * 24), metadata=gw.md("admin-1")
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(entries(gw, "alert_acknowledged")) == 1


def test_operators_racing_to_acknowledge_get_one_winner(gw: RunningGateway) -> None:
    loop(gw.agent(), "s")
    (alert,) = wait_for(lambda: listed(gw), what="an alert")
    stub = alerts_stub(gw)
    barrier = threading.Barrier(8)

    def acknowledge(n: int) -> grpc.StatusCode:
        barrier.wait()
        try:
            stub.Acknowledge(
                alerts_pb2.AcknowledgeRequest(alert_id=alert.alert_id, note=f"mine {n}"),
                metadata=gw.md("admin-1"),
            )
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(acknowledge, range(8)))
    assert codes.count(grpc.StatusCode.OK) == 1
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}
    assert len(entries(gw, "alert_acknowledged")) == 1


def test_only_admins_read_and_acknowledge_alerts(gw: RunningGateway) -> None:
    stub = alerts_stub(gw)
    for name in ("agent-1", "approver-1", "auditor-1"):
        with pytest.raises(grpc.RpcError) as refused:
            stub.List(alerts_pb2.ListAlertsRequest(), metadata=gw.md(name))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_list_filters_by_severity_and_subject(gw: RunningGateway) -> None:
    loop(gw.agent(), "s")  # high
    gw.agent().submit("read_file", action_id="dup", session_id="x")
    with pytest.raises(grpc.RpcError):
        gw.agent().submit("write_file", action_id="dup", session_id="x")  # critical
    wait_for(lambda: len(listed(gw)) == 2, what="two alerts")
    critical = listed(gw, min_severity=alerts_pb2.SEVERITY_CRITICAL)
    assert [a.rule for a in critical] == ["security_violation"]
    assert {a.rule for a in listed(gw, min_severity=alerts_pb2.SEVERITY_HIGH)} == {
        "security_violation",
        "agent_stuck_in_loop",
    }
    assert listed(gw, subject="agent-2") == []
    assert len(listed(gw, limit=1)) == 1
    with pytest.raises(grpc.RpcError) as bad:
        listed(gw, limit=5000)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_streams_alerts_as_they_fire(gw: RunningGateway) -> None:
    channel = grpc.insecure_channel(gw.target)
    stream = alerts_pb2_grpc.AlertsStub(channel).Watch(
        alerts_pb2.WatchAlertsRequest(min_severity=alerts_pb2.SEVERITY_HIGH),
        metadata=gw.md("admin-1"),
        timeout=30,
    )
    stream.initial_metadata()  # subscribed: nothing fired from here on is missed
    loop(gw.agent(), "s")
    alert = next(stream)
    assert alert.rule == "agent_stuck_in_loop" and alert.subject == "agent-1"
    stream.cancel()
    channel.close()


def test_reusing_an_action_id_for_other_content_is_a_critical_alert(gw: RunningGateway) -> None:
    agent = gw.agent()
    agent.submit("read_file", action_id="a-1", session_id="s")
    with pytest.raises(grpc.RpcError) as reused:
        agent.submit("delete_file", action_id="a-1", session_id="s")
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    (alert,) = wait_for(lambda: of_rule(gw, "security_violation"), what="the alert")
    assert alert.severity == alerts_pb2.SEVERITY_CRITICAL and alert.subject == "agent-1"
    details = struct_to_python(alert.details)
    assert details["kind"] == "action_id_reused" and details["action_id"] == "a-1"
    assert details["audit_seq"] == entries(gw, "security_action_id_reused")[0].seq


def test_unknown_tokens_are_audited_and_alerted_coalesced_per_source(gw: RunningGateway) -> None:
    stub = gw.gateway
    for _ in range(30):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Submit(gateway_pb2.ActionRequest(), metadata=bearer("not-a-token"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The first refusal from the address is recorded at once...
    (first,) = wait_for(lambda: entries(gw, "security_authentication_failed"), what="an entry")
    details = struct_to_python(first.details)
    assert details["source"] == "ipv4:127.0.0.1" and details["count"] >= 1
    assert details["rpcs"] == ["/agentgw.v1.Gateway/Submit"]
    assert first.actor_type == "system" and first.outcome == "refused"
    (alert,) = wait_for(lambda: of_rule(gw, "security_violation"), what="the alert")
    assert struct_to_python(alert.details)["kind"] == "authentication_failed"
    # ...the rest of its window in one more entry, at the end of the window.
    gw.clock.advance(11)
    wait_for(
        lambda: (
            sum(
                struct_to_python(e.details)["count"]
                for e in entries(gw, "security_authentication_failed")
            )
            == 30
        ),
        what="the window's count",
    )
    assert len(entries(gw, "security_authentication_failed")) == 2


def test_acting_as_another_agent_is_a_permission_violation(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        gw.gateway.Submit(
            gateway_pb2.ActionRequest(
                action_id="x", agent_id="agent-2", session_id="s", action_type="read_file"
            ),
            metadata=gw.md("agent-1"),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    (entry,) = wait_for(lambda: entries(gw, "security_permission_denied"), what="an entry")
    assert entry.actor == "agent-1" and entry.actor_type == "agent"
    (alert,) = wait_for(lambda: of_rule(gw, "security_violation"), what="the alert")
    assert alert.subject == "agent-1"
    assert struct_to_python(alert.details)["kind"] == "permission_denied"


def test_a_failed_audit_append_raises_an_alert_and_fails_closed(
    gw: RunningGateway, raw: Any, key_prefix: str
) -> None:
    # The log's head names a signing key this gateway does not have: it cannot append.
    raw.hset(f"{key_prefix}:{{audit}}:head", "key_id", "k-unknown")
    with pytest.raises(grpc.RpcError) as failed:
        gw.agent().submit("read_file", session_id="s")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    (alert,) = wait_for(lambda: of_rule(gw, "audit_append_failed"), what="the alert")
    assert alert.severity == alerts_pb2.SEVERITY_CRITICAL and alert.subject == "gateway"
    assert "k-unknown" in alert.message


def test_a_broken_rule_is_logged_and_the_others_still_fire(
    make_gateway: Callable[..., RunningGateway], gateway_logs: Any
) -> None:
    r = YamlReader("test")
    node = r.compose(
        "rules: [{name: broken, cel: 'metrics.nope > 1.0', severity: low, message: x}]"
    )
    assert node is not None
    from gateway.domain.alerts.settings import read_alerts

    settings: AlertSettings = read_alerts(r, node)
    gw = make_gateway(alerts=settings)
    loop(gw.agent(), "s")
    wait_for(lambda: of_rule(gw, "agent_stuck_in_loop"), what="the loop alert")
    errors = [r for r in gateway_logs.records if r.getMessage() == "alert rule error"]
    assert errors and all(r.rule == "broken" for r in errors)
    assert len(errors) == 1  # at most once a minute per rule


def test_a_fired_alert_is_a_log_record_in_the_rules_category(
    gw: RunningGateway, gateway_logs: Any
) -> None:
    loop(gw.agent(), "s")
    (alert,) = wait_for(lambda: listed(gw), what="an alert")
    (record,) = wait_for(
        lambda: [r for r in gateway_logs.records if getattr(r, "alert_id", "") == alert.alert_id],
        what="its log record",
    )
    assert record.levelname == "ERROR"  # high
    assert record.category == "decision"
    assert record.event_type == "alert_fired"
    assert record.trace_id == alert.trace_id
    assert record.getMessage() == alert.message


def test_trace_ids_from_traceparent_reach_the_decision_entry_and_log(
    gw: RunningGateway, gateway_logs: Any
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    metadata = (*gw.md("agent-1"), ("traceparent", f"00-{trace}-00f067aa0ba902b7-01"))
    request = gateway_pb2.ActionRequest(
        action_id="t-1", agent_id="agent-1", session_id="s", action_type="read_file"
    )
    decision = gw.gateway.Submit(request, metadata=metadata)
    assert decision.trace_id == trace
    (entry,) = entries(gw, "action_decided")
    assert struct_to_python(entry.details)["trace_id"] == trace
    (record,) = [r for r in gateway_logs.records if r.getMessage() == "decision"]
    assert record.trace_id == trace
    # A replay answers the first decision, with its trace.
    assert gw.gateway.Submit(request, metadata=gw.md("agent-1")).trace_id == trace
    # No (or a malformed) traceparent: a new trace id each time.
    bad = (*gw.md("agent-1"), ("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01"))
    other = gw.gateway.Submit(
        gateway_pb2.ActionRequest(
            action_id="t-2", agent_id="agent-1", session_id="s", action_type="search"
        ),
        metadata=bad,
    )
    assert len(other.trace_id) == 32 and other.trace_id not in (trace, "0" * 32)


def test_a_hold_pending_past_its_escalation_time_raises_an_alert(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = make_gateway(hold_escalation_seconds=30)
    held = gw.agent().submit("send_email", session_id="s")
    gw.clock.advance(31)
    (alert,) = wait_for(lambda: of_rule(gw, "hold_escalated"), what="the escalation alert")
    assert alert.subject == "agent-1" and alert.severity == alerts_pb2.SEVERITY_MEDIUM
    assert struct_to_python(alert.details)["hold_id"] == held.hold_id
    assert alert.message.startswith(f"hold {held.hold_id} of agent-1 (send_email) pending for")


def test_refusals_still_tallied_at_stop_are_recorded_then(
    gw: RunningGateway, raw: Any, key_prefix: str
) -> None:
    for _ in range(5):
        with pytest.raises(grpc.RpcError):
            gw.gateway.Submit(gateway_pb2.ActionRequest(), metadata=bearer("not-a-token"))
    wait_for(lambda: entries(gw, "security_authentication_failed"), what="the first entry")
    gw.stop()  # within the window: the other four are still only counted
    lines = [json.loads(x) for x in raw.lrange(f"{key_prefix}:{{audit}}:entries", 0, -1)]
    counts = [
        line["details"]["count"]
        for line in lines
        if line["event_type"] == "security_authentication_failed"
    ]
    assert sum(counts) == 5 and len(counts) == 2, counts

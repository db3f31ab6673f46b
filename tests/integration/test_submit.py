"""Submit through the real gRPC server and a real Redis: verdicts, auth, bad input."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from agentgw.v1 import approvals_pb2, audit_pb2, gateway_pb2
from clients.wire import struct_to_python
from gateway.logs import JsonFormatter
from tests.harness import RunningGateway, wait_for


def request(**fields: object) -> gateway_pb2.ActionRequest:
    base: dict[str, object] = {
        "action_id": "a1",
        "agent_id": "agent-1",
        "session_id": "s1",
        "action_type": "search",
    }
    base.update(fields)
    return gateway_pb2.ActionRequest(**base)  # type: ignore[arg-type]


def entries(gw: RunningGateway) -> list[audit_pb2.AuditEntry]:
    return list(gw.audit.ReadEntries(audit_pb2.ReadEntriesRequest(), metadata=gw.md("auditor-1")))


def test_benign_action_is_allowed_and_audited(gw: RunningGateway) -> None:
    decision = gw.agent().submit("search", session_id="s1", parameters={"q": "weather"})
    assert decision.verdict == gateway_pb2.VERDICT_ALLOW
    assert decision.audit_seq == 1
    [entry] = entries(gw)
    assert entry.event_type == "action_decided"
    assert entry.outcome == "allow"
    assert entry.actor == "agent-1" and entry.actor_type == "agent"
    assert entry.action_id == decision.action_id


@pytest.mark.parametrize(
    "action_type", ["send_email", "fs.delete_file", "wire_transfer", "DROP_TABLE"]
)
def test_suspicious_action_is_held_with_its_rule(gw: RunningGateway, action_type: str) -> None:
    decision = gw.agent().submit(action_type, session_id="s1")
    assert decision.verdict == gateway_pb2.VERDICT_HOLD
    assert decision.hold_id.startswith("hold_")
    assert list(decision.matched_rules) == ["hold-suspicious"]
    assert decision.expires_at.seconds > 0
    holds = gw.approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1"))
    assert [h.hold_id for h in holds.holds] == [decision.hold_id]


def test_missing_token_is_unauthenticated(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gw.gateway.Submit(request())
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_token_is_unauthenticated(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gw.gateway.Submit(request(), metadata=(("authorization", "Bearer nope"),))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown token" in (e.value.details() or "")


def test_agent_cannot_submit_as_another_agent(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gw.gateway.Submit(request(agent_id="agent-2"), metadata=gw.md("agent-1"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agent-2" in (e.value.details() or "")
    # Nothing is decided; the refusal is a security event (an entry and an alert).
    wait_for(lambda: gw.event_types(), what="the security entry")
    assert gw.event_types() == ["security_permission_denied"]


def test_approver_cannot_submit(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gw.gateway.Submit(request(agent_id="approver-1"), metadata=gw.md("approver-1"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_agent_cannot_approve(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gw.approvals.Approve(
            approvals_pb2.ApproveRequest(hold_id="hold_x", reason="r"), metadata=gw.md("agent-1")
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def deep(levels: int) -> struct_pb2.Struct:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    s = struct_pb2.Struct()
    s.update(value)
    return s


def nan_struct() -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.fields["amount"].number_value = float("nan")
    return s


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"action_id": ""}, "action_id"),
        ({"action_id": "has space"}, "action_id"),
        ({"action_id": "x" * 129}, "action_id"),
        ({"session_id": ""}, "session_id"),
        ({"session_id": "{slot}"}, "session_id"),
        ({"action_type": ""}, "action_type"),
        ({"action_type": "rm -rf"}, "action_type"),
        ({"resource": "a\x00b"}, "resource"),
        ({"reasoning": "r" * 9000}, "reasoning"),
        ({"labels": {f"k{i}": "v" for i in range(33)}}, "labels"),
        ({"parameters": deep(33)}, "parameters.a"),
        ({"parameters": nan_struct()}, "parameters.amount"),
    ],
)
def test_bad_input_is_invalid_argument_and_writes_nothing(
    gw: RunningGateway, fields: dict[str, object], field_name: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gw.gateway.Submit(request(**fields), metadata=gw.md("agent-1"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith(field_name)
    assert gw.audit_head() == 0


def test_oversized_parameters_name_the_field(gw: RunningGateway) -> None:
    s = struct_pb2.Struct()
    s.update({"blob": "x" * 70_000})
    with pytest.raises(grpc.RpcError) as e:
        gw.gateway.Submit(request(parameters=s), metadata=gw.md("agent-1"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters" in (e.value.details() or "")
    assert "exceeds the limit" in (e.value.details() or "")


def test_rejected_input_is_not_counted_by_loop_detection(gw: RunningGateway) -> None:
    agent = gw.agent()
    for i in range(4):
        with pytest.raises(grpc.RpcError):
            gw.gateway.Submit(
                request(action_id=f"bad{i}", parameters=nan_struct()), metadata=gw.md("agent-1")
            )
    for i in range(4):
        decision = agent.submit("search", session_id="s1", parameters={"q": i})
        assert not decision.findings


def test_resubmitting_an_action_id_returns_the_first_decision(gw: RunningGateway) -> None:
    agent = gw.agent()
    first = agent.submit("send_email", session_id="s1", action_id="same-1")
    head = gw.audit_head()
    again = agent.submit("send_email", session_id="s1", action_id="same-1")
    assert again == first
    assert gw.audit_head() == head
    # A resubmission counts nothing: four more repeats would otherwise trip the loop.
    for _ in range(5):
        agent.submit("search", session_id="s2", action_id="same-2")
    assert not agent.submit("search", session_id="s2", action_id="same-2").findings


def test_action_ids_are_scoped_per_agent(gw: RunningGateway) -> None:
    one = gw.agent("agent-1").submit("search", session_id="s", action_id="shared")
    two = gw.agent("agent-2").submit("send_email", session_id="s", action_id="shared")
    assert one.verdict == gateway_pb2.VERDICT_ALLOW
    assert two.verdict == gateway_pb2.VERDICT_HOLD


def test_secrets_are_redacted_in_audit_holds_and_logs(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-very-secret"
    params = {
        "to": "bob@example.com",
        "password": secret,
        "nested": {"API_Key": secret, "list": [{"auth_token": secret}]},
    }
    with caplog.at_level("DEBUG", logger="agentgw"):
        decision = gw.agent().submit(
            "send_email", session_id="s1", parameters=params, labels={"session_token": secret}
        )
    holds = gw.approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1"))
    assert secret not in str(holds)
    [entry] = entries(gw)
    assert secret not in str(entry)
    details = struct_to_python(entry.details)["parameters"]
    assert details["password"] == "[REDACTED]"
    assert details["nested"]["list"][0]["auth_token"] == "[REDACTED]"
    assert details["to"] == "bob@example.com"
    assert struct_to_python(entry.details)["labels"] == {"session_token": "[REDACTED]"}
    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert secret not in logged
    assert decision.hold_id in logged


def test_loop_pauses_the_session_until_an_approver_resumes_it(gw: RunningGateway) -> None:
    agent = gw.agent()
    for i in range(4):
        assert agent.submit("read_file", session_id="loop", parameters={"i": i}).verdict == (
            gateway_pb2.VERDICT_ALLOW
        )
    fifth = agent.submit("read_file", session_id="loop", parameters={"i": 4})
    assert fifth.verdict == gateway_pb2.VERDICT_HOLD
    assert [f.type for f in fifth.findings] == ["infinite_loop"]
    assert fifth.findings[0].severity == pytest.approx(0.8)
    assert fifth.findings[0].recommended_action == "pause_and_review"
    # Later actions of the paused session are held, even benign ones...
    later = agent.submit("search", session_id="loop")
    assert later.verdict == gateway_pb2.VERDICT_HOLD
    assert "paused" in later.reason
    # ...but other sessions are not affected.
    assert agent.submit("search", session_id="other").verdict == gateway_pb2.VERDICT_ALLOW
    resumed = gw.approvals.ResumeSession(
        approvals_pb2.ResumeSessionRequest(
            agent_id="agent-1", session_id="loop", reason="fixed prompt"
        ),
        metadata=gw.md("approver-1"),
    )
    assert resumed.was_paused and resumed.audit_seq > 0
    assert agent.submit("search", session_id="loop").verdict == gateway_pb2.VERDICT_ALLOW
    again = gw.approvals.ResumeSession(
        approvals_pb2.ResumeSessionRequest(agent_id="agent-1", session_id="loop", reason="again"),
        metadata=gw.md("approver-1"),
    )
    assert not again.was_paused


def test_stuck_pattern_is_reported_and_allowed(gw: RunningGateway) -> None:
    agent = gw.agent()
    decisions = [
        agent.submit(kind, session_id="stuck", parameters={"path": "/same"})
        for kind in ("read_file", "search", "read_file", "search", "read_file")
    ]
    assert all(not d.findings for d in decisions[:4])
    last = decisions[-1]
    assert [f.type for f in last.findings] == ["stuck_pattern"]
    assert last.findings[0].recommended_action == "inject_guidance"
    assert last.verdict == gateway_pb2.VERDICT_ALLOW


def test_policy_rules_match_parameters(make_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "default_verdict: allow\n"
        "rules:\n"
        "  - name: big-refunds\n"
        "    verdict: deny\n"
        "    reason: refunds over 1000 are not allowed\n"
        "    match:\n"
        "      action_type: refund\n"
        "      parameters:\n"
        "        - {path: amount, op: gt, value: 1000}\n"
    )
    gw = make_gateway(policy_file=policy)
    agent = gw.agent()
    denied = agent.submit("refund", session_id="s", parameters={"amount": 5000})
    assert denied.verdict == gateway_pb2.VERDICT_DENY
    assert denied.reason == "refunds over 1000 are not allowed"
    assert agent.submit("refund", session_id="s", parameters={"amount": 10}).verdict == (
        gateway_pb2.VERDICT_ALLOW
    )

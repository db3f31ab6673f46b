"""Planted secrets never come out of the gateway: not in the decision, the holds, the
approval, Await, the signed audit log (which can never be cleaned), Audit.Query,
Audit.Report, nor the gateway's own log lines."""

from __future__ import annotations

import base64

import pytest

from agentgw.v1 import approvals_pb2, audit_pb2, gateway_pb2
from tests.harness import GatewayLogs, RunningGateway
from tests.planted import LEAKED_KEYS


def planted(name: str) -> str:
    """A distinctive secret value: found in an output only if it leaked."""
    return f"planted-{name}-7c1e93f0a2b4"


JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InBsYW50ZWQifQ"
    ".eyJzdWIiOiJhZ2VudC0xIiwic2NvcGUiOiJtYWlsIn0"
    ".Tm90QVJlYWxTaWduYXR1cmVCdXRMb25nRW5vdWdoXzEyMzQ"
)
GITHUB_TOKEN = "ghp_R3dact10nPl4nt3dT0k3nAbCdEfGhIjKlMnO"
AWS_KEY_ID = "AKIAPLANTEDKEY7EXAMP"
TRICKY_KEYS = LEAKED_KEYS
BASIC = base64.b64encode(f"ana:{planted('basic-password')}".encode()).decode()
PEM_LINE = "MIIEowIBAAKCAQEAplantedPrivateKeyBody0123456789abcdefghijklmnopqrstuv"


def parameters() -> dict[str, object]:
    return {
        "to": "bob@example.com",
        "subject": "Quarterly report",
        **{key: planted(key) for key in TRICKY_KEYS},
        "headers": [
            {"name": "Authorization", "value": f"Basic {BASIC}"},
            {"key": "Cookie", "value": planted("cookie-header")},
            {"header": "X-Api-Key", "value": planted("api-key-header")},
            {"name": "Accept", "value": "text/html"},
        ],
        "body": f"Deploy with {GITHUB_TOKEN} and {AWS_KEY_ID}, then report back.",
        "key_file": "\n".join(
            ["-----BEGIN RSA PRIVATE KEY-----", PEM_LINE, "-----END RSA PRIVATE KEY-----"]
        ),
    }


SECRETS = [
    *(planted(key) for key in TRICKY_KEYS),
    planted("cookie-header"),
    planted("api-key-header"),
    planted("basic-password"),
    BASIC,
    GITHUB_TOKEN,
    AWS_KEY_ID,
    PEM_LINE,
    planted("url-password"),
    planted("url-token"),
    planted("reasoning-bearer"),
    JWT,
    planted("label"),
]
RESOURCE = (
    f"https://ana:{planted('url-password')}@api.example.com/v1/send"
    f"?token={planted('url-token')}&format=json"
)
REASONING = (
    "The mail API answered 401, so I retried with "
    f"Authorization: Bearer {planted('reasoning-bearer')} and the session JWT {JWT}."
)


def assert_no_secret_in(output: str, where: str) -> None:
    leaked = [s for s in SECRETS if s in output]
    assert not leaked, f"{where} leaks {leaked}"


def test_planted_secrets_reach_no_output(gw: RunningGateway, gateway_logs: GatewayLogs) -> None:
    agent = gw.agent()
    approver, auditor = gw.md("approver-1"), gw.md("auditor-1")
    decision = agent.submit(
        "send_email",
        session_id="s1",
        resource=RESOURCE,
        parameters=parameters(),
        reasoning=REASONING,
        labels={"team": "billing", "session_cookie": planted("label")},
    )
    assert decision.verdict == gateway_pb2.VERDICT_HOLD
    holds = gw.approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=approver)
    approved = gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=decision.hold_id, reason="recipient is internal"),
        metadata=approver,
    )
    awaited = gw.gateway.Await(
        gateway_pb2.AwaitRequest(action_id=decision.action_id),
        metadata=gw.md("agent-1"),
        timeout=10,
    )
    assert awaited.verdict == gateway_pb2.VERDICT_ALLOW
    export = "\n".join(gw.export_lines())
    queried = list(gw.audit.Query(audit_pb2.QueryRequest(), metadata=auditor, timeout=10))
    report = gw.audit.Report(audit_pb2.ReportRequest(), metadata=auditor, timeout=10)

    outputs = {
        "Submit": str(decision),
        "ListHolds": str(holds),
        "Approve": str(approved),
        "Await": str(awaited),
        "the audit export": export,
        "Audit.Query": "\n".join(str(e) for e in queried),
        "Audit.Report": str(report),
        "the log": "\n".join(gateway_logs.lines),
    }
    for where, output in outputs.items():
        assert_no_secret_in(output, where)

    # The outputs are the real thing: the readable rest of the action is there.
    assert len(holds.holds) == 1
    assert [e.event_type for e in queried] == ["action_decided", "hold_approved"]
    for where in ("ListHolds", "the audit export", "Audit.Query"):
        assert "bob@example.com" in outputs[where], where
        assert (
            "https://ana:[REDACTED]@api.example.com/v1/send?token=[REDACTED]" in (outputs[where])
        ), where
        assert "Authorization: Bearer [REDACTED]" in outputs[where], where
    assert decision.hold_id in outputs["the log"]


@pytest.mark.parametrize("resolution", ["approve", "reject"])
def test_secrets_in_an_approvers_reason_are_redacted(
    gw: RunningGateway, gateway_logs: GatewayLogs, resolution: str
) -> None:
    approver = gw.md("approver-1")
    held = gw.agent().submit("send_email", session_id="s1", parameters={"to": "bob@example.com"})
    reason = f"ok, reused the token {GITHUB_TOKEN} and Authorization: Bearer {JWT}"
    if resolution == "approve":
        answer = gw.approvals.Approve(
            approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason=reason), metadata=approver
        )
    else:
        answer = gw.approvals.Reject(
            approvals_pb2.RejectRequest(hold_id=held.hold_id, reason=reason), metadata=approver
        )
    awaited = gw.gateway.Await(
        gateway_pb2.AwaitRequest(hold_id=held.hold_id), metadata=gw.md("agent-1"), timeout=10
    )
    for where, output in {
        resolution: str(answer),
        "Await": str(awaited),
        "the audit export": "\n".join(gw.export_lines()),
        "the log": "\n".join(gateway_logs.lines),
    }.items():
        assert GITHUB_TOKEN not in output and JWT not in output, where
    assert answer.resolution.reason.startswith("ok, reused the token [REDACTED]")

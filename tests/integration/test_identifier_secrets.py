"""Identifiers are recorded as they are, so one that carries a credential (an AWS key
id, a forge token, an sk- key, a JWT, a URL with a password) in action_id,
session_id or action_type is refused: no such secret reaches the signed log,
ListHolds, Query or Report."""

from __future__ import annotations

import grpc

from agentgw.v1 import approvals_pb2, audit_pb2, gateway_pb2
from tests.harness import RunningGateway

AWS_KEY_ID = "AKIAPLANTEDKEY7EXAMP"
GITHUB_TOKEN = "ghp_R3dact10nPl4nt3dT0k3nAbCdEfGhIjKlMnO"
ANTHROPIC_KEY = "sk-ant-api03-PlantedAnthropicKey0123456789"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbmEifQ.c2lnbmF0dXJlMTIz"
URL_PASSWORD = "hunter2planted"
SECRETS = [AWS_KEY_ID, GITHUB_TOKEN, ANTHROPIC_KEY, JWT, URL_PASSWORD]

CASES = [
    {"action_id": AWS_KEY_ID, "session_id": "s1", "action_type": "send_email"},
    {"action_id": "a2", "session_id": GITHUB_TOKEN, "action_type": "send_email"},
    {"action_id": "a3", "session_id": "s3", "action_type": ANTHROPIC_KEY},
    {"action_id": JWT, "session_id": "s4", "action_type": "send_email"},
    {
        "action_id": "a5",
        "session_id": f"https://ana:{URL_PASSWORD}@api.example.com/x",
        "action_type": "send_email",
    },
]


def test_secrets_in_identifiers_reach_no_output(gw: RunningGateway) -> None:
    md = gw.md("agent-1")
    for fields in CASES:
        request = gateway_pb2.ActionRequest(agent_id="agent-1", resource="web", **fields)
        try:
            gw.gateway.Submit(request, metadata=md, timeout=10)
        except grpc.RpcError as e:  # refusing such an identifier is a fix too
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    auditor = gw.md("auditor-1")
    outputs = {
        "the audit export": "\n".join(gw.export_lines()),
        "ListHolds": str(
            gw.approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1"))
        ),
        "Audit.Query": "\n".join(
            str(e) for e in gw.audit.Query(audit_pb2.QueryRequest(), metadata=auditor, timeout=10)
        ),
        "Audit.Report": str(gw.audit.Report(audit_pb2.ReportRequest(), metadata=auditor)),
    }
    for where, output in outputs.items():
        leaked = [s for s in SECRETS if s in output]
        assert not leaked, f"{where} leaks {leaked}"

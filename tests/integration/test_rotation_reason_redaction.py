"""The admin's reason for Audit.RotateKey is free text signed into the log: it is
redacted like approvers' reasons."""

from __future__ import annotations

from agentgw.v1 import audit_pb2
from tests.harness import RunningGateway

GITHUB_TOKEN = "ghp_R3dact10nPl4nt3dT0k3nAbCdEfGhIjKlMnO"
PASSWORD = "hunter2planted"


def test_secrets_in_a_rotation_reason_are_redacted(gw: RunningGateway) -> None:
    reason = f"rotating after the leak of {GITHUB_TOKEN}, password={PASSWORD}"
    answer = gw.audit.RotateKey(
        audit_pb2.RotateKeyRequest(reason=reason), metadata=gw.md("admin-1")
    )
    auditor = gw.md("auditor-1")
    outputs = {
        "RotateKey": str(answer),
        "the audit export": "\n".join(gw.export_lines()),
        "Audit.Query": "\n".join(
            str(e) for e in gw.audit.Query(audit_pb2.QueryRequest(), metadata=auditor, timeout=10)
        ),
        "Audit.Report": str(gw.audit.Report(audit_pb2.ReportRequest(), metadata=auditor)),
    }
    for where, output in outputs.items():
        assert GITHUB_TOKEN not in output and PASSWORD not in output, where
    assert "rotating after the leak of [REDACTED]" in outputs["the audit export"]

"""The gateway verifies its stored log in place; tampering in Redis is found, named by
its first bad entry, recorded and alerted."""

from __future__ import annotations

import json
from typing import Any

from agentgw.v1 import alerts_pb2, alerts_pb2_grpc, audit_pb2
from clients.wire import struct_to_python
from tests.harness import RunningGateway, wait_for


def verify(gw: RunningGateway) -> audit_pb2.VerifyLogResponse:
    return gw.audit.VerifyLog(audit_pb2.VerifyLogRequest(), metadata=gw.md("auditor-1"))


def test_an_untouched_log_verifies(gw: RunningGateway) -> None:
    agent = gw.agent()
    for i in range(3):
        agent.submit("search", session_id="s", parameters={"i": i})
    result = verify(gw)
    assert result.ok and result.entries == result.tree_size == 3
    assert result.failure_kind == "" and result.audit_seq == 0
    assert "security_tampering_detected" not in gw.event_types()


def test_an_entry_edited_in_redis_is_found_recorded_and_alerted(
    gw: RunningGateway, raw: Any, key_prefix: str
) -> None:
    agent = gw.agent()
    for i in range(3):
        agent.submit("search", session_id="s", parameters={"i": i})
    entries = f"{key_prefix}:{{audit}}:entries"
    line = json.loads(raw.lindex(entries, 1))
    line["outcome"] = "deny"  # someone with access to Redis rewrites a decision
    raw.lset(entries, 1, json.dumps(line, separators=(",", ":")))
    result = verify(gw)
    assert not result.ok
    assert result.failure_kind == "edited" and result.failure_seq == 2
    assert result.entries == 1
    tampering = [
        json.loads(x)
        for x in gw.export_lines()
        if json.loads(x)["event_type"] == "security_tampering_detected"
    ]
    assert [t["seq"] for t in tampering] == [result.audit_seq] == [4]
    assert tampering[0]["details"]["kind"] == "edited" and tampering[0]["details"]["seq"] == 2
    assert tampering[0]["actor"] == "auditor-1"
    stub = alerts_pb2_grpc.AlertsStub(gw.channel)

    def alerts() -> list[alerts_pb2.Alert]:
        listed = stub.List(alerts_pb2.ListAlertsRequest(), metadata=gw.md("admin-1")).alerts
        return [a for a in listed if a.rule == "security_violation"]

    (alert,) = wait_for(alerts, what="the tampering alert")
    assert alert.severity == alerts_pb2.SEVERITY_CRITICAL
    details = struct_to_python(alert.details)
    assert details["kind"] == "tampering_detected" and details["seq"] == 2
    assert "seq 2" in alert.message


def test_a_deleted_entry_is_found(gw: RunningGateway, raw: Any, key_prefix: str) -> None:
    agent = gw.agent()
    for i in range(3):
        agent.submit("search", session_id="s", parameters={"i": i})
    entries = f"{key_prefix}:{{audit}}:entries"
    raw.lset(entries, 1, "gone")
    raw.lrem(entries, 1, "gone")
    result = verify(gw)
    assert not result.ok and result.failure_seq in (2, 3)
    assert result.failure_kind in ("deleted", "truncated", "broken_link")


def test_the_cli_reports_the_result_and_exits_non_zero_on_tampering(
    gw: RunningGateway, raw: Any, key_prefix: str, capsys: Any
) -> None:
    from clients.cli import main

    gw.agent().submit("search", session_id="s")
    args = ["audit", "verify-in-place", "--server", gw.target, "--token", "tok-auditor-1"]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    entries = f"{key_prefix}:{{audit}}:entries"
    line = json.loads(raw.lindex(entries, 0))
    line["actor"] = "someone-else"
    raw.lset(entries, 0, json.dumps(line, separators=(",", ":")))
    assert main(args) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED edited") and "an alert was raised" in out

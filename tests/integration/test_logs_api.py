"""The structured logs through the public surface: an agent's `Gateway.Log`, the
gateway's own records shipped to the streams, `Logs.Query` (roles, filters, follow)
and `agentgw logs` (table, JSON Lines, a closed pipe).

These need the app wiring (`LogsService` registered, `GatewayService.Log` calling
`AgentLogDesk`, a `LogSink` on the "agentgw" logger); `gateway_logs` keeps the
logger at DEBUG, so the gateway's info records reach the sink.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from agentgw.v1 import gateway_pb2, logs_pb2, logs_pb2_grpc
from clients.actions import agent_decision, agent_error, user_interaction
from clients.cli import main
from clients.wire import python_to_struct, struct_to_python
from tests.harness import GatewayLogs, RunningGateway, token_for, wait_for
from tests.processes import AGENTGW

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def logs_stub(gw: RunningGateway) -> logs_pb2_grpc.LogsStub:
    return logs_pb2_grpc.LogsStub(gw.channel)


def query(gw: RunningGateway, who: str = "auditor-1", **fields: Any) -> list[logs_pb2.LogRecord]:
    stream = logs_stub(gw).Query(logs_pb2.LogQuery(**fields), metadata=gw.md(who), timeout=10)
    return list(stream)


def agent_log(gw: RunningGateway, who: str = "agent-1", **fields: Any) -> str:
    event = gateway_pb2.LogEvent(agent_id=who, session_id="s-1", **fields)
    response: gateway_pb2.LogResponse = gw.gateway.Log(event, metadata=gw.md(who), timeout=10)
    return response.trace_id


def test_an_agent_decision_is_kept_redacted_under_its_trace(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    decision = gateway_pb2.AgentDecision(
        options=["search", "browse"], choice="search", confidence=0.9, reasoning="r" * 800
    )
    trace = agent_log(
        gw,
        message="picked a tool",
        fields=python_to_struct({"api_key": "sk-live-123", "query": "weather"}),
        decision=decision,
    )
    assert len(trace) == 32
    [record] = query(gw, trace_id=trace)
    data = struct_to_python(record.data)
    assert (record.category, record.level, record.logger) == ("decision", "info", "agent")
    assert (record.agent_id, record.session_id, record.message) == (
        "agent-1",
        "s-1",
        "picked a tool",
    )
    assert data["api_key"] == "[REDACTED]" and data["query"] == "weather"
    assert data["decision"]["choice"] == "search"
    assert data["decision"]["reasoning"].endswith("…[300 more characters]")
    assert record.id and record.timestamp.seconds > 0


def test_an_agent_keeps_the_trace_it_gives(gw: RunningGateway, gateway_logs: GatewayLogs) -> None:
    assert agent_log(gw, category="user", trace_id=TRACE) == TRACE


def test_an_agent_event_that_breaks_a_rule_is_refused(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        agent_log(gw, category="security")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith("category")
    event = gateway_pb2.LogEvent(agent_id="agent-2", category="user")
    with pytest.raises(grpc.RpcError) as e:
        gw.gateway.Log(event, metadata=gw.md("agent-1"), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_gateways_own_decision_records_are_shipped(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    decision = gw.agent().submit("search", session_id="s-9")
    found = wait_for(
        lambda: query(gw, categories=["decision"], session_id="s-9"),
        what="the decision record in its stream",
    )
    data = struct_to_python(found[0].data)
    assert found[0].agent_id == "agent-1"
    assert data["verdict"] == "allow"
    assert data["audit_seq"] == decision.audit_seq


@pytest.mark.parametrize("who", ["agent-1", "approver-1"])
def test_only_admins_and_auditors_may_query(gw: RunningGateway, who: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        query(gw, who)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert query(gw, "admin-1", categories=["user"]) == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"categories": ["actions"]}, "categories"),
        ({"min_level": "loud"}, "min_level"),
        ({"limit": 10_001}, "limit"),
        ({"trace_id": "XYZ"}, "trace_id"),
    ],
)
def test_a_bad_query_is_invalid(gw: RunningGateway, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        query(gw, **fields)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith(field)


def test_a_query_filters_and_limits(gw: RunningGateway, gateway_logs: GatewayLogs) -> None:
    for i in range(5):
        agent_log(gw, category="user", message=f"m{i}", level="warning" if i % 2 else "info")
    agent_log(gw, who="agent-2", category="user", message="other")
    mine = query(gw, categories=["user"], agent_id="agent-1")
    assert [r.message for r in mine] == [f"m{i}" for i in range(5)]
    assert [r.message for r in query(gw, categories=["user"], agent_id="agent-1", limit=2)] == [
        "m3",
        "m4",
    ]
    loud = query(gw, categories=["user"], min_level="warning")
    assert [r.message for r in loud] == ["m1", "m3"]


def test_follow_streams_new_records(gw: RunningGateway, gateway_logs: GatewayLogs) -> None:
    agent_log(gw, category="user", message="before")
    stream = logs_stub(gw).Query(
        logs_pb2.LogQuery(categories=["user"], agent_id="agent-1", follow=True),
        metadata=gw.md("auditor-1"),
        timeout=20,
    )
    try:
        assert next(stream).message == "before"
        agent_log(gw, category="user", message="after")
        assert next(stream).message == "after"
    finally:
        stream.cancel()


# --- agentgw logs -------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], gw: RunningGateway, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["logs", *args, "--server", gw.target, "--token", token_for("auditor-1")])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_prints_json_lines_and_a_table(
    gw: RunningGateway, gateway_logs: GatewayLogs, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = agent_log(gw, category="error", message="tool failed", level="error")
    code, out, _ = cli(capsys, gw, "--category", "error", "--agent", "agent-1", "--json")
    assert code == 0
    [line] = [json.loads(text) for text in out.splitlines()]
    assert line["trace_id"] == trace and line["message"] == "tool failed"
    assert list(line)[:3] == ["id", "timestamp", "level"]
    code, out, _ = cli(capsys, gw, "--category", "error", "--since", "15m", "--level", "error")
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["TIME", "LEVEL", "CATEGORY", "EVENT"]
    assert "tool failed" in row and "agent-1" in row
    code, out, _ = cli(capsys, gw, "--category", "error", "--until", "1d")
    assert out.splitlines()[1:] == []  # nothing a day old


def test_the_cli_refuses_a_bad_time(gw: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, gw, "--since", "yesterday")
    assert code == 2
    assert "--since" in err


def test_a_closed_pipe_ends_the_cli_quietly(gw: RunningGateway, gateway_logs: GatewayLogs) -> None:
    agent_log(gw, category="user", message="first")
    process = subprocess.Popen(
        [AGENTGW, "logs", "--category", "user", "--follow", "--json", "--server", gw.target],
        env={**os.environ, "AGENTGW_TOKEN": token_for("auditor-1")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["message"] == "first"
        process.stdout.close()  # the reader goes away, as `| head -1` does
        for _ in _until_exit(process):
            agent_log(gw, category="user", message="more")
        assert process.stderr is not None
        err = process.stderr.read()
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _until_exit(process: subprocess.Popen[str], attempts: int = 200) -> Iterator[int]:
    """Yields until the process exits (each turn writes a record it must print)."""
    for attempt in range(attempts):
        try:
            process.wait(0.05)
            return
        except subprocess.TimeoutExpired:
            yield attempt
    raise AssertionError("the CLI did not exit after its reader went away")


def test_the_agent_client_files_decisions_errors_and_interactions(gw: RunningGateway) -> None:
    agent = gw.agent()
    decided = agent.log(
        agent_decision(
            "refund", options=["refund", "escalate"], confidence=0.8, reasoning="r" * 900
        )
    )
    failed = agent.log(
        agent_error("TimeoutError", "the CRM did not answer", context={"password": "hunter2"})
    )
    asked = agent.log(user_interaction("user-42", "confirmation", "yes, go ahead"))
    by_trace = {
        trace: query(gw, trace_id=trace, categories=["decision", "error", "user"])
        for trace in (decided, failed, asked)
    }
    ((decision,), (error,), (interaction,)) = by_trace.values()
    assert decision.category == "decision" and decision.agent_id == "agent-1"
    assert decision.session_id == agent.session_id
    data = struct_to_python(decision.data)["decision"]
    assert data["choice"] == "refund" and data["confidence"] == 0.8
    assert len(data["reasoning"]) < 600  # kept to 500 characters and a marker
    assert error.category == "error"
    assert "hunter2" not in str(struct_to_python(error.data))
    assert interaction.category == "user"
    assert struct_to_python(interaction.data)["user_interaction"]["user_id"] == "user-42"

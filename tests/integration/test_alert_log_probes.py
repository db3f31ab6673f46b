"""Attacker's probes of alerts and structured logs (issue 11), from outside: a real
gateway over gRPC, a real Redis. Each probe is a test; one that shows a real hole is
`xfail(strict=True)` with the reason until it was fixed; every one here is fixed.

Sections: redaction (secrets must never reach log records, Logs.Query, the audit
export, Alerts.List or a webhook body), authorization, bounds and floods, once and
atomic, hostile query input, fail-closed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from agentgw.v1 import alerts_pb2, alerts_pb2_grpc, audit_pb2, gateway_pb2, logs_pb2, logs_pb2_grpc
from clients.agent import bearer
from clients.wire import python_to_struct, struct_to_python
from gateway.domain.alerts.settings import AlertSettings, read_alerts
from gateway.domain.yaml_reader import YamlReader
from gateway.logs import TextFormatter
from tests.harness import GatewayLogs, RunningGateway, wait_for

# --- planted secrets ---------------------------------------------------------------

PW = "Hunter2PlantedPw9x"
GH = "ghp_R3dact10nPl4nt3dT0k3nAbCdEfGhIjKlMnO"
BEARER_TOKEN = "abcDEF1234567890plantedBearerTok"
URL_PW = "UrlPwPlanted77q"
API_KEY = "sk-ant-api03-PlantedAnthropicKey0123456789"
NESTED = "NestedSecretPlanted42z"
LISTED = "ListedCredPlanted31k"
CASED = "OddCasePlanted55w"
NOTE_PW = "NotePwPlanted66v"
SECRETS = [PW, GH, BEARER_TOKEN, URL_PW, API_KEY, NESTED, LISTED, CASED, NOTE_PW]

SECRET_PARAMETERS: dict[str, Any] = {
    "password": PW,
    "config": {"inner": {"Api_Key": API_KEY}, "items": [{"client_SECRET": NESTED}]},
    "creds": [LISTED, "other"],
    "x-AUTH-tOkEn": CASED,
    "header": f"Authorization: Bearer {BEARER_TOKEN}",
    "url": f"https://ana:{URL_PW}@api.example.com/x",
    "gh": GH,
}
LOOP = 5


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


# --- helpers -------------------------------------------------------------------------


def logs_stub(gw: RunningGateway) -> logs_pb2_grpc.LogsStub:
    return logs_pb2_grpc.LogsStub(gw.channel)


def alerts_stub(gw: RunningGateway) -> alerts_pb2_grpc.AlertsStub:
    return alerts_pb2_grpc.AlertsStub(gw.channel)


def query(gw: RunningGateway, who: str = "auditor-1", **fields: Any) -> list[logs_pb2.LogRecord]:
    stream = logs_stub(gw).Query(logs_pb2.LogQuery(**fields), metadata=gw.md(who), timeout=20)
    return list(stream)


def listed(gw: RunningGateway, **fields: Any) -> list[alerts_pb2.Alert]:
    request = alerts_pb2.ListAlertsRequest(**fields)
    return list(alerts_stub(gw).List(request, metadata=gw.md("admin-1"), timeout=10).alerts)


def of_rule(gw: RunningGateway, rule: str) -> list[alerts_pb2.Alert]:
    return [a for a in listed(gw) if a.rule == rule]


def entries(gw: RunningGateway, event_type: str) -> list[audit_pb2.AuditEntry]:
    q = audit_pb2.QueryRequest(event_type=event_type)
    return list(gw.audit.Query(q, metadata=gw.md("auditor-1"), timeout=10))


def agent_log(gw: RunningGateway, who: str = "agent-1", **fields: Any) -> str:
    fields.setdefault("agent_id", who)
    event = gateway_pb2.LogEvent(**fields)
    reply: gateway_pb2.LogResponse = gw.gateway.Log(event, metadata=gw.md(who), timeout=10)
    return reply.trace_id


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def loop(gw: RunningGateway, agent: str, session: str, **parameters: Any) -> None:
    client = gw.agent(agent)
    for i in range(LOOP):
        client.submit("read_file", session_id=session, parameters={"i": i, **parameters})


def everything_out(gw: RunningGateway, gateway_logs: GatewayLogs) -> dict[str, str]:
    """Every place a secret could surface, as text."""
    records = query(gw, limit=10_000)
    text = TextFormatter()
    return {
        "audit export": "\n".join(gw.export_lines()),
        "Logs.Query": "\n".join(
            json.dumps(
                {
                    "m": r.message,
                    "e": r.event_type,
                    "s": r.session_id,
                    "a": r.agent_id,
                    "d": struct_to_python(r.data),
                }
            )
            for r in records
        ),
        "JSON log lines": "\n".join(gateway_logs.lines),
        "text log lines": "\n".join(text.format(r) for r in gateway_logs.records),
        "Alerts.List": "\n".join(
            f"{a.message} {json.dumps(struct_to_python(a.details))} {a.acknowledgement_note}"
            for a in listed(gw, limit=1000)
        ),
    }


def assert_nothing_leaks(gw: RunningGateway, gateway_logs: GatewayLogs) -> None:
    found = {where: leaked(out) for where, out in everything_out(gw, gateway_logs).items()}
    assert not any(found.values()), f"secrets leak: {found}"


# =====================================================================================
# 1. Redaction
# =====================================================================================


def test_secrets_in_an_action_and_its_loop_alert_reach_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """Secrets under sensitive keys (nested, in lists, odd casing) and secret-looking
    values in the parameters, resource and reasoning of actions that loop and alert."""
    client = gw.agent()
    for i in range(LOOP):
        client.submit(
            "read_file",
            session_id="s-sec",
            resource=f"https://ana:{URL_PW}@files.example.com/f?token={GH}",
            reasoning=f"use password={PW} and Bearer {BEARER_TOKEN}",
            parameters={"i": i, **SECRET_PARAMETERS},
        )
    wait_for(lambda: of_rule(gw, "agent_stuck_in_loop"), what="the loop alert")
    wait_for(
        lambda: query(gw, categories=["decision"], session_id="s-sec"), what="decision records"
    )
    assert_nothing_leaks(gw, gateway_logs)


def test_secrets_in_an_outcomes_error_text_reach_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    client = gw.agent()
    for i in range(12):
        decision = client.submit("search", session_id="s-out", parameters={"q": i})
        outcome = gateway_pb2.Outcome(
            action_id=decision.action_id,
            agent_id="agent-1",
            session_id="s-out",
            success=False,
            error=(
                f"connect https://ana:{URL_PW}@db.example.com failed; password={PW};"
                f" header Authorization: Bearer {BEARER_TOKEN}; {GH}"
            ),
            error_type=f"AuthError token={API_KEY}",
        )
        gw.gateway.ReportOutcome(outcome, metadata=gw.md("agent-1"), timeout=10)
    wait_for(lambda: of_rule(gw, "high_error_rate"), what="the error-rate alert")
    assert_nothing_leaks(gw, gateway_logs)


def test_secrets_in_every_part_of_an_agent_log_event_reach_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    fields = python_to_struct(SECRET_PARAMETERS)
    agent_log(
        gw,
        session_id="s-log",
        message=f"login with password: {PW} at https://ana:{URL_PW}@x.example.com",
        fields=fields,
        decision=gateway_pb2.AgentDecision(
            options=[f"use {GH}", f"Bearer {BEARER_TOKEN}"],
            choice=f"api_key={API_KEY}",
            confidence=0.5,
            reasoning=f"client_secret={NESTED}, password={PW}",
        ),
    )
    context = python_to_struct(
        {
            "request": {"headers": {"Authorization": f"Bearer {BEARER_TOKEN}"}},
            "Client_Secret": NESTED,
            "args": ["--password", PW],
        }
    )
    agent_log(
        gw,
        session_id="s-log",
        error=gateway_pb2.AgentError(
            type="AuthError",
            message=f"401 for token={GH}",
            stack_trace=(
                "Traceback (most recent call last):\n"
                f'  File "x.py", line 3, in f\n    connect(password="{PW}")\n'
                f"AuthError: https://ana:{URL_PW}@db.example.com refused {API_KEY}\n"
            ),
            context=context,
        ),
    )
    agent_log(
        gw,
        session_id="s-log",
        user_interaction=gateway_pb2.UserInteraction(
            user_id="u-1",
            interaction="chat",
            content=f"my password: {PW} and my key is {API_KEY}; token {GH}",
        ),
    )
    assert len(query(gw, session_id="s-log")) == 3
    assert_nothing_leaks(gw, gateway_logs)


@pytest.mark.parametrize("session", [GH, f"https://ana:{URL_PW}@api.example.com/x"])
def test_a_secret_looking_session_id_in_gateway_log_reaches_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs, session: str
) -> None:
    try:
        agent_log(gw, session_id=session, category="user", message="hi")
    except grpc.RpcError as e:  # refusing it, as Submit does, is a fix too
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_leaks(gw, gateway_logs)


def test_a_secret_looking_event_type_in_gateway_log_reaches_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    try:
        agent_log(gw, session_id="s-et", category="user", event_type=GH)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_leaks(gw, gateway_logs)


def test_secrets_in_an_acknowledgement_note_reach_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    loop(gw, "agent-1", "s-ack")
    (alert,) = wait_for(lambda: listed(gw), what="an alert")
    notes = (
        f"rotated password: {NOTE_PW}; was https://ops:{URL_PW}@vault.example.com;"
        f' Bearer {BEARER_TOKEN} {GH} {{"api_key": "{API_KEY}"}}'
    )
    acked = alerts_stub(gw).Acknowledge(
        alerts_pb2.AcknowledgeRequest(alert_id=alert.alert_id, note=notes),
        metadata=gw.md("admin-1"),
        timeout=10,
    )
    assert not leaked(str(acked))
    assert acked.acknowledgement_note.startswith("rotated password")
    wait_for(
        lambda: [
            r for r in query(gw, categories=["security"]) if r.event_type == "alert_acknowledged"
        ],
        what="the acknowledgement record",
    )
    assert_nothing_leaks(gw, gateway_logs)


def test_secrets_in_refused_calls_reach_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """Refusals quote input: an unknown token that is a real-looking token, another
    agent's id carrying a secret, a bad category carrying one."""
    assert (
        code_of(
            lambda: gw.gateway.Submit(gateway_pb2.ActionRequest(), metadata=bearer(GH), timeout=10)
        )
        == grpc.StatusCode.UNAUTHENTICATED
    )
    bad = gateway_pb2.LogEvent(agent_id="agent-1", category=f"password={PW}")
    assert (
        code_of(lambda: gw.gateway.Log(bad, metadata=gw.md("agent-1"), timeout=10))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    q = logs_pb2.LogQuery(categories=[f"token={GH}"], min_level=f"api_key={API_KEY}")
    assert (
        code_of(lambda: list(logs_stub(gw).Query(q, metadata=gw.md("auditor-1"), timeout=10)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    wait_for(lambda: entries(gw, "security_authentication_failed"), what="the refusal entry")
    wait_for(lambda: of_rule(gw, "security_violation"), what="the security alert")
    assert_nothing_leaks(gw, gateway_logs)


# --- webhook bodies ----------------------------------------------------------------


class Receiver:
    """A loopback HTTP server that records every POST body and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(self.rfile.read(length).decode())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def alert_settings(yaml_text: str) -> AlertSettings:
    r = YamlReader("test")
    node = r.compose(yaml_text)
    assert node is not None
    return read_alerts(r, node)


def test_webhook_slack_and_pagerduty_bodies_carry_no_secret(
    make_gateway: Callable[..., RunningGateway], receiver: Receiver, gateway_logs: GatewayLogs
) -> None:
    settings = alert_settings(
        "channels:\n"
        f"  - {{name: hook, type: webhook, url: '{receiver.url}/w'}}\n"
        f"  - {{name: chat, type: slack, url: '{receiver.url}/s'}}\n"
        f"  - {{name: pager, type: pagerduty, url: '{receiver.url}/p',"
        " routing_key: rk0123456789}\n"
    )
    gw = make_gateway(alerts=settings)
    client = gw.agent()
    for i in range(LOOP):
        client.submit(
            "read_file",
            session_id="s-hook",
            resource=f"https://ana:{URL_PW}@files.example.com/f",
            parameters={"i": i, **SECRET_PARAMETERS},
        )
    # a security alert whose description quotes a refusal
    assert (
        code_of(
            lambda: gw.gateway.Submit(gateway_pb2.ActionRequest(), metadata=bearer(GH), timeout=10)
        )
        == grpc.StatusCode.UNAUTHENTICATED
    )
    wait_for(lambda: len(receiver.bodies) >= 6, timeout=20, what="two alerts on three channels")
    bodies = "\n".join(receiver.bodies)
    assert "agent_stuck_in_loop" in bodies and "security_violation" in bodies
    assert not leaked(bodies)
    assert_nothing_leaks(gw, gateway_logs)


# =====================================================================================
# 2. Authorization
# =====================================================================================


def test_logging_as_another_agent_is_refused_stored_nowhere_and_a_security_event(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    event = gateway_pb2.LogEvent(
        agent_id="agent-2",
        session_id="s-spoof",
        category="decision",
        message="agent-2 chose to wire money",
    )
    assert (
        code_of(lambda: gw.gateway.Log(event, metadata=gw.md("agent-1"), timeout=10))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # Roles that are not agents may not file agent records at all.
    for who in ("approver-1", "auditor-1", "admin-1"):
        as_them = gateway_pb2.LogEvent(agent_id=who, category="user")
        assert (
            code_of(
                lambda as_them=as_them, who=who: gw.gateway.Log(
                    as_them, metadata=gw.md(who), timeout=10
                )
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
    assert query(gw, session_id="s-spoof") == []
    (entry, *_) = wait_for(lambda: entries(gw, "security_permission_denied"), what="the entry")
    assert entry.actor in ("agent-1", "approver-1", "auditor-1", "admin-1")
    wait_for(lambda: of_rule(gw, "security_violation"), what="the security alert")


@pytest.mark.parametrize("who", ["agent-1", "approver-1"])
def test_logs_query_and_follow_are_refused_to_agents_and_approvers(
    gw: RunningGateway, who: str
) -> None:
    for follow in (False, True):
        q = logs_pb2.LogQuery(follow=follow)
        assert (
            code_of(lambda q=q: list(logs_stub(gw).Query(q, metadata=gw.md(who), timeout=10)))
            == grpc.StatusCode.PERMISSION_DENIED
        )


@pytest.mark.parametrize("who", ["agent-1", "approver-1", "auditor-1"])
def test_alerts_watch_and_acknowledge_are_refused_to_non_admins(
    gw: RunningGateway, who: str
) -> None:
    loop(gw, "agent-1", "s-auth")
    (alert,) = wait_for(lambda: listed(gw), what="an alert")
    stub = alerts_stub(gw)
    ack = alerts_pb2.AcknowledgeRequest(alert_id=alert.alert_id, note="mine")
    assert (
        code_of(lambda: stub.Acknowledge(ack, metadata=gw.md(who), timeout=10))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        code_of(
            lambda: next(
                stub.Watch(alerts_pb2.WatchAlertsRequest(), metadata=gw.md(who), timeout=10)
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        code_of(lambda: stub.List(alerts_pb2.ListAlertsRequest(), metadata=gw.md(who), timeout=10))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # nothing was acknowledged
    unacked = [a.alert_id for a in listed(gw, unacknowledged_only=True)]
    assert alert.alert_id in unacked
    assert entries(gw, "alert_acknowledged") == []


@pytest.mark.parametrize("category", ["security", "action", "performance", "SECURITY", "Security"])
def test_an_agent_cannot_file_records_in_the_gateways_own_categories(
    gw: RunningGateway, category: str
) -> None:
    assert (
        code_of(lambda: agent_log(gw, session_id="s-cat", category=category))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert query(gw, session_id="s-cat") == []


def test_an_agent_record_is_always_filed_under_the_agent_logger(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """Nothing in a LogEvent names the logger: `fields.logger` stays data."""
    agent_log(
        gw,
        session_id="s-lg",
        category="decision",
        fields=python_to_struct({"logger": "agentgw.services.decisions", "category": "security"}),
    )
    (record,) = query(gw, session_id="s-lg")
    assert (record.logger, record.category) == ("agent", "decision")


def test_an_agent_cannot_forge_a_record_that_reads_as_the_gateways_own(
    gw: RunningGateway, gateway_logs: GatewayLogs, capsys: pytest.CaptureFixture[str]
) -> None:
    from clients.cli import main
    from tests.harness import token_for

    gw.agent().submit("search", session_id="s-forge")
    (real,) = wait_for(
        lambda: query(gw, categories=["decision"], session_id="s-forge"), what="the record"
    )
    try:  # a copy of it, filed by the agent (it could as well invent one)
        agent_log(
            gw,
            session_id="s-forge",
            category="decision",
            event_type=real.event_type,
            message=real.message,
            trace_id=real.trace_id,
            fields=real.data,
        )
    except grpc.RpcError as e:  # refusing the gateway's own event types is a fix too
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    capsys.readouterr()
    code = main(
        [
            "logs",
            "--category",
            "decision",
            "--session",
            "s-forge",
            "--server",
            gw.target,
            "--token",
            token_for("auditor-1"),
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    rows = [normalised_row(line) for line in out.splitlines()[1:]]
    assert len(rows) == 2 and len(set(rows)) == len(rows), f"indistinguishable rows: {rows}"


def normalised_row(line: str) -> str:
    """A table row without its TIME, its data's keys sorted (a Struct has no order)."""
    row = " ".join(line.split()[1:])
    if " {" not in row:
        return row
    head, _, data = row.partition(" {")
    return head + " " + json.dumps(json.loads("{" + data), sort_keys=True)


def test_an_agent_may_attach_its_record_to_another_agents_trace_but_not_hide_who_it_is(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """Trace ids are not secrets and not authority: agent-1 can attach a record to a
    trace of agent-2's decision, but the record still names agent-1, so a reader who
    looks at agent_id is not fooled (the trace view is polluted, not forged)."""
    trace = gw.agent("agent-2").submit("search", session_id="s-t2").trace_id
    agent_log(gw, session_id="s-t2", category="decision", trace_id=trace, message="mine")
    wait_for(lambda: len(query(gw, trace_id=trace)) >= 2, what="both records")
    by_trace = query(gw, trace_id=trace)
    assert {r.agent_id for r in by_trace} == {"agent-1", "agent-2"}
    assert [r.logger for r in by_trace if r.agent_id == "agent-1"] == ["agent"]


# =====================================================================================
# 3. Bounds and floods
# =====================================================================================


def test_oversized_or_too_deep_agent_records_are_refused(gw: RunningGateway) -> None:
    cases = {
        "fields too big": {"category": "user", "fields": python_to_struct({"b": "x" * 60_000})},
        "too many keys": {
            "category": "user",
            "fields": python_to_struct({f"k{i}": i for i in range(20_000)}),
        },
        "message too long": {"category": "user", "message": "m" * 10_001},
        "reasoning too long": {"decision": gateway_pb2.AgentDecision(reasoning="r" * 9_000)},
        "stack trace too big": {
            "error": gateway_pb2.AgentError(type="E", stack_trace="t" * 200_000)
        },
        "many options": {"decision": gateway_pb2.AgentDecision(options=["o" * 100] * 2_000)},
        "confidence NaN": {"decision": gateway_pb2.AgentDecision(confidence=float("nan"))},
        "bad level": {"category": "user", "level": "emergency"},
        "bad trace id": {"category": "user", "trace_id": "0" * 32},
        "no category": {},
    }
    for name, fields in cases.items():
        code = code_of(lambda fields=fields: agent_log(gw, session_id="s-big", **fields))
        assert code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ), f"{name}: {code}"
    # deeper than protobuf decodes: LogEvent.fields as hand-made bytes
    raw_log = gw.channel.unary_unary(
        "/agentgw.v1.Gateway/Log",
        request_serializer=lambda b: b,
        response_deserializer=gateway_pb2.LogResponse.FromString,
    )
    prefix = gateway_pb2.LogEvent(agent_id="agent-1", session_id="s-big", category="user")
    body = prefix.SerializeToString() + field_bytes(5, deep_struct_bytes(200))
    assert code_of(lambda: raw_log(body, metadata=gw.md("agent-1"), timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # bigger than the server takes at all
    huge = {"category": "user", "fields": python_to_struct({"b": "x" * 400_000})}
    assert code_of(lambda: agent_log(gw, session_id="s-big", **huge)) in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert query(gw, session_id="s-big") == []


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def deep_struct_bytes(depth: int) -> bytes:
    """A Struct nested `depth` times: {"d": {"d": ... "leaf"}}."""
    struct = b""
    value = field_bytes(3, b"leaf")  # Value.string_value
    for _ in range(depth):
        entry = field_bytes(1, b"d") + field_bytes(2, value)
        struct = field_bytes(1, entry)  # Struct.fields map entry
        value = field_bytes(5, struct)  # Value.struct_value
    return struct


def test_the_largest_accepted_record_is_stored_cut(gw: RunningGateway) -> None:
    fields = {f"k{i}": "v" * 1_500 for i in range(6)}
    agent_log(gw, session_id="s-cut", category="user", fields=python_to_struct(fields))
    (record,) = query(gw, session_id="s-cut")
    data = struct_to_python(record.data)
    assert all(v.endswith("…[500 more characters]") for v in data.values())


def test_an_agent_flood_cannot_evict_the_gateways_own_records(
    make_gateway: Callable[..., RunningGateway], gateway_logs: GatewayLogs
) -> None:
    from dataclasses import replace

    from gateway.domain.log_records import CATEGORIES
    from gateway.domain.log_settings import LogSettings

    settings = replace(LogSettings(), max_records=dict.fromkeys(CATEGORIES, 200))
    gw = make_gateway(logs=settings)
    decision = gw.agent().submit("delete_database", session_id="s-evict")
    wait_for(lambda: query(gw, categories=["decision"], session_id="s-evict"), what="its record")
    for i in range(400):  # all accepted: nothing limits the rate
        agent_log(gw, session_id="s-noise", category="decision", message=f"noise {i}")
    own = [
        r
        for r in query(gw, categories=["decision"], limit=10_000)
        if r.logger != "agent" and r.trace_id == decision.trace_id
    ]
    assert own, "the gateway's own record of the agent's decision was evicted by the agent"


def test_a_flood_of_log_calls_keeps_the_stream_at_its_bound(
    make_gateway: Callable[..., RunningGateway], raw: Any, key_prefix: str
) -> None:
    from dataclasses import replace

    from gateway.domain.log_records import CATEGORIES
    from gateway.domain.log_settings import LogSettings

    settings = replace(LogSettings(), max_records=dict.fromkeys(CATEGORIES, 300))
    gw = make_gateway(logs=settings)
    md = gw.md("agent-1")

    def send(i: int) -> grpc.StatusCode:
        event = gateway_pb2.LogEvent(agent_id="agent-1", category="user", message=f"m{i}")
        return code_of(lambda: gw.gateway.Log(event, metadata=md, timeout=20))

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, range(2_000)))
    assert set(codes) == {grpc.StatusCode.OK}
    assert raw.xlen(f"{key_prefix}:{{logs}}:agent.user") == 300  # agents have their own streams
    newest = query(gw, categories=["user"], limit=10_000)
    assert len(newest) == 300
    ids = [r.id for r in newest]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_a_flood_of_unauthenticated_calls_is_coalesced_per_source_and_window(
    gw: RunningGateway,
) -> None:
    def knock(i: int) -> grpc.StatusCode:
        token = f"bogus-{i}" if i % 2 else ""
        md = bearer(token) if token else ()
        return code_of(
            lambda: gw.gateway.Submit(gateway_pb2.ActionRequest(), metadata=md, timeout=20)
        )

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(knock, range(1_000)))
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    wait_for(lambda: entries(gw, "security_authentication_failed"), what="the first entry")
    gw.clock.advance(11)

    def counted() -> int:
        found = entries(gw, "security_authentication_failed")
        return sum(int(struct_to_python(e.details)["count"]) for e in found)

    wait_for(lambda: len(entries(gw, "security_authentication_failed")) == 2, what="2 entries")
    assert 1 < counted() <= 1_000  # exact: see the test of refusals during a commit
    wait_for(lambda: len(of_rule(gw, "security_violation")) == 2, what="two alerts")
    assert len(of_rule(gw, "security_violation")) == 2


def test_a_flood_of_permission_denied_calls_is_coalesced_per_principal(
    gw: RunningGateway,
) -> None:
    stub = alerts_stub(gw)
    other = gateway_pb2.LogEvent(agent_id="agent-2", category="user")

    def misuse(i: int) -> grpc.StatusCode:
        if i % 2:
            return code_of(
                lambda: stub.List(
                    alerts_pb2.ListAlertsRequest(), metadata=gw.md("agent-1"), timeout=20
                )
            )
        return code_of(lambda: gw.gateway.Log(other, metadata=gw.md("agent-1"), timeout=20))

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(misuse, range(600)))
    assert set(codes) == {grpc.StatusCode.PERMISSION_DENIED}
    wait_for(lambda: entries(gw, "security_permission_denied"), what="the first entry")
    gw.clock.advance(11)

    def counted() -> int:
        found = entries(gw, "security_permission_denied")
        return sum(int(struct_to_python(e.details)["count"]) for e in found)

    wait_for(lambda: len(entries(gw, "security_permission_denied")) == 2, what="2 entries")
    assert 1 < counted() <= 600
    found = entries(gw, "security_permission_denied")
    assert len(found) == 2
    rpcs = set(struct_to_python(found[-1].details)["rpcs"])
    assert rpcs == {"/agentgw.v1.Alerts/List", "/agentgw.v1.Gateway/Log"}


def test_refusals_counted_while_their_entry_is_written_are_not_lost(
    redis_server: Any,
    key_prefix: str,
    make_gateway: Callable[..., RunningGateway],
    raw: Any,
) -> None:
    from tests.redis_proxy import lossy_gateway

    with lossy_gateway(redis_server, key_prefix, make_gateway) as (gw, proxy):
        head = f"{key_prefix}:{{audit}}:head"
        before = int(raw.hget(head, "seq"))
        gate = proxy.hold_replies("commit")

        def knock() -> grpc.StatusCode:
            return code_of(
                lambda: gw.gateway.Submit(
                    gateway_pb2.ActionRequest(), metadata=bearer("bogus"), timeout=20
                )
            )

        try:
            assert knock() == grpc.StatusCode.UNAUTHENTICATED
            # the first refusal's entry is in Redis; its reply is held
            wait_for(lambda: int(raw.hget(head, "seq")) > before, what="the first commit")
            for _ in range(50):
                assert knock() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            gate.set()
        wait_for(lambda: entries(gw, "security_authentication_failed"), what="the entry")
        gw.clock.advance(11)

        def counted() -> int:
            found = entries(gw, "security_authentication_failed")
            return sum(int(struct_to_python(e.details)["count"]) for e in found)

        wait_for(lambda: counted() == 51, timeout=10, what="all 51 refusals in the audit log")


def test_a_query_with_the_largest_limit_and_widest_range_answers(gw: RunningGateway) -> None:
    agent_log(gw, session_id="s-wide", category="user")
    since = timestamp_pb2.Timestamp(seconds=0)
    until = timestamp_pb2.Timestamp(seconds=253402300799)  # 9999-12-31
    found = query(gw, limit=10_000, since=since, until=until, session_id="s-wide")
    assert len(found) == 1


def test_a_watcher_that_never_reads_is_dropped_and_blocks_no_one(
    gw: RunningGateway, raw: Any, key_prefix: str
) -> None:
    from gateway.domain.alerts.model import Alert, Severity, alert_to_json

    slow_channel = grpc.insecure_channel(gw.target)
    fast_channel = grpc.insecure_channel(gw.target)
    try:
        request = alerts_pb2.WatchAlertsRequest()
        slow = alerts_pb2_grpc.AlertsStub(slow_channel).Watch(
            request, metadata=gw.md("admin-1"), timeout=60
        )
        fast = alerts_pb2_grpc.AlertsStub(fast_channel).Watch(
            request, metadata=gw.md("admin-1"), timeout=60
        )
        slow.initial_metadata()
        fast.initial_metadata()
        feed = f"{key_prefix}:{{audit}}:alerts:feed"
        total = 2_500
        for start in range(0, total, 500):
            pipe = raw.pipeline(transaction=False)
            for i in range(start, start + 500):
                alert = Alert(
                    alert_id=f"alert_{i:024x}",
                    rule="probe",
                    severity=Severity.LOW,
                    subject="agent-1",
                    message="x" * 200,
                    fired_at=1.0,
                    event_type="decision",
                )
                pipe.xadd(feed, {"event": "fired", "json": json.dumps(alert_to_json(alert))})
            pipe.execute()
        # a watcher that reads is served (it may itself be dropped by such a burst;
        # then it watches again)
        try:
            next(fast)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the decision path never waited on the watchers
        assert (
            gw.agent().submit("search", session_id="s-watch").verdict == gateway_pb2.VERDICT_ALLOW
        )
        # the one that never read was dropped: reading now, it ends before the last alert
        seen = 0
        with pytest.raises(grpc.RpcError) as ended:
            for _ in slow:
                seen += 1
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert seen < total
        fast.cancel()
        again = alerts_pb2_grpc.AlertsStub(fast_channel).Watch(
            request, metadata=gw.md("admin-1"), timeout=30
        )
        again.initial_metadata()
        loop(gw, "agent-2", "s-watch-2")
        assert next(a for a in again if a.rule != "probe").rule == "agent_stuck_in_loop"
        again.cancel()
    finally:
        slow_channel.close()
        fast_channel.close()


# =====================================================================================
# 4. Once and atomic
# =====================================================================================


def test_many_concurrent_loops_across_two_agents_and_two_replicas_alert_once_each(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    replicas = [make_gateway(), make_gateway()]
    barrier = threading.Barrier(16)

    def looping(n: int) -> None:
        gw = replicas[n % 2]
        barrier.wait()
        loop(gw, f"agent-{1 + (n // 2) % 2}", f"session-{n}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(looping, range(16)))

    def loops() -> list[alerts_pb2.Alert]:
        return of_rule(replicas[0], "agent_stuck_in_loop")

    wait_for(lambda: {a.subject for a in loops()} == {"agent-1", "agent-2"}, what="both")
    for gw in replicas:  # every queued event evaluated
        wait_for(lambda gw=gw: gw.app.alerting._queue.empty(), what="rules evaluated")
    assert sorted(a.subject for a in loops()) == ["agent-1", "agent-2"]
    assert sorted(a.subject for a in of_rule(replicas[1], "agent_stuck_in_loop")) == [
        "agent-1",
        "agent-2",
    ]


def test_acknowledgements_racing_on_two_replicas_have_one_winner(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    replicas = [make_gateway(), make_gateway()]
    loop(replicas[0], "agent-1", "s-race")
    (alert,) = wait_for(lambda: listed(replicas[1]), what="the alert")
    barrier = threading.Barrier(12)

    def acknowledge(n: int) -> grpc.StatusCode:
        gw = replicas[n % 2]
        barrier.wait()
        return code_of(
            lambda: alerts_stub(gw).Acknowledge(
                alerts_pb2.AcknowledgeRequest(alert_id=alert.alert_id, note=f"n{n}"),
                metadata=gw.md("admin-1"),
                timeout=20,
            )
        )

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(acknowledge, range(12)))
    assert codes.count(grpc.StatusCode.OK) == 1, codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}
    assert len(entries(replicas[0], "alert_acknowledged")) == 1
    (stored,) = listed(replicas[1])
    assert stored.acknowledgement_audit_seq == entries(replicas[1], "alert_acknowledged")[0].seq


def test_acknowledging_an_alert_whose_record_expired_is_not_found(
    gw: RunningGateway, raw: Any, key_prefix: str
) -> None:
    loop(gw, "agent-1", "s-stale")
    (alert,) = wait_for(lambda: listed(gw), what="the alert")
    raw.delete(f"{key_prefix}:{{audit}}:alert:{alert.alert_id}")  # as its TTL would
    assert (
        code_of(
            lambda: alerts_stub(gw).Acknowledge(
                alerts_pb2.AcknowledgeRequest(alert_id=alert.alert_id),
                metadata=gw.md("admin-1"),
                timeout=10,
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert listed(gw) == []  # the index entry without its record is skipped
    assert entries(gw, "alert_acknowledged") == []


@pytest.mark.parametrize(
    "alert_id",
    [
        "*",
        "{audit}",
        "alert_*",
        "x" * 65,
        "x" * 100_000,
        "alert_é",
        "alert_\u202e",
        "../alerts:active",
        "alert\r\nFLUSHALL",
        "",
        " alert_1",
    ],
)
def test_hostile_alert_ids_are_refused_and_change_nothing(
    gw: RunningGateway, raw: Any, key_prefix: str, alert_id: str
) -> None:
    loop(gw, "agent-1", "s-inj")
    wait_for(lambda: listed(gw), what="an alert")
    before = sorted(raw.scan_iter(f"{key_prefix}:*"))
    code = code_of(
        lambda: alerts_stub(gw).Acknowledge(
            alerts_pb2.AcknowledgeRequest(alert_id=alert_id, note="x"),
            metadata=gw.md("admin-1"),
            timeout=10,
        )
    )
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert len(listed(gw, unacknowledged_only=True)) == 1
    assert entries(gw, "alert_acknowledged") == []
    after = sorted(raw.scan_iter(f"{key_prefix}:*"))
    assert set(after) - set(before) <= {k for k in after if ":{logs}:" in k}


def test_an_alert_id_shaped_like_another_key_finds_nothing(gw: RunningGateway) -> None:
    for alert_id in ("alerts:active", "x:json", "alert_0:log", "a" * 64):
        assert (
            code_of(
                lambda alert_id=alert_id: alerts_stub(gw).Acknowledge(
                    alerts_pb2.AcknowledgeRequest(alert_id=alert_id),
                    metadata=gw.md("admin-1"),
                    timeout=10,
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )


# =====================================================================================
# 5. Hostile query input
# =====================================================================================


def ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(
    "fields",
    [
        {"categories": ["decision", "bogus"]},
        {"categories": ["*"]},
        {"categories": ["x" * 100_000]},
        {"min_level": "LOUD"},
        {"min_level": "10"},
        {"since": ts(2_000_000_000), "until": ts(1_000_000_000)},
        {"since": ts(1_000_000_000), "until": ts(1_000_000_000)},
        {"follow": True, "until": ts(2_000_000_000)},
        {"limit": 10_001},
        {"limit": 2**32 - 1},
        {"trace_id": "Z" * 32},
        {"trace_id": "0" * 32},
        {"agent_id": "a" * 129},
    ],
)
def test_a_hostile_log_query_is_invalid(gw: RunningGateway, fields: dict[str, Any]) -> None:
    assert code_of(lambda: query(gw, **fields)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"since": ts(-62135596800)}, id="since-year-1"),
        pytest.param({"until": ts(-1)}, id="until-before-1970"),
        pytest.param({"since": ts(-1)}, id="since-before-1970"),
        pytest.param({"since": ts(10**17)}, id="since-beyond-ids"),
        pytest.param({"since": ts(0, nanos=-5)}, id="negative-nanos"),
        pytest.param({"since": ts(253402300799)}, id="since-9999"),
        pytest.param({"until": ts(2**62)}, id="until-huge"),
        pytest.param({"since": ts(0, nanos=2_000_000_000)}, id="nanos-too-big"),
        pytest.param({"agent_id": "*", "session_id": "{logs}"}, id="glob-ids"),
        pytest.param({"agent_id": "é\u0000"}, id="nul-id"),
    ],
)
def test_odd_log_query_values_answer_or_are_invalid_never_fail(
    gw: RunningGateway, fields: dict[str, Any]
) -> None:
    agent_log(gw, session_id="s-odd", category="user")
    code = code_of(lambda: query(gw, **fields))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code


@pytest.mark.parametrize("severity", [5, 99, -1, 2**31 - 1])
def test_an_unknown_severity_is_invalid(gw: RunningGateway, severity: int) -> None:
    stub = alerts_stub(gw)
    assert (
        code_of(
            lambda: stub.List(
                alerts_pb2.ListAlertsRequest(min_severity=severity), metadata=gw.md("admin-1")
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(
            lambda: next(
                stub.Watch(
                    alerts_pb2.WatchAlertsRequest(min_severity=severity),
                    metadata=gw.md("admin-1"),
                    timeout=10,
                )
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_alert_list_limits_and_subjects(gw: RunningGateway) -> None:
    stub = alerts_stub(gw)

    def listing(**fields: Any) -> grpc.StatusCode:
        return code_of(
            lambda: stub.List(alerts_pb2.ListAlertsRequest(**fields), metadata=gw.md("admin-1"))
        )

    assert listing(limit=1000) == grpc.StatusCode.OK
    assert listing(limit=1001) == grpc.StatusCode.INVALID_ARGUMENT
    assert listing(limit=2**32 - 1) == grpc.StatusCode.INVALID_ARGUMENT
    for subject in ("*", "{audit}", "a" * 129, "é"):
        assert listing(subject=subject) == grpc.StatusCode.INVALID_ARGUMENT
    # A negative limit on the wire: uint32 field 4 as a 10-byte varint of -1.
    negative = b"\x20" + b"\xff" * 9 + b"\x01"
    call = gw.channel.unary_unary(
        "/agentgw.v1.Alerts/List",
        request_serializer=lambda b: b,
        response_deserializer=alerts_pb2.ListAlertsResponse.FromString,
    )
    assert code_of(lambda: call(negative, metadata=gw.md("admin-1"), timeout=10)) in (
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# =====================================================================================
# 6. Fail-closed, and nothing on the side blocks the decision path
# =====================================================================================


def submit(gw: RunningGateway, session: str, action: str = "search") -> gateway_pb2.Decision:
    request = gateway_pb2.ActionRequest(
        action_id=f"{session}-{action}",
        agent_id="agent-1",
        session_id=session,
        action_type=action,
    )
    return gw.gateway.Submit(request, metadata=gw.md("agent-1"), timeout=20)


def test_broken_log_streams_fail_gateway_log_but_not_decisions(
    gw: RunningGateway, raw: Any, key_prefix: str, gateway_logs: GatewayLogs
) -> None:
    from gateway.store.log_streams import STREAMS

    streams = [f"{key_prefix}:{{logs}}:{s}" for s in STREAMS]
    raw.delete(*streams)
    for key in streams:
        raw.set(key, "not a stream")
    try:
        assert submit(gw, "s-broken").verdict == gateway_pb2.VERDICT_ALLOW
        assert code_of(lambda: agent_log(gw, category="user")) == grpc.StatusCode.UNAVAILABLE
        assert code_of(lambda: query(gw)) == grpc.StatusCode.UNAVAILABLE
        wait_for(lambda: gw.app.log_sink.failures > 0, what="the sink to fail and keep its records")
    finally:
        raw.delete(*streams)
    # repaired: what was queued is shipped
    wait_for(
        lambda: query(gw, categories=["decision"], session_id="s-broken"),
        timeout=20,
        what="the queued decision record",
    )


def test_a_broken_alert_store_alerts_locally_and_decisions_go_on(
    gw: RunningGateway, raw: Any, key_prefix: str, gateway_logs: GatewayLogs
) -> None:
    active = f"{key_prefix}:{{audit}}:alerts:active"
    raw.set(active, "not a zset")
    try:
        loop(gw, "agent-1", "s-noalerts")
        wait_for(
            lambda: [
                r
                for r in gateway_logs.records
                if getattr(r, "event_type", "") == "alert_fired"
                and getattr(r, "stored", True) is False
            ],
            what="the alert, logged though it could not be stored",
        )
        assert submit(gw, "s-noalerts-2").verdict == gateway_pb2.VERDICT_ALLOW
    finally:
        raw.delete(active)


def test_an_audit_failure_fails_closed_while_logs_are_broken_too(
    gw: RunningGateway, raw: Any, key_prefix: str
) -> None:
    from gateway.store.log_streams import STREAMS

    streams = [f"{key_prefix}:{{logs}}:{s}" for s in STREAMS]
    raw.delete(*streams)
    for key in streams:
        raw.set(key, "not a stream")
    raw.hset(f"{key_prefix}:{{audit}}:head", "key_id", "k-unknown")
    try:
        assert code_of(lambda: submit(gw, "s-closed")) == grpc.StatusCode.UNAVAILABLE
        (alert,) = wait_for(lambda: of_rule(gw, "audit_append_failed"), what="the alert")
        assert alert.severity == alerts_pb2.SEVERITY_CRITICAL
    finally:
        raw.delete(*streams)


def test_slow_log_writes_never_slow_decisions(
    redis_server: Any,
    key_prefix: str,
    make_gateway: Callable[..., RunningGateway],
    gateway_logs: GatewayLogs,
) -> None:
    from tests.redis_proxy import lossy_gateway

    with lossy_gateway(redis_server, key_prefix, make_gateway) as (gw, proxy):
        gate = proxy.hold_replies("log_append")
        try:
            # every log write now hangs in Redis' reply; decisions must not wait on them
            for i in range(30):
                assert submit(gw, f"s-slow-{i}", f"act_{i}").audit_seq > 0
            loop(gw, "agent-1", "s-slow-loop")
            wait_for(lambda: of_rule(gw, "agent_stuck_in_loop"), what="the loop alert")
        finally:
            gate.set()
        wait_for(
            lambda: query(gw, categories=["decision"], session_id="s-slow-29"),
            timeout=20,
            what="the held records, shipped once Redis answers",
        )


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[Any]:
    from gateway.store.embedded import EmbeddedRedis, find_server_binary
    from tests.processes import server_binary

    server = EmbeddedRedis(tmp_path / "own-redis", binary=find_server_binary(server_binary()))
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop_blocking()


def test_with_redis_down_decisions_and_agent_logs_fail_closed_and_records_wait(
    own_redis: Any, gateway_config: Any, gateway_logs: GatewayLogs
) -> None:
    import subprocess
    from dataclasses import replace

    from gateway.config import RedisSettings
    from tests.harness import ManualClock

    config = replace(gateway_config, redis=RedisSettings(url=own_redis.url, key_prefix="down"))
    gw = RunningGateway(config, ManualClock())
    restarted: subprocess.Popen[bytes] | None = None
    try:
        assert submit(gw, "s-up").verdict == gateway_pb2.VERDICT_ALLOW
        own_redis.stop_blocking()
        assert code_of(lambda: submit(gw, "s-down")) == grpc.StatusCode.UNAVAILABLE
        assert code_of(lambda: agent_log(gw, category="user")) == grpc.StatusCode.UNAVAILABLE
        assert code_of(lambda: query(gw)) == grpc.StatusCode.UNAVAILABLE
        restarted = subprocess.Popen(
            [str(own_redis.binary), str(own_redis.redis_dir / "redis.conf")],
            cwd=own_redis.redis_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(
            lambda: code_of(lambda: submit(gw, "s-back")) == grpc.StatusCode.OK,
            timeout=30,
            what="decisions once Redis is back",
        )
        # the refusal logged while Redis was down reaches its stream after all
        wait_for(
            lambda: [
                r
                for r in query(gw, categories=["error"], limit=10_000)
                if r.event_type == "call_failed"
            ],
            timeout=30,
            what="the records queued while Redis was down",
        )
    finally:
        gw.stop()
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)


def test_with_redis_down_someone_is_alerted(
    own_redis: Any, gateway_config: Any, gateway_logs: GatewayLogs
) -> None:
    from dataclasses import replace

    from gateway.config import RedisSettings
    from tests.harness import ManualClock

    config = replace(gateway_config, redis=RedisSettings(url=own_redis.url, key_prefix="down2"))
    gw = RunningGateway(config, ManualClock())
    try:
        assert submit(gw, "s-up").verdict == gateway_pb2.VERDICT_ALLOW
        own_redis.stop_blocking()
        for i in range(5):
            assert code_of(lambda i=i: submit(gw, f"s-down-{i}")) == grpc.StatusCode.UNAVAILABLE
        wait_for(
            lambda: [
                r for r in gateway_logs.records if getattr(r, "event_type", "") == "alert_fired"
            ],
            timeout=10,
            what="any alert while every decision fails",
        )
    finally:
        gw.stop()

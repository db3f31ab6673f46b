"""Attacker's probes of alerts and structured logs (issue 11), from outside: a real
gateway over gRPC, a real Redis. Each probe is a test; one that shows a real hole is
`xfail(strict=True)` with the reason, so the suite stays green until it is fixed.

Sections: redaction (secrets must never reach log records, Logs.Query, the audit
export, Alerts.List or a webhook body), authorization, bounds and floods, once and
atomic, hostile query input, fail-closed.
"""

from __future__ import annotations

import json
import logging
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
from gateway.logs import JsonFormatter, TextFormatter
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
    context = python_to_struct({"request": {"headers": {"Authorization": f"Bearer {BEARER_TOKEN}"}},
                                "Client_Secret": NESTED, "args": ["--password", PW]})
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


@pytest.mark.xfail(
    strict=True,
    reason="HOLE: Gateway.Log stores session_id verbatim (Submit refuses a "
    "secret-looking session_id, Log does not): a token or a URL password in it "
    "reaches Logs.Query",
)
@pytest.mark.parametrize("session", [GH, f"https://ana:{URL_PW}@api.example.com/x"])
def test_a_secret_looking_session_id_in_gateway_log_reaches_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs, session: str
) -> None:
    try:
        agent_log(gw, session_id=session, category="user", message="hi")
    except grpc.RpcError as e:  # refusing it, as Submit does, is a fix too
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_leaks(gw, gateway_logs)


@pytest.mark.xfail(
    strict=True,
    reason="HOLE: Gateway.Log stores event_type verbatim (neither redacted nor "
    "refused when it looks like a credential): a token reaches Logs.Query",
)
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
        f" Bearer {BEARER_TOKEN} {GH} {{\"api_key\": \"{API_KEY}\"}}"
    )
    acked = alerts_stub(gw).Acknowledge(
        alerts_pb2.AcknowledgeRequest(alert_id=alert.alert_id, note=notes),
        metadata=gw.md("admin-1"),
        timeout=10,
    )
    assert not leaked(str(acked))
    assert acked.acknowledgement_note.startswith("rotated password")
    wait_for(
        lambda: [r for r in query(gw, categories=["security"]) if r.event_type == "alert_acknowledged"],
        what="the acknowledgement record",
    )
    assert_nothing_leaks(gw, gateway_logs)


def test_secrets_in_refused_calls_reach_no_output(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """Refusals quote input: an unknown token that is a real-looking token, another
    agent's id carrying a secret, a bad category carrying one."""
    assert code_of(
        lambda: gw.gateway.Submit(gateway_pb2.ActionRequest(), metadata=bearer(GH), timeout=10)
    ) == grpc.StatusCode.UNAUTHENTICATED
    bad = gateway_pb2.LogEvent(agent_id="agent-1", category=f"password={PW}")
    assert code_of(
        lambda: gw.gateway.Log(bad, metadata=gw.md("agent-1"), timeout=10)
    ) == grpc.StatusCode.INVALID_ARGUMENT
    q = logs_pb2.LogQuery(categories=[f"token={GH}"], min_level=f"api_key={API_KEY}")
    assert code_of(
        lambda: list(logs_stub(gw).Query(q, metadata=gw.md("auditor-1"), timeout=10))
    ) == grpc.StatusCode.INVALID_ARGUMENT
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
        f"  - {{name: pager, type: pagerduty, url: '{receiver.url}/p', routing_key: rk0123456789}}\n"
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
    assert code_of(
        lambda: gw.gateway.Submit(gateway_pb2.ActionRequest(), metadata=bearer(GH), timeout=10)
    ) == grpc.StatusCode.UNAUTHENTICATED
    wait_for(lambda: len(receiver.bodies) >= 6, timeout=20, what="two alerts on three channels")
    bodies = "\n".join(receiver.bodies)
    assert "agent_stuck_in_loop" in bodies and "security_violation" in bodies
    assert not leaked(bodies)
    assert_nothing_leaks(gw, gateway_logs)

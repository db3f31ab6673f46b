"""Prometheus metrics scraped over HTTP from the real gateway after real decisions,
holds and alerts; the endpoint wants an auditor's or admin's token (or is public by
choice), speaks TLS when the gateway does, and is refused in cleartext off loopback."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentgw.v1 import approvals_pb2, approvals_pb2_grpc
from gateway.app import App
from gateway.config import Config, MetricsSettings, TlsSettings
from gateway.errors import ConfigError
from tests.certificates import Authority
from tests.harness import RunningGateway, start_and_stop, token_for, wait_for

LOOP = 5  # the default loop window


def scrape(url: str, token: str | None, context: ssl.SSLContext | None = None) -> str:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:
        return str(answer.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(make_gateway: Callable[..., RunningGateway]) -> tuple[RunningGateway, str]:
    gw = make_gateway(metrics=MetricsSettings(listen="127.0.0.1:0", refresh_seconds=0.1))
    assert gw.app.metrics_server is not None
    return gw, f"http://127.0.0.1:{gw.app.metrics_server.port}/metrics"


def test_decisions_holds_and_alerts_are_counted(metered: tuple[RunningGateway, str]) -> None:
    gw, url = metered
    agent = gw.agent("agent-1")
    for n in range(3):
        agent.submit("search", session_id="m", action_id=f"m-{n}")
    held = agent.submit("send_email", session_id="m2", action_id="held-1")
    for i in range(LOOP):  # a loop: a finding, a hold and an alert
        agent.submit("read_file", session_id="loop", parameters={"i": i})
    text = wait_for(
        lambda: (
            (t := scrape(url, token_for("auditor-1")))
            and value(t, "agentgw_alerts_total", rule="agent_stuck_in_loop", severity="high") == 1
            and t
        ),
        what="the loop alert to be counted",
    )
    assert value(text, "agentgw_decisions_total", verdict="allow") >= 3
    assert value(text, "agentgw_decisions_total", verdict="hold") >= 2
    assert value(text, "agentgw_findings_total", type="infinite_loop") == 1
    assert value(text, "agentgw_decision_duration_seconds_count") == 3 + 1 + LOOP
    assert value(text, "agentgw_rpcs_total", method="Gateway.Submit", code="OK") == 3 + 1 + LOOP
    assert value(text, "agentgw_rpc_duration_seconds_count", method="Gateway.Submit") == 9
    assert value(text, "agentgw_audit_appends_total") >= 1
    assert value(text, "agentgw_audit_batch_entries_sum") >= 3 + 1 + LOOP
    assert value(text, "agentgw_audit_head_seq") >= 3 + 1 + LOOP
    assert value(text, "agentgw_checkpoint_age_seconds") >= 0  # published at start
    # Fewer than 256 entries: none sealed, all of them wait in Redis.
    head = gw.audit_head()
    wait_for(
        lambda: (
            value(scrape(url, token_for("auditor-1")), "agentgw_audit_unsealed_entries") == head
        ),
        what="the unsealed entries gauge",
    )
    # Holds: pending, then resolved with its time to resolution.
    wait_for(
        lambda: value(scrape(url, token_for("auditor-1")), "agentgw_holds_pending") == 2,
        what="the pending holds gauge",
    )
    approvals = approvals_pb2_grpc.ApprovalsStub(gw.channel)
    approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="fine"),
        metadata=gw.md("approver-1"),
    )
    text = scrape(url, token_for("admin-1"))
    assert value(text, "agentgw_holds_resolved_total", status="approved") == 1
    assert value(text, "agentgw_hold_resolution_seconds_count") == 1
    assert value(text, "agentgw_rpcs_total", method="Approvals.Approve", code="OK") == 1
    wait_for(
        lambda: value(scrape(url, token_for("auditor-1")), "agentgw_holds_pending") == 1,
        what="the pending holds gauge to drop",
    )


def test_refused_calls_are_counted_by_their_code(metered: tuple[RunningGateway, str]) -> None:
    gw, url = metered
    approvals = approvals_pb2_grpc.ApprovalsStub(gw.channel)
    with pytest.raises(grpc.RpcError):  # an agent may not list holds
        approvals.ListHolds(approvals_pb2.ListHoldsRequest(), metadata=gw.md("agent-1"))
    text = scrape(url, token_for("auditor-1"))
    assert value(text, "agentgw_rpcs_total", method="Approvals.ListHolds", code="PERMISSION_DENIED")


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), ("not-a-token", 401), (token_for("agent-1"), 403)]
)
def test_the_endpoint_wants_an_auditors_or_admins_token(
    metered: tuple[RunningGateway, str], token: str | None, status: int
) -> None:
    _, url = metered
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(url, token)
    assert refused.value.code == status
    assert "agentgw_decisions" not in refused.value.read().decode()


def test_two_authorization_headers_are_refused(metered: tuple[RunningGateway, str]) -> None:
    gw, _ = metered
    assert gw.app.metrics_server is not None
    connection = http.client.HTTPConnection("127.0.0.1", gw.app.metrics_server.port, timeout=10)
    try:
        for first, second in [("agent-1", "auditor-1"), ("auditor-1", "agent-1")]:
            connection.putrequest("GET", "/metrics")
            connection.putheader("Authorization", f"Bearer {token_for(first)}")
            connection.putheader("Authorization", f"Bearer {token_for(second)}")
            connection.endheaders()
            answer = connection.getresponse()
            body = answer.read().decode()
            assert answer.status == 401, (first, second)
            assert "more than one 'authorization'" in body
    finally:
        connection.close()


def test_a_public_endpoint_needs_no_token(make_gateway: Callable[..., RunningGateway]) -> None:
    gw = make_gateway(metrics=MetricsSettings(listen="127.0.0.1:0", public=True))
    assert gw.app.metrics_server is not None
    text = scrape(f"http://127.0.0.1:{gw.app.metrics_server.port}/metrics", None)
    assert "agentgw_decision_duration_seconds" in text


def test_an_ipv6_loopback_address_is_served(make_gateway: Callable[..., RunningGateway]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    gw = make_gateway(metrics=MetricsSettings(listen="[::1]:0", public=True))
    assert gw.app.metrics_server is not None
    text = scrape(f"http://[::1]:{gw.app.metrics_server.port}/metrics", None)
    assert "agentgw_decision_duration_seconds" in text


def test_metrics_are_served_over_tls_when_the_gateway_has_a_certificate(
    make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    ca = Authority(tmp_path / "pki")
    cert = ca.issue("gateway", server=True)
    gw = make_gateway(
        tls=TlsSettings(cert.cert_file, cert.key_file),
        metrics=MetricsSettings(listen="127.0.0.1:0"),
    )
    assert gw.app.metrics_server is not None
    port = gw.app.metrics_server.port
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    text = scrape(f"https://localhost:{port}/metrics", token_for("auditor-1"), context)
    assert "agentgw_rpcs_total" in text or "agentgw_rpcs" in text
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(f"http://127.0.0.1:{port}/metrics", token_for("auditor-1"))
    # A client that connects and never speaks does not hold up the next scrape.
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        assert "agentgw_rpcs" in scrape(
            f"https://localhost:{port}/metrics", token_for("auditor-1"), context
        )
    finally:
        silent.close()


def test_a_token_protected_endpoint_is_refused_in_cleartext_off_loopback(
    gateway_config: Config,
) -> None:

    config = replace(gateway_config, metrics=MetricsSettings(listen="0.0.0.0:0"))
    app = App(config)

    with pytest.raises(ConfigError, match=r"refusing to serve metrics on 0\.0\.0\.0:0 without TLS"):
        start_and_stop(app)

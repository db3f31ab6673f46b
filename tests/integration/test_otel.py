"""OpenTelemetry traces through the real gateway, captured with the SDK's in-memory
exporter: a server span per Submit continuing the caller's traceparent, child spans
for claim, detection, policy and audit commit, GenAI attributes, and the trace id the
Decision carries. Off unless configured; `OTEL_TRACES_EXPORTER=console` prints spans."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from clients.agent import bearer
from gateway.api.telemetry import provider_from_env
from gateway.config import Config
from gateway.domain.principals import token_digest
from gateway.errors import ConfigError
from tests.harness import ManualClock, RunningGateway, token_for, wait_for
from tests.processes import AGENTGW

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
CHILDREN = {"agentgw.claim", "agentgw.detection", "agentgw.policy", "agentgw.audit_commit"}


@pytest.fixture
def traced(gateway_config: Config) -> Iterator[tuple[RunningGateway, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw = RunningGateway(gateway_config, ManualClock(), tracer_provider=provider)
    try:
        yield gw, exporter
    finally:
        gw.stop()


def submit(gw: RunningGateway, action_id: str, *extra: tuple[str, str]) -> gateway_pb2.Decision:
    stub = gateway_pb2_grpc.GatewayStub(gw.channel)
    request = gateway_pb2.ActionRequest(
        action_id=action_id, agent_id="agent-1", session_id="s-1", action_type="send_email"
    )
    metadata = (*bearer(token_for("agent-1")), *extra)
    return stub.Submit(request, metadata=metadata, timeout=10)


def test_a_submit_is_a_server_span_with_a_child_span_per_step(
    traced: tuple[RunningGateway, InMemorySpanExporter],
) -> None:
    gw, exporter = traced
    decision = submit(gw, "traced-1", ("traceparent", TRACEPARENT))
    assert decision.trace_id == CALLER_TRACE
    spans = [
        s for s in exporter.get_finished_spans() if s.context.trace_id == int(CALLER_TRACE, 16)
    ]
    (server,) = [s for s in spans if s.name == "/agentgw.v1.Gateway/Submit"]
    assert server.parent is not None and server.parent.span_id == 0x00F067AA0BA902B7
    children = {s.name: s for s in spans if s.parent and s.parent.span_id == server.context.span_id}
    assert set(children) == CHILDREN
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.tool.name"] == "send_email"
    assert attributes["gen_ai.agent.id"] == "agent-1"
    assert attributes["session.id"] == "s-1"
    assert attributes["agentgw.verdict"] == "hold"
    assert attributes["agentgw.audit_seq"] == decision.audit_seq
    assert attributes["agentgw.hold_id"] == decision.hold_id


def test_without_a_traceparent_the_decision_carries_the_new_traces_id(
    traced: tuple[RunningGateway, InMemorySpanExporter],
) -> None:
    gw, exporter = traced
    decision = submit(gw, "traced-2")
    (server,) = [s for s in exporter.get_finished_spans() if s.name.endswith("/Submit")]
    assert decision.trace_id == format(server.context.trace_id, "032x")


def test_tracing_is_off_unless_the_environment_asks_for_it() -> None:
    assert provider_from_env({}) is None
    assert provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        provider_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) is None
    )
    assert provider_from_env({"OTEL_TRACES_EXPORTER": "console"}) is not None
    assert provider_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) is not None
    with pytest.raises(ConfigError, match="zipkin is not supported"):
        provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_the_console_exporter_prints_the_spans_of_agentgw_serve(tmp_path: Path) -> None:
    config = tmp_path / "agentgw.yaml"
    digest = token_digest(token_for("agent-1"))
    config.write_text(
        f"principals:\n  - name: agent-1\n    role: agent\n    token_sha256: {digest}\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "gw-test"}
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    command = [AGENTGW, "serve", "--config", str(config), "--listen", "127.0.0.1:0"]
    command += ["--data-dir", str(tmp_path / "data")]
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
    try:
        found = wait_for(
            lambda: (
                re.search(r"^agentgw listening on [\d.]+:(\d+)$", out.read_text(), re.M)
                or process.poll() is not None
            ),
            timeout=60,
            what="the gateway to listen",
        )
        assert isinstance(found, re.Match), err.read_text()
        with grpc.insecure_channel(f"127.0.0.1:{found.group(1)}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            request = gateway_pb2.ActionRequest(
                action_id="c-1", agent_id="agent-1", session_id="s", action_type="search"
            )
            stub.Submit(request, metadata=bearer(token_for("agent-1")), timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    spans = [json.loads(chunk) for chunk in _json_objects(out.read_text())]
    names = {span["name"] for span in spans if "name" in span}
    assert CHILDREN | {"/agentgw.v1.Gateway/Submit"} <= names
    assert {span["resource"]["attributes"]["service.name"] for span in spans} == {"gw-test"}


def _json_objects(text: str) -> Iterator[str]:
    """The top-level JSON objects in `text` (the console exporter prints them one
    after the other, each over several lines)."""
    decoder = json.JSONDecoder()
    i = 0
    while (start := text.find("{", i)) != -1:
        try:
            _, end = decoder.raw_decode(text, start)
        except ValueError:
            i = start + 1
            continue
        yield text[start:end]
        i = end

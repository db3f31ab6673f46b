"""OpenTelemetry traces: off unless configured by the standard OTEL_* variables.

`agentgw serve` traces when `OTEL_TRACES_EXPORTER` names an exporter (`console`, or
`otlp`, which `OTEL_EXPORTER_OTLP_ENDPOINT` alone also implies) and
`OTEL_SDK_DISABLED` is not true; the SDK reads the rest itself (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`). The gRPC
instrumentation makes a server span per RPC (continuing the caller's `traceparent`);
a Submit gets child spans for its claim, detection, policy and audit commit
(`Spans`), and its trace id is the one its Decision, log records and audit entry
carry. Attributes follow the OpenTelemetry GenAI conventions where they fit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from gateway.config import TRUE_WORDS
from gateway.errors import ConfigError

EXPORTERS = ("console", "otlp")


def provider_from_env(env: Mapping[str, str]) -> TracerProvider | None:
    """The tracer provider the OTEL_* variables ask for; None: tracing off."""
    if env.get("OTEL_SDK_DISABLED", "").lower() in TRUE_WORDS:
        return None
    names = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names:
        otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        names = "otlp" if otlp else "none"
    chosen = [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]
    if not chosen:
        return None
    unknown = [n for n in chosen if n not in EXPORTERS]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not supported "
            f"(expected {', '.join(EXPORTERS)} or none)"
        )
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "agentgw"})
    provider = TracerProvider(resource=resource)
    for name in chosen:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def server_interceptor(provider: TracerProvider) -> Any:
    """The gRPC instrumentation's interceptor: a server span per RPC."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]


def current_trace_id() -> str:
    """The trace id of the span in progress (32 hex), or "" outside one."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


class Spans:
    """The child spans of a decision; without a provider, nothing (no cost but a
    branch)."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._tracer = provider.get_tracer("agentgw") if provider is not None else None

    @property
    def on(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span(name, attributes=attributes):
            yield

    def annotate(self, **attributes: Any) -> None:
        """Sets attributes on the span in progress (the RPC's server span)."""
        if self._tracer is not None:
            trace.get_current_span().set_attributes(attributes)

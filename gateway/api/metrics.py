"""Prometheus metrics: what the gateway counts, and the HTTP endpoint that serves them.

Each App has its own registry (several gateways may share a process in tests). The
names follow Prometheus conventions: counters end in `_total` (prometheus-client adds
it), durations are `_seconds`. The endpoint (`--metrics-listen HOST:PORT`) serves
`/metrics` to a bearer token of an auditor or admin principal (Prometheus'
`authorization` scrape setting), or to anyone with `metrics.public: true`; over TLS
when the gateway has a certificate (the same files, read again when they change).
docs/operations.md, "Metrics", lists every metric.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.api.auth import Authenticator
from gateway.api.http_endpoint import (
    SOCKET_SECONDS,
    BoundedHandler,
    HttpEndpoint,
    bearer_refusal,
)
from gateway.domain.actions import Decision
from gateway.domain.principals import Role

log = logging.getLogger("agentgw.metrics")

SCRAPER_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
HOLD_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 86400)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.decisions = Counter(
            "agentgw_decisions", "Decisions answered, by verdict.", ["verdict"], registry=r
        )
        self.findings = Counter(
            "agentgw_findings", "Detection findings in decisions, by type.", ["type"], registry=r
        )
        self.decision_seconds = Histogram(
            "agentgw_decision_duration_seconds",
            "Time from a Submit's arrival to its decision (claim, policy, detection, audit).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.holds_pending = Gauge(
            "agentgw_holds_pending", "Holds waiting for an approver (all replicas).", registry=r
        )
        self.holds_resolved = Counter(
            "agentgw_holds_resolved",
            "Holds resolved by this replica, by status (approved, rejected, expired).",
            ["status"],
            registry=r,
        )
        self.hold_resolution_seconds = Histogram(
            "agentgw_hold_resolution_seconds",
            "Time from a hold's creation to its resolution.",
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.audit_appends = Counter(
            "agentgw_audit_appends", "Batches appended to the audit log (script calls).", registry=r
        )
        self.audit_batch_entries = Histogram(
            "agentgw_audit_batch_entries",
            "Entries per appended batch (group commit).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.audit_head_seq = Gauge(
            "agentgw_audit_head_seq", "The audit log's last entry, as last seen.", registry=r
        )
        self.audit_unsealed = Gauge(
            "agentgw_audit_unsealed_entries",
            "Audit entries not yet sealed into the tile store, as this replica last saw.",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "agentgw_checkpoint_age_seconds",
            "Seconds since this replica last published a checkpoint (-1: not yet).",
            registry=r,
        )
        self.redis_errors = Counter(
            "agentgw_redis_errors",
            "Calls that failed because Redis was unreachable, timed out or refused.",
            registry=r,
        )
        self.alerts = Counter(
            "agentgw_alerts",
            "Alerts fired, by rule and severity.",
            ["rule", "severity"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "agentgw_alert_delivery_failures",
            "Alert deliveries that failed (each attempt), by channel.",
            ["channel"],
            registry=r,
        )
        self.rpcs = Counter(
            "agentgw_rpcs",
            "RPCs answered, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "agentgw_rpc_duration_seconds",
            "RPC handling time, by method (streams: until they end).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._checkpointed: float | None = None
        self._clock: Callable[[], float] = time.time
        self.checkpoint_age.set_function(self._checkpoint_age)
        # Children looked up once: a label lookup takes a lock and a dict walk.
        self._verdicts: dict[str, Any] = {}
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def decided(self, decision: Decision, seconds: float) -> None:
        verdict = decision.verdict.name.lower()
        child = self._verdicts.get(verdict)
        if child is None:
            child = self._verdicts[verdict] = self.decisions.labels(verdict)
        child.inc()
        for finding in decision.findings:
            self.findings.labels(finding.type).inc()
        self.decision_seconds.observe(seconds)

    def rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (method, code.name)
        children = self._rpc_children.get(key)
        if children is None:
            children = self._rpc_children[key] = (
                self.rpcs.labels(method, code.name),
                self.rpc_seconds.labels(method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def appended(self, entries: int, head_seq: int) -> None:
        self.audit_appends.inc()
        self.audit_batch_entries.observe(entries)
        self.audit_head_seq.set(head_seq)

    def hold_resolved(self, status: str, created_at: float, resolved_at: float) -> None:
        self.holds_resolved.labels(status).inc()
        self.hold_resolution_seconds.observe(max(0.0, resolved_at - created_at))

    def checkpointed(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._checkpointed = clock()

    def _checkpoint_age(self) -> float:
        if self._checkpointed is None:
            return -1.0
        return max(0.0, self._clock() - self._checkpointed)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer(HttpEndpoint):
    """`/metrics` over HTTP(S) in threads of its own (http_endpoint.py), so a scrape
    never waits for the event loop (and a busy loop never delays a scrape)."""

    def __init__(
        self,
        metrics: Metrics,
        listen: str,
        auth: Authenticator | None,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        super().__init__(listen, _handler(metrics, auth), tls, "agentgw-metrics")


def _handler(metrics: Metrics, auth: Authenticator | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BoundedHandler):
        timeout = SOCKET_SECONDS

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._answer(404, b"not found: the metrics are at /metrics\n")
                return
            refusal = self._refusal()
            if refusal is not None:
                self._answer(*refusal)
                return
            self._answer(200, metrics.text(), CONTENT_TYPE_LATEST)

        def _refusal(self) -> tuple[int, bytes] | None:
            forbidden = "metrics are for auditor and admin principals"
            refused = bearer_refusal(auth, self.headers, SCRAPER_ROLES, forbidden)
            return None if refused is None else (refused[0], f"{refused[1]}\n".encode())

        def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="agentgw metrics"')
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes are not worth a log line each; refusals are answered

    return Handler

"""Wiring: builds the gateway from a Config, starts and stops it in order.

Start: logging -> Redis (embedded or external) -> signing key -> policy -> stores ->
background tasks (audit writer, hold notifications, expiry sweeper, await recheck,
policy watch, Redis supervisor) -> gRPC server -> health watch. Stop runs the other
way: the health watch stops and health turns NOT_SERVING, the server drains
in-flight calls, then the tasks stop, then the Redis clients and Redis.

Three Redis clients with their own pools (`gateway/store/connection.py`): the
decision path's, a small waiting one for holds (notifications, waiters, approvals,
the expiry sweeper) so that no number of `Await`s can take the decision path's
connections, and one connection for the health probe. With
`redis.min_replicas_acked`, a fourth (one connection, no resends) runs each audit
append and its WAIT. Behind sentinels every pool, and so the pub/sub listener and
the health probe, connects to whichever server the sentinels name the master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from agentgw.v1 import alerts_pb2, approvals_pb2, audit_pb2, gateway_pb2, logs_pb2
from clients.transport import is_local
from gateway.api.auth import Authenticator
from gateway.api.decoding import add_servicer
from gateway.api.log_service import LogsService
from gateway.api.metrics import Metrics, MetricsServer
from gateway.api.services import AlertsService, ApprovalsService, AuditService, GatewayService
from gateway.api.status import RequireToken, Servicer, roles_of
from gateway.api.telemetry import Spans, server_interceptor
from gateway.api.tile_server import TileServer, serve_tiles
from gateway.api.tls import CertificateFiles, check_cleartext, server_credentials
from gateway.config import Config, read_principals
from gateway.domain.alerts.events import audit_failure_event, store_unavailable_event
from gateway.domain.audit.keys import SigningKeys
from gateway.domain.redaction import Redactor
from gateway.errors import ConfigError, StoreUnavailable
from gateway.services.alert_delivery import DeliveryWorker
from gateway.services.alerting import Alerting
from gateway.services.approvals import RECHECK_SECONDS, ApprovalDesk
from gateway.services.decisions import DecisionPipeline
from gateway.services.hold_watch import HoldWatch
from gateway.services.log_integrity import LogIntegrity
from gateway.services.log_shipping import AgentLogDesk, LogSearch, LogSink
from gateway.services.outcomes import OutcomeDesk
from gateway.services.policy_reload import PolicyReloader
from gateway.services.principal_reload import PrincipalReloader
from gateway.services.quarantine import QuarantineDesk
from gateway.services.readiness import ReadinessWatch
from gateway.services.sealing import Sealing
from gateway.services.security_events import SecurityEvents
from gateway.services.tile_files import TileFiles
from gateway.store.alert_deliveries import DeliveryQueue
from gateway.store.alerts import AlertStore
from gateway.store.audit_log import AuditLog, ReplicaAcks
from gateway.store.connection import (
    FAILURE_LISTENERS,
    HOLD_POOL_SIZE,
    POOL_WAIT_SECONDS,
    SingleConnection,
    close,
    connect,
    unavailable_on_error,
)
from gateway.store.embedded import EmbeddedRedis, find_server_binary
from gateway.store.intents import IntentWriter, Lifetimes
from gateway.store.keys import KeySpace
from gateway.store.log_streams import LogStreams
from gateway.store.notifications import ResolutionListener
from gateway.store.sealed_log import SealedLog, Sealer
from gateway.store.state import StateStore
from gateway.store.tile_store import DirectoryTileStore

log = logging.getLogger("agentgw.app")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SERVICE_NAMES = (
    gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,
    approvals_pb2.DESCRIPTOR.services_by_name["Approvals"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
    alerts_pb2.DESCRIPTOR.services_by_name["Alerts"].full_name,
    logs_pb2.DESCRIPTOR.services_by_name["Logs"].full_name,
)
_GATEWAY, _APPROVALS, _AUDIT, _ALERTS, _LOGS = SERVICE_NAMES
_WRITES_AUDIT = frozenset({"redis", "signing_key", "audit_writer"})
# What each service needs to serve (gateway/services/readiness.py): each of the
# first four writes audit entries; the logs only need Redis.
READINESS_NEEDS = {
    _GATEWAY: _WRITES_AUDIT | {"policy"},
    _APPROVALS: _WRITES_AUDIT,
    _AUDIT: _WRITES_AUDIT | {"tile_sealing"},
    _ALERTS: _WRITES_AUDIT,
    _LOGS: frozenset({"redis"}),
}
SWEEP_MAX_WAIT = 1.0
# The health watch pings Redis this often, each ping failing after HEALTH_TIMEOUT.
HEALTH_INTERVAL = 1.0
HEALTH_TIMEOUT = 1.0


class App:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.time,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.tracer_provider = tracer_provider  # None: no traces (telemetry.py)
        self.embedded: EmbeddedRedis | None = None
        self.certificates: CertificateFiles | None = None  # with TLS
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self.tile_server: TileServer | None = None  # the audit log as tlog-tiles
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._health_watch: asyncio.Task[None] | None = None
        self._draining = asyncio.Event()  # stop() has begun
        self._stopping = asyncio.Event()  # the server has stopped; tasks end

    async def start(self) -> int:
        """Starts everything; returns the bound port."""
        config = self.config
        # Transport first: a refused or unreadable setup starts nothing.
        check_cleartext(config)
        if config.tls.enabled:
            self.certificates = CertificateFiles(config.tls)
        policy = PolicyReloader(config.policy_file)
        url = config.redis.url
        if url is None:
            self.embedded = EmbeddedRedis(
                config.data_dir,
                binary=find_server_binary(config.redis.server_binary),
                appendfsync=config.redis.appendfsync,
            )
            await self.embedded.start()
            url = self.embedded.url
            log.info(
                "embedded redis started",
                extra={"binary": str(self.embedded.binary), "version": self.embedded.version},
            )
        prefix = config.redis.key_prefix
        self.client = connect(url, name=f"agentgw:{prefix}:decisions")
        self.hold_client = connect(
            url,
            name=f"agentgw:{prefix}:holds",
            max_connections=HOLD_POOL_SIZE,
            wait_for_connection=POOL_WAIT_SECONDS,
        )
        self.health_client = connect(
            url,
            name=f"agentgw:{prefix}:health",
            max_connections=1,
            wait_for_connection=HEALTH_TIMEOUT,
            timeout=HEALTH_TIMEOUT,
            retries=0,
        )
        # On a cluster, the claim markers that follow a commit go to the agents' own
        # masters in one pipeline, and a redis-py cluster pipeline that meets a dead
        # master closes every connection of its client: on a client of their own, a
        # master going down costs the markers, never the calls in flight on the others.
        self.projection_client = connect(
            url,
            name=f"agentgw:{prefix}:projections",
            max_connections=4,
            wait_for_connection=POOL_WAIT_SECONDS,
        )
        # Log shipping has its own pool: it never takes the decision path's connections.
        self.log_client = connect(
            url,
            name=f"agentgw:{prefix}:logs",
            max_connections=4,
            wait_for_connection=POOL_WAIT_SECONDS,
        )
        replica_acks = None
        if config.redis.min_replicas_acked > 0:
            ack_timeout = config.redis.replica_ack_timeout_seconds
            self.audit_client = connect(
                url,
                name=f"agentgw:{prefix}:audit",
                max_connections=1,
                wait_for_connection=POOL_WAIT_SECONDS,
                timeout=5.0 + ack_timeout,
                retries=0,
            )
            self.audit_connection = SingleConnection(
                self.audit_client, KeySpace(prefix).audit_head, POOL_WAIT_SECONDS
            )
            replica_acks = ReplicaAcks(
                self.audit_connection, config.redis.min_replicas_acked, ack_timeout
            )
        with unavailable_on_error(f"connecting to Redis at {_safe_url(url)}"):
            await self.client.ping()
        signing_keys = SigningKeys(config.signing_key_path, config.key_dir_path)
        keys = KeySpace(prefix)
        self.state = StateStore(self.client, keys, lifetimes(config))
        self.hold_state = StateStore(self.hold_client, keys, lifetimes(config))
        self.audit = AuditLog(
            self.client,
            IntentWriter(keys, lifetimes(config), single_node=self.state.single_node),
            signing_keys,
            config.audit.origin,
            self.clock,
            replica_acks,
            projection_client=self.projection_client,
        )
        tile_store = DirectoryTileStore(config.tile_dir_path)
        self.audit.sealed = SealedLog(tile_store)
        self.audit.backlog_limit = config.audit.tiles.max_unsealed_entries
        self.listener = ResolutionListener(self.hold_client, keys.hold_resolved_channel)
        redactor = Redactor(config.redaction)
        self.log_streams = LogStreams(self.log_client, keys, config.logs, self.clock)
        self.log_sink = LogSink(
            self.log_streams,
            self.clock,
            redactor,
            queue_size=config.logs.queue_size,
            level=config.log_level,
        )
        self._ship_logs()
        alerts = config.alerts
        self.deliveries = DeliveryWorker(
            DeliveryQueue(self.hold_client, keys, self.clock, alerts.retention_seconds),
            alerts.channel_map,
            self.clock,
        )
        self.alerting = Alerting(
            alerts,
            AlertStore(self.hold_client, keys, alerts.retention_seconds, alerts.max_alerts),
            self.clock,
            redactor,
            wake_delivery=self.deliveries.wake,
            deliver_locally=self.deliveries.deliver_now,
        )
        observe = self.alerting.observe
        self.audit.on_failure = lambda error: observe(audit_failure_event(error, self.clock()))
        self.security = SecurityEvents(self.audit, observe, self.clock)
        self.integrity = LogIntegrity(self.audit, observe, self.clock)
        sealer = Sealer(self.client, keys, tile_store, config.audit.tiles.margin_entries)
        self.sealing = Sealing(sealer, config.audit.tiles, observe, self.clock)
        self.metrics.audit_unsealed.set_function(lambda: self.sealing.unsealed)
        self.desk = ApprovalDesk(
            self.hold_state, self.audit, self.listener, self.clock, redactor, observe
        )
        self.watch = HoldWatch(self.hold_state, self.listener)
        self.pipeline = DecisionPipeline(
            config, policy, self.state, self.audit, self.clock, redactor, observe
        )
        self.policy = policy
        self._count()

        self._audit_writer = self._spawn(self.audit.run(), "audit writer")
        self._spawn(self.listener.run(), "hold notifications")
        self._spawn(self.watch.run(), "hold watch")
        self._spawn(self._sweep_expired(), "hold expiry sweeper")
        self._spawn(self._recheck_waiters(), "await recheck")
        self._spawn(self._publish_checkpoints(), "checkpoint publisher")
        self._spawn(self.sealing.run(self._stopping), "audit sealer")
        self._spawn(self._refresh_gauges(), "metrics gauges")
        self._spawn(self.log_sink.run(), "log shipping")
        self._spawn(self._trim_logs(), "log trimming")
        self._spawn(self.alerting.run(), "alert rules")
        self._spawn(self.alerting.run_feed(), "alert feed")
        self._spawn(self.deliveries.run(), "alert deliveries")
        self._spawn(self.security.run(), "security events")
        if config.audit.verify_interval_seconds > 0:
            self._spawn(self._verify_periodically(), "audit verification")
        if config.policy_file is not None:
            self._spawn(policy.watch(), "policy watcher")
        if self.embedded is not None:
            self._spawn(self.embedded.supervise(), "redis supervisor")
        await asyncio.wait_for(self.listener.subscribed.wait(), 10)

        self.auth = auth = Authenticator(config.principals)
        # The config's file (not one made in code, "<...>"), watched also before it
        # exists: a first start writes it only once the server listens.
        config_file = None if config.source.startswith("<") else Path(config.source)
        self.principals = PrincipalReloader(
            config_file,
            config.principals,
            lambda: read_principals(config),
            auth.replace,
        )
        self._spawn(self.principals.watch(), "principal watcher")
        servicers: tuple[Servicer, ...] = (
            GatewayService(
                auth,
                self.pipeline,
                self.desk,
                OutcomeDesk(config, self.state, self.audit, self.clock, redactor, observe),
                AgentLogDesk(self.log_streams, self.clock, redactor, config.limits),
                redactor,
            ),
            ApprovalsService(
                auth,
                self.desk,
                self.watch,
                QuarantineDesk(self.hold_state, self.audit, self.clock, redactor),
                redactor,
            ),
            AuditService(auth, self.audit, self.clock, self.integrity, redactor),
            AlertsService(auth, self.alerting, self.audit, redactor),
            LogsService(auth, LogSearch(self.log_streams), redactor),
        )
        for servicer in servicers:
            servicer.security = self.security
            servicer.on_rpc = self.metrics.rpc
        own_methods = frozenset(
            f"/{s.service.full_name}/{m.name}" for s in servicers for m in s.service.methods
        )
        interceptors: list[Any] = [RequireToken(auth, own_methods, self.security)]
        if self.tracer_provider is not None:
            interceptors.insert(0, server_interceptor(self.tracer_provider))
        server = grpc.aio.server(interceptors=interceptors, options=server_options(config))
        for servicer in servicers:
            add_servicer(server, servicer, servicer.service, lambda m: roles_of(m) is not None)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            if self.certificates is not None:
                credentials = server_credentials(self.certificates)
                self.port = server.add_secure_port(config.listen, credentials)
            else:
                self.port = server.add_insecure_port(config.listen)
        except RuntimeError as e:
            raise ConfigError(f"listen: cannot bind {config.listen}: {e}") from e
        await server.start()
        self.server = server
        self.health = health_servicer
        self.readiness = ReadinessWatch(
            READINESS_NEEDS,
            self.health_client,
            self.audit,
            self._audit_writer,
            policy,
            self.sealing.problem,
            lambda error: self.alerting.observe(store_unavailable_event(error, self.clock())),
            self._publish_status,
        )
        await self.readiness.check()
        await self.readiness.publish()
        self._health_watch = self._spawn(self._watch_health(), "health watch")
        if config.metrics.listen is not None:
            self._serve_metrics(config.metrics.listen, auth)
        if config.tiles.listen is not None:
            files = TileFiles(self.audit, self.sealing.sealer)
            self.tile_server = serve_tiles(config, auth, self.certificates, files)
        log.info("gateway listening", extra={"listen": config.listen, "port": self.port})
        return self.port

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._report_task_end)
        self._tasks.append(task)
        return task

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _publish_status(self, service: str, serving: bool) -> None:
        if not self._draining.is_set():
            await self.health.set(service, SERVING if serving else NOT_SERVING)

    async def _watch_health(self) -> None:
        """Health follows readiness, checked every HEALTH_INTERVAL; a change of a
        service's status is published and logged with the conditions that fail."""
        while not self._draining.is_set():
            await self._pause(HEALTH_INTERVAL, self._draining)
            if self._draining.is_set():
                break
            await self.readiness.check()
            await self.readiness.publish()

    async def _recheck_waiters(self) -> None:
        """Wakes every `Await` now and then, in case a notification was lost; the
        waiters of one hold share one read."""
        while not self._stopping.is_set():
            await self._pause(RECHECK_SECONDS)
            self.listener.wake_all()

    async def _pause(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Waits `seconds`, or less once stop() has begun (or `until` is set).

        The periodic tasks check `_stopping` instead of relying on cancellation only:
        a cancellation that lands inside a Redis call can be absorbed by the client
        (seen with redis-py's asyncio client), and the task would then sleep on.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((until or self._stopping).wait(), seconds)

    async def _sweep_expired(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.desk.expire_due()
                await self.desk.escalate_due(
                    self.config.hold_escalation_seconds, self.config.hold_ttl_seconds
                )
                upcoming = await self.hold_state.next_expiry()
            except StoreUnavailable as e:
                log.warning("expiry sweep failed", extra={"category": "error", "error": str(e)})
                upcoming = None
            wait = SWEEP_MAX_WAIT if upcoming is None else upcoming - self.clock()
            await self._pause(min(max(wait, 0.01), SWEEP_MAX_WAIT))

    async def _publish_checkpoints(self) -> None:
        """Signs and publishes a checkpoint of the head every interval, so that auditors
        and witnesses polling `GetCheckpoint(published=true)` see a fresh, shared one."""
        interval = self.config.audit.checkpoint_interval_seconds
        while not self._stopping.is_set():
            try:
                signed = await self.audit.checkpoint()
                self.metrics.checkpointed(self.clock)
                log.info(
                    "checkpoint published",
                    extra={
                        "category": "security",
                        "size": signed.checkpoint.size,
                        "root_hash": signed.checkpoint.root_hash.hex(),
                        "signer": signed.key_id,
                    },
                )
            except StoreUnavailable as e:
                log.warning(
                    "checkpoint publishing failed", extra={"category": "error", "error": str(e)}
                )
            await self._pause(interval)

    def _count(self) -> None:
        """Hooks the metrics to what they count."""
        m = self.metrics
        self.pipeline.on_decided = m.decided
        spans = Spans(self.tracer_provider)
        if spans.on:
            self.pipeline.span, self.pipeline.annotate = spans.span, spans.annotate
        sealing = self.sealing

        def appended(entries: int, seq: int) -> None:
            m.appended(entries, seq)
            sealing.appended(entries, seq)

        self.audit.on_append = appended
        self.desk.on_resolved = lambda hold: m.hold_resolved(
            hold.status.value, hold.created_at, self.clock()
        )
        self.alerting.on_fired = lambda alert: m.alerts.labels(
            alert.rule, alert.severity.value
        ).inc()
        self.deliveries.on_failure = lambda channel: m.delivery_failures.labels(channel).inc()
        FAILURE_LISTENERS.append(m.redis_errors.inc)

    def _serve_metrics(self, listen: str, auth: Authenticator) -> None:
        settings = self.config.metrics
        tls = self.certificates.ssl_context if self.certificates is not None else None
        cleartext_ok = settings.public or self.config.insecure or is_local(listen)
        if tls is None and not cleartext_ok:
            raise ConfigError(
                f"metrics.listen: refusing to serve metrics on {listen} without TLS "
                "(the scraper's token would travel in cleartext): give the gateway "
                "--tls-cert and --tls-key, or --insecure"
            )
        try:
            server = MetricsServer(self.metrics, listen, None if settings.public else auth, tls)
        except OSError as e:
            raise ConfigError(f"metrics.listen: cannot bind {listen}: {e}") from e
        server.start()
        self.metrics_server = server
        log.info("metrics listening", extra={"listen": listen, "port": server.port})

    async def _refresh_gauges(self) -> None:
        """The gauges that describe every replica's work: read from Redis."""
        while not self._draining.is_set():
            with contextlib.suppress(StoreUnavailable):
                self.metrics.holds_pending.set(await self.hold_state.pending_count())
                self.metrics.audit_head_seq.set((await self.audit.head()).seq)
            await self._pause(self.config.metrics.refresh_seconds)

    def _report_task_end(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None and self._draining.is_set():
            return  # a periodic task that saw stop() begin
        log.error(
            "background task ended",
            extra={"category": "error", "task": task.get_name(), "error": repr(error)},
        )

    async def _verify_periodically(self) -> None:
        """Verifies the stored log in place every `audit.verify_interval_seconds`."""
        while not self._stopping.is_set():
            await self._pause(self.config.audit.verify_interval_seconds)
            if self._stopping.is_set():
                return
            try:
                await self.integrity.verify()
            except StoreUnavailable as e:
                log.warning(
                    "audit verification failed to run", extra={"category": "error", "error": str(e)}
                )

    def _ship_logs(self) -> None:
        """The gateway's own records go to the log streams too (at the configured
        level; a logger nobody configured is set to it, and set back at stop)."""
        logger = logging.getLogger("agentgw")
        self._logger_level = logger.level
        if logger.level == logging.NOTSET:
            logger.setLevel(self.config.log_level)
        logger.addHandler(self.log_sink)

    async def _stop_shipping_logs(self) -> None:
        logger = logging.getLogger("agentgw")
        logger.removeHandler(self.log_sink)
        if self._logger_level == logging.NOTSET:
            logger.setLevel(logging.NOTSET)
        try:
            async with asyncio.timeout(5.0):
                lost = await self.log_sink.drain()
        except TimeoutError:
            lost = self.log_sink.queued
        if lost:
            log.warning(
                "log records not stored at stop", extra={"category": "error", "records": lost}
            )

    async def _trim_logs(self) -> None:
        """Ages every log stream out, also those that get no new records."""
        while not self._stopping.is_set():
            await self._pause(self.config.logs.trim_interval_seconds)
            try:
                await self.log_streams.trim()
            except StoreUnavailable as e:
                log.warning("log trimming failed", extra={"category": "error", "error": str(e)})

    async def _settle_alerts(self) -> None:
        """At stop: records the security refusals still tallied and evaluates the
        events still queued, so that nothing seen before the stop goes unalerted (their
        deliveries wait in Redis for the next worker). Bounded: Redis may be gone."""
        try:
            async with asyncio.timeout(5.0):
                await self.security.flush(final=True)
                await self.alerting.drain()
        except TimeoutError:
            log.warning("alerts not settled at stop", extra={"category": "error"})

    def reload_policy(self) -> bool:
        return self.policy.reload()

    def reload(self) -> None:
        """SIGHUP: the policy and the principals now, the TLS certificates at the next
        handshake."""
        self.reload_policy()
        if hasattr(self, "principals"):
            self.principals.reload()
        if self.certificates is not None:
            self.certificates.reload()

    async def stop(self, grace: float = 10.0) -> None:
        self._draining.set()
        if self._health_watch is not None:
            # First, so that it cannot turn health back to SERVING while we drain.
            self._health_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_watch
            self._health_watch = None
        if self.server is not None:
            self.desk.close()
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.server.stop(grace)
            self.server = None
            await self.desk.drain(max(grace, 1.0))
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
            self.metrics_server = None
        if self.tile_server is not None:
            await asyncio.to_thread(self.tile_server.stop)
            self.tile_server = None
        with contextlib.suppress(ValueError):
            FAILURE_LISTENERS.remove(self.metrics.redis_errors.inc)
        if hasattr(self, "alerting"):
            # While the audit writer still runs: the refusals' entries go through it.
            await self._settle_alerts()
        self._stopping.set()
        # A cancellation that lands inside a Redis call can be absorbed by the client
        # (redis-py's asyncio client): cancel again until each task has ended.
        pending = set(self._tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        # A task that ended with an error was reported when it ended (_report_task_end);
        # stopping goes on (e.g. a Redis client's transport error leaking out of a
        # reconnect the cancellation interrupted, as redis-py issues 3546 and 4287).
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if hasattr(self, "sealing"):
            await self.sealing.stop()
        if hasattr(self, "pipeline"):
            await self.pipeline.drain()
        if hasattr(self, "log_sink"):
            await self._stop_shipping_logs()
        if hasattr(self, "audit"):
            await self.audit.drain()
        if hasattr(self, "audit_connection"):
            await self.audit_connection.aclose()
        clients = ("audit_client", "health_client", "log_client", "projection_client")
        for name in (*clients, "hold_client", "client"):
            if hasattr(self, name):
                await close(getattr(self, name))
        if self.embedded is not None:
            await self.embedded.stop()
        log.info("gateway stopped")


def server_options(config: Config) -> list[tuple[str, int]]:
    """gRPC server options: message size, connection idle time, keepalive, stream cap,
    calls waiting to start."""
    s = config.server

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    return [
        ("grpc.max_receive_message_length", config.limits.max_request_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_idle_ms", ms(s.max_connection_idle_seconds)),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(s.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", ms(s.keepalive_timeout_seconds)),
        # Keep pinging a connection whose calls send nothing for long (an Await).
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC's defaults (1000, then cancelling some calls at random up to 3000)
        # cancel part of a burst of new calls before the gateway can start them.
        ("grpc.server.max_pending_requests", s.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", s.max_pending_calls),
    ]


def lifetimes(config: Config) -> Lifetimes:
    """The configured lifetimes of Redis records, in the store's units."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    return Lifetimes(
        decision_ms=ms(config.idempotency_ttl_seconds),
        session_idle_ms=ms(config.session_idle_timeout_seconds),
        resolved_hold_ms=ms(config.hold_retention_seconds),
    )


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest.split('?', 1)[0]}"

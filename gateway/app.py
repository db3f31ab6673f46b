"""Wiring: builds the gateway from a Config, starts and stops it in order.

Start: logging -> Redis (embedded or external) -> signing key -> policy -> stores ->
background tasks (audit writer, hold notifications, expiry sweeper, policy watch,
Redis supervisor) -> gRPC server. Stop runs the other way: the server drains
in-flight calls first, then the tasks stop, then Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentgw.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    approvals_pb2,
    approvals_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from gateway.api.auth import Authenticator
from gateway.api.services import AlertsService, ApprovalsService, AuditService, GatewayService
from gateway.api.status import RequireToken
from gateway.approvals import ApprovalDesk
from gateway.audit.keys import SigningKeys
from gateway.config import Config
from gateway.errors import ConfigError, StoreUnavailable
from gateway.logs import configure_logging
from gateway.pipeline import DecisionPipeline
from gateway.policy.reload import PolicyReloader
from gateway.store.audit_log import AuditLog
from gateway.store.connection import connect, unavailable_on_error
from gateway.store.embedded import EmbeddedRedis, find_server_binary
from gateway.store.keys import KeySpace
from gateway.store.notifications import ResolutionListener
from gateway.store.state import StateStore

log = logging.getLogger("agentgw.app")

SERVICE_NAMES = (
    gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,
    approvals_pb2.DESCRIPTOR.services_by_name["Approvals"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
    alerts_pb2.DESCRIPTOR.services_by_name["Alerts"].full_name,
)
SWEEP_MAX_WAIT = 1.0


class App:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.embedded: EmbeddedRedis | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> int:
        """Starts everything; returns the bound port."""
        config = self.config
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
        self.client = connect(url)
        with unavailable_on_error(f"connecting to Redis at {_safe_url(url)}"):
            await self.client.ping()
        signing_keys = SigningKeys(config.signing_key_path, config.key_dir_path)
        keys = KeySpace(config.redis.key_prefix)
        self.state = StateStore(self.client, keys)
        self.audit = AuditLog(self.client, keys, signing_keys, config.audit.origin, self.clock)
        self.listener = ResolutionListener(self.client, keys.hold_resolved_channel)
        self.desk = ApprovalDesk(self.state, self.audit, self.listener, self.clock)
        self.pipeline = DecisionPipeline(config, policy, self.state, self.audit, self.clock)
        self.policy = policy

        self._spawn(self.audit.run(), "audit writer")
        self._spawn(self.listener.run(), "hold notifications")
        self._spawn(self._sweep_expired(), "hold expiry sweeper")
        self._spawn(self._publish_checkpoints(), "checkpoint publisher")
        if config.policy_file is not None:
            self._spawn(policy.watch(), "policy watcher")
        if self.embedded is not None:
            self._spawn(self.embedded.supervise(), "redis supervisor")
        await asyncio.wait_for(self.listener.subscribed.wait(), 10)

        auth = Authenticator(config.principals)
        server = grpc.aio.server(
            interceptors=[RequireToken(auth)],
            options=[
                ("grpc.max_receive_message_length", config.limits.max_request_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        gateway_pb2_grpc.add_GatewayServicer_to_server(
            GatewayService(auth, self.pipeline, self.desk), server
        )
        approvals_pb2_grpc.add_ApprovalsServicer_to_server(
            ApprovalsService(auth, self.desk), server
        )
        audit_pb2_grpc.add_AuditServicer_to_server(
            AuditService(auth, self.audit, self.clock), server
        )
        alerts_pb2_grpc.add_AlertsServicer_to_server(AlertsService(), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            self.port = server.add_insecure_port(config.listen)
        except RuntimeError as e:
            raise ConfigError(f"listen: cannot bind {config.listen}: {e}") from e
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.server = server
        self.health = health_servicer
        log.info("gateway listening", extra={"listen": config.listen, "port": self.port})
        return self.port

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._report_task_end)
        self._tasks.append(task)

    async def _pause(self, seconds: float) -> None:
        """Waits `seconds`, or less once stop() has begun.

        The periodic tasks check `_stopping` instead of relying on cancellation only:
        a cancellation that lands inside a Redis call can be absorbed by the client
        (seen with redis-py's asyncio client), and the task would then sleep on.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _sweep_expired(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.desk.expire_due()
                upcoming = await self.state.next_expiry()
            except StoreUnavailable as e:
                log.warning("expiry sweep failed", extra={"category": "errors", "error": str(e)})
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
                    "checkpoint publishing failed", extra={"category": "errors", "error": str(e)}
                )
            await self._pause(interval)

    def _report_task_end(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None and self._stopping.is_set():
            return  # a periodic task that saw stop() begin
        log.error(
            "background task ended",
            extra={"category": "errors", "task": task.get_name(), "error": repr(error)},
        )

    def reload_policy(self) -> bool:
        return self.policy.reload()

    async def stop(self, grace: float = 10.0) -> None:
        if self.server is not None:
            self.desk.close()
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.server.stop(grace)
            self.server = None
        self._stopping.set()
        for task in reversed(self._tasks):
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if hasattr(self, "client"):
            await self.client.aclose()
        if self.embedded is not None:
            await self.embedded.stop()
        log.info("gateway stopped")


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest.split('?', 1)[0]}"


async def serve(config: Config, tokens: dict[str, str]) -> None:
    """Runs until SIGTERM/SIGINT; SIGHUP reloads the policy."""
    configure_logging(config.log_level)
    app = App(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    try:
        port = await app.start()
        loop.add_signal_handler(signal.SIGHUP, app.reload_policy)
        host = config.listen.rpartition(":")[0]
        print(f"agentgw listening on {host}:{port}", file=sys.stderr, flush=True)
        if tokens:
            print(first_run_banner(config, tokens), file=sys.stderr, flush=True)
        await stopping.wait()
    finally:
        await app.stop()


def first_run_banner(config: Config, tokens: dict[str, str]) -> str:
    lines = [
        "",
        "First start: generated config " + config.source + " with these tokens.",
        "They are shown only now (the config keeps only their SHA-256):",
    ]
    for name, token in tokens.items():
        lines.append(f"  {name:<11} {token}")
    lines += [
        "For example, in another terminal:",
        f"  export AGENTGW_TOKEN={tokens.get('demo-agent', '')}",
        "",
    ]
    return "\n".join(lines)

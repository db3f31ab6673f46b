"""Test harness: an in-process gateway on its own event loop, a movable clock,
one token per role, and `wait_for` for conditions. Imported by conftest and tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc

from agentgw.v1 import (
    approvals_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    gateway_pb2_grpc,
)
from clients.agent import AgentClient, bearer
from clients.wire import entry_from_proto
from gateway.app import App
from gateway.config import Config
from gateway.domain.audit.keys import KeySet, TrustedKey
from gateway.domain.principals import Principal, Role, token_digest
from gateway.logs import JsonFormatter

T = TypeVar("T")

TOKENS = {
    "agent-1": ("agent", "tok-agent-1"),
    "agent-2": ("agent", "tok-agent-2"),
    "approver-1": ("approver", "tok-approver-1"),
    "approver-2": ("approver", "tok-approver-2"),
    "auditor-1": ("auditor", "tok-auditor-1"),
    "admin-1": ("admin", "tok-admin-1"),
}


def token_for(name: str) -> str:
    return TOKENS[name][1]


def test_principals() -> tuple[Principal, ...]:
    return tuple(
        Principal(name=name, role=Role(role), token_sha256=token_digest(token))
        for name, (role, token) in TOKENS.items()
    )


test_principals.__test__ = False  # type: ignore[attr-defined]


class ManualClock:
    """Wall-clock time plus an offset that tests move forward instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def start_and_stop(app: App) -> None:
    """Starts `app` on a loop of its own and stops it: raises what starting raised."""

    async def start() -> None:
        try:
            await app.start()
        finally:
            await app.stop(grace=0)

    asyncio.run(start())


class RunningGateway:
    def __init__(self, config: Config, clock: ManualClock, tracer_provider: Any = None) -> None:
        self.config = config
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.app = App(config, clock, tracer_provider=tracer_provider)
        try:
            port = self.run(self.app.start())
        except BaseException:
            self.run(self.app.stop(grace=0))
            self._stop_loop()
            raise
        self.target = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.target)
        self.gateway = gateway_pb2_grpc.GatewayStub(self.channel)
        self.approvals = approvals_pb2_grpc.ApprovalsStub(self.channel)
        self.audit = audit_pb2_grpc.AuditStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def agent(self, name: str = "agent-1") -> AgentClient:
        return AgentClient(self.target, token_for(name), agent_id=name, channel=self.channel)

    @staticmethod
    def md(name: str) -> tuple[tuple[str, str], ...]:
        return bearer(token_for(name))

    def audit_head(self) -> int:
        return self.run(self.app.audit.head()).seq

    def key_set(self, auditor: str = "auditor-1") -> KeySet:
        """The log's key set as an auditor saves it (`agentgw audit keys`)."""
        keys = self.audit.GetPublicKeys(audit_pb2.GetPublicKeysRequest(), metadata=self.md(auditor))
        return KeySet(
            origin=keys.origin,
            keys=tuple(
                TrustedKey(
                    key_id=k.key_id,
                    public_key_raw=base64.b64decode(k.public_key),
                    first_seq=k.first_seq,
                    last_seq=k.last_seq or None,
                )
                for k in keys.keys
            ),
        )

    def export_lines(self, auditor: str = "auditor-1") -> list[str]:
        """The whole log as export lines (`agentgw audit export`), without newlines."""
        stream = self.audit.ReadEntries(audit_pb2.ReadEntriesRequest(), metadata=self.md(auditor))
        return [entry_from_proto(e).to_json_line() for e in stream]

    def event_types(self) -> list[str]:
        """The event type of every entry of the log, in order."""
        return [json.loads(line)["event_type"] for line in self.export_lines()]

    def stop(self) -> None:
        """Stops the gateway (a second call does nothing)."""
        if self.loop.is_closed():
            return
        self.channel.close()
        try:
            self.run(self.app.stop(grace=2))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class GatewayLogs(logging.Handler):
    """Every record of the gateway's `agentgw` loggers while attached, whichever
    thread logs it; `lines` are the records as the gateway writes them out."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def lines(self) -> list[str]:
        return [self.format(record) for record in self.records]

    def with_ref(self, ref: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "ref", None) == ref]

    @classmethod
    @contextlib.contextmanager
    def capture(cls) -> Iterator[GatewayLogs]:
        handler = cls()
        logger = logging.getLogger("agentgw")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            yield handler
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


class StreamReader:
    """A server stream read in a thread of its own: what came, and how it ended."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.messages: list[Any] = []
        self.code: grpc.StatusCode | None = None  # once it ended
        self.details = ""
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.append(message)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code, self.details = e.code(), e.details() or ""
        finally:
            self.ended.set()

    def close(self) -> None:
        self.call.cancel()
        self.ended.wait(10)


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Polls a cheap condition until it is truthy; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)

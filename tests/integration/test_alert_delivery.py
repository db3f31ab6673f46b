"""Alert delivery through the durable queue: a real Redis, real HTTP receivers on
loopback, and the worker's own urllib POST.

Backoff and lease times are moved with a ManualClock and the worker is woken; every
wait is on a condition (a request received, a Redis field) with a timeout. The
receivers' URLs carry a secret path token and PagerDuty a routing key; no log record
and no dead letter may show either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any, TypeVar

import pytest
import redis

from gateway.domain.alerts.channels import Channel, ChannelType, dedup_key
from gateway.domain.alerts.model import Alert, Severity, new_alert_id
from gateway.services.alert_delivery import DeliveryWorker, lease_seconds
from gateway.store.alert_deliveries import DeliveryQueue, delivery_id
from gateway.store.connection import close, connect
from gateway.store.keys import KeySpace
from tests.harness import GatewayLogs, ManualClock

T = TypeVar("T")
PATH_TOKEN = "T0KENsekr1tPathPart9f8e7d"
ROUTING_KEY = "R0UT1NGsekr1tKey0123456789ab"
HOLD = "hold"  # a response that waits until the receiver is released, then 200


class Receiver:
    """An HTTP server on a free loopback port that answers each POST with the next of
    `responses` (then `default`) and records the path and the JSON body."""

    def __init__(self, responses: list[int | str] | None = None, default: int = 200) -> None:
        self.responses = list(responses or [])
        self.default = default
        self.requests: list[tuple[str, Any]] = []
        self.condition = threading.Condition()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, name: str = "hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}/{PATH_TOKEN}"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        body = json.loads(handler.rfile.read(length))
        with self.condition:
            self.requests.append((handler.path, body))
            response = self.responses.pop(0) if self.responses else self.default
            self.condition.notify_all()
        if response == HOLD:
            self.released.wait(60)
            response = 200
        with contextlib.suppress(OSError):  # the sender may have timed out and gone
            handler.send_response(int(response))
            handler.send_header("Content-Length", "0")
            handler.end_headers()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[tuple[str, Any]]:
        with self.condition:
            if not self.condition.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"the receiver got {len(self.requests)} of {count} requests")
            return list(self.requests)

    async def requests_received(self, count: int) -> list[tuple[str, Any]]:
        return await asyncio.to_thread(self.wait_for_requests, count)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Any:
    server = Receiver()
    yield server
    server.close()


async def until(check: Callable[[], Awaitable[T]], what: str, timeout: float = 10.0) -> T:
    """Polls `check` until it is truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Rig:
    """Queues and workers over one key prefix; closes what it opened."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self.redis_url = redis_url
        self.keys = KeySpace(key_prefix)
        self.clock = ManualClock()
        self.clients: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    def queue(self) -> DeliveryQueue:
        client = connect(self.redis_url)
        self.clients.append(client)
        return DeliveryQueue(client, self.keys, self.clock)

    def worker(self, channels: Mapping[str, Channel], **options: Any) -> DeliveryWorker:
        options.setdefault("random", lambda: 1.0)
        return DeliveryWorker(self.queue(), channels, self.clock, **options)

    def start(self, worker: DeliveryWorker) -> asyncio.Task[None]:
        task = asyncio.create_task(worker.run())
        self.tasks.append(task)
        worker.wake()
        return task

    async def stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        for task in self.tasks:
            await self.stop(task)
        for client in self.clients:
            await close(client)


@contextlib.asynccontextmanager
async def rig_for(redis_url: str, key_prefix: str) -> AsyncIterator[Rig]:
    rig = Rig(redis_url, key_prefix)
    try:
        yield rig
    finally:
        await rig.close()


def make_alert(n: int = 1, **changes: Any) -> Alert:
    values: dict[str, Any] = {
        "alert_id": new_alert_id(),
        "rule": "payments_denied",
        "severity": Severity.CRITICAL,
        "subject": f"agent-{n}",
        "message": f"agent-{n} was denied payments.send",
        "fired_at": 1_800_000_000.0,
        "event_type": "decision",
        "data": MappingProxyType({"verdict": "deny"}),
        "trace_id": "trace-9",
    }
    values.update(changes)
    return Alert(**values)


def webhook(url: str, **options: Any) -> dict[str, Channel]:
    return {"hook": Channel("hook", ChannelType.WEBHOOK, url=url, **options)}


def assert_no_secrets(logs: GatewayLogs, *texts: str) -> None:
    for text in [*logs.lines, *texts]:
        assert PATH_TOKEN not in text
        assert ROUTING_KEY not in text
        assert "127.0.0.1:" not in text  # no URL at all


def field(raw: redis.Redis, rig: Rig, identifier: str, name: str) -> str | None:
    value = raw.hget(rig.keys.alert_delivery(identifier), name)
    return None if value is None else str(value)


def field_is(
    raw: redis.Redis, rig: Rig, identifier: str, name: str, expected: str
) -> Callable[[], Awaitable[bool]]:
    """A check for `until`: the delivery's hash field `name` holds `expected`."""

    async def check() -> bool:
        return field(raw, rig, identifier, name) == expected

    return check


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


def test_a_delivery_succeeds_on_the_first_try(
    redis_url: str, key_prefix: str, raw: redis.Redis, receiver: Receiver, gateway_logs: GatewayLogs
) -> None:
    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            alert = make_alert()
            [identifier] = await queue.enqueue(alert, ["hook"])
            assert identifier == delivery_id(alert.alert_id, "hook")
            assert 0 < raw.pttl(rig.keys.alert_delivery(identifier)) <= 7 * 86400 * 1000
            rig.start(rig.worker(webhook(receiver.url())))
            [(path, body)] = await receiver.requests_received(1)
            assert path == f"/hook/{PATH_TOKEN}"
            assert body["alert_id"] == alert.alert_id and body["severity"] == "critical"
            await until(lambda: _is_zero(queue.pending_count()), "the queue to empty")
            assert not raw.exists(rig.keys.alert_delivery(identifier))
            assert await queue.dead_letters() == []

    asyncio.run(scenario())
    assert_no_secrets(gateway_logs)


def test_a_500_is_retried_after_the_backoff_then_delivered(
    redis_url: str, key_prefix: str, raw: redis.Redis, gateway_logs: GatewayLogs
) -> None:
    receiver = Receiver([500, 503])

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            [identifier] = await queue.enqueue(make_alert(), ["hook"])
            worker = rig.worker(webhook(receiver.url(), backoff_seconds=2.0))
            rig.start(worker)
            await receiver.requests_received(1)
            await until(field_is(raw, rig, identifier, "attempts", "1"), "attempt 1 failed")
            assert field(raw, rig, identifier, "last_error") == "HTTP 500"
            due = raw.zscore(rig.keys.alert_deliveries, identifier)
            assert due is not None and due > rig.clock() * 1000  # not due before the backoff
            rig.clock.advance(2.0)
            worker.wake()
            await receiver.requests_received(2)
            await until(field_is(raw, rig, identifier, "attempts", "2"), "attempt 2 failed")
            rig.clock.advance(4.0)  # the second backoff doubles
            worker.wake()
            await receiver.requests_received(3)
            await until(lambda: _is_zero(queue.pending_count()), "the queue to empty")
            assert await queue.dead_letters() == []

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()
    assert len(receiver.requests) == 3
    assert_no_secrets(gateway_logs)


def test_the_last_failure_is_dead_lettered_with_its_error(
    redis_url: str, key_prefix: str, raw: redis.Redis, gateway_logs: GatewayLogs
) -> None:
    receiver = Receiver(default=503)

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            alert = make_alert()
            [identifier] = await queue.enqueue(alert, ["hook"])
            worker = rig.worker(webhook(receiver.url(), max_attempts=3, max_backoff_seconds=5))
            rig.start(worker)
            for attempt in (1, 2):
                await receiver.requests_received(attempt)
                await until(
                    field_is(raw, rig, identifier, "attempts", str(attempt)),
                    f"attempt {attempt} to fail",
                )
                rig.clock.advance(5.0)
                worker.wake()
            await receiver.requests_received(3)
            [dead] = await until(queue.dead_letters, "a dead letter")
            assert (dead.delivery_id, dead.channel, dead.attempts) == (identifier, "hook", 3)
            assert dead.error == "HTTP 503"
            assert json.loads(dead.alert_json)["alert_id"] == alert.alert_id
            assert await queue.pending_count() == 0
            assert not raw.exists(rig.keys.alert_delivery(identifier))

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()
    assert len(receiver.requests) == 3
    assert_no_secrets(gateway_logs)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_a_client_error_is_dead_lettered_at_once(
    redis_url: str, key_prefix: str, status: int, gateway_logs: GatewayLogs
) -> None:
    receiver = Receiver(default=status)

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            await queue.enqueue(make_alert(), ["hook"])
            rig.start(rig.worker(webhook(receiver.url())))
            [dead] = await until(queue.dead_letters, "a dead letter")
            assert (dead.attempts, dead.error) == (1, f"HTTP {status}")

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()
    assert len(receiver.requests) == 1
    assert_no_secrets(gateway_logs)


@pytest.mark.parametrize("status", [408, 429])
def test_timeout_and_rate_limit_statuses_are_retried(
    redis_url: str, key_prefix: str, raw: redis.Redis, status: int
) -> None:
    receiver = Receiver([status])

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            [identifier] = await queue.enqueue(make_alert(), ["hook"])
            worker = rig.worker(webhook(receiver.url()))
            rig.start(worker)
            await until(
                field_is(raw, rig, identifier, "last_error", f"HTTP {status}"),
                "the failure to be recorded",
            )
            rig.clock.advance(1.0)
            worker.wake()
            await until(lambda: _is_zero(queue.pending_count()), "the queue to empty")
            assert await queue.dead_letters() == []

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()
    assert len(receiver.requests) == 2


def test_a_slow_receiver_times_out_and_is_retried(
    redis_url: str, key_prefix: str, raw: redis.Redis, gateway_logs: GatewayLogs
) -> None:
    receiver = Receiver([HOLD])

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            [identifier] = await queue.enqueue(make_alert(), ["hook"])
            worker = rig.worker(webhook(receiver.url(), timeout_seconds=0.3))
            rig.start(worker)
            await until(field_is(raw, rig, identifier, "attempts", "1"), "the timeout")
            assert field(raw, rig, identifier, "last_error") == "TimeoutError"
            receiver.released.set()
            rig.clock.advance(1.0)
            worker.wake()
            await until(lambda: _is_zero(queue.pending_count()), "the queue to empty")

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()
    assert len(receiver.requests) == 2
    assert_no_secrets(gateway_logs)


def test_a_refused_connection_is_retried_and_names_no_address(
    redis_url: str, key_prefix: str, raw: redis.Redis, gateway_logs: GatewayLogs
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            [identifier] = await queue.enqueue(make_alert(), ["hook"])
            url = f"http://127.0.0.1:{port}/hook/{PATH_TOKEN}"
            rig.start(rig.worker(webhook(url)))
            await until(field_is(raw, rig, identifier, "attempts", "1"), "the failure")
            error = field(raw, rig, identifier, "last_error")
            assert error == "URLError(ConnectionRefusedError)"

    asyncio.run(scenario())
    assert_no_secrets(gateway_logs)


def test_two_workers_deliver_each_delivery_once(
    redis_url: str, key_prefix: str, receiver: Receiver
) -> None:
    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            alerts = [make_alert(n) for n in range(30)]
            for alert in alerts:
                await queue.enqueue(alert, ["hook"])
            channels = webhook(receiver.url())
            rig.start(rig.worker(channels, concurrency=3))
            rig.start(rig.worker(channels, concurrency=3))
            await until(lambda: _is_zero(queue.pending_count()), "the queue to empty")
            received = [body["alert_id"] for _, body in receiver.wait_for_requests(30)]
            assert sorted(received) == sorted(a.alert_id for a in alerts)

    asyncio.run(scenario())


def test_a_delivery_cut_off_by_a_stop_is_sent_after_a_restart(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    receiver = Receiver([HOLD])

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            [identifier] = await queue.enqueue(make_alert(), ["hook"])
            channels = webhook(receiver.url(), timeout_seconds=30)
            first = rig.start(rig.worker(channels))
            await receiver.requests_received(1)  # the receiver holds it: mid-send
            await rig.stop(first)
            assert field(raw, rig, identifier, "attempts") == "0"  # not settled

            restarted = rig.worker(channels)  # a fresh queue and worker: "after restart"
            rig.start(restarted)
            lease_end = raw.zscore(rig.keys.alert_deliveries, identifier)
            assert lease_end is not None and lease_end > rig.clock() * 1000
            rig.clock.advance(lease_seconds(channels) + 1)
            restarted.wake()
            await receiver.requests_received(2)
            await until(lambda: _is_zero(queue.pending_count()), "the queue to empty")
            receiver.released.set()

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()
    first_body, second_body = (body for _, body in receiver.requests)
    assert first_body["alert_id"] == second_body["alert_id"]  # at least once: dedupe on it


def test_concurrent_claims_never_take_the_same_delivery(redis_url: str, key_prefix: str) -> None:
    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            first, second = rig.queue(), rig.queue()
            for n in range(20):
                await first.enqueue(make_alert(n), ["hook"])
            one, other = await asyncio.gather(first.claim_due(20, 60), second.claim_due(20, 60))
            taken = [d.delivery_id for d in [*one, *other]]
            assert len(taken) == len(set(taken)) == 20
            assert await first.claim_due(20, 60) == []  # all leased

    asyncio.run(scenario())


def test_settling_needs_the_lease_still_held(redis_url: str, key_prefix: str) -> None:
    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            await queue.enqueue(make_alert(), ["hook"])
            [stale] = await queue.claim_due(1, 10)
            rig.clock.advance(11)  # the lease ran out; another worker takes it over
            [current] = await queue.claim_due(1, 10)
            assert not await queue.retry(stale, rig.clock() + 5, "HTTP 500")
            assert not await queue.dead_letter(stale, "HTTP 500")
            assert await queue.dead_letters() == []
            assert await queue.retry(current, rig.clock() + 5, "HTTP 500")
            assert await queue.pending_count() == 1

    asyncio.run(scenario())


def test_a_channel_no_longer_configured_is_dead_lettered(
    redis_url: str, key_prefix: str, receiver: Receiver
) -> None:
    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            await queue.enqueue(make_alert(), ["gone"])
            rig.start(rig.worker(webhook(receiver.url())))
            [dead] = await until(queue.dead_letters, "a dead letter")
            assert dead.channel == "gone"
            assert dead.error == "channel 'gone' is not configured"
            assert await queue.pending_count() == 0

    asyncio.run(scenario())
    assert receiver.requests == []


def test_a_delivery_whose_record_expired_leaves_the_queue(
    redis_url: str, key_prefix: str, raw: redis.Redis, receiver: Receiver
) -> None:
    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            [identifier] = await queue.enqueue(make_alert(), ["hook"])
            raw.delete(rig.keys.alert_delivery(identifier))  # as its TTL would
            rig.start(rig.worker(webhook(receiver.url())))
            await until(lambda: _is_zero(queue.pending_count()), "the queue to empty")

    asyncio.run(scenario())
    assert receiver.requests == []


def test_each_receiver_gets_its_own_payload(
    redis_url: str, key_prefix: str, receiver: Receiver, gateway_logs: GatewayLogs
) -> None:
    channels = {
        "hook": Channel("hook", ChannelType.WEBHOOK, url=receiver.url("hook")),
        "chat": Channel("chat", ChannelType.SLACK, url=receiver.url("chat")),
        "pager": Channel(
            "pager", ChannelType.PAGERDUTY, url=receiver.url("pager"), routing_key=ROUTING_KEY
        ),
    }
    alert = make_alert(severity=Severity.MEDIUM)

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            queue = rig.queue()
            await queue.enqueue(alert, list(channels))
            rig.start(rig.worker(channels))
            await receiver.requests_received(3)
            await until(lambda: _is_zero(queue.pending_count()), "the queue to empty")

    asyncio.run(scenario())
    bodies = {path.split("/")[1]: body for path, body in receiver.requests}
    hook, chat, pager = bodies["hook"], bodies["chat"], bodies["pager"]
    assert hook["alert_id"] == alert.alert_id and hook["rule"] == "payments_denied"
    assert hook["fired_at"] == "2027-01-15T08:00:00.000000Z" and hook["time"] == alert.fired_at
    assert hook["data"] == {"verdict": "deny"} and hook["trace_id"] == "trace-9"
    assert alert.rule in chat["text"]
    assert [block["type"] for block in chat["blocks"]] == ["header", "section", "context"]
    assert pager["routing_key"] == ROUTING_KEY and pager["event_action"] == "trigger"
    assert pager["dedup_key"] == dedup_key(alert)
    assert pager["payload"]["severity"] == "warning"
    assert pager["payload"]["source"] == alert.subject
    assert pager["payload"]["summary"].startswith("[medium] payments_denied")
    assert_no_secrets(gateway_logs)


def test_the_loop_survives_redis_being_down(key_prefix: str, gateway_logs: GatewayLogs) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        async with rig_for(f"redis://127.0.0.1:{port}", key_prefix) as rig:
            task = rig.start(rig.worker(webhook(f"http://127.0.0.1:9/{PATH_TOKEN}")))

            async def logged() -> bool:
                return any("could not be claimed" in r.getMessage() for r in gateway_logs.records)

            await until(logged, "the failure to be logged")
            assert not task.done()

    asyncio.run(scenario())
    failures = [r for r in gateway_logs.records if "could not be claimed" in r.getMessage()]
    assert all(getattr(r, "category", "") == "error" for r in failures)


def test_deliver_now_retries_from_memory_without_redis(
    redis_url: str, key_prefix: str, receiver: Receiver, gateway_logs: GatewayLogs
) -> None:
    receiver.responses = [500, 200]
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    async def scenario() -> None:
        async with rig_for(redis_url, key_prefix) as rig:
            worker = rig.worker(webhook(receiver.url(), backoff_seconds=3.0), sleep=no_wait)
            queue = worker.queue
            await worker.deliver_now(make_alert(), ["log", "hook", "unknown"])
            assert await queue.pending_count() == 0  # nothing durable was written

    asyncio.run(scenario())
    assert len(receiver.requests) == 2 and waits == [3.0]
    assert_no_secrets(gateway_logs)

"""Sending alerts to their channels: the worker that drains the durable delivery queue.

Firing only records a delivery (store/alert_deliveries.py) and calls `wake()`, so
the decision path never waits on a receiver. `DeliveryWorker.run` leases what is
due, posts each channel's payload (gateway/domain/alerts/channels.py) with a
bounded number in flight, and settles it: a 2xx completes it; 408, 429, a 5xx, a
network error or a timeout retries it after `retry_delay` until the channel's
`max_attempts`; any other status dead-letters it at once, as does a channel that is
no longer configured. Delivery is at-least-once: a worker cancelled (or killed)
mid-send leaves its delivery leased, and it is sent again when the lease ends, by
this gateway after a restart or by another one; receivers dedupe on `alert_id`
(PagerDuty on the dedup_key, which it does itself). Log lines name the delivery,
the channel by name, the attempt and the status or the exception's class, never a
URL or a routing key: a Slack or PagerDuty URL is a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random as random_numbers
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from gateway.domain.alerts.channels import Channel, ChannelType, channel_payload, retry_delay
from gateway.domain.alerts.model import Alert, alert_from_json
from gateway.errors import StoreUnavailable
from gateway.store.alert_deliveries import Delivery, DeliveryQueue

log = logging.getLogger("agentgw.alerts")

Post = Callable[[str, Mapping[str, Any], float], Awaitable[int]]
Sleep = Callable[[float], Awaitable[None]]

POLL_SECONDS = 1.0  # the longest wait between looks at the queue
RESPONSE_LIMIT = 64 * 1024  # bytes of a response body read (and thrown away)
IN_MEMORY_LIMIT = 64  # deliveries `deliver_now` holds in memory at once
TRANSIENT_STATUSES = frozenset({408, 429})


class Result(Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # worth another attempt
    PERMANENT = "permanent"  # the receiver refused it; another attempt would be too


@dataclass(frozen=True)
class Attempt:
    """What one POST came to; `detail` is safe to log and store ("HTTP 503",
    "TimeoutError"): a status or an exception class, never its text."""

    result: Result
    detail: str
    status: int = 0


def classify(status: int) -> Attempt:
    if 200 <= status < 300:
        return Attempt(Result.DELIVERED, f"HTTP {status}", status)
    if status in TRANSIENT_STATUSES or status >= 500:
        return Attempt(Result.TRANSIENT, f"HTTP {status}", status)
    return Attempt(Result.PERMANENT, f"HTTP {status}", status)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as its status: following it would turn the POST into a
    GET (urllib's rule for 301-303) or send the alert somewhere not configured."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies from the environment: the config is the one place settings come from.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


async def post_json(url: str, payload: Mapping[str, Any], timeout: float) -> int:
    """POSTs `payload` as JSON; the response's status (any status, 3xx to 5xx
    included). Raises on a network error or a timeout. Runs in a thread, as urllib
    blocks; the thread ends at the latest when the socket's timeout fires."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return await asyncio.to_thread(_post, url, body, timeout)


def _post(url: str, body: bytes, timeout: float) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "agentgw"},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(RESPONSE_LIMIT)
            return int(response.status)
    except urllib.error.HTTPError as e:
        with contextlib.closing(e):
            return int(e.code)


def failure_name(error: BaseException) -> str:
    """An exception as a log and the dead letters may show it: its class (and, for
    urllib's wrapper, its cause's class). Never its text, which can hold the URL."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        return f"URLError({type(error.reason).__name__})"
    return type(error).__name__


def lease_seconds(channels: Mapping[str, Channel]) -> float:
    """A lease outlasts the slowest channel's timeout, so only a worker that stopped
    loses one."""
    longest = max((c.timeout_seconds for c in channels.values()), default=5.0)
    return longest * 2 + 5


class DeliveryWorker:
    def __init__(
        self,
        queue: DeliveryQueue,
        channels: Mapping[str, Channel],
        clock: Callable[[], float],
        post: Post | None = None,
        random: Callable[[], float] = random_numbers.random,
        concurrency: int = 4,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.queue = queue
        self.channels = channels
        self.clock = clock
        self.post = post or post_json
        self.random = random
        self.concurrency = max(1, concurrency)
        self.sleep = sleep  # between the in-memory attempts of `deliver_now` only
        self.lease_seconds = lease_seconds(channels)
        self._wake = asyncio.Event()
        self._in_memory = 0
        # Called with the channel's name after each failed attempt (the app counts them).
        self.on_failure: Callable[[str], None] = lambda channel: None

    def wake(self) -> None:
        """Look at the queue now (called right after a firing queued deliveries)."""
        self._wake.set()

    async def run(self) -> None:
        """Sends due deliveries until cancelled. Cancelling leaves what is in flight
        leased (sent again after the lease); a Redis failure is logged and the queue
        looked at again later."""
        sending: set[asyncio.Task[None]] = set()
        try:
            while True:
                _raise_if_cancelling()  # a cancellation some library turned into an error
                self._wake.clear()
                free = self.concurrency - len(sending)
                claimed: list[Delivery] = []
                if free > 0:
                    claimed = await self._claim(free)
                    for delivery in claimed:
                        task = asyncio.create_task(self.send(delivery))
                        sending.add(task)
                        task.add_done_callback(sending.discard)
                        task.add_done_callback(_report_crash)
                if free > 0 and len(claimed) == free:
                    continue  # a full batch: more may be due
                await self._wait(sending, await self._idle_seconds(free > 0))
        finally:
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)

    async def _claim(self, limit: int) -> list[Delivery]:
        try:
            return await self.queue.claim_due(limit, self.lease_seconds)
        except StoreUnavailable as e:
            _raise_if_cancelling()
            log.error(
                "alert deliveries could not be claimed; trying again",
                extra={"category": "error", "error": str(e)},
            )
            return []

    async def _idle_seconds(self, slots_free: bool) -> float:
        """How long to wait: until the next delivery is due, at most POLL_SECONDS
        (with every slot busy, until one is free: `_wait` watches the sends)."""
        if not slots_free:
            return POLL_SECONDS
        try:
            due = await self.queue.next_due()
        except StoreUnavailable:
            _raise_if_cancelling()
            return POLL_SECONDS  # _claim logs the failure on the next round
        if due is None:
            return POLL_SECONDS
        return min(max(due - self.clock(), 0.0), POLL_SECONDS)

    async def _wait(self, sending: set[asyncio.Task[None]], seconds: float) -> None:
        """Until `wake()`, a send finishes (a slot is free), or `seconds` pass."""
        woken = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({woken, *sending}, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            woken.cancel()

    async def send(self, delivery: Delivery) -> None:
        """One attempt at a claimed delivery, then its settlement. A Redis failure
        while settling is logged; the lease then runs out and it is sent again."""
        attempt = delivery.attempts + 1
        context = {"delivery_id": delivery.delivery_id, "channel": delivery.channel}
        try:
            channel = self.channels.get(delivery.channel)
            if channel is None or channel.type is ChannelType.LOG:
                why = (
                    f"channel '{delivery.channel}' is not configured"
                    if channel is None
                    else f"channel '{delivery.channel}' is a log channel: nothing to send"
                )
                await self._dead(delivery, why, context)
                return
            try:
                alert = alert_from_json(json.loads(delivery.alert_json))
            except (ValueError, KeyError, TypeError, AttributeError):
                await self._dead(delivery, "the stored alert could not be read", context)
                return
            outcome = await self.attempt(channel, alert)
            extra = {**context, "attempt": attempt, "result": outcome.detail}
            if outcome.result is Result.DELIVERED:
                await self.queue.complete(delivery)
                log.info("alert delivered", extra={"category": "performance", **extra})
            elif outcome.result is Result.PERMANENT or attempt >= channel.max_attempts:
                await self.queue.dead_letter(replace(delivery, attempts=attempt), outcome.detail)
                log.error(
                    "alert delivery failed for good; dead-lettered",
                    extra={"category": "error", **extra},
                )
            else:
                delay = retry_delay(attempt, channel, self.random)
                await self.queue.retry(delivery, self.clock() + delay, outcome.detail)
                log.warning(
                    "alert delivery failed; will retry",
                    extra={"category": "error", "retry_in_seconds": round(delay, 3), **extra},
                )
        except StoreUnavailable as e:
            _raise_if_cancelling()
            log.error(
                "alert delivery could not be settled; it is retried after its lease",
                extra={"category": "error", **context, "attempt": attempt, "error": str(e)},
            )

    async def _dead(self, delivery: Delivery, why: str, context: dict[str, Any]) -> None:
        await self.queue.dead_letter(delivery, why)
        log.error(
            "alert delivery dead-lettered", extra={"category": "error", "result": why, **context}
        )

    async def attempt(self, channel: Channel, alert: Alert) -> Attempt:
        """One POST of `alert`'s payload to `channel`, bounded by its timeout."""
        payload = channel_payload(channel, alert)
        try:
            status = await asyncio.wait_for(
                self.post(channel.url, payload, channel.timeout_seconds),
                channel.timeout_seconds,
            )
        except Exception as e:
            outcome = Attempt(Result.TRANSIENT, failure_name(e))
        else:
            outcome = classify(status)
        if outcome.result is not Result.DELIVERED:
            self.on_failure(channel.name)
        return outcome

    async def deliver_now(self, alert: Alert, channel_names: Sequence[str]) -> None:
        """Sends `alert` to its channels from memory, with the same payloads and
        retries, for when Redis itself is down and the alert cannot be queued. Not
        durable: a restart loses it. At most IN_MEMORY_LIMIT deliveries are held at
        once; beyond that one is dropped. Every outcome is logged; never raises for a
        receiver's failure."""
        chosen: list[Channel] = []
        for name in channel_names:
            channel = self.channels.get(name)
            if channel is None or channel.type is ChannelType.LOG:
                if channel is None:
                    log.error(
                        "in-memory alert delivery skipped: channel not configured",
                        extra={"category": "error", "alert_id": alert.alert_id, "channel": name},
                    )
                continue
            if self._in_memory >= IN_MEMORY_LIMIT:
                log.error(
                    "in-memory alert delivery dropped: too many in flight",
                    extra={"category": "error", "alert_id": alert.alert_id, "channel": name},
                )
                continue
            self._in_memory += 1
            chosen.append(channel)
        try:
            await asyncio.gather(*(self._deliver_from_memory(c, alert) for c in chosen))
        finally:
            self._in_memory -= len(chosen)

    async def _deliver_from_memory(self, channel: Channel, alert: Alert) -> bool:
        extra: dict[str, Any] = {"alert_id": alert.alert_id, "channel": channel.name}
        for attempt in range(1, channel.max_attempts + 1):
            outcome = await self.attempt(channel, alert)
            extra |= {"attempt": attempt, "result": outcome.detail, "durable": False}
            if outcome.result is Result.DELIVERED:
                log.info("alert delivered", extra={"category": "performance", **extra})
                return True
            if outcome.result is Result.PERMANENT or attempt == channel.max_attempts:
                break
            log.warning("alert delivery failed; will retry", extra={"category": "error", **extra})
            await self.sleep(retry_delay(attempt, channel, self.random))
        log.error("in-memory alert delivery failed for good", extra={"category": "error", **extra})
        return False


def _raise_if_cancelling() -> None:
    """Stops a task that is being cancelled. redis-py can turn a cancellation that
    lands mid-command into a connection error (StoreUnavailable here), which would
    otherwise be logged and the loop carried on: a worker that never stops."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _report_crash(task: asyncio.Task[None]) -> None:
    """A send that raised what `send` does not expect: logged (its class only); the
    delivery stays leased and is sent again when the lease ends."""
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "alert delivery crashed; it is retried after its lease",
            extra={"category": "error", "error": type(task.exception()).__name__},
        )

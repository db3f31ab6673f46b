"""The durable queue of alert deliveries: what is still to be sent, to which channel.

A delivery is one alert for one channel, `<alert_id>:<channel>`. Firing writes its
hash (the fields of `delivery_fields`) and queues it due at once, in the same script
call that records the alert; from then on it survives a restart of every gateway.
Workers lease what is due (`claim_due`): the lease is the member's new score, so a
delivery whose worker died is due again when the lease ends and another worker sends
it. That makes delivery at-least-once: a receiver dedupes on `alert_id` (PagerDuty on
the dedup_key). Settling a delivery (`retry`, `dead_letter`) applies only while the
caller's lease is still the one queued.

Keys (all in the `{audit}` slot, so each script touches one slot on Redis Cluster;
store/keys.py names them) and what bounds each:

- `alert_deliveries`, sorted set id -> due ms (or lease end): a member leaves when its
  delivery completes or is dead-lettered, or when a claim finds its hash expired; so
  it holds at most the deliveries created within the retention.
- `alert_delivery(id)`, hash: `channel`, `alert` (JSON), `attempts`, `created_ms`,
  `last_error`; TTL `retention_seconds` (7 days), renewed by each retry, whose count
  `max_attempts` bounds.
- `dead_deliveries`, stream: one entry per delivery that failed for good, trimmed to
  about DEAD_LETTER_LIMIT entries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.domain.alerts.model import Alert, alert_to_json
from gateway.errors import preview
from gateway.store.connection import load_script, unavailable_on_error
from gateway.store.keys import KeySpace

# The fields of a delivery hash, as the firing script writes them.
CHANNEL = "channel"
ALERT = "alert"
ATTEMPTS = "attempts"
CREATED_MS = "created_ms"
LAST_ERROR = "last_error"
FIELDS = (CHANNEL, ALERT, ATTEMPTS, CREATED_MS, LAST_ERROR)

DELIVERY_RETENTION_SECONDS = 7 * 24 * 3600
DEAD_LETTER_LIMIT = 10_000
ERROR_LIMIT = 200  # characters of an error kept in Redis


def delivery_id(alert_id: str, channel: str) -> str:
    return f"{alert_id}:{channel}"


def delivery_fields(alert_json: str, channel: str, now_ms: int) -> list[str]:
    """A new delivery's hash, as a flat field/value list (for HSET in a script)."""
    return [
        CHANNEL,
        channel,
        ALERT,
        alert_json,
        ATTEMPTS,
        "0",
        CREATED_MS,
        str(now_ms),
        LAST_ERROR,
        "",
    ]


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery. `attempts` counts the attempts that failed so far;
    `lease_ms` is the queue score the claim set, which settling it checks."""

    delivery_id: str
    channel: str
    alert_json: str
    attempts: int
    created_ms: int
    last_error: str
    lease_ms: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that failed for good, as the dead-letter stream keeps it."""

    entry_id: str
    delivery_id: str
    channel: str
    alert_json: str
    attempts: int
    error: str
    time_ms: int


class DeliveryQueue:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySpace,
        clock: Callable[[], float],
        retention_seconds: float = DELIVERY_RETENTION_SECONDS,
    ) -> None:
        self.client = client
        self.keys = keys
        self.clock = clock
        self.retention_ms = int(retention_seconds * 1000)
        self._claim = load_script(client, "claim_deliveries")
        self._settle = load_script(client, "settle_delivery")
        self._queue = load_script(client, "queue_deliveries")

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def enqueue(self, alert: Alert, channel_names: Sequence[str]) -> list[str]:
        """Queues `alert` for each channel, due now, in one script call: what the
        firing script does, for tests and for a gateway that fires locally. A
        delivery already queued is left as it is. Returns the delivery ids."""
        alert_json = json.dumps(alert_to_json(alert), separators=(",", ":"))
        now_ms = self._now_ms()
        ids = [delivery_id(alert.alert_id, channel) for channel in channel_names]
        if not ids:
            return []
        args: list[str | int] = [now_ms, self.retention_ms, len(FIELDS) * 2]
        for identifier, channel in zip(ids, channel_names, strict=True):
            args += [identifier, *delivery_fields(alert_json, channel, now_ms)]
        with unavailable_on_error("queueing alert deliveries"):
            await self._queue(
                keys=[self.keys.alert_deliveries, *map(self.keys.alert_delivery, ids)],
                args=args,
            )
        return ids

    async def claim_due(self, limit: int, lease_seconds: float) -> list[Delivery]:
        """Up to `limit` due deliveries, each leased for `lease_seconds`: due again
        then unless completed, retried or dead-lettered first."""
        now_ms = self._now_ms()
        lease_ms = now_ms + int(lease_seconds * 1000)
        with unavailable_on_error("claiming alert deliveries"):
            # Read, then lease in a script that checks each candidate again: the
            # script names every key it touches, as Redis Cluster wants.
            candidates = await self.client.zrangebyscore(
                self.keys.alert_deliveries, "-inf", now_ms, start=0, num=limit
            )
            if not candidates:
                return []
            ids = [str(c) for c in candidates]
            reply = await self._claim(
                keys=[self.keys.alert_deliveries, *map(self.keys.alert_delivery, ids)],
                args=[now_ms, lease_ms, *ids],
            )
        claimed: list[Delivery] = []
        for index in range(0, len(reply), 2):
            flat = reply[index + 1]
            fields = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}
            claimed.append(_delivery(str(reply[index]), fields, lease_ms))
        return claimed

    async def complete(self, delivery: Delivery) -> None:
        """Forgets a delivery that was sent (whoever holds its lease now)."""
        args: list[str | int] = ["complete", delivery.delivery_id, delivery.lease_ms]
        with unavailable_on_error("completing an alert delivery"):
            await self._settle(keys=self._settle_keys(delivery), args=args)

    async def retry(self, delivery: Delivery, due_at: float, error: str) -> bool:
        """Counts a failed attempt and queues the delivery again at `due_at` (unix
        seconds). False when the lease was lost (another worker has it now)."""
        args: list[str | int] = [
            "retry",
            delivery.delivery_id,
            delivery.lease_ms,
            int(due_at * 1000),
            preview(error, ERROR_LIMIT),
            self.retention_ms,
        ]
        with unavailable_on_error("rescheduling an alert delivery"):
            done = await self._settle(keys=self._settle_keys(delivery), args=args)
        return bool(done)

    async def dead_letter(self, delivery: Delivery, error: str) -> bool:
        """Moves a delivery to the dead-letter stream, with `delivery.attempts` as
        the attempts made. False when the lease was lost."""
        entry = [
            "delivery_id",
            delivery.delivery_id,
            "channel",
            delivery.channel,
            "alert",
            delivery.alert_json,
            "attempts",
            str(delivery.attempts),
            "error",
            preview(error, ERROR_LIMIT),
            "time_ms",
            str(self._now_ms()),
        ]
        args: list[str | int] = [
            "dead",
            delivery.delivery_id,
            delivery.lease_ms,
            DEAD_LETTER_LIMIT,
            *entry,
        ]
        with unavailable_on_error("dead-lettering an alert delivery"):
            done = await self._settle(keys=self._settle_keys(delivery), args=args)
        return bool(done)

    def _settle_keys(self, delivery: Delivery) -> list[str]:
        return [
            self.keys.alert_deliveries,
            self.keys.alert_delivery(delivery.delivery_id),
            self.keys.dead_deliveries,
        ]

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest `limit` dead letters, newest first."""
        with unavailable_on_error("reading dead alert deliveries"):
            entries = await self.client.xrevrange(self.keys.dead_deliveries, count=limit)
        return [_dead_letter(str(entry_id), fields or {}) for entry_id, fields in entries or ()]

    async def pending_count(self) -> int:
        """Deliveries queued or being sent."""
        with unavailable_on_error("counting alert deliveries"):
            return int(await self.client.zcard(self.keys.alert_deliveries))

    async def next_due(self) -> float | None:
        """When the earliest queued delivery is due (unix seconds), or None."""
        with unavailable_on_error("reading the alert delivery queue"):
            first = await self.client.zrange(self.keys.alert_deliveries, 0, 0, withscores=True)
        return float(first[0][1]) / 1000 if first else None


def _delivery(identifier: str, fields: dict[str, str], lease_ms: int) -> Delivery:
    return Delivery(
        delivery_id=identifier,
        channel=fields.get(CHANNEL, ""),
        alert_json=fields.get(ALERT, ""),
        attempts=_integer(fields.get(ATTEMPTS)),
        created_ms=_integer(fields.get(CREATED_MS)),
        last_error=fields.get(LAST_ERROR, ""),
        lease_ms=lease_ms,
    )


def _dead_letter(entry_id: str, fields: dict[Any, Any]) -> DeadLetter:
    return DeadLetter(
        entry_id=entry_id,
        delivery_id=str(fields.get("delivery_id", "")),
        channel=str(fields.get("channel", "")),
        alert_json=str(fields.get("alert", "")),
        attempts=_integer(fields.get("attempts")),
        error=str(fields.get("error", "")),
        time_ms=_integer(fields.get("time_ms")),
    )


def _integer(text: object) -> int:
    try:
        return int(str(text))
    except ValueError:
        return 0

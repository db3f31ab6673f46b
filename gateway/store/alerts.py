"""Alerts in Redis: firing under a shared cooldown, listing, the feed of `Watch`.

Every key is in the `{audit}` slot (gateway/store/keys.py): an acknowledgement is
committed with its audit entry (`AcknowledgeAlert`), and a firing checks the
cooldown, records the alert, appends it to the feed and queues its deliveries in one
`fire_alert.lua` call, so two replicas seeing the same loop at once send one alert.

Bounds: an alert hash and its delivery hashes live `retention_seconds`; the active
and recent indexes keep at most `max_alerts` ids younger than the retention; the
feed keeps about `FEED_MAX` events; a cooldown key lives its cooldown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.domain.alerts.model import Alert, Severity, alert_from_json, alert_to_json
from gateway.store.alert_deliveries import delivery_fields, delivery_id
from gateway.store.connection import load_script, unavailable_on_error
from gateway.store.keys import KeySpace

FEED_MAX = 10_000
FEED_BATCH = 100


@dataclass(frozen=True)
class Cooling:
    """The rule is cooling down for the subject: since `alert_id`, until `until`."""

    alert_id: str
    until: float


@dataclass(frozen=True)
class FeedEvent:
    """One event of the feed: 'fired' or 'acknowledged', with the alert as it was."""

    id: str  # the stream id, a resume point
    event: str
    alert: Alert


class AlertStore:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySpace,
        retention_seconds: float,
        max_alerts: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.retention_ms = int(retention_seconds * 1000)
        self.max_alerts = max_alerts
        self._fire = load_script(client, "fire_alert")

    async def fire(
        self, alert: Alert, cooldown_seconds: float, deliver_to: Sequence[str]
    ) -> Cooling | None:
        """Records `alert` unless its rule is cooling down for its subject; returns
        None if it fired, else the cooldown it is in. `deliver_to`: the channels
        besides `log` that get a delivery."""
        k = self.keys
        text = json.dumps(alert_to_json(alert), separators=(",", ":"), ensure_ascii=False)
        fired_ms = int(alert.fired_at * 1000)
        deliveries: list[str] = []
        delivery_keys: list[str] = []
        width = 0
        for channel in deliver_to:
            did = delivery_id(alert.alert_id, channel)
            fields = delivery_fields(text, channel, fired_ms)
            width = len(fields)
            deliveries += [did, *fields]
            delivery_keys.append(k.alert_delivery(did))
        keys = [
            k.alert_cooldown(alert.rule, alert.subject),
            k.alert(alert.alert_id),
            k.active_alerts,
            k.recent_alerts,
            k.alert_feed,
            k.alert_deliveries,
            *delivery_keys,
        ]
        args: list[str | int] = [
            int(cooldown_seconds * 1000),
            alert.alert_id,
            text,
            fired_ms,
            self.retention_ms,
            self.max_alerts,
            FEED_MAX,
            width,
            *deliveries,
        ]
        with unavailable_on_error("recording an alert"):
            reply = await self._fire(keys=keys, args=args)
        status = [str(x) for x in reply]
        return None if status[0] == "fired" else Cooling(status[1], int(status[2]) / 1000)

    async def get(self, alert_id: str) -> Alert | None:
        with unavailable_on_error("reading an alert"):
            raw = await self.client.hget(self.keys.alert(alert_id), "json")
        return alert_from_json(json.loads(raw)) if raw else None

    async def list_alerts(
        self,
        active_only: bool,
        min_severity: Severity | None,
        subject: str,
        limit: int,
    ) -> list[Alert]:
        """Newest first. Reads the index in pages until `limit` alerts match (bounded
        by the index, which holds at most `max_alerts`)."""
        index = self.keys.active_alerts if active_only else self.keys.recent_alerts
        out: list[Alert] = []
        start, page = 0, max(limit, 100)
        while len(out) < limit:
            with unavailable_on_error("listing alerts"):
                ids = await self.client.zrevrange(index, start, start + page - 1)
                if not ids:
                    break
                async with self.client.pipeline(transaction=False) as pipe:
                    for alert_id in ids:
                        pipe.hget(self.keys.alert(str(alert_id)), "json")
                    values = await pipe.execute()
            for raw in values:
                if not raw:
                    continue  # expired since
                alert = alert_from_json(json.loads(raw))
                if min_severity is not None and alert.severity.rank < min_severity.rank:
                    continue
                if subject and alert.subject != subject:
                    continue
                out.append(alert)
                if len(out) == limit:
                    break
            start += page
        return out

    async def feed_head(self) -> str:
        """The id of the feed's last event ('0-0' if empty): read after it to follow."""
        with unavailable_on_error("reading the alert feed"):
            last = await self.client.xrevrange(self.keys.alert_feed, count=1)
        return str(last[0][0]) if last else "0-0"

    async def feed_after(self, last_id: str) -> list[FeedEvent]:
        with unavailable_on_error("reading the alert feed"):
            rows = await self.client.xrange(
                self.keys.alert_feed, min=f"({last_id}", count=FEED_BATCH
            )
        return [
            FeedEvent(str(i), str(f["event"]), alert_from_json(json.loads(f["json"])))
            for i, f in rows or ()
            if f
        ]

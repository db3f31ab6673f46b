"""Hold events from every replica: Redis pub/sub on the holds channel.

Messages are "<kind>:<hold_id>": `held` (a new hold), `approved` (one more
approval, still pending) and `resolved`. One subscription per gateway process
serves every waiter and watcher:

- `Gateway.Await`: waiters register an event per hold id before they read the
  hold's state, so a resolution between the read and the wait is never missed.
- `Approvals.WatchHolds`: listeners get every (kind, hold_id), and `RESYNC` when
  the subscription was lost and events may have been missed.

If the subscription drops, every waiter is woken to re-read the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

import redis.asyncio as aioredis

from gateway.store.connection import REDIS_FAILURES, is_cluster

log = logging.getLogger("agentgw.store")

RESYNC = "resync"  # events may have been missed: read the pending holds again


class ResolutionListener:
    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self.listeners: set[Callable[[str, str], None]] = set()
        self.subscribed = asyncio.Event()

    @contextlib.contextmanager
    def watch(self, hold_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(hold_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(hold_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[hold_id]

    def _tell(self, kind: str, hold_id: str) -> None:
        for listener in list(self.listeners):
            listener(kind, hold_id)

    def wake_all(self) -> None:
        self._wake(None)

    def _wake(self, hold_id: str | None) -> None:
        targets = self._waiters.values() if hold_id is None else [self._waiters.get(hold_id, set())]
        for events in targets:
            for event in events:
                event.set()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = None
            try:
                if is_cluster(self.client):
                    # A cluster client learns its slot map on first use; the pub/sub
                    # object asks it for the channel's node before that.
                    await self.client.initialize()
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                backoff = 0.1
                # A resolution may have happened while we were not subscribed.
                self._wake(None)
                self._tell(RESYNC, "")
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        kind, _, hold_id = str(message["data"]).rpartition(":")
                        self._wake(hold_id)
                        self._tell(kind or "resolved", hold_id)
            except REDIS_FAILURES as e:
                self.subscribed.clear()
                log.warning(
                    "hold notifications lost; resubscribing",
                    extra={"event": "pubsub_lost", "category": "error", "error": str(e)},
                )
                self._wake(None)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_FAILURES):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]

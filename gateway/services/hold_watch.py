"""`Approvals.WatchHolds`: every pending hold, then every change, as it happens.

One hub per gateway process. It listens to the hold events every replica
publishes (store/notifications.py: one Redis subscription for the process), reads
each changed hold once, in the order the events came, and hands it to every
watcher's queue. A watcher holds no Redis connection of its own. A new watcher is
registered before it reads the pending holds, so a change between that read and
its first event is delivered (perhaps twice: a watcher treats the latest as the
state). When the subscription was lost and events may have been missed, every
watcher gets the pending holds again. A watcher too slow to keep up with
`QUEUE_LIMIT` events is ended (RESOURCE_EXHAUSTED) rather than let memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator

from gateway.domain.holds import Hold
from gateway.errors import Exhausted, StoreUnavailable
from gateway.store.notifications import RESYNC, ResolutionListener
from gateway.store.state import StateStore

log = logging.getLogger("agentgw.approvals")

QUEUE_LIMIT = 10_000


class WatchEvent(enum.Enum):
    PENDING = "pending"  # pending when the watch started (or resynced)
    SYNCED = "synced"  # every pending hold has been sent
    HELD = "held"
    APPROVED_PARTLY = "approved"
    RESOLVED = "resolved"


KINDS = {
    "held": WatchEvent.HELD,
    "approved": WatchEvent.APPROVED_PARTLY,
    "resolved": WatchEvent.RESOLVED,
}


class WatcherTooSlow(Exhausted):
    """A watcher fell QUEUE_LIMIT events behind (RESOURCE_EXHAUSTED)."""


_RESYNC = object()
_TOO_SLOW = object()


class HoldWatch:
    def __init__(self, state: StateStore, listener: ResolutionListener) -> None:
        self.state = state
        self._queues: set[asyncio.Queue[object]] = set()
        self._events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        listener.listeners.add(self._heard)

    @property
    def watchers(self) -> int:
        return len(self._queues)

    def _heard(self, kind: str, hold_id: str) -> None:
        if self._queues:
            self._events.put_nowait((kind, hold_id))

    async def run(self) -> None:
        """The hub's task (owned by the app): one read per event, in order."""
        while True:
            kind, hold_id = await self._events.get()
            if kind == RESYNC:
                self._broadcast(_RESYNC)
                continue
            event = KINDS.get(kind)
            if event is None or not self._queues:
                continue
            try:
                hold = await self.state.get_hold(hold_id)
            except StoreUnavailable as e:
                log.warning(
                    "a hold event could not be read; watchers resync",
                    extra={"category": "error", "hold_id": hold_id, "error": str(e)},
                )
                self._broadcast(_RESYNC)
                continue
            if hold is not None:
                self._broadcast((event, hold))

    def _broadcast(self, item: object) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self._queues.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                queue.put_nowait(_TOO_SLOW)

    async def watch(self) -> AsyncIterator[tuple[WatchEvent, Hold | None]]:
        queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_LIMIT)
        self._queues.add(queue)
        try:
            async for item in self._snapshot():
                yield item
            while True:
                got = await queue.get()
                if got is _TOO_SLOW:
                    raise WatcherTooSlow(
                        f"the watcher fell {QUEUE_LIMIT} events behind; watch again"
                    )
                if got is _RESYNC:
                    async for item in self._snapshot():
                        yield item
                    continue
                assert isinstance(got, tuple)
                yield got
        finally:
            self._queues.discard(queue)

    async def _snapshot(self) -> AsyncIterator[tuple[WatchEvent, Hold | None]]:
        holds = sorted(await self.state.pending_holds(), key=lambda h: h.created_at)
        for hold in holds:
            yield WatchEvent.PENDING, hold
        yield WatchEvent.SYNCED, None

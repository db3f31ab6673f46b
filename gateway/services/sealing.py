"""Keeping the audit log sealed: the sealer's loop on every replica, its alerts, and
what readiness learns from it.

Every replica runs `Sealing.run`: every `audit.tiles.seal_interval_seconds` (and at
once when this replica's append completes a tile) it seals whatever full tiles wait
(store/sealed_log.py; the lease lets one replica seal at a time). A failure of the
tile store (full, unwritable, another store than the log's, files that disagree) is
logged and raises the `audit_sealing_failed` alert; entries then wait in Redis.
`problem()` is what the Audit service's readiness reports: this replica's store is
not the log's, or more than `not_serving_after_entries` entries wait. Past
`max_unsealed_entries` the appends themselves are refused (commit.lua), so the
gateway fails closed rather than letting Redis grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.domain.alerts.events import sealing_failure_event
from gateway.domain.alerts.rules import AlertEvent
from gateway.domain.audit.tiles import TILE_WIDTH, TileError
from gateway.domain.audit_settings import TileSettings
from gateway.errors import StoreUnavailable
from gateway.store.sealed_log import Sealer, SealError, WrongTileStore
from gateway.store.tile_store import TileStoreError

log = logging.getLogger("agentgw.audit.tiles")


class Sealing:
    def __init__(
        self,
        sealer: Sealer,
        settings: TileSettings,
        observe: Callable[[AlertEvent], None],
        clock: Callable[[], float],
    ) -> None:
        self.sealer = sealer
        self.settings = settings
        self._observe = observe
        self._clock = clock
        self._wake = asyncio.Event()
        self.unsealed = 0  # entries not sealed yet, as last seen
        self.error = ""  # why the last attempt failed ("" when it did not)
        self._wrong_store = ""
        self._logged = ""  # the failure last logged at ERROR

    def appended(self, entries: int, seq: int) -> None:
        """AuditLog.on_append: a batch that completed a tile wakes the sealer."""
        if seq // TILE_WIDTH != (seq - entries) // TILE_WIDTH:
            self._wake.set()

    def problem(self) -> str:
        """Why the Audit service is not ready ("" when it is)."""
        if self._wrong_store:
            return self._wrong_store
        limit = self.settings.not_serving_after_entries
        if limit and self.unsealed > limit:
            why = f": {self.error}" if self.error else ""
            return f"{self.unsealed} audit entries are not sealed into tiles (limit {limit}){why}"
        return ""

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.seal()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.seal_interval_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def seal(self) -> None:
        """Seals what waits; records (and alerts on) a failure of the tile store."""
        try:
            await self.sealer.seal_all()
        except StoreUnavailable as e:
            # Redis: the health watch reports it (and its alert); sealing waits.
            log.warning("sealing waits for Redis: %s", e, extra={"category": "error"})
            return
        except (SealError, TileStoreError, TileError) as e:
            self.error = str(e)
            self._wrong_store = str(e) if isinstance(e, WrongTileStore) else ""
            self.unsealed = self.sealer.last_state.unsealed
            # Logged when the reason changes; the alert's cooldown spaces the alerts.
            log.log(
                logging.DEBUG if str(e) == self._logged else logging.ERROR,
                "sealing the audit log failed: %s",
                e,
                extra={"category": "error", "unsealed": self.unsealed},
            )
            self._logged = str(e)
            self._observe(sealing_failure_event(str(e), self.unsealed, self._clock()))
            return
        # seal_all ends on a state read that found nothing more to seal: it is current.
        self.unsealed = self.sealer.last_state.unsealed
        if self._logged:
            log.info("sealing the audit log works again", extra={"category": "error"})
        self.error = self._wrong_store = self._logged = ""

    async def stop(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.sealer.release()

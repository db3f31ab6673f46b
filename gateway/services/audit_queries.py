"""Answering audit queries and reports from the stored log, in bounded memory.

Owns the scan: where a time-bounded scan starts (a search over seq that probes a
few entries per round trip), reading on in chunks up to the head the call started
with, and stopping once past the end of the range. Which entries match, when a scan
may start and stop, and what a report counts are the pure rules of
`gateway/domain/audit/query.py`; Redis is reached only through `AuditLog`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from gateway.domain.audit.entry import AuditEntry
from gateway.domain.audit.query import (
    EntryFilter,
    Report,
    ReportBuilder,
    narrow_start,
    start_probes,
)
from gateway.store.audit_log import AuditLog

SCAN_CHUNK = 256


class AuditSearch:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def entries(self, flt: EntryFilter, limit: int = 0) -> AsyncIterator[AuditEntry]:
        """The entries matching `flt`, in seq order, at most `limit` (0: no limit)."""
        sent = 0
        async with aclosing(self._scan(flt)) as scan:
            async for entry in scan:
                if flt.matches(entry):
                    yield entry
                    sent += 1
                    if limit and sent >= limit:
                        return

    async def report(self, flt: EntryFilter, max_entries: int = 0) -> Report:
        """The report over the entries matching `flt`."""
        builder = ReportBuilder(max_entries)  # validates max_entries before any read
        async for entry in self._scan(flt):
            if flt.matches(entry):
                builder.add(entry)
        return builder.report()

    async def _scan(self, flt: EntryFilter) -> AsyncGenerator[AuditEntry, None]:
        """Every entry that may match `flt`, up to the head as it was when called."""
        head = (await self.audit.head()).seq
        seq = await self._scan_start(flt, head)
        while seq <= head:
            stop = min(seq + SCAN_CHUNK - 1, head)
            for line in await self.audit.read_lines(seq, stop):
                entry = AuditEntry.from_json_line(line)
                if flt.past_end(entry):
                    return
                yield entry
            seq = stop + 1

    async def _scan_start(self, flt: EntryFilter, head: int) -> int:
        """The first seq that may match: after after_seq and, with a start time, after
        the last entry the search finds stamped more than the skew before it."""
        low, high = min(flt.after_seq, head), head + 1
        if not flt.scan_from:
            return low + 1
        while probes := start_probes(low, high):
            lines = await self.audit.read_lines_at(probes)
            stamps = {
                seq: None if line is None else AuditEntry.from_json_line(line).timestamp
                for seq, line in zip(probes, lines, strict=True)
            }
            low, high = narrow_start(low, high, stamps, flt.scan_from)
        return low + 1

"""The structured log in Redis: one stream per category (and one per category agents
write to, for what they file), trimmed by age and size.

Each entry holds one record's JSON (`record_to_json`) in its field `record`, under an
id made from the record's timestamp in ms (`scripts/log_append.lua`), so a stream is
in time order and its ids are the resume points of `Logs.Query`. One script call
appends a batch and trims every stream it touched exactly (`XTRIM MINID` to the
category's retention by the gateway's clock, then `XTRIM MAXLEN`); `trim` does the
same for every category on its own, so that a category nobody writes to still ages
out. All streams are in the `{logs}` slot. Reads use XRANGE/XREVRANGE with exclusive
`(id` bounds (Redis 6.2 and later) and filter in Python; a query reads at most
SCAN_LIMIT entries per category, newest first, so a query over a wide period with a
narrow filter may return fewer records than there are: narrow it with `since`.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from gateway.domain.log_records import (
    AGENT_CATEGORIES,
    AGENT_LOGGER,
    CATEGORIES,
    LogFilter,
    LogRecord,
    record_from_json,
    record_to_json,
    timestamp_ms,
)
from gateway.domain.log_settings import LogSettings
from gateway.store.connection import load_script, unavailable_on_error
from gateway.store.keys import KeySpace

# Entries read per XRANGE call, and the most a query reads per category.
SCAN_CHUNK = 1000
SCAN_LIMIT = 50_000
# The stream id before any other: resuming after it reads a stream from its start.
START_ID = "0-0"


@dataclass(frozen=True)
class LogPage:
    """Records, oldest first, and per category the id to resume after (the last
    entry read, or the stream's newest entry when the read was a query). `more`: a
    category had more entries than one read takes (read again without waiting)."""

    records: tuple[LogRecord, ...]
    last_ids: Mapping[str, str]
    more: bool = False


# One stream per category for the gateway's own records, and one per category for
# what agents file (`Gateway.Log`), so that no agent can flood the gateway's records
# about it out of a stream bounded by count. A query of a category reads both.
AGENT_STREAM_PREFIX = "agent."
STREAMS = (*CATEGORIES, *(AGENT_STREAM_PREFIX + c for c in AGENT_CATEGORIES))


def stream_of(record: LogRecord) -> str:
    if record.logger == AGENT_LOGGER:
        return AGENT_STREAM_PREFIX + record.category
    return record.category


def category_of(stream: str) -> str:
    return stream.removeprefix(AGENT_STREAM_PREFIX)


def streams_of(categories: Sequence[str]) -> list[str]:
    return [s for s in STREAMS if category_of(s) in categories]


def id_parts(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class LogStreams:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySpace,
        settings: LogSettings,
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self._append = load_script(client, "log_append")

    async def append(self, records: Sequence[LogRecord]) -> list[str]:
        """Stores the records (one script call) and returns their stream ids."""
        if not records:
            return []
        unknown = {stream_of(r) for r in records} - set(STREAMS)
        if unknown:
            raise ValueError(f"unknown log streams: {sorted(unknown)}")
        touched = [s for s in STREAMS if any(stream_of(r) == s for r in records)]
        return await self._run(touched, records, self.clock())

    async def trim(self, now: float | None = None) -> None:
        """Trims every category's stream to its retention at `now` (default: the
        clock) and to its size."""
        await self._run(list(STREAMS), (), self.clock() if now is None else now)

    async def _run(self, streams: list[str], records: Sequence[LogRecord], now: float) -> list[str]:
        index = {s: i for i, s in enumerate(streams, start=1)}
        args: list[Any] = [math.floor(now * 1000)]
        for stream in streams:
            category = category_of(stream)
            args += [
                round(self.settings.retention_seconds[category] * 1000),
                self.settings.max_records[category],
            ]
        for r in records:
            args += [index[stream_of(r)], timestamp_ms(r.timestamp), record_to_json(r)]
        keys = [self.keys.log_stream(s) for s in streams]
        with unavailable_on_error("writing log records"):
            ids = await self._append(keys=keys, args=args)
        return [str(i) for i in ids]

    # --- reading -----------------------------------------------------------------

    async def query(
        self, flt: LogFilter, limit: int, after_ids: Mapping[str, str] | None = None
    ) -> LogPage:
        """The newest `limit` records that match (after `after_ids`, per category),
        oldest first. `last_ids` are the streams' newest ids when the query ran: a
        follow that resumes there misses nothing written since."""
        after = after_ids or {}
        streams = streams_of(flt.categories)
        with unavailable_on_error("reading log records"):
            found = await asyncio.gather(
                *(self._newest(s, flt, limit, after.get(s)) for s in streams)
            )
        last_ids = {s: top for s, (top, _) in zip(streams, found, strict=True)}
        merged = sorted((r for _, records in found for r in records), key=_order)
        return LogPage(tuple(merged[-limit:] if limit else ()), last_ids)

    async def read_after(self, flt: LogFilter, after_ids: Mapping[str, str]) -> LogPage:
        """What was written after `after_ids` (a category not named: from its start),
        up to SCAN_CHUNK entries per category; the records that match, by id."""
        streams = streams_of(flt.categories)
        with unavailable_on_error("reading log records"):
            reads = await asyncio.gather(
                *(
                    self._range(s, f"({after_ids.get(s, START_ID)}", "+", SCAN_CHUNK)
                    for s in streams
                )
            )
        last_ids = dict(after_ids)
        batches = []
        for stream, entries in zip(streams, reads, strict=True):
            if entries:
                last_ids[stream] = entries[-1].id
            batches.append([r for r in entries if flt.matches(r)])
        merged = heapq.merge(*batches, key=_order)
        more = any(len(entries) == SCAN_CHUNK for entries in reads)
        return LogPage(tuple(merged), last_ids, more)

    async def _newest(
        self, stream: str, flt: LogFilter, limit: int, after: str | None
    ) -> tuple[str, list[LogRecord]]:
        """The stream's newest id, and up to `limit` matching records, newest first,
        of at most SCAN_LIMIT entries read backwards from there."""
        key = self.keys.log_stream(stream)
        newest = cast(list[Any], await self.client.xrevrange(key, "+", "-", count=1))
        if not newest:
            return after or START_ID, []
        top = str(newest[0][0])
        upper = top
        if flt.until is not None:
            upper = min(upper, f"{math.floor(flt.until * 1000)}-{2**64 - 1}", key=id_parts)
        lower = _lower_bound(flt.since, after)
        found: list[LogRecord] = []
        scanned = 0
        while scanned < SCAN_LIMIT and len(found) < limit:
            count = min(SCAN_CHUNK, SCAN_LIMIT - scanned)
            entries = await self._range(stream, lower, upper, count, reverse=True)
            found += [r for r in entries if flt.matches(r)][: limit - len(found)]
            scanned += len(entries)
            if len(entries) < count:
                break
            upper = f"({entries[-1].id}"
        return top, found

    async def _range(
        self, stream: str, lower: str, upper: str, count: int, reverse: bool = False
    ) -> list[LogRecord]:
        key = self.keys.log_stream(stream)
        if reverse:
            reply = await self.client.xrevrange(key, upper, lower, count=count)
        else:
            reply = await self.client.xrange(key, lower, upper, count=count)
        return [_entry_record(category_of(stream), str(i), f) for i, f in cast(list[Any], reply)]


def _lower_bound(since: float | None, after: str | None) -> str:
    """The later of `since` (inclusive) and `after` (exclusive), as an XRANGE bound."""
    lower = "-" if since is None else f"{math.floor(since * 1000)}-0"
    if after is None:
        return lower
    if lower == "-" or id_parts(after) >= id_parts(lower):
        return f"({after}"
    return lower


def _order(record: LogRecord) -> tuple[int, int, int]:
    ms, seq = id_parts(record.id)
    return ms, seq, STREAMS.index(stream_of(record))


def _entry_record(category: str, entry_id: str, fields: Mapping[str, str]) -> LogRecord:
    """The record of one stream entry; one that does not read is shown as such
    rather than failing the whole query."""
    try:
        return record_from_json(fields.get("record", ""), id=entry_id)
    except (ValueError, TypeError, KeyError):
        return LogRecord(
            id=entry_id,
            timestamp=id_parts(entry_id)[0] / 1000,
            category=category,
            level="error",
            event_type="unreadable_record",
            message="a stored log record does not read as one",
            logger="agentgw.store",
        )

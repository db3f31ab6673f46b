"""Shipping log records to the streams, agents' own records, and reading them back.

`LogSink` is a `logging.Handler` on the "agentgw" logger: `emit` builds the record
(redacted and cut, `gateway.domain.log_records`) and queues it in memory without
waiting and without touching Redis, because a log call must never slow down or fail
the call that makes it; `run` writes what is queued in batches (one script call
each). When Redis is down the records wait, up to the queue's bound; beyond it the
oldest are dropped and counted, and the count is filed as a record of its own once
Redis is back. This module's own log lines (a failed write) go to stderr and the
file only: the sink never ships them, or a Redis outage would feed itself.

`AgentLogDesk` files an agent's `Gateway.Log` record directly (one script call), so
that the agent learns whether it was kept. `LogSearch` serves `Logs.Query`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from gateway.domain.agent_logs import AgentLogEvent, agent_log_record
from gateway.domain.log_records import LogFilter, LogRecord, new_trace_id, record_from_logging
from gateway.domain.principals import Principal
from gateway.domain.redaction import Redactor
from gateway.domain.validation import Limits
from gateway.errors import StoreUnavailable
from gateway.store.log_streams import LogPage, LogStreams

log = logging.getLogger("agentgw.services.log_shipping")

BATCH_SIZE = 500
FLUSH_SECONDS = 0.2
# After a failed write, wait this long before the next try, doubling up to the most.
RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 5.0
FOLLOW_POLL_SECONDS = 0.25


class LogSink(logging.Handler):
    """Queues the records of the loggers it is attached to for `run` to store.

    `clock` dates the records (the gateway's clock, which tests move); `queue_size`
    bounds the records waiting, those of a failed batch included.
    """

    def __init__(
        self,
        streams: LogStreams,
        clock: Callable[[], float],
        redactor: Redactor | None = None,
        queue_size: int = 10_000,
        level: int | str = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.streams = streams
        self.clock = clock
        self.redactor = redactor or Redactor()
        self.queue_size = queue_size
        self.dropped = 0  # records lost to the bound, since the sink started
        self.failures = 0  # failed writes, since the sink started
        self._queue: collections.deque[LogRecord] = collections.deque()
        self._unreported = 0  # drops not yet filed as a record
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == log.name:
            return
        try:
            built = record_from_logging(record, self.redactor, self.clock())
        except Exception:  # e.g. an extra whose str() fails: as any handler, report it
            self.handleError(record)
            return
        # `handle` holds self.lock around emit; run() takes it to put a batch back.
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            self._unreported += 1
            return
        self._queue.append(built)
        ready, loop = self._ready, self._loop
        if len(self._queue) >= BATCH_SIZE and ready and loop and not ready.is_set():
            # A closed loop raises RuntimeError: drain() takes what is left.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ready.set)

    async def run(self) -> None:
        """Writes queued records every FLUSH_SECONDS (sooner when a batch is full)
        until cancelled; a failed batch is kept for the next try."""
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        delay, failing = RETRY_SECONDS, False
        while True:
            if failing:  # a full batch does not hurry a retry
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), FLUSH_SECONDS)
            self._ready.clear()
            try:
                while self._queue:
                    await self._flush_batch()
            except StoreUnavailable as e:
                self.failures += 1
                if not failing:
                    log.warning(
                        "log records cannot be stored; keeping them in memory",
                        extra={"category": "error", "error": str(e), "queued": self.queued},
                    )
                if failing:
                    delay = min(delay * 2, MAX_RETRY_SECONDS)
                failing = True
                continue
            if failing:
                log.info("log records are stored again", extra={"category": "error"})
            delay, failing = RETRY_SECONDS, False

    async def drain(self) -> int:
        """Writes what is queued now (at stop, after `run` is cancelled): one try per
        batch. Returns how many records could not be stored (logged, and left queued)."""
        for _ in range(self.queue_size // BATCH_SIZE + 2):
            if not self._queue:
                return 0
            try:
                await self._flush_batch()
            except StoreUnavailable as e:
                log.warning(
                    "log records could not be stored before stopping",
                    extra={"category": "error", "error": str(e), "lost": self.queued},
                )
                break
        return self.queued

    async def _flush_batch(self) -> None:
        batch = self._take(BATCH_SIZE)
        reported = self._unreported
        report = self._drop_record(reported) if reported else None
        try:
            await self.streams.append(batch if report is None else [*batch, report])
        except BaseException:
            self._put_back(batch)
            raise
        self._unreported -= reported

    def _take(self, count: int) -> list[LogRecord]:
        batch: list[LogRecord] = []
        while self._queue and len(batch) < count:
            batch.append(self._queue.popleft())
        return batch

    def _put_back(self, batch: list[LogRecord]) -> None:
        """Returns a failed batch to the front; beyond the bound, the oldest go."""
        lock = self.lock
        assert lock is not None  # logging.Handler always makes one
        with lock:
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.queue_size:
                self._queue.popleft()
                self.dropped += 1
                self._unreported += 1

    def _drop_record(self, count: int) -> LogRecord:
        return LogRecord(
            timestamp=self.clock(),
            category="error",
            level="warning",
            event_type="log_records_dropped",
            message=f"{count} log records were dropped: the queue was full",
            logger=log.name,
            data={"dropped": count, "queue_size": self.queue_size},
        )


class AgentLogDesk:
    """`Gateway.Log`: checks the agent's record and stores it at once (one script
    call, not through the sink's queue), so an error reaches the agent."""

    def __init__(
        self,
        streams: LogStreams,
        clock: Callable[[], float],
        redactor: Redactor | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.streams = streams
        self.clock = clock
        self.redactor = redactor or Redactor()
        self.limits = limits or Limits()

    async def record(self, principal: Principal, event: AgentLogEvent) -> str:
        """Files the record; returns its trace id (a new one when none was given)."""
        record = agent_log_record(
            principal.name,
            event,
            self.clock(),
            self.redactor,
            default_trace_id=new_trace_id(),
            limits=self.limits,
        )
        await self.streams.append([record])
        return record.trace_id


class LogSearch:
    """`Logs.Query`: the newest matching records, then, following, every new one."""

    def __init__(self, streams: LogStreams, poll_seconds: float = FOLLOW_POLL_SECONDS) -> None:
        self.streams = streams
        self.poll_seconds = poll_seconds

    async def query(self, flt: LogFilter, limit: int) -> tuple[LogRecord, ...]:
        return (await self.streams.query(flt, limit)).records

    async def follow(self, flt: LogFilter, limit: int) -> AsyncIterator[LogRecord]:
        """The query's records, then new ones as they are written (polling every
        `poll_seconds`), until the caller stops iterating or is cancelled."""
        page: LogPage = await self.streams.query(flt, limit)
        for record in page.records:
            yield record
        last_ids = dict(page.last_ids)
        while True:
            page = await self.streams.read_after(flt, last_ids)
            for record in page.records:
                yield record
            last_ids = dict(page.last_ids)
            if not page.more:
                await asyncio.sleep(self.poll_seconds)

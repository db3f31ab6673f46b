"""The log streams in a real Redis, through `LogStreams` and its Lua script, and the
`LogSink` that ships the gateway's records to them.

Time is an injected clock the tests set: records age out because the clock moves,
never because a test sleeps. Redis being down is a client pointed at a closed port;
it comes back as a proxy to the real server on that port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlparse

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.log_records import CATEGORIES, LogRecord, log_filter, record_from_logging
from gateway.domain.log_settings import DAY, LogSettings
from gateway.domain.redaction import Redactor
from gateway.logs import JsonFormatter, TextFormatter
from gateway.services.log_shipping import LogSearch, LogSink
from gateway.store.connection import close, connect
from gateway.store.keys import KeySpace
from gateway.store.log_streams import LogStreams

T = TypeVar("T")
T0 = 1_800_000_000.0
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_record(
    message: str,
    at: float = T0,
    category: str = "action",
    level: str = "info",
    agent_id: str = "agent-1",
    session_id: str = "s-1",
    trace_id: str = "",
) -> LogRecord:
    return LogRecord(
        timestamp=at,
        category=category,
        level=level,
        event_type="test",
        message=message,
        agent_id=agent_id,
        session_id=session_id,
        trace_id=trace_id,
        logger="agentgw.test",
        data={"n": message},
    )


def run(
    redis_url: str,
    prefix: str,
    body: Callable[[LogStreams, Clock], Awaitable[T]],
    log_settings: LogSettings | None = None,
    url: str | None = None,
) -> T:
    async def scenario() -> T:
        client = connect(url or redis_url)
        clock = Clock()
        try:
            return await body(
                LogStreams(client, KeySpace(prefix), log_settings or LogSettings(), clock), clock
            )
        finally:
            await close(client)

    return asyncio.run(scenario())


def stored(raw: redis.Redis, prefix: str, category: str) -> list[dict[str, Any]]:
    entries = raw.xrange(KeySpace(prefix).log_stream(category))
    return [{"id": i, **json.loads(fields["record"])} for i, fields in entries]  # type: ignore[union-attr]


def messages(records: Any) -> list[str]:
    return [r.message for r in records]


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Polls a cheap condition until it holds; fails after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


# --- append and query ---------------------------------------------------------------


def test_records_come_back_filtered_by_every_criterion(redis_url: str, key_prefix: str) -> None:
    records = [
        make_record("a1", T0 + 1, "action", agent_id="agent-1", session_id="s-1"),
        make_record("d1", T0 + 2, "decision", level="warning", trace_id=TRACE),
        make_record("e1", T0 + 3, "error", level="error", agent_id="agent-2"),
        make_record("u1", T0 + 4, "user", session_id="s-2"),
        make_record("p1", T0 + 5, "performance", level="debug", agent_id=""),
        make_record("s1", T0 + 6, "security", level="critical"),
    ]

    async def body(streams: LogStreams, clock: Clock) -> dict[str, list[str]]:
        clock.now = T0 + 10
        ids = await streams.append(records)
        assert len(ids) == len(records)

        async def q(**criteria: Any) -> list[str]:
            return messages((await streams.query(log_filter(**criteria), 100)).records)

        return {
            "all": await q(),
            "agent": await q(agent_id="agent-2"),
            "session": await q(session_id="s-2"),
            "categories": await q(categories=["error", "action"]),
            "level": await q(min_level="error"),
            "since": await q(since=T0 + 4),
            "until": await q(until=T0 + 3),
            "window": await q(since=T0 + 2, until=T0 + 4),
            "trace": await q(trace_id=TRACE),
        }

    got = run(redis_url, key_prefix, body)
    assert got["all"] == ["a1", "d1", "e1", "u1", "p1", "s1"]
    assert got["agent"] == ["e1"]
    assert got["session"] == ["u1"]
    assert got["categories"] == ["a1", "e1"]
    assert got["level"] == ["e1", "s1"]
    assert got["since"] == ["u1", "p1", "s1"]
    assert got["until"] == ["a1", "d1"]
    assert got["window"] == ["d1", "e1"]
    assert got["trace"] == ["d1"]


def test_a_query_returns_the_newest_records_oldest_first(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    async def body(streams: LogStreams, clock: Clock) -> tuple[list[str], dict[str, str]]:
        await streams.append([make_record(f"m{i}", T0 + i) for i in range(10)])
        page = await streams.query(log_filter(categories=["action"]), 3)
        return messages(page.records), dict(page.last_ids)

    got, last_ids = run(redis_url, key_prefix, body)
    assert got == ["m7", "m8", "m9"]
    assert last_ids == {"action": stored(raw, key_prefix, "action")[-1]["id"]}


def test_the_stored_form_is_the_json_line_with_an_id_from_the_timestamp(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    run(redis_url, key_prefix, lambda s, c: s.append([make_record("x", T0 + 0.25)]))
    [entry] = stored(raw, key_prefix, "action")
    assert entry["id"] == f"{int(T0 * 1000) + 250}-0"
    assert entry["timestamp"] == "2027-01-15T08:00:00.250Z"
    assert entry["data"] == {"n": "x"}


def test_following_reads_only_what_was_written_after(redis_url: str, key_prefix: str) -> None:
    async def body(streams: LogStreams, clock: Clock) -> list[list[str]]:
        await streams.append([make_record("before", T0)])
        flt = log_filter(categories=["action", "error"])
        first = await streams.query(flt, 10)
        await streams.append([make_record("e", T0 + 1, "error"), make_record("a", T0 + 2)])
        second = await streams.read_after(flt, first.last_ids)
        third = await streams.read_after(flt, second.last_ids)
        return [messages(first.records), messages(second.records), messages(third.records)]

    assert run(redis_url, key_prefix, body) == [["before"], ["e", "a"], []]


def test_log_search_follows_new_records(redis_url: str, key_prefix: str) -> None:
    async def body(streams: LogStreams, clock: Clock) -> list[str]:
        await streams.append([make_record("old", T0)])
        search = LogSearch(streams, poll_seconds=0.01)
        seen: list[str] = []
        follow = search.follow(log_filter(min_level="warning"), 10)

        async def read() -> None:
            async for record in follow:
                seen.append(record.message)

        reader = asyncio.create_task(read())
        await streams.append(
            [make_record("quiet", T0 + 1), make_record("loud", T0 + 2, level="error")]
        )
        await eventually(lambda: seen == ["loud"], "the new matching record")
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        return seen

    assert run(redis_url, key_prefix, body) == ["loud"]


# --- trimming ------------------------------------------------------------------------


def test_records_age_out_by_their_category_retention(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    async def body(streams: LogStreams, clock: Clock) -> None:
        await streams.append(
            [make_record("old action"), make_record("old decision", category="decision")]
        )
        clock.now = T0 + 31 * DAY  # past the action retention (30 days), not the decision (90)
        await streams.append([make_record("new action", clock.now)])
        assert [e["message"] for e in stored(raw, key_prefix, "action")] == ["new action"]
        assert [e["message"] for e in stored(raw, key_prefix, "decision")] == ["old decision"]
        clock.now = T0 + 91 * DAY
        await streams.trim()  # nothing written to decision: the periodic trim ages it out

    run(redis_url, key_prefix, body)
    assert stored(raw, key_prefix, "decision") == []
    assert stored(raw, key_prefix, "action") == []  # the new action is 60 days old by now


def test_a_stream_keeps_at_most_its_max_records(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    bounded = LogSettings(max_records=MappingProxyType({**LogSettings().max_records, "action": 5}))

    async def body(streams: LogStreams, clock: Clock) -> None:
        await streams.append([make_record(f"m{i}", T0 + i) for i in range(8)])
        await streams.append([make_record(f"m{i}", T0 + i) for i in range(8, 12)])

    run(redis_url, key_prefix, body, bounded)
    assert [e["message"] for e in stored(raw, key_prefix, "action")] == [
        f"m{i}" for i in range(7, 12)
    ]


def test_ids_increase_when_the_clock_goes_back(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    async def body(streams: LogStreams, clock: Clock) -> list[str]:
        ids = await streams.append([make_record("1", T0 + 5), make_record("2", T0 + 5)])
        ids += await streams.append([make_record("3", T0 + 1), make_record("4", T0 + 9)])
        clock.now = T0 + 100 * DAY  # trims everything; the stream keeps its last id
        await streams.trim()
        assert stored(raw, key_prefix, "action") == []
        clock.now = T0
        ids += await streams.append([make_record("5", T0)])
        return ids

    ids = run(redis_url, key_prefix, body)
    ms = int((T0 + 5) * 1000)
    assert ids[:3] == [f"{ms}-0", f"{ms}-1", f"{ms}-2"]
    assert ids[3] == f"{int((T0 + 9) * 1000)}-0"
    assert ids[4] == f"{int((T0 + 9) * 1000)}-1"
    parts = [tuple(map(int, i.split("-"))) for i in ids]
    assert parts == sorted(set(parts))
    [entry] = stored(raw, key_prefix, "action")
    assert entry["timestamp"].startswith("2027-01-15T08:00:00.000")  # its own time, kept


# --- the sink ---------------------------------------------------------------------------


def password_of(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return parse_qs(parsed.query)["password"][0]
    return unquote(parsed.password or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def proxy(port: int, upstream: str) -> AsyncIterator[None]:
    """Redis "coming back" on `port`: a TCP proxy to the real server."""
    target = urlparse(upstream)

    async def open_upstream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if target.scheme == "unix":
            return await asyncio.open_unix_connection(unquote(target.path))
        return await asyncio.open_connection(target.hostname, target.port)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await open_upstream()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


def logging_record(message: str) -> logging.LogRecord:
    made = logging.LogRecord("agentgw.test", logging.INFO, __file__, 1, message, None, None)
    made.category = "action"
    return made


def test_the_sink_keeps_records_while_redis_is_down_and_delivers_them_in_order(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    port = free_port()

    async def body(streams: LogStreams, clock: Clock) -> LogSink:
        sink = LogSink(streams, clock, queue_size=100)
        runner = asyncio.create_task(sink.run())
        for i in range(60):
            sink.handle(logging_record(f"m{i}"))  # returns at once: Redis is not touched
        await eventually(lambda: sink.failures >= 1, "a failed write")
        for i in range(60, 150):
            sink.handle(logging_record(f"m{i}"))
        assert sink.queued == 100 and sink.dropped == 50
        async with proxy(port, redis_url):
            await eventually(
                lambda: sink.queued == 0 and len(stored(raw, key_prefix, "action")) == 100,
                "delivery",
            )
            await eventually(lambda: len(stored(raw, key_prefix, "error")) == 1, "the drop report")
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        return sink

    closed = f"redis://:{quote(password_of(redis_url), safe='')}@127.0.0.1:{port}/0"
    run(redis_url, key_prefix, body, url=closed)
    assert [e["message"] for e in stored(raw, key_prefix, "action")] == [
        f"m{i}" for i in range(100)
    ]
    [report] = stored(raw, key_prefix, "error")
    assert report["event_type"] == "log_records_dropped"
    assert report["data"]["dropped"] == 50


def test_the_sink_skips_its_own_records_and_drains_at_stop(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    async def body(streams: LogStreams, clock: Clock) -> int:
        sink = LogSink(streams, clock)
        own = logging.LogRecord(
            "agentgw.services.log_shipping", logging.WARNING, __file__, 1, "x", None, None
        )
        sink.handle(own)
        sink.handle(logging_record("kept"))
        clock.now = T0 + 7
        return await sink.drain()

    assert run(redis_url, key_prefix, body) == 0
    [entry] = stored(raw, key_prefix, "action")
    assert entry["message"] == "kept"
    assert entry["timestamp"] == "2027-01-15T08:00:00.000Z"  # the clock when it was logged


# --- redaction: no secret in any output --------------------------------------------------

SENSITIVE_KEYS = [
    "password",
    "token",
    "secret",
    "api_key",
    "credential",
    "dbPassword",
    "X-Auth-Token",
]
secrets_ = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=6, max_size=12).map(
    lambda s: f"ZQSECRET{s}"
)
plain = st.integers() | st.text("abcdefgh ", max_size=8)
secret_value = st.recursive(
    secrets_,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text("xyz", max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)
payload = st.recursive(
    st.dictionaries(st.sampled_from(SENSITIVE_KEYS), secret_value, min_size=1, max_size=2),
    lambda inner: (
        st.lists(inner | plain, min_size=1, max_size=3)
        | st.dictionaries(
            st.text("abcdefgh", min_size=1, max_size=6), inner | plain, min_size=1, max_size=3
        )
    ),
    max_leaves=6,
)


def test_no_value_under_a_sensitive_key_reaches_any_output(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    loop = asyncio.new_event_loop()
    client = connect(redis_url)
    streams = LogStreams(client, KeySpace(key_prefix), LogSettings(), Clock())
    json_formatter, text_formatter, redactor = JsonFormatter(), TextFormatter(), Redactor()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(value=payload)
    def check(value: Any) -> None:
        made = logging_record("tool result")
        made.result = value
        [entry_id] = loop.run_until_complete(streams.append([record_from_logging(made, redactor)]))
        outputs = {
            "json": json_formatter.format(made),
            "text": text_formatter.format(made),
            "stored": str(
                raw.xrange(KeySpace(key_prefix).log_stream("action"), entry_id, entry_id)
            ),
        }
        for where, text in outputs.items():
            assert "ZQSECRET" not in text, (where, text)

    try:
        check()
    finally:
        loop.run_until_complete(close(client))
        loop.close()


def test_every_category_has_a_stream_of_its_own(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    run(
        redis_url,
        key_prefix,
        lambda s, c: s.append([replace(make_record(c), category=c) for c in CATEGORIES]),
    )
    for category in CATEGORIES:
        assert [e["message"] for e in stored(raw, key_prefix, category)] == [category]

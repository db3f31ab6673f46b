"""Structured log records: their shape, how one is built, checked and filtered.

A record is what the gateway keeps of one event: when, which category (action,
decision, error, security, performance, user), the level, a short event type, the
message, the agent, session and trace it belongs to, which logger wrote it, and
`data`. This module builds records from the gateway's own `logging` calls
(`record_from_logging`; an agent's `Gateway.Log` records are built in
`agent_logs.py` with the same functions), and it is the one place where a record's
data is redacted (the audit log's rules, `Redactor`) and then cut to size
(`truncate`), so that the stderr line, the JSON Lines file and the stored record
all hold the same, safe text. It also holds the stored JSON form and the query
filter; the `logs:` section of the config is `log_settings.py`. Pure: no grpc, no
redis; time comes in as a value.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from gateway.domain.redaction import Redactor
from gateway.errors import InvalidRequest, preview

CATEGORIES = ("action", "decision", "error", "security", "performance", "user")
# What an agent may file through `Gateway.Log`; the rest is the gateway's own.
AGENT_CATEGORIES = ("decision", "error", "user")
# Level names and their ranks (those of Python's logging).
LEVELS = MappingProxyType({"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50})
AGENT_LOGGER = "agent"

# Longest string kept under a key named like "reasoning", and anywhere else. A cut
# string ends with "…[N more characters]", so a reader knows it was cut.
REASONING_CHARS = 500
RESULT_CHARS = 1000
# A traceback keeps its end, which names the error.
EXCEPTION_CHARS = 4000
IDENTIFIER_CHARS = 128
EVENT_TYPE_CHARS = 64
MAX_DEPTH = 32


_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_PLACEHOLDER = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d+)?(\.(\*|\d+))?[a-zA-Z%]")
_BUILT = "_agentgw_record"  # the LogRecord built of a logging call, kept on it
_STANDARD = {
    *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
    "message",
    "asctime",
    _BUILT,
    "taskName",
}
# Extras that are fields of the record, not data. `event` is the older name of
# `event_type` that some of the gateway's log calls use.
_FIELDS = ("category", "event_type", "event", "agent_id", "session_id", "trace_id")


@dataclass(frozen=True, kw_only=True)
class LogRecord:
    """One event. `id` is its id in its category's stream ("<ms>-<n>"), "" before it
    is stored; `timestamp` is seconds since the epoch (kept to the millisecond)."""

    id: str = ""
    timestamp: float
    category: str
    level: str
    event_type: str
    message: str
    agent_id: str = ""
    session_id: str = ""
    trace_id: str = ""
    logger: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


# --- the JSON form: stderr lines, the JSON Lines file and the streams ------------


def timestamp_ms(seconds: float) -> int:
    """The millisecond a time falls in (via microseconds: 2097.151 is not 2097.150)."""
    return round(seconds * 1_000_000) // 1000


def format_timestamp(seconds: float) -> str:
    """ISO 8601 in UTC to the millisecond: 2026-11-25T05:55:27.123Z."""
    ms = timestamp_ms(seconds)
    whole = ms // 1000
    second, text = _LAST_SECOND
    if whole != second:
        text = f"{datetime.fromtimestamp(whole, UTC):%Y-%m-%dT%H:%M:%S}"
        _LAST_SECOND[:] = whole, text
    return f"{text}.{ms % 1000:03d}Z"


# The last second formatted: records come many to a second.
_LAST_SECOND: list[Any] = [None, ""]


def parse_timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def record_document(record: LogRecord) -> dict[str, Any]:
    """Every key is always there (empty agent, session or trace: ""), so that log
    shippers and queries see one schema."""
    return {
        "timestamp": format_timestamp(record.timestamp),
        "level": record.level,
        "category": record.category,
        "event_type": record.event_type,
        "message": record.message,
        "agent_id": record.agent_id,
        "session_id": record.session_id,
        "trace_id": record.trace_id,
        "logger": record.logger,
        "data": dict(record.data),
    }


def record_to_json(record: LogRecord) -> str:
    return _dumps(record_document(record))


def _dumps(document: Mapping[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def record_from_json(text: str, id: str = "") -> LogRecord:
    """The record of `record_to_json`; ValueError when `text` is not one."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("data", {}), dict):
        raise ValueError("not a log record")
    strings = {k: doc.get(k, "") for k in _TEXT_KEYS}
    if not all(isinstance(v, str) for v in strings.values()):
        raise ValueError("not a log record")
    return LogRecord(
        id=id,
        timestamp=parse_timestamp(str(doc["timestamp"])),
        data=doc.get("data", {}),
        **strings,
    )


_TEXT_KEYS = (
    "category",
    "level",
    "event_type",
    "message",
    "agent_id",
    "session_id",
    "trace_id",
    "logger",
)


# --- making values safe: JSON-like, redacted, then cut ------------------------------


def cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more characters]"


def _cut_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters before]…{text[-limit:]}"


def truncate(value: Any, limit: int = RESULT_CHARS) -> Any:
    """A copy with every string cut to `limit`, and to REASONING_CHARS under a key
    whose name contains "reasoning" (and anywhere inside its value)."""
    kind = type(value)  # exact types first: isinstance(x, Mapping) is slow
    if kind is str:
        return value if len(value) <= limit else cut(value, limit)
    if kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {
            k: truncate(v, REASONING_CHARS if "reasoning" in str(k).lower() else limit)
            for k, v in value.items()
        }
    if kind is list or kind is tuple:
        return [truncate(v, limit) for v in value]
    return value


def jsonable(value: Any, depth: int = 0) -> Any:
    """A copy JSON can encode: string keys, lists, finite numbers; anything else as
    its text (which redaction then reads like any text)."""
    kind = type(value)  # exact types first: isinstance(x, Mapping) is slow
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float or isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bool | int | str):  # subclasses (an IntEnum, a StrEnum)
        return value
    if depth >= MAX_DEPTH:
        return "[too deep]"
    if kind is dict or isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in value]
    return str(value)


def safe_data(data: Mapping[str, Any], redactor: Redactor) -> dict[str, Any]:
    """Redacted first, then cut: a cut secret might no longer look like one."""
    redacted = redactor.value(jsonable(data))
    return truncate(redacted) if isinstance(redacted, dict) else {}


def level_name(levelno: int) -> str:
    """The level of a Python logging level number (custom levels: the one below)."""
    name = "debug"
    for candidate, rank in LEVELS.items():
        if levelno >= rank:
            name = candidate
    return name


def event_type_of(text: str) -> str:
    """A message template as an event type: "Gateway listening on %s" ->
    "gateway_listening_on" (its %-placeholders left out)."""
    words = _PLACEHOLDER.sub(" ", text).lower()
    return _NOT_WORD.sub("_", words).strip("_")[:EVENT_TYPE_CHARS]


# --- the gateway's own records -------------------------------------------------------


def record_from_logging(
    record: logging.LogRecord, redactor: Redactor, now: float | None = None
) -> LogRecord:
    """The record of one `log.info("...", extra={...})` call.

    Extras `category`, `event_type` (or `event`), `agent_id`, `session_id` and
    `trace_id` are the record's fields; every other extra goes into `data`, as does
    the exception's traceback (`data.exception`). No category: "error" at ERROR and
    above, else "performance"; an unknown one is treated the same and kept in
    `data.category`. No event type: the message template in snake_case. `now`
    replaces the time the record was made (the gateway's clock).

    Built once per call and redaction rules: every output (stderr, the file, the
    streams) of one call shares the record, so its data is redacted and cut once.
    """
    cached = record.__dict__.get(_BUILT)
    if cached is not None and cached[0] is redactor.rules:
        built: LogRecord = cached[1]
    else:
        built = _build(record, redactor)
        record.__dict__[_BUILT] = (redactor.rules, built)
    return built if now is None else replace(built, timestamp=now)


def _build(record: logging.LogRecord, redactor: Redactor) -> LogRecord:
    extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    fields = {k: extras.pop(k) for k in _FIELDS if k in extras}
    category = fields.get("category")
    default = "error" if record.levelno >= logging.ERROR else "performance"
    if category not in CATEGORIES:
        if category is not None:
            extras["category"] = category
        category = default
    data = safe_data(extras, redactor)
    if record.exc_info:
        text = "".join(traceback.format_exception(*record.exc_info))
        data["exception"] = _cut_tail(redactor.text(text), EXCEPTION_CHARS)
    elif record.exc_text:
        data["exception"] = _cut_tail(redactor.text(record.exc_text), EXCEPTION_CHARS)
    if record.stack_info:
        data["stack"] = _cut_tail(redactor.text(record.stack_info), EXCEPTION_CHARS)
    event = fields.get("event_type", fields.get("event"))
    event_type = (
        _identifier(event, redactor, EVENT_TYPE_CHARS)
        if event
        else event_type_of(redactor.text(str(record.msg)))
    )
    return LogRecord(
        timestamp=record.created,
        category=str(category),
        level=level_name(record.levelno),
        event_type=event_type or str(category),
        message=cut(redactor.text(_message(record)), RESULT_CHARS),
        agent_id=_identifier(fields.get("agent_id"), redactor),
        session_id=_identifier(fields.get("session_id"), redactor),
        trace_id=_identifier(fields.get("trace_id"), redactor),
        logger=record.name,
        data=data,
    )


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):  # arguments that do not fit the template
        return str(record.msg)


def _identifier(value: object, redactor: Redactor, limit: int = IDENTIFIER_CHARS) -> str:
    return "" if value is None else cut(redactor.text(str(value)), limit)


# --- queries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """Which records a query wants; build it with `log_filter`, which checks it.
    `since` is inclusive, `until` exclusive (seconds since the epoch)."""

    categories: tuple[str, ...] = CATEGORIES
    agent_id: str = ""
    session_id: str = ""
    min_level: str = "debug"
    since: float | None = None
    until: float | None = None
    trace_id: str = ""

    def matches(self, record: LogRecord) -> bool:
        return (
            record.category in self.categories
            and LEVELS.get(record.level, 0) >= LEVELS[self.min_level]
            and (not self.agent_id or record.agent_id == self.agent_id)
            and (not self.session_id or record.session_id == self.session_id)
            and (not self.trace_id or record.trace_id == self.trace_id)
            and (self.since is None or record.timestamp >= self.since)
            and (self.until is None or record.timestamp < self.until)
        )


def log_filter(
    categories: tuple[str, ...] | list[str] = (),
    agent_id: str = "",
    session_id: str = "",
    min_level: str = "",
    since: float | None = None,
    until: float | None = None,
    trace_id: str = "",
) -> LogFilter:
    """A checked filter; empty values mean "any". InvalidRequest names the field."""
    for name in categories:
        if name not in CATEGORIES:
            raise InvalidRequest(
                "categories",
                f"unknown category '{preview(name)}' (expected {', '.join(CATEGORIES)})",
            )
    level = min_level.lower() or "debug"
    if level not in LEVELS:
        raise InvalidRequest(
            "min_level", f"unknown level '{preview(min_level)}' (expected {', '.join(LEVELS)})"
        )
    if since is not None and until is not None and until <= since:
        raise InvalidRequest("until", "must be after since")
    for name, value in (("agent_id", agent_id), ("session_id", session_id)):
        if len(value) > IDENTIFIER_CHARS:
            raise InvalidRequest(name, f"length {len(value)} exceeds the limit of 128")
    if trace_id:
        check_trace_id(trace_id)
    return LogFilter(
        categories=tuple(c for c in CATEGORIES if c in categories) or CATEGORIES,
        agent_id=agent_id,
        session_id=session_id,
        min_level=level,
        since=since,
        until=until,
        trace_id=trace_id,
    )


def new_trace_id() -> str:
    """A W3C trace id (32 lowercase hex digits; all zero is invalid, and a random one
    is never all zero in practice)."""
    return secrets.token_hex(16)


def check_trace_id(trace_id: str, field_name: str = "trace_id") -> None:
    """A W3C trace id: 32 lowercase hex digits, not all zero."""
    if not _TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
        raise InvalidRequest(field_name, "must be 32 lowercase hex digits, not all zero")

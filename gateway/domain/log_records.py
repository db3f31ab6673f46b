"""Structured log records: their shape, how one is built, checked and filtered.

A record is what the gateway keeps of one event: when, which category (action,
decision, error, security, performance, user), the level, a short event type, the
message, the agent, session and trace it belongs to, which logger wrote it, and
`data`. This module builds records from the gateway's own `logging` calls
(`record_from_logging`) and from an agent's `Gateway.Log` call (`agent_log_record`),
and it is the one place where a record's data is redacted (the audit log's rules,
`Redactor`) and then cut to size (`truncate`), so that the stderr line, the JSON
Lines file and the stored record all hold the same, safe text. It also holds the
stored JSON form, the query filter and the `logs:` section of the config. Pure: no
grpc, no redis; time comes in as a value.
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
from pathlib import Path
from types import MappingProxyType
from typing import Any

from yaml.nodes import Node

from gateway.domain.redaction import Redactor
from gateway.domain.validation import ACTION_TYPE, Limits, require_identifier
from gateway.domain.yaml_reader import YamlReader, join
from gateway.errors import Forbidden, InvalidRequest, preview

CATEGORIES = ("action", "decision", "error", "security", "performance", "user")
# What an agent may file through `Gateway.Log`; the rest is the gateway's own.
AGENT_CATEGORIES = ("decision", "error", "user")
# The `kind` oneof of a LogEvent names its category, and the default event type.
KIND_CATEGORY = MappingProxyType(
    {"decision": "decision", "error": "error", "user_interaction": "user"}
)
# Every event type an agent files starts with this, so that no agent record reads as
# one of the gateway's own (a `decision` record of the decision path, say).
AGENT_EVENT_PREFIX = "agent."
AGENT_EVENT_TYPE = MappingProxyType(
    {"decision": "agent.decision", "error": "agent.error", "user": "agent.user_interaction"}
)
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
# What an agent may send: a message this long (it is kept to RESULT_CHARS).
MAX_AGENT_MESSAGE_CHARS = 10_000

DAY = 86400.0
DEFAULT_RETENTION_DAYS = MappingProxyType(
    {"action": 30, "decision": 90, "error": 365, "security": 730, "performance": 30, "user": 90}
)
DEFAULT_MAX_RECORDS = 1_000_000

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
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


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
    if isinstance(value, str):
        return cut(value, limit)
    if isinstance(value, Mapping):
        return {
            k: truncate(v, REASONING_CHARS if "reasoning" in str(k).lower() else limit)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [truncate(v, limit) for v in value]
    return value


def jsonable(value: Any, depth: int = 0) -> Any:
    """A copy JSON can encode: string keys, lists, finite numbers; anything else as
    its text (which redaction then reads like any text)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, Mapping):
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


# --- an agent's own records (Gateway.Log) -------------------------------------------


@dataclass(frozen=True)
class AgentLogEvent:
    """A `LogEvent` as sent. `kind` is which of its oneof was set ("" when none) and
    `details` that part's values (for "error", `context` is a mapping)."""

    agent_id: str
    session_id: str = ""
    category: str = ""
    message: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    level: str = ""
    event_type: str = ""
    trace_id: str = ""
    kind: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


def agent_log_record(
    principal_name: str,
    event: AgentLogEvent,
    now: float,
    redactor: Redactor,
    default_trace_id: str = "",
    limits: Limits | None = None,
) -> LogRecord:
    """The record an agent files, checked: agents log only as themselves, in
    decision, error or user, with bounded sizes. Its data (`fields`, and the kind's
    values under the kind's name, e.g. `data.decision.reasoning`) is redacted then
    cut like the gateway's own; it is filed under the logger "agent"."""
    limits = limits or Limits()
    require_identifier("agent_id", event.agent_id, limits.max_id_chars)
    if event.agent_id != principal_name:  # as `authorize_agent` of services/decisions.py
        raise Forbidden(
            f"agent_id '{event.agent_id}' does not match the authenticated agent '{principal_name}'"
        )
    if event.session_id:
        require_identifier("session_id", event.session_id, limits.max_id_chars)
    category = _agent_category(event)
    level = event.level.lower() or "info"
    if level not in LEVELS:
        raise InvalidRequest(
            "level", f"unknown level '{preview(event.level)}' (expected {', '.join(LEVELS)})"
        )
    if event.event_type and (
        len(event.event_type) > limits.max_action_type_chars
        or not ACTION_TYPE.fullmatch(event.event_type)
    ):
        raise InvalidRequest(
            "event_type",
            f"must be at most {limits.max_action_type_chars} characters, starting with a"
            " letter or digit, of A-Z a-z 0-9 . _ : / -",
        )
    for name, value in (("session_id", event.session_id), ("event_type", event.event_type)):
        if value and redactor.looks_secret(value):  # as Submit's identifiers
            raise InvalidRequest(
                name,
                "looks like a credential (token, key or password); identifiers are "
                "recorded as they are, so they must not carry secrets",
            )
    if event.trace_id:
        check_trace_id(event.trace_id)
    if len(event.message) > MAX_AGENT_MESSAGE_CHARS:
        raise InvalidRequest(
            "message",
            f"length {len(event.message)} exceeds the limit of {MAX_AGENT_MESSAGE_CHARS}",
        )
    _check_details(event, limits)
    data: dict[str, Any] = dict(event.fields)
    if event.kind:
        data[event.kind] = dict(event.details)
    return LogRecord(
        timestamp=now,
        category=category,
        level=level,
        event_type=_agent_event_type(event.event_type) or AGENT_EVENT_TYPE[category],
        message=cut(redactor.text(event.message), RESULT_CHARS),
        agent_id=event.agent_id,
        session_id=event.session_id,
        trace_id=event.trace_id or default_trace_id,
        logger=AGENT_LOGGER,
        data=safe_data(data, redactor),
    )


def _agent_event_type(event_type: str) -> str:
    if not event_type or event_type.startswith(AGENT_EVENT_PREFIX):
        return event_type
    return AGENT_EVENT_PREFIX + event_type


def _agent_category(event: AgentLogEvent) -> str:
    from_kind = KIND_CATEGORY.get(event.kind, "")
    if event.category and event.category not in AGENT_CATEGORIES:
        raise InvalidRequest(
            "category",
            f"'{preview(event.category)}' is not one an agent may log"
            f" (expected {', '.join(AGENT_CATEGORIES)})",
        )
    if event.category and from_kind and event.category != from_kind:
        raise InvalidRequest(
            "category", f"'{event.category}' does not match {event.kind} (category {from_kind})"
        )
    category = event.category or from_kind
    if not category:
        raise InvalidRequest(
            "category", "is required (decision, error or user) unless a kind is set"
        )
    return category


def _check_details(event: AgentLogEvent, limits: Limits) -> None:
    _check_size("fields", event.fields, limits)
    _check_size(event.kind or "details", event.details, limits)
    confidence = event.details.get("confidence", 0.0)
    if event.kind == "decision" and not (
        isinstance(confidence, int | float) and 0.0 <= confidence <= 1.0
    ):
        raise InvalidRequest("decision.confidence", "must be a number from 0 to 1")
    reasoning = event.details.get("reasoning", "")
    if isinstance(reasoning, str) and len(reasoning) > limits.max_reasoning_chars:
        raise InvalidRequest(
            f"{event.kind}.reasoning",
            f"length {len(reasoning)} exceeds the limit of {limits.max_reasoning_chars}",
        )


def _check_size(path: str, value: Mapping[str, Any], limits: Limits) -> None:
    size = _size(path, value, 1, limits)
    if size > limits.max_parameters_bytes:
        raise InvalidRequest(
            path, f"size {size} bytes exceeds the limit of {limits.max_parameters_bytes}"
        )


def _size(path: str, value: Any, depth: int, limits: Limits) -> int:
    """An upper bound of the JSON size; checks depth and finiteness on the way."""
    if depth > limits.max_parameter_depth:
        raise InvalidRequest(
            path, f"depth {depth} exceeds the limit of {limits.max_parameter_depth}"
        )
    if isinstance(value, Mapping):
        return 2 + sum(
            len(str(k)) * 6 + 3 + _size(f"{path}.{preview(str(k), 32)}", v, depth + 1, limits)
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return 2 + sum(1 + _size(f"{path}[{i}]", v, depth + 1, limits) for i, v in enumerate(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(path, "must be a finite number")
    if isinstance(value, str):
        return len(value) * 6 + 2
    return 24


# --- the `logs:` section of the config -------------------------------------------------


@dataclass(frozen=True)
class LogSettings:
    """How long (seconds) and how many records each category's stream keeps, the
    stderr format, the optional JSON Lines file, the shipping queue's bound (records
    waiting for Redis), and how often every stream is trimmed."""

    retention_seconds: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(
            {c: days * DAY for c, days in DEFAULT_RETENTION_DAYS.items()}
        )
    )
    max_records: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(CATEGORIES, DEFAULT_MAX_RECORDS))
    )
    format: str = "json"
    file: Path | None = None
    queue_size: int = 10_000
    trim_interval_seconds: float = 300.0


LOG_KEYS = (
    "format",
    "file",
    "retention_days",
    "max_records",
    "queue_size",
    "trim_interval_seconds",
)


def read_log_settings(r: YamlReader, node: Node, base_dir: Path | None = None) -> LogSettings:
    """`logs:`; every key optional, a category left out keeps its default:

    logs:
      format: json                # stderr: json | text (--log-format overrides)
      file: logs/agentgw.jsonl    # also write JSON Lines here (relative: base_dir)
      retention_days: {action: 30, decision: 90, error: 365, security: 730,
                       performance: 30, user: 90}
      max_records: {action: 1000000, ...}   # per category; the oldest go first
      queue_size: 10000           # records waiting for Redis before some are dropped
      trim_interval_seconds: 300  # every stream is trimmed this often
    """
    m = r.mapping(node, "logs", LOG_KEYS)
    settings = LogSettings()
    changes: dict[str, Any] = {}
    if "format" in m:
        changes["format"] = r.string(m["format"], "logs.format")
        if changes["format"] not in ("json", "text"):
            raise r.fail(m["format"], "logs.format", "expected json or text")
    if "file" in m:
        path = Path(r.string(m["file"], "logs.file")).expanduser()
        changes["file"] = base_dir / path if base_dir and not path.is_absolute() else path
    if "retention_days" in m:
        where = "logs.retention_days"
        days = r.mapping(m["retention_days"], where, CATEGORIES)
        retention = dict(settings.retention_seconds)
        for name, value in days.items():
            retention[name] = r.number(value, join(where, name), 0.01) * DAY
        changes["retention_seconds"] = MappingProxyType(retention)
    if "max_records" in m:
        where = "logs.max_records"
        counts = dict(settings.max_records)
        for name, value in r.mapping(m["max_records"], where, CATEGORIES).items():
            counts[name] = r.integer(value, join(where, name), 1)
        changes["max_records"] = MappingProxyType(counts)
    if "queue_size" in m:
        changes["queue_size"] = r.integer(m["queue_size"], "logs.queue_size", 100)
    if "trim_interval_seconds" in m:
        where = "logs.trim_interval_seconds"
        changes["trim_interval_seconds"] = r.number(m["trim_interval_seconds"], where, 1)
    return replace(settings, **changes)

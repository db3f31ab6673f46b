"""The gateway's log output: JSON or text lines on stderr, a JSON Lines file, a sink.

Producers log with Python `logging` under "agentgw", passing the record's fields as
extras: `category` (action, decision, error, security, performance, user), and
optionally `event_type`, `agent_id`, `session_id`, `trace_id`; any other extra goes
into `data`. The record is built once per output by
`gateway.domain.log_records.record_from_logging`, which redacts the message, the data
and the exception text (the audit log's rules, as a last line of defence: callers pass
redacted values) and cuts long strings. A JSON line always has every key:

    {"timestamp": "2026-11-25T05:55:27.123Z", "level": "info", "category": "decision",
     "event_type": "decision", "message": "decision", "agent_id": "agent-1",
     "session_id": "s-1", "trace_id": "", "logger": "agentgw.services.decisions",
     "data": {"verdict": "allow", ...}}

An agent, session or trace the record is not about is "" (one schema for shippers).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from pathlib import Path
from typing import Any

from gateway.domain.log_records import format_timestamp, record_from_logging, record_to_json
from gateway.domain.redaction import RedactionRules, Redactor
from gateway.errors import ConfigError

FORMATS = ("json", "text")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (`record_to_json`)."""

    def __init__(self, redaction: RedactionRules | None = None) -> None:
        super().__init__()
        self.redactor = Redactor(redaction)

    def format(self, record: logging.LogRecord) -> str:
        return record_to_json(record_from_logging(record, self.redactor))


class TextFormatter(logging.Formatter):
    """One line per record, for people:

    2026-11-25T05:55:27.123Z INFO     decision    decision [agent=agent-1 session=s-1]
    decision verdict=allow audit_seq=7

    (on one line). Data values that are not plain words are written as JSON (so are
    numbers: `audit_seq=7` is the JSON 7), so a line never breaks and a key=value
    pair always reads back; so is a message with control characters.
    """

    def __init__(self, redaction: RedactionRules | None = None) -> None:
        super().__init__()
        self.redactor = Redactor(redaction)

    def format(self, record: logging.LogRecord) -> str:
        r = record_from_logging(record, self.redactor)
        about = [
            f"{name}={_word(value)}"
            for name, value in (
                ("agent", r.agent_id),
                ("session", r.session_id),
                ("trace", r.trace_id),
            )
            if value
        ]
        parts = [
            format_timestamp(r.timestamp),
            f"{r.level.upper():<8}",
            f"{r.category:<11}",
            r.event_type,
        ]
        if about:
            parts.append(f"[{' '.join(about)}]")
        parts.append(r.message if r.message.isprintable() else _word(r.message))
        parts += [f"{_word(key)}={_word(value)}" for key, value in r.data.items()]
        return " ".join(parts)


def _word(value: Any) -> str:
    """A value as one word: plain text as it is, anything else (spaces, quotes, `=`,
    control characters, numbers, lists) as JSON."""
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    return json.dumps(value, ensure_ascii=False)


_PLAIN = re.compile(r"[^\s\"=]+")


def configure_logging(
    level: str,
    redaction: RedactionRules | None = None,
    log_format: str = "json",
    file: Path | None = None,
    sink: logging.Handler | None = None,
) -> None:
    """The "agentgw" logger's outputs: stderr in `log_format` (json or text), the
    JSON Lines `file` if given (a WatchedFileHandler: reopened when logrotate moves
    it), and `sink` (e.g. the `LogSink` of the streams) if given."""
    if log_format not in FORMATS:
        raise ConfigError(f"log format: expected json or text, got {log_format!r}")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(
        TextFormatter(redaction) if log_format == "text" else JsonFormatter(redaction)
    )
    handlers: list[logging.Handler] = [stderr]
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            lines = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"logs.file: cannot open {file}: {e.strerror}") from None
        lines.setFormatter(JsonFormatter(redaction))
        handlers.append(lines)
    if sink is not None:
        handlers.append(sink)
    root = logging.getLogger("agentgw")
    for old in root.handlers:
        if old not in handlers:
            old.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = False

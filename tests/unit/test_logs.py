"""Log lines: one JSON object each, redacted as a last line of defence."""

from __future__ import annotations

import json
import logging
import sys

from gateway.domain.redaction import REDACTED, RedactionRules, value_pattern
from gateway.logs import JsonFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("agentgw.test", logging.WARNING, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_the_message_is_redacted_like_any_text() -> None:
    line = JsonFormatter().format(
        record("cannot reach %s with %s", "redis://:hunter2@redis:6379/0", "Bearer abc123def456")
    )
    out = json.loads(line)
    assert out["message"] == f"cannot reach redis://:{REDACTED}@redis:6379/0 with Bearer {REDACTED}"
    assert "hunter2" not in line and "abc123def456" not in line


def test_extras_and_objects_json_cannot_encode_are_redacted() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "https://u:hunter2@h/"

    line = JsonFormatter().format(
        record("x", category="security", password="hunter2", url="https://h/?token=t0k", o=Opaque())
    )
    out = json.loads(line)
    assert out["category"] == "security"
    assert out["password"] == REDACTED
    assert out["url"] == f"https://h/?token={REDACTED}"
    assert out["o"] == f"https://u:{REDACTED}@h/"


def test_exception_text_is_redacted() -> None:
    try:
        raise ConnectionError("redis://:hunter2@redis:6379 refused")
    except ConnectionError:
        made = record("store down")
        made.exc_info = sys.exc_info()
    line = JsonFormatter().format(made)
    assert "hunter2" not in line
    assert f"redis://:{REDACTED}@redis:6379 refused" in json.loads(line)["exception"]


def test_configured_rules_apply_to_log_lines() -> None:
    formatter = JsonFormatter(RedactionRules(patterns=(value_pattern(r"ACME-\d{4}"),)))
    assert json.loads(formatter.format(record("code ACME-1234")))["message"] == f"code {REDACTED}"

"""Log lines: one JSON object (or one text line) each, redacted as a last line of
defence, and the outputs `configure_logging` sets up."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.domain.log_records import RESULT_CHARS
from gateway.domain.redaction import REDACTED, RedactionRules, value_pattern
from gateway.errors import ConfigError
from gateway.logs import JsonFormatter, TextFormatter, configure_logging

KEYS = [
    "timestamp",
    "level",
    "category",
    "event_type",
    "message",
    "agent_id",
    "session_id",
    "trace_id",
    "logger",
    "data",
]


def record(
    message: str, *args: object, level: int = logging.WARNING, **extra: object
) -> logging.LogRecord:
    made = logging.LogRecord("agentgw.test", level, __file__, 1, message, args, None)
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
    assert out["data"]["password"] == REDACTED
    assert out["data"]["url"] == f"https://h/?token={REDACTED}"
    assert out["data"]["o"] == f"https://u:{REDACTED}@h/"
    assert "hunter2" not in line


def test_exception_text_is_redacted() -> None:
    try:
        raise ConnectionError("redis://:hunter2@redis:6379 refused")
    except ConnectionError:
        made = record("store down")
        made.exc_info = sys.exc_info()
    line = JsonFormatter().format(made)
    assert "hunter2" not in line
    assert f"redis://:{REDACTED}@redis:6379 refused" in json.loads(line)["data"]["exception"]


def test_configured_rules_apply_to_log_lines() -> None:
    formatter = JsonFormatter(RedactionRules(patterns=(value_pattern(r"ACME-\d{4}"),)))
    assert json.loads(formatter.format(record("code ACME-1234")))["message"] == f"code {REDACTED}"


def test_a_line_has_every_key_in_order_and_fields_are_not_data() -> None:
    out = json.loads(
        JsonFormatter().format(
            record(
                "decision",
                level=logging.INFO,
                category="decision",
                agent_id="agent-1",
                session_id="s-1",
                trace_id="ab" * 16,
                event_type="action_decided",
                verdict="allow",
            )
        )
    )
    assert list(out) == KEYS
    assert out["timestamp"].endswith("Z") and len(out["timestamp"]) == 24
    assert (out["level"], out["category"], out["event_type"]) == (
        "info",
        "decision",
        "action_decided",
    )
    assert (out["agent_id"], out["session_id"], out["trace_id"]) == ("agent-1", "s-1", "ab" * 16)
    assert out["logger"] == "agentgw.test"
    assert out["data"] == {"verdict": "allow"}


def test_without_a_category_errors_are_errors_and_the_rest_performance() -> None:
    error = json.loads(JsonFormatter().format(record("boom", level=logging.ERROR)))
    info = json.loads(JsonFormatter().format(record("tick", level=logging.INFO)))
    assert error["category"] == "error"
    assert info["category"] == "performance"
    assert (info["agent_id"], info["session_id"], info["trace_id"]) == ("", "", "")


def test_long_values_in_a_line_are_cut_with_a_marker() -> None:
    out = json.loads(JsonFormatter().format(record("x", result="r" * 5000, reasoning="why " * 400)))
    assert out["data"]["result"] == "r" * RESULT_CHARS + "…[4000 more characters]"
    assert out["data"]["reasoning"].startswith("why ")
    assert out["data"]["reasoning"].endswith("…[1100 more characters]")


def test_a_text_line_is_one_line_with_fields_and_data() -> None:
    line = TextFormatter().format(
        record(
            "decision",
            level=logging.INFO,
            category="decision",
            agent_id="agent-1",
            session_id="s-1",
            verdict="allow",
            audit_seq=7,
            note="two\nlines",
            password="hunter2",
        )
    )
    assert "\n" not in line
    assert " INFO " in line and " decision " in line
    assert "[agent=agent-1 session=s-1]" in line
    assert "verdict=allow" in line and "audit_seq=7" in line
    assert 'note="two\\nlines"' in line
    assert f"password={REDACTED}" in line and "hunter2" not in line


@pytest.fixture
def restored_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("agentgw")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield logger
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_configure_logging_writes_json_lines_to_the_file_and_feeds_the_sink(
    tmp_path: Path, restored_logger: logging.Logger
) -> None:
    sink = Collect()
    path = tmp_path / "logs" / "agentgw.jsonl"
    configure_logging("INFO", log_format="text", file=path, sink=sink)
    log = logging.getLogger("agentgw.test")
    log.debug("not at this level")
    log.info("gateway listening", extra={"port": 1, "token": "t0k"})
    for handler in restored_logger.handlers:
        handler.flush()
    [line] = path.read_text(encoding="utf-8").splitlines()
    out = json.loads(line)
    assert out["event_type"] == "gateway_listening"
    assert out["data"] == {"port": 1, "token": REDACTED}
    assert [r.getMessage() for r in sink.records] == ["gateway listening"]
    assert isinstance(restored_logger.handlers[0].formatter, TextFormatter)


def test_an_unknown_format_or_a_file_that_cannot_open_is_a_config_error(
    tmp_path: Path, restored_logger: logging.Logger
) -> None:
    with pytest.raises(ConfigError, match="json or text"):
        configure_logging("INFO", log_format="xml")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"logs\.file"):
        configure_logging("INFO", file=tmp_path / "file" / "agentgw.jsonl")

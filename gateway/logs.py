"""Structured JSON logs with categories.

Every record is one JSON object per line on stderr: time, level, logger, message,
category (actions, decisions, errors, security, performance, user_interactions)
and any `extra` fields. Callers pass already-redacted values; the message, the
extras and any exception text are redacted again as a last line of defence, with the
same rules as requests (gateway.domain.redaction).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from gateway.domain.redaction import RedactionRules, Redactor

CATEGORIES = ("actions", "decisions", "errors", "security", "performance", "user_interactions")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, redaction: RedactionRules | None = None) -> None:
        super().__init__()
        self.redactor = Redactor(redaction)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redactor.text(record.getMessage()),
        }
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        out["category"] = extras.pop(
            "category", "errors" if record.levelno >= logging.ERROR else "performance"
        )
        out.update(self.redactor.value(extras))
        if record.exc_info:
            out["exception"] = self.redactor.text(self.formatException(record.exc_info))
        return json.dumps(out, default=self._unknown, ensure_ascii=False)

    def _unknown(self, value: object) -> str:
        # Objects JSON cannot encode are logged as their text, redacted like any text.
        return self.redactor.text(str(value))


def configure_logging(level: str, redaction: RedactionRules | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redaction))
    root = logging.getLogger("agentgw")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

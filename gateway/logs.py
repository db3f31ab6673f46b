"""Structured JSON logs with categories.

Every record is one JSON object per line on stderr: time, level, logger, message,
category (actions, decisions, errors, security, performance, user_interactions)
and any `extra` fields. Callers pass already-redacted values; `redact` is applied
again to extras as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from gateway.redaction import redact

CATEGORIES = ("actions", "decisions", "errors", "security", "performance", "user_interactions")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        out["category"] = extras.pop(
            "category", "errors" if record.levelno >= logging.ERROR else "performance"
        )
        out.update(redact(extras))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("agentgw")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

"""The `logs:` section of the config: each category's retention and bound, the stderr
format, the JSON Lines file, the shipping queue and the trim cadence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from yaml.nodes import Node

from gateway.domain.log_records import CATEGORIES
from gateway.domain.yaml_reader import YamlReader, join

DAY = 86400.0
DEFAULT_RETENTION_DAYS = MappingProxyType(
    {"action": 30, "decision": 90, "error": 365, "security": 730, "performance": 30, "user": 90}
)
DEFAULT_MAX_RECORDS = 1_000_000

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

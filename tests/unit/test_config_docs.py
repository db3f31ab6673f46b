"""The config file of docs/configuration.md, "The file", is one the gateway reads."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import parse_config
from gateway.domain.alerts.model import Severity

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_documented_config_file_parses_with_every_section() -> None:
    text = DOCS.read_text(encoding="utf-8").split("## The file", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", text, flags=re.S)
    assert block is not None
    config = parse_config(block.group(1), "docs/configuration.md", DOCS.parent)
    assert config.logs.retention_seconds["security"] == 730 * 86400
    assert config.logs.file is not None and config.logs.file.name == "agentgw.jsonl"
    assert [c.name for c in config.alerts.channels] == ["oncall", "hook", "pager"]
    rules = {r.name: r for r in config.alerts.rules}
    assert "resource_usage" not in rules  # disabled there
    assert rules["payments_denied"].severity is Severity.HIGH
    assert config.alerts.channels_of(rules["payments_denied"]) == ("log", "pager")
    assert config.audit.verify_interval_seconds == 0

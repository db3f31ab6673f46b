"""docs/cli.md's exit code table is the CLI's: every code in it is a constant of
clients/cli/common.py with that value, and every constant is in the table."""

from __future__ import annotations

import re
from pathlib import Path

from clients.cli import common

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_documented_exit_codes_are_the_cli_s() -> None:
    section = DOC.read_text(encoding="utf-8").split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    constants = {value for name, value in vars(common).items() if name.startswith("EXIT_")}
    assert documented == constants
    assert len(constants) == len([n for n in vars(common) if n.startswith("EXIT_")])

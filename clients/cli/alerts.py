"""`agentgw alerts`: placeholder until its commands land."""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any) -> None:  # argparse's _SubParsersAction
    del sub

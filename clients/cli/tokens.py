"""`agentgw tokens issue|rotate|list|revoke`: the principals' tokens in the config file."""

from __future__ import annotations

from clients.cli.common import Commands


def add_commands(sub: Commands) -> None:
    """Adds `agentgw tokens`."""

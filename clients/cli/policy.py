"""`agentgw policy check FILE`: lints a policy file offline (docs/policy.md)."""

from __future__ import annotations

from clients.cli.common import Commands


def add_commands(sub: Commands) -> None:
    """Adds `agentgw policy check`."""

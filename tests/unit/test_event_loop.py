"""`agentgw serve` runs on uvloop where it is installed, and on asyncio's loop when
AGENTGW_EVENT_LOOP=asyncio (or without uvloop)."""

from __future__ import annotations

import asyncio

import pytest

from clients.cli.admin import run_event_loop


def loop_module() -> str:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_event_loop(main())
    return seen[0]


def test_serve_runs_on_uvloop_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv("AGENTGW_EVENT_LOOP", raising=False)
    assert loop_module().startswith("uvloop")


def test_asyncio_s_loop_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTGW_EVENT_LOOP", "asyncio")
    assert loop_module().startswith("asyncio")

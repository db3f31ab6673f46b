"""The Lua scripts reach a server that does not know them (restarted, flushed) by
EVAL on the server their keys name: never by SCRIPT LOAD to every master, which a
cluster refuses while any master is down (tests/integration/test_cluster_probes.py
exports the log with one master down)."""

from __future__ import annotations

import redis

from tests.harness import RunningGateway


def test_a_server_that_forgot_the_scripts_runs_them_again(
    gw: RunningGateway, raw: redis.Redis
) -> None:
    agent = gw.agent()
    agent.submit("search", session_id="s", action_id="before")
    raw.script_flush()
    raw.config_resetstat()
    assert agent.submit("search", session_id="s", action_id="after").audit_seq == 2
    assert len(gw.export_lines()) == 2  # read_entries.lua, never loaded before the flush
    calls = raw.info("commandstats")
    assert "cmdstat_eval" in calls  # the fallback ran
    assert "cmdstat_script|load" not in calls and "cmdstat_script" not in calls

"""The operator's CLI over alerts against a real gateway: `alerts list` (table, JSON
Lines, filters), `alerts ack` (who and when; refusals in one line), `alerts watch`
(as a real process: JSON Lines or a line per alert, --max-events, Ctrl-C), the
admin role, and `agentgw alerts` alone printing its own help."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from clients.cli import main
from tests.harness import RunningGateway, token_for, wait_for
from tests.integration.test_alerts import loop
from tests.integration.test_cli_approvals import cli, json_lines
from tests.processes import AGENTGW, WITH_SIGINT

LOOP_RULE = "agent_stuck_in_loop"
UNKNOWN = "alert_" + "0" * 24


def listed(
    capsys: pytest.CaptureFixture[str], gw: RunningGateway, *filters: str
) -> list[dict[str, Any]]:
    code, out, err = cli(capsys, gw, "admin-1", "alerts", "list", *filters, "--json")
    assert (code, err) == (0, "")
    return json_lines(out)


def fire_loop_alert(
    capsys: pytest.CaptureFixture[str], gw: RunningGateway, agent: str = "agent-1"
) -> dict[str, Any]:
    """Loops `agent` (the high `agent_stuck_in_loop` rule fires) and returns the alert."""
    loop(gw.agent(agent), "s")
    (alert,) = wait_for(
        lambda: listed(capsys, gw, "--subject", agent), what=f"{agent}'s loop alert"
    )
    assert alert["rule"] == LOOP_RULE
    return alert


def fire_critical_alert(gw: RunningGateway) -> None:
    """Reuses an action id for other content: a critical `security_violation`."""
    gw.agent().submit("read_file", action_id="dup", session_id="x")
    with pytest.raises(grpc.RpcError):
        gw.agent().submit("write_file", action_id="dup", session_id="x")


# --- alerts list -------------------------------------------------------------------------------


def test_alerts_list_prints_a_table_and_json_lines(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, gw, "admin-1", "alerts", "list")
    assert (code, out, err) == (0, "no alerts\n", "")
    alert = fire_loop_alert(capsys, gw)
    assert alert["severity"] == "SEVERITY_HIGH" and alert["subject"] == "agent-1"
    assert alert["alert_id"].startswith("alert_") and alert["fired_at"].endswith("Z")
    assert alert["details"]["action_type"] == "read_file"

    code, out, err = cli(capsys, gw, "admin-1", "alerts", "list")
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split() == [
        "ID",
        "FIRED",
        "SEVERITY",
        "RULE",
        "SUBJECT",
        "MESSAGE",
        "ACKED",
        "BY",
    ]
    assert row.startswith(f"{alert['alert_id']} ")
    assert re.search(rf" \d+s ago +high +{LOOP_RULE} +agent-1 +agent-1: stuck in a loop", row)
    assert row.endswith(" -")  # nobody has acknowledged it
    # Columns line up: each cell starts where its header does.
    for column in ("SEVERITY", "RULE", "SUBJECT", "MESSAGE"):
        assert row[header.index(column) - 1] == " " and row[header.index(column)] != " "


def test_alerts_list_filters_by_severity_subject_state_and_limit(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    loop_alert = fire_loop_alert(capsys, gw)  # high, agent-1
    fire_critical_alert(gw)  # critical, agent-1
    wait_for(lambda: len(listed(capsys, gw)) == 2, what="the critical alert")

    def rules(*filters: str) -> list[str]:
        return [a["rule"] for a in listed(capsys, gw, *filters)]

    assert rules("--severity", "critical") == ["security_violation"]
    assert sorted(rules("--severity", "high")) == ["agent_stuck_in_loop", "security_violation"]
    assert len(rules("--severity", "low")) == 2
    assert rules("--subject", "agent-2") == []
    assert len(rules("--subject", "agent-1")) == 2
    assert rules("--limit", "1") == ["security_violation"]  # the newest
    cli(capsys, gw, "admin-1", "alerts", "ack", loop_alert["alert_id"])
    assert rules("--active") == ["security_violation"]
    assert rules("--active", "--severity", "high", "--subject", "agent-1") == ["security_violation"]

    # The gateway checks the limit and the subject, and says which it refuses.
    code, out, err = cli(capsys, gw, "admin-1", "alerts", "list", "--limit", "5000")
    assert (code, out) == (1, "")
    assert err.startswith("agentgw: ") and "limit" in err and "1000" in err
    assert err.count("\n") == 1
    code, out, err = cli(capsys, gw, "admin-1", "alerts", "list", "--subject", "not an id!")
    assert (code, out) == (1, "")
    assert err.startswith("agentgw: subject") and err.count("\n") == 1
    for bad in (["--limit", "0"], ["--severity", "urgent"]):
        with pytest.raises(SystemExit) as usage:
            cli(capsys, gw, "admin-1", "alerts", "list", *bad)
        assert usage.value.code == 2


# --- alerts ack --------------------------------------------------------------------------------


def test_ack_says_who_and_when_and_the_alert_is_no_longer_active(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = fire_loop_alert(capsys, gw)
    alert_id = alert["alert_id"]
    code, out, err = cli(capsys, gw, "admin-1", "alerts", "ack", alert_id, "--note", "on it")
    assert (code, err) == (0, "")
    assert re.fullmatch(
        rf"acknowledged {alert_id} \({LOOP_RULE}, agent-1\) by admin-1 at "
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(audit seq \d+\)\n",
        out,
    )
    code, out, err = cli(capsys, gw, "admin-1", "alerts", "list", "--active")
    assert (code, out, err) == (0, "no active alerts\n", "")
    (stored,) = listed(capsys, gw)
    assert stored["acknowledged_by"] == "admin-1"
    assert stored["acknowledgement_note"] == "on it"
    code, out, _ = cli(capsys, gw, "admin-1", "alerts", "list")
    assert out.splitlines()[1].endswith(" admin-1")


def test_ack_json_prints_the_acknowledged_alert(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    alert = fire_loop_alert(capsys, gw)
    code, out, err = cli(capsys, gw, "admin-1", "alerts", "ack", alert["alert_id"], "--json")
    assert (code, err) == (0, "")
    (acked,) = json_lines(out)
    assert acked["alert_id"] == alert["alert_id"]
    assert acked["acknowledged_by"] == "admin-1" and acked["acknowledged_at"].endswith("Z")
    assert int(acked["acknowledgement_audit_seq"]) > 0


def test_ack_twice_or_an_unknown_alert_is_refused_in_one_line(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    alert_id = fire_loop_alert(capsys, gw)["alert_id"]
    assert cli(capsys, gw, "admin-1", "alerts", "ack", alert_id)[0] == 0
    assert cli(capsys, gw, "admin-1", "alerts", "ack", alert_id, "--note", "me too") == (
        1,
        "",
        f"agentgw: alert {alert_id} was acknowledged by admin-1 already\n",
    )
    assert cli(capsys, gw, "admin-1", "alerts", "ack", UNKNOWN) == (
        1,
        "",
        f"agentgw: alert {UNKNOWN} not found (or past its retention)\n",
    )
    (stored,) = listed(capsys, gw)
    assert "acknowledgement_note" not in stored  # the refused second note was not kept


# --- the admin role, and the help ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["list"], ["ack", UNKNOWN], ["watch", "--json"]],
    ids=["list", "ack", "watch"],
)
def test_only_admins_may_use_alerts(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    refusal = "principal 'approver-1' has role approver; this call needs admin"
    if command[0] == "watch":
        refusal = f"could not watch alerts: {refusal}"
    assert cli(capsys, gw, "approver-1", "alerts", *command) == (1, "", f"agentgw: {refusal}\n")


def test_alerts_alone_prints_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: agentgw alerts ")
    for action in ("list", "watch", "ack"):
        assert re.search(rf"^    {action} ", err, flags=re.M)
    assert "serve" not in err  # not the top-level help


# --- alerts watch (a real process) -------------------------------------------------------------


class WatchProcess:
    """`agentgw alerts watch ARGS` in its own process; its stdout and stderr lines
    are collected by reader threads, so tests wait on them with a timeout."""

    def __init__(self, gw: RunningGateway, *args: str, reader_gone: bool = False) -> None:
        env = {**os.environ, "AGENTGW_SERVER": gw.target, "AGENTGW_TOKEN": token_for("admin-1")}
        self.process = subprocess.Popen(
            [*WITH_SIGINT, AGENTGW, "alerts", "watch", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        streams = [(self.process.stdout, self.out), (self.process.stderr, self.err)]
        if reader_gone:  # as `| head -0` does
            assert self.process.stdout is not None
            self.process.stdout.close()
            del streams[0]
        self.readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in streams
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_subscribed(self) -> None:
        wait_for(
            lambda: any("watching alerts" in line for line in self.err) or self.process.poll(),
            timeout=30,
            what="the watch to subscribe",
        )
        assert self.process.poll() is None, self.err

    def wait(self) -> int:
        code = self.process.wait(20)
        for reader in self.readers:
            reader.join(10)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


@contextmanager
def watching(gw: RunningGateway, *args: str, reader_gone: bool = False) -> Iterator[WatchProcess]:
    watch = WatchProcess(gw, *args, reader_gone=reader_gone)
    try:
        watch.wait_subscribed()
        yield watch
    finally:
        watch.stop()


def test_watch_json_prints_an_alert_fired_after_it_started_and_exits(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    with watching(gw, "--json", "--max-events", "1", "--severity", "high") as watch:
        assert watch.err == ["agentgw: watching alerts (high and above); Ctrl-C to stop"]
        alert = fire_loop_alert(capsys, gw)
        assert watch.wait() == 0
    (line,) = json_lines("\n".join(watch.out))
    assert line == alert
    assert len(watch.err) == 1


def test_watch_prints_a_line_per_alert_fired_or_acknowledged(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    with watching(gw, "--max-events", "3") as watch:
        first = fire_loop_alert(capsys, gw)
        wait_for(lambda: len(watch.out) == 1, what="the fired alert's line")
        fire_critical_alert(gw)
        wait_for(lambda: len(watch.out) == 2, what="the critical alert's line")
        cli(capsys, gw, "admin-1", "alerts", "ack", first["alert_id"], "--note", "fixed")
        assert watch.wait() == 0
    fired, critical, acked = watch.out
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ high     {LOOP_RULE} agent-1 "
        rf"{first['alert_id']}: agent-1: stuck in a loop in session s .*",
        fired,
    )
    assert " critical security_violation agent-1 alert_" in critical
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ acknowledged {first['alert_id']} "
        rf"\({LOOP_RULE}, agent-1\) by admin-1: fixed",
        acked,
    )


def test_watch_filters_by_severity(gw: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    with watching(gw, "--json", "--max-events", "1", "--severity", "critical") as watch:
        fire_loop_alert(capsys, gw)  # high: not shown
        fire_critical_alert(gw)
        assert watch.wait() == 0
    (line,) = json_lines("\n".join(watch.out))
    assert (line["rule"], line["severity"]) == ("security_violation", "SEVERITY_CRITICAL")


@pytest.mark.parametrize("mode", [["--json"], []], ids=["json", "lines"])
def test_watch_exits_quietly_on_ctrl_c(gw: RunningGateway, mode: list[str]) -> None:
    with watching(gw, *mode) as watch:
        watch.process.send_signal(signal.SIGINT)
        assert watch.wait() == 0
    assert watch.out == []
    assert len(watch.err) == 1 and "Traceback" not in "\n".join(watch.err)


def test_watch_and_list_stop_quietly_when_the_reader_goes_away(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    with watching(gw, "--json", reader_gone=True) as watch:
        fire_loop_alert(capsys, gw)
        assert watch.wait() == 0
    assert len(watch.err) == 1  # only the line saying it watches
    env = {**os.environ, "AGENTGW_SERVER": gw.target, "AGENTGW_TOKEN": token_for("admin-1")}
    for mode in (["--json"], []):
        listing = subprocess.Popen(
            [AGENTGW, "alerts", "list", *mode],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert listing.stdout is not None
        listing.stdout.close()
        _, err = listing.communicate(timeout=20)
        assert (listing.returncode, err) == (0, "")

"""The approver's and admin's CLI against a real gateway: `holds list` filters and
pages, `holds approve|reject` messages (quorum, refusals), `sessions list`, `agents
quarantine|release`, and `holds watch` (JSON lines, the live table, Ctrl-C, a stream
that ends); and the watch table's board (events -> rows), without a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agentgw.v1 import approvals_pb2, gateway_pb2
from clients.cli import main
from clients.cli.approver import (
    WATCH_COLUMNS,
    Board,
    apply_event,
    board_after,
    hold_table,
    row_cells,
)
from clients.cli.common import format_age
from clients.wire import python_to_struct
from tests.harness import ManualClock, RunningGateway, test_principals, token_for, wait_for
from tests.integration.test_approvals import QUORUM_POLICY
from tests.processes import AGENTGW, WITH_SIGINT

Kind = approvals_pb2.HoldEvent
MakeGateway = Callable[..., RunningGateway]


def cli(
    capsys: pytest.CaptureFixture[str], gw: RunningGateway, who: str, *args: str
) -> tuple[int, str, str]:
    """Runs `agentgw ARGS` in-process against `gw` with `who`'s token."""
    capsys.readouterr()
    code = main([*args, "--server", gw.target, "--token", token_for(who)])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def quorum(make_gateway: MakeGateway, tmp_path: Path) -> RunningGateway:
    policy = tmp_path / "policy.yaml"
    policy.write_text(QUORUM_POLICY)
    return make_gateway(policy_file=policy)


# --- holds list ------------------------------------------------------------------------


def test_holds_list_filters_and_fetches_every_page(
    make_gateway: MakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = ManualClock()
    gw = make_gateway(clock)
    old = [gw.agent().submit("send_email", session_id="x", parameters={"n": n}) for n in range(2)]
    clock.advance(120)
    new = gw.agent("agent-2").submit("delete_file", session_id="y", resource="/tmp/a")
    every = [d.hold_id for d in [*old, new]]

    def listed(*filters: str) -> list[str]:
        code, out, err = cli(capsys, gw, "approver-1", "holds", "list", *filters, "--json")
        assert (code, err) == (0, "")
        return [h["hold_id"] for h in json_lines(out)]

    assert listed() == every
    assert listed("--agent", "agent-2") == [new.hold_id]
    assert listed("--session", "x", "--action-type", "send_email") == every[:2]
    assert listed("--min-age", "60") == every[:2]
    assert listed("--action-type", "payment") == []
    assert listed("--page-size", "1") == every  # three pages of one

    code, out, _ = cli(capsys, gw, "approver-1", "holds", "list", "--page-size", "1")
    assert code == 0
    assert re.findall(r"^(hold_\w+)", out, flags=re.M) == every
    assert out.splitlines()[0].split()[:5] == ["HOLD", "AGENT", "SESSION", "ACTION", "APPROVALS"]
    assert out.count(" 0/1 ") == 3
    assert cli(capsys, gw, "approver-1", "holds", "list", "--agent", "nobody")[1] == (
        "no pending holds\n"
    )
    for bad in (["--page-size", "0"], ["--min-age", "-1"]):
        with pytest.raises(SystemExit) as usage:
            cli(capsys, gw, "approver-1", "holds", "list", *bad)
        assert usage.value.code == 2


# --- holds approve|reject ------------------------------------------------------------------


def test_approve_and_reject_say_what_happened_and_refusals_say_why(
    make_gateway: MakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = ManualClock()
    gw = make_gateway(clock)
    agent = gw.agent()
    first = agent.submit("send_email", session_id="s", action_id="a1")
    second = agent.submit("send_email", session_id="s", action_id="a2")

    def decide(verb: str, hold_id: str, who: str = "approver-1") -> tuple[int, str, str]:
        return cli(capsys, gw, who, "holds", verb, hold_id, "--reason", "checked")

    assert decide("approve", first.hold_id) == (
        0,
        f"approved {first.hold_id}: the action is released\n",
        "",
    )
    assert agent.wait(first, timeout=5).verdict == gateway_pb2.VERDICT_ALLOW
    assert decide("reject", second.hold_id) == (0, f"rejected {second.hold_id}\n", "")
    assert decide("approve", second.hold_id) == (
        1,
        "",
        f"agentgw: hold {second.hold_id} is already rejected\n",
    )
    assert decide("reject", "hold_0000") == (1, "", "agentgw: hold hold_0000 not found\n")
    code, _, err = decide("approve", first.hold_id, who="agent-1")
    assert (code, err) == (
        1,
        "agentgw: principal 'agent-1' has role agent; this call needs approver\n",
    )

    late = agent.submit("send_email", session_id="s", action_id="a3")
    clock.advance(gw.config.hold_ttl_seconds + 1)
    code, out, err = decide("approve", late.hold_id)
    assert (code, out) == (1, "")
    assert err.startswith(f"agentgw: hold {late.hold_id} ") and "expired" in err
    assert "FAILED_PRECONDITION" not in err


def test_a_quorum_approval_says_how_many_more_are_needed(
    quorum: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = quorum
    held = gw.agent().submit("payment", session_id="s", parameters={"amount": 9000})

    def approve(who: str) -> tuple[int, str, str]:
        return cli(capsys, gw, who, "holds", "approve", held.hold_id, "--reason", "ok")

    assert approve("approver-1") == (
        0,
        f"approved {held.hold_id} (1 of 2 approvals; 1 more needed)\n",
        "",
    )
    code, out, _ = cli(capsys, gw, "approver-2", "holds", "list")
    assert code == 0 and f"{held.hold_id} " in out and " 1/2 " in out
    assert approve("approver-1") == (
        1,
        "",
        f"agentgw: hold {held.hold_id} already has your approval; "
        "it needs 1 more from other approvers\n",
    )
    assert approve("approver-2") == (
        0,
        f"approved {held.hold_id}: the action is released\n",
        "",
    )
    assert gw.agent().wait(held, timeout=5).verdict == gateway_pb2.VERDICT_ALLOW


def test_an_owner_is_told_another_approver_must_decide(
    make_gateway: MakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    principals = tuple(
        replace(p, owns=frozenset({"agent-1"})) if p.name == "approver-1" else p
        for p in test_principals()
    )
    gw = make_gateway(principals=principals)
    held = gw.agent().submit("send_email", session_id="s")
    for verb in ("approve", "reject"):
        assert cli(capsys, gw, "approver-1", "holds", verb, held.hold_id, "--reason", "mine") == (
            1,
            "",
            f"agentgw: you own agent agent-1: another approver must {verb} its actions\n",
        )
    code, out, _ = cli(capsys, gw, "approver-2", "holds", "approve", held.hold_id, "--reason", "ok")
    assert (code, out) == (0, f"approved {held.hold_id}: the action is released\n")


# --- sessions list --------------------------------------------------------------------------


def test_sessions_list_shows_a_looping_session_until_it_is_resumed(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = gw.agent()
    looped = [agent.submit("read_file", session_id="loop", action_id=f"r{i}") for i in range(5)]
    pausing = looped[-1].hold_id
    assert pausing

    code, out, _ = cli(capsys, gw, "approver-1", "sessions", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["AGENT", "SESSION", "HOLD"]
    assert row.split()[:3] == ["agent-1", "loop", pausing]
    code, out, _ = cli(capsys, gw, "approver-1", "sessions", "list", "--agent", "agent-1", "--json")
    [paused] = json_lines(out)
    assert (paused["agent_id"], paused["session_id"], paused["hold_id"]) == (
        "agent-1",
        "loop",
        pausing,
    )
    assert cli(capsys, gw, "approver-1", "sessions", "list", "--agent", "agent-2")[1] == (
        "no paused sessions\n"
    )

    code, out, _ = cli(
        capsys, gw, "approver-1", "sessions", "resume", "agent-1", "loop", "--reason", "fixed"
    )
    assert code == 0 and out.startswith("session agent-1/loop resumed (audit seq ")
    assert cli(capsys, gw, "approver-1", "sessions", "list")[1] == "no paused sessions\n"


# --- agents quarantine|release -----------------------------------------------------------------


def test_agents_quarantine_holds_an_agents_actions_until_it_is_released(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    def admin(*args: str, who: str = "admin-1") -> tuple[int, str, str]:
        return cli(capsys, gw, who, "agents", *args)

    code, out, err = admin("quarantine", "agent-1", "--reason", "leaked key")
    assert (code, out, err) == (0, f"quarantined agent-1 (audit seq {gw.audit_head()})\n", "")
    held = gw.agent().submit("search", session_id="q")
    assert (held.verdict, held.reason) == (
        gateway_pb2.VERDICT_HOLD,
        "the agent is quarantined: leaked key",
    )
    code, out, _ = cli(capsys, gw, "approver-1", "holds", "list", "--agent", "agent-1")
    assert code == 0 and out.splitlines()[1].startswith(held.hold_id)
    assert admin("quarantine", "agent-1", "--reason", "again") == (
        1,
        "",
        "agentgw: agent agent-1 is already quarantined\n",
    )
    code, _, err = admin("release", "agent-1", "--reason", "x", who="approver-1")
    assert (code, err) == (
        1,
        "agentgw: principal 'approver-1' has role approver; this call needs admin\n",
    )

    code, out, _ = admin("release", "agent-1", "--reason", "rotated")
    assert (code, out) == (0, f"released agent-1 (audit seq {gw.audit_head()})\n")
    assert admin("release", "agent-1", "--reason", "rotated") == (
        0,
        "agent-1 was not quarantined\n",
        "",
    )
    assert gw.agent().submit("search", session_id="q").verdict == gateway_pb2.VERDICT_ALLOW


# --- holds watch -------------------------------------------------------------------------------


class Watch:
    """`agentgw holds watch ARGS` run in a thread against `gw`; what it prints is
    collected from capsys by the test's thread."""

    def __init__(
        self,
        capsys: pytest.CaptureFixture[str],
        gw: RunningGateway,
        *args: str,
        who: str = "approver-1",
    ) -> None:
        self.capsys = capsys
        self.out = ""
        self.err = ""
        self.code: int | None = None
        argv = ["holds", "watch", *args, "--server", gw.target, "--token", token_for(who)]
        capsys.readouterr()
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self.thread.start()

    def _run(self, argv: Sequence[str]) -> None:
        self.code = main(argv)

    def read(self) -> str:
        out, err = self.capsys.readouterr()
        self.out += out
        self.err += err
        return self.out

    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.read())

    def join(self) -> int:
        self.thread.join(15)
        assert not self.thread.is_alive(), "the watch did not exit"
        self.read()
        assert self.code is not None
        return self.code


def test_holds_watch_json_prints_each_event_as_it_happens(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    before = gw.agent().submit("send_email", session_id="s", action_id="before")
    watch = Watch(capsys, gw, "--json", "--max-events", "4")
    wait_for(lambda: len(watch.lines()) == 2, what="the pending hold and synced")
    during = gw.agent("agent-2").submit("delete_file", session_id="t", resource="/etc/x")
    wait_for(lambda: len(watch.lines()) == 3, what="the new hold")
    gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=during.hold_id, reason="expected"),
        metadata=gw.md("approver-1"),
    )
    assert watch.join() == 0
    assert watch.err == ""
    pending, synced, held, resolved = watch.lines()
    assert (pending["kind"], pending["hold"]["hold_id"]) == ("KIND_PENDING", before.hold_id)
    assert pending["hold"]["status"] == "HOLD_STATUS_PENDING"
    assert synced == {"kind": "KIND_SYNCED"}
    assert (held["kind"], held["hold"]["hold_id"]) == ("KIND_HELD", during.hold_id)
    assert held["hold"]["action"]["resource"] == "/etc/x"
    assert (resolved["kind"], resolved["hold"]["hold_id"]) == ("KIND_RESOLVED", during.hold_id)
    assert resolved["hold"]["status"] == "HOLD_STATUS_APPROVED"
    assert resolved["hold"]["resolution"]["decided_by"] == "approver-1"
    wait_for(lambda: gw.app.watch.watchers == 0, what="the watch to be cancelled")


def test_holds_watch_draws_a_live_table_and_notes_each_approval(
    quorum: RunningGateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = quorum
    # Draw as on a terminal: every refresh of the table is written out.
    for name, value in {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "NO_COLOR": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "220")
    pay = gw.agent().submit("payment", session_id="s", parameters={"amount": 9000})
    watch = Watch(capsys, gw, "--max-events", "4")
    wait_for(lambda: "watching; Ctrl-C to stop" in watch.read(), what="the synced table")
    assert "pending holds: 1" in watch.out and pay.hold_id in watch.out
    assert " 0/2 " in watch.out

    gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=pay.hold_id, reason="first"),
        metadata=gw.md("approver-1"),
    )
    note = f"{pay.hold_id} approved by approver-1 (1 of 2)"
    # The note, then the table redrawn with the approval (a refresh may come later).
    wait_for(
        lambda: note in watch.read() and " 1/2 " in watch.out.split(note)[1],
        what="the partial approval in the table",
    )
    gw.approvals.Reject(
        approvals_pb2.RejectRequest(hold_id=pay.hold_id, reason="not this month"),
        metadata=gw.md("approver-2"),
    )
    assert watch.join() == 0
    rest = watch.out.split(f"{pay.hold_id} rejected by approver-2: not this month")[1]
    assert "pending holds: 0" in rest


@pytest.mark.parametrize("mode", [["--json"], []], ids=["json", "table"])
def test_holds_watch_exits_quietly_on_ctrl_c(gw: RunningGateway, mode: list[str]) -> None:
    # As a user does it: the real command in its own process, and SIGINT to it (with
    # SIGINT's default disposition: WITH_SIGINT says why).
    env = {**os.environ, "AGENTGW_SERVER": gw.target, "AGENTGW_TOKEN": token_for("approver-1")}
    watch = subprocess.Popen(
        [*WITH_SIGINT, AGENTGW, "holds", "watch", *mode],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: gw.app.watch.watchers == 1, timeout=30, what="the watch to start")
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)
    assert (watch.returncode, err) == (0, "")
    assert "Traceback" not in out
    wait_for(lambda: gw.app.watch.watchers == 0, what="the watch to be cancelled")


def test_holds_watch_says_why_it_could_not_start_or_ended(
    make_gateway: MakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = make_gateway()
    code, out, err = cli(capsys, gw, "agent-1", "holds", "watch", "--json")
    assert (code, out) == (1, "")
    assert err == (
        "agentgw: could not watch holds: principal 'agent-1' has role agent; "
        "this call needs approver\n"
    )

    watch = Watch(capsys, gw, "--json")
    wait_for(lambda: watch.lines() == [{"kind": "KIND_SYNCED"}], what="synced")
    gw.stop()
    assert watch.join() == 1
    assert watch.err.startswith("agentgw: the watch ended: ")
    assert watch.err.count("\n") == 1


# --- the watch table's board, pure ------------------------------------------------------------


def hold(
    hold_id: str,
    created: float = 1000.0,
    status: approvals_pb2.HoldStatus.ValueType = approvals_pb2.HOLD_STATUS_PENDING,
    approvers: Sequence[str] = (),
    required: int = 1,
    decided_by: str = "",
    reason: str = "",
) -> approvals_pb2.Hold:
    message = approvals_pb2.Hold(
        hold_id=hold_id,
        agent_id="agent-1",
        session_id="s1",
        status=status,
        approvals=[gateway_pb2.Approval(approver=a) for a in approvers],
        approvals_required=required,
        findings=[
            gateway_pb2.Finding(type="suspicious_action"),
            gateway_pb2.Finding(type="rate_spike"),
            gateway_pb2.Finding(type="suspicious_action"),
        ],
        action=gateway_pb2.ActionRequest(
            action_type="send_email",
            resource="mailto:ana@example.com",
            parameters=python_to_struct({"to": "ana@example.com", "n": 3, "body": "x" * 100}),
        ),
        resolution=gateway_pb2.Resolution(decided_by=decided_by, reason=reason),
    )
    message.created_at.FromNanoseconds(int(created * 1e9))
    return message


def event(kind: int, held: approvals_pb2.Hold | None = None) -> approvals_pb2.HoldEvent:
    return approvals_pb2.HoldEvent(kind=Kind.Kind.ValueType(kind), hold=held)


def ids(board: Board) -> list[str]:
    return [r.hold_id for r in board.rows]


def test_the_board_starts_from_the_pending_holds_and_adds_new_ones_oldest_first() -> None:
    board = board_after(
        [
            event(Kind.KIND_PENDING, hold("hold_b", created=20)),
            event(Kind.KIND_PENDING, hold("hold_a", created=10)),
        ]
    )
    assert (ids(board), board.synced) == (["hold_a", "hold_b"], False)
    board, note = apply_event(board, event(Kind.KIND_SYNCED))
    assert (ids(board), board.synced, note) == (["hold_a", "hold_b"], True, None)
    board, note = apply_event(board, event(Kind.KIND_HELD, hold("hold_c", created=30)))
    assert (ids(board), note) == (["hold_a", "hold_b", "hold_c"], None)
    # The same hold again (a change seen by the snapshot and the stream) is one row.
    board, _ = apply_event(board, event(Kind.KIND_HELD, hold("hold_c", created=30)))
    assert ids(board) == ["hold_a", "hold_b", "hold_c"]


def test_a_partial_approval_updates_the_row_and_says_who() -> None:
    board = board_after([event(Kind.KIND_HELD, hold("hold_q", required=2))])
    assert board.rows[0].approvals == "0/2"
    board, note = apply_event(
        board, event(Kind.KIND_APPROVED_PARTLY, hold("hold_q", approvers=["ana"], required=2))
    )
    assert [(r.hold_id, r.approvals) for r in board.rows] == [("hold_q", "1/2")]
    assert note == "hold_q approved by ana (1 of 2)"


def test_a_resolution_removes_the_row_with_a_note() -> None:
    start = board_after([event(Kind.KIND_HELD, hold(h)) for h in ("hold_1", "hold_2", "hold_3")])
    approved = hold("hold_1", status=approvals_pb2.HOLD_STATUS_APPROVED, decided_by="ana")
    approved.resolution.reason = "known\n  recipient"
    rejected = hold("hold_2", status=approvals_pb2.HOLD_STATUS_REJECTED, decided_by="bob")
    expired = hold("hold_3", status=approvals_pb2.HOLD_STATUS_EXPIRED, decided_by="system")
    expired.resolution.reason = "hold expired without a decision"
    board, notes = start, []
    for resolved in (approved, rejected, expired):
        board, note = apply_event(board, event(Kind.KIND_RESOLVED, resolved))
        notes.append(note)
    assert notes == [
        "hold_1 approved by ana: known recipient",
        "hold_2 rejected by bob",
        "hold_3 expired",
    ]
    assert ids(board) == []
    # A held event read after the hold was decided leaves no row either.
    decided = hold("hold_1", status=approvals_pb2.HOLD_STATUS_APPROVED, decided_by="ana")
    assert apply_event(start, event(Kind.KIND_HELD, decided)) == (
        replace(start, rows=start.rows[1:]),
        None,
    )


def test_a_resync_replaces_the_rows_with_the_new_snapshot() -> None:
    board = board_after(
        [
            event(Kind.KIND_PENDING, hold("hold_a", created=1)),
            event(Kind.KIND_SYNCED),
            event(Kind.KIND_HELD, hold("hold_b", created=2)),
            # The gateway lost its subscription: every pending hold again. hold_a was
            # decided meanwhile, unseen; hold_c is new.
            event(Kind.KIND_PENDING, hold("hold_b", created=2)),
            event(Kind.KIND_PENDING, hold("hold_c", created=3)),
        ]
    )
    assert (ids(board), board.synced) == (["hold_a", "hold_b", "hold_c"], False)
    board, _ = apply_event(board, event(Kind.KIND_SYNCED))
    assert (ids(board), board.synced) == (["hold_b", "hold_c"], True)
    assert apply_event(board, event(99))[0] == board  # a kind this client does not know


def test_a_row_shows_short_redacted_parameters_finding_types_and_the_age() -> None:
    [row] = board_after([event(Kind.KIND_HELD, hold("hold_x", created=1000, required=2))]).rows
    cells = dict(zip(WATCH_COLUMNS, row_cells(row, now=1125.5), strict=True))
    assert cells["PARAMETERS"] == '{"body":"' + "x" * 30 + "…"  # 40 characters, keys sorted
    assert cells["FINDINGS"] == "suspicious_action, rate_spike"
    assert (cells["APPROVALS"], cells["AGE"]) == ("0/2", "2m05s")
    assert [format_age(s) for s in (-3, 7, 3725, 2 * 86400 + 4 * 3600)] == [
        "0s",
        "7s",
        "1h02m",
        "2d04h",
    ]

    screen = Console(file=io.StringIO(), width=200, color_system=None)
    screen.print(hold_table(replace(Board(rows=(row,)), synced=True), now=1125.5))
    drawn = screen.file.getvalue()  # type: ignore[attr-defined]
    assert "pending holds: 1" in drawn
    assert "hold_x" in drawn and "mailto:ana@example.com" in drawn and "2m05s" in drawn

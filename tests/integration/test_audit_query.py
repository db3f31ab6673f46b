"""Audit.Query and Audit.Report through real gRPC and a real Redis."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from agentgw.v1 import approvals_pb2, audit_pb2, gateway_pb2
from clients.cli import main
from clients.wire import entry_from_proto
from gateway.api.convert import timestamp
from gateway.domain.audit.entry import EntryDraft, format_timestamp
from gateway.domain.audit.query import MAX_CLOCK_SKEW_SECONDS
from tests.harness import RunningGateway, token_for

POLICY = """\
version: 1
default_verdict: allow
rules:
  - name: no-refunds
    verdict: deny
    reason: refunds are not allowed
    match:
      action_type: refund
  - name: hold-email
    verdict: hold
    reason: mail needs a human
    match:
      action_type: send_email
"""


@dataclass
class Story:
    """Eight entries in three hours: marks[0] <= seqs 1-2 < marks[1] <= 3-7 < marks[2] <= 8."""

    gw: RunningGateway
    marks: list[float]
    held_rejected: gateway_pb2.Decision


def tell_story(gw: RunningGateway) -> Story:
    one, two = gw.agent("agent-1"), gw.agent("agent-2")
    marks = [gw.clock()]
    one.submit("search", session_id="s1")  # 1 allow
    two.submit("search", session_id="s2")  # 2 allow
    gw.clock.advance(3600)
    marks.append(gw.clock())
    held = one.submit("send_email", session_id="s1")  # 3 hold
    gw.approvals.Reject(  # 4 hold_rejected, by a user, about agent-1
        approvals_pb2.RejectRequest(hold_id=held.hold_id, reason="external"),
        metadata=gw.md("approver-1"),
    )
    assert two.submit("refund", session_id="s2").verdict == gateway_pb2.VERDICT_DENY  # 5
    other = two.submit("send_email", session_id="s3")  # 6 hold
    gw.approvals.Approve(  # 7 hold_approved, about agent-2
        approvals_pb2.ApproveRequest(hold_id=other.hold_id, reason="fine"),
        metadata=gw.md("approver-1"),
    )
    gw.clock.advance(3600)
    marks.append(gw.clock())
    one.submit("search", session_id="s1")  # 8 allow
    assert gw.audit_head() == 8
    return Story(gw, marks, held)


@pytest.fixture
def story(make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> Story:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return tell_story(make_gateway(policy_file=policy))


def query(gw: RunningGateway, who: str = "auditor-1", **fields: Any) -> list[int]:
    stream = gw.audit.Query(audit_pb2.QueryRequest(**fields), metadata=gw.md(who), timeout=10)
    return [e.seq for e in stream]


def report(gw: RunningGateway, **fields: Any) -> audit_pb2.ReportResponse:
    response: audit_pb2.ReportResponse = gw.audit.Report(
        audit_pb2.ReportRequest(**fields), metadata=gw.md("auditor-1"), timeout=10
    )
    return response


def test_query_by_time_range_is_half_open(story: Story) -> None:
    gw, marks = story.gw, story.marks
    assert query(gw, start_time=timestamp(marks[1]), end_time=timestamp(marks[2])) == [
        3,
        4,
        5,
        6,
        7,
    ]
    assert query(gw, start_time=timestamp(marks[1])) == [3, 4, 5, 6, 7, 8]
    assert query(gw, end_time=timestamp(marks[1])) == [1, 2]
    assert query(gw, start_time=timestamp(marks[2] + 1)) == []
    assert query(gw) == [1, 2, 3, 4, 5, 6, 7, 8]
    # The entries come back whole, as ReadEntries returns them.
    [entry] = gw.audit.Query(
        audit_pb2.QueryRequest(outcome="deny"), metadata=gw.md("auditor-1"), timeout=10
    )
    [same] = gw.audit.ReadEntries(
        audit_pb2.ReadEntriesRequest(start_seq=5, end_seq=5), metadata=gw.md("auditor-1")
    )
    assert entry == same and entry.action_type == "refund"


def test_query_filters_are_anded(story: Story) -> None:
    gw = story.gw
    assert query(gw, event_type="hold_rejected") == [4]
    assert query(gw, actor="approver-1") == [4, 7]
    assert query(gw, actor_type="user") == [4, 7]
    assert query(gw, actor_type="agent", actor="agent-2") == [2, 5, 6]
    assert query(gw, outcome="deny") == [5]
    assert query(gw, outcome="hold") == [3, 6]
    assert query(gw, action_id=story.held_rejected.action_id) == [3, 4]
    # An agent's entries include what approvers did to its actions.
    assert query(gw, agent_id="agent-1") == [1, 3, 4, 8]
    assert query(gw, agent_id="agent-2") == [2, 5, 6, 7]
    assert query(gw, session_id="s1") == [1, 3, 4, 8]
    assert query(gw, agent_id="agent-2", outcome="hold") == [6]
    assert query(gw, agent_id="agent-2", event_type="hold_rejected") == []
    assert query(gw, actor="nobody") == []


def test_query_pages_with_limit_and_after_seq(story: Story) -> None:
    gw = story.gw
    assert query(gw, limit=3) == [1, 2, 3]
    assert query(gw, limit=3, after_seq=3) == [4, 5, 6]
    assert query(gw, limit=3, after_seq=6) == [7, 8]
    assert query(gw, after_seq=8) == []
    assert query(gw, agent_id="agent-1", limit=2, after_seq=1) == [3, 4]


def test_report_for_a_period(story: Story) -> None:
    gw, marks = story.gw, story.marks
    r = report(gw, start_time=timestamp(marks[1]), end_time=timestamp(marks[2]))
    assert (r.total, r.first_seq, r.last_seq) == (5, 3, 7)
    assert dict(r.by_actor_type) == {"agent": 3, "user": 2}
    assert dict(r.by_event_type) == {"action_decided": 3, "hold_rejected": 1, "hold_approved": 1}
    assert dict(r.by_outcome) == {"hold": 2, "rejected": 1, "deny": 1, "approved": 1}
    # The two send_email holds: the suspicious-action detector names them too.
    assert dict(r.by_finding_type) == {"suspicious_action": 2}
    # Held and denied actions and the rejected hold; the approval is not one.
    assert [e.seq for e in r.security_events] == [3, 4, 5, 6]
    assert [e.seq for e in r.failures] == [4, 5]
    assert (r.security_event_count, r.failure_count) == (4, 2)
    whole = report(gw)
    assert (whole.total, whole.first_seq, whole.last_seq) == (8, 1, 8)
    assert dict(whole.by_outcome)["allow"] == 3
    empty = report(gw, start_time=timestamp(marks[2] + 1))
    assert (empty.total, empty.first_seq, empty.last_seq) == (0, 0, 0)


def test_report_lists_keep_the_most_recent_and_count_all(story: Story) -> None:
    r = report(story.gw, max_entries=1)
    assert [e.seq for e in r.security_events] == [6]
    assert [e.seq for e in r.failures] == [5]
    assert (r.security_event_count, r.failure_count) == (4, 2)


def test_report_counts_findings_and_paused_sessions(gw: RunningGateway) -> None:
    agent = gw.agent()
    for i in range(5):
        agent.submit("read_file", session_id="loop", parameters={"i": i})
    r = report(gw)
    assert dict(r.by_finding_type) == {"infinite_loop": 1}
    [event] = r.security_events
    assert event.seq == 5 and event.details["paused_session"] is True


def bad_time(seconds: int = 0, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def test_bad_arguments_are_invalid_arguments_naming_the_field(gw: RunningGateway) -> None:
    queries: list[tuple[dict[str, Any], str]] = [
        ({"actor_type": "robot"}, "actor_type"),
        ({"actor": "x" * 257}, "actor"),
        ({"session_id": "s" * 1000}, "session_id"),
        ({"start_time": bad_time(2000), "end_time": bad_time(1000)}, "end_time"),
        ({"start_time": bad_time(-5)}, "start_time"),
        ({"end_time": bad_time(10, 2_000_000_000)}, "end_time"),
    ]
    reports: list[tuple[dict[str, Any], str]] = [
        ({"max_entries": 10_001}, "max_entries"),
        ({"start_time": bad_time(2000), "end_time": bad_time(2000)}, "end_time"),
        ({"start_time": bad_time(253402300800)}, "start_time"),
    ]
    cases = [(query, f, n) for f, n in queries] + [(report, f, n) for f, n in reports]
    for call, fields, field in cases:
        with pytest.raises(grpc.RpcError) as e:
            call(gw, **fields)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call.__name__, fields)
        assert (e.value.details() or "").startswith(f"{field}: "), (call.__name__, fields)


@pytest.mark.parametrize("who", ["agent-1", "approver-1"])
def test_only_auditors_query_and_report(gw: RunningGateway, who: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        query(gw, who=who)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        gw.audit.Report(audit_pb2.ReportRequest(), metadata=gw.md(who), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        gw.audit.Report(audit_pb2.ReportRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- a long log whose replicas' clocks disagree --------------------------------------

LONG = 5000
T0 = 1_795_000_000.0


def append_long_log(gw: RunningGateway) -> None:
    """Entries 1..LONG stamped T0 + seq - 1 seconds, except two stamped out of order
    within the skew: 1950 by a clock 55 s fast, and 2060 by one 40 s slow."""

    def at(seq: int) -> float:
        return T0 + seq - 1 + {1950: 55, 2060: -40}.get(seq, 0)

    def draft(seq: int) -> EntryDraft:
        return EntryDraft(
            timestamp=format_timestamp(at(seq)),
            event_type="action_decided",
            actor="bulk",
            actor_type="agent",
            action_id=f"b{seq}",
            action_type="search",
            resource="",
            details={"session_id": "bulk"},
            outcome="allow",
        )

    for first in range(1, LONG + 1, 1000):
        drafts = [draft(seq) for seq in range(first, first + 1000)]
        gw.run(gw.app.audit.commit(drafts))
    assert gw.audit_head() == LONG


class ReadLog:
    """Records which seqs the gateway reads from the log."""

    def __init__(self, gw: RunningGateway) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.probes: list[int] = []
        log = gw.app.audit
        read_lines, read_lines_at = log.read_lines, log.read_lines_at

        async def recording_read_lines(start: int, end: int) -> list[str]:
            self.ranges.append((start, end))
            return await read_lines(start, end)

        async def recording_read_lines_at(seqs: list[int]) -> list[str | None]:
            self.probes += seqs
            return await read_lines_at(seqs)

        log.read_lines = recording_read_lines  # type: ignore[method-assign]
        log.read_lines_at = recording_read_lines_at  # type: ignore[method-assign]

    def scanned(self) -> tuple[int, int]:
        return min(s for s, _ in self.ranges), max(e for _, e in self.ranges)


def test_recent_range_reads_only_around_it_and_tolerates_skew(gw: RunningGateway) -> None:
    append_long_log(gw)
    reads = ReadLog(gw)
    # Seqs 2001..2050 by their regular stamps, and the out-of-order 1950 (stamped
    # T0 + 2004) and 2060 (T0 + 2019): a scan by seq that trusted the order would miss them.
    start, end = T0 + 2000, T0 + 2050
    seqs = query(gw, start_time=timestamp(start), end_time=timestamp(end))
    assert seqs == [1950, *range(2001, 2051), 2060]
    low, high = reads.scanned()
    assert 2000 - MAX_CLOCK_SKEW_SECONDS - 20 <= low <= 1950
    assert high < 2050 + MAX_CLOCK_SKEW_SECONDS + 256  # one chunk past the skew, not the head
    assert len(reads.probes) <= 16 * 4  # 17**4 > 5000: at most four round trips
    r = report(gw, start_time=timestamp(start), end_time=timestamp(end))
    assert (r.total, r.first_seq, r.last_seq) == (52, 1950, 2060)
    # Paging on after the last seq received keeps the time range.
    assert query(gw, start_time=timestamp(start), end_time=timestamp(end), after_seq=2049) == [
        2050,
        2060,
    ]


# --- the CLI: agentgw audit query|report, from the server and offline ------------------


def cli(
    capsys: pytest.CaptureFixture[str], *args: str, gw: RunningGateway | None = None
) -> tuple[int, str, str]:
    """Runs `agentgw audit ARGS` in-process; with `gw`, against that gateway."""
    server = ["--server", gw.target, "--token", token_for("auditor-1")] if gw else []
    capsys.readouterr()
    code = main(["audit", *args, *server])
    out, err = capsys.readouterr()
    return code, out, err


def rfc3339(seconds: float) -> str:
    return format_timestamp(seconds)


def test_cli_query_prints_a_table_or_export_lines(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = story.gw
    code, out, err = cli(capsys, "query", "--event-type", "hold_rejected", gw=gw)
    assert code == 0 and err == "1 entries\n"
    header, row = out.splitlines()
    assert header.split() == [
        "SEQ",
        "TIME",
        "EVENT",
        "ACTOR",
        "OUTCOME",
        "ACTION",
        "SESSION",
        "ACTION_ID",
    ]
    assert row.split()[0] == "4"
    assert row.split()[2:] == [
        "hold_rejected",
        "user:approver-1",
        "rejected",
        "send_email",
        "s1",
        story.held_rejected.action_id,
    ]
    code, out, _ = cli(capsys, "query", "--agent", "agent-2", "--json", gw=gw)
    exported = [
        entry_from_proto(e).to_json_line()
        for e in gw.audit.ReadEntries(audit_pb2.ReadEntriesRequest(), metadata=gw.md("auditor-1"))
    ]
    assert code == 0 and out.splitlines() == [exported[i - 1] for i in (2, 5, 6, 7)]
    period = ["--since", rfc3339(story.marks[1]), "--until", rfc3339(story.marks[2])]
    code, out, _ = cli(capsys, "query", *period, "--json", gw=gw)
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [3, 4, 5, 6, 7]
    code, out, _ = cli(capsys, "query", *period, "--outcome", "hold", "--limit", "1", gw=gw)
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["3"]
    code, out, err = cli(capsys, "query", "--actor", "nobody", gw=gw)
    assert (code, out, err) == (0, "no matching entries\n", "0 entries\n")


def test_cli_periods_take_spans_before_now(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    """The story's clock runs ahead of the CLI's: seqs 1-2 are stamped before the CLI's
    now, 3-7 an hour after it and 8 two hours after."""
    gw = story.gw

    def seqs(*period: str) -> list[int]:
        code, out, _ = cli(capsys, "query", "--json", *period, gw=gw)
        assert code == 0
        return [json.loads(line)["seq"] for line in out.splitlines()]

    assert seqs("--since", "1h") == seqs() == list(range(1, 9))
    assert seqs("--until", "0s") == [1, 2]
    assert seqs("--since", "0.5m") == list(range(1, 9))
    assert seqs("--since", "0s") == list(range(3, 9))
    assert seqs("--until", "1h") == []
    code, out, _ = cli(capsys, "report", "--since", "2w", "--until", "0s", "--json", gw=gw)
    assert code == 0 and json.loads(out)["total"] == 2
    code, _, err = cli(capsys, "query", "--since", "3 days", gw=gw)
    assert code == 2 and "a span like 15m, 2h, 7d" in err


def test_cli_report_prints_a_table_or_json(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    gw, marks = story.gw, story.marks
    since, until = rfc3339(marks[1]), rfc3339(marks[2])
    code, out, _ = cli(capsys, "report", "--since", since, "--until", until, "--json", gw=gw)
    assert code == 0
    doc = json.loads(out)
    assert (doc["start_time"], doc["end_time"]) == (since, until)
    assert (doc["total"], doc["first_seq"], doc["last_seq"]) == (5, 3, 7)
    assert doc["by_actor_type"] == {"agent": 3, "user": 2}
    assert doc["by_outcome"] == {"hold": 2, "approved": 1, "deny": 1, "rejected": 1}
    assert list(doc["by_outcome"]) == ["hold", "approved", "deny", "rejected"]  # by count
    assert doc["by_event_type"] == {"action_decided": 3, "hold_approved": 1, "hold_rejected": 1}
    assert doc["by_finding_type"] == {"suspicious_action": 2}
    assert [(e["entry"]["seq"], e["reasons"]) for e in doc["security_events"]] == [
        (3, ["held", "finding:suspicious_action"]),
        (4, ["hold_rejected"]),
        (5, ["denied"]),
        (6, ["held", "finding:suspicious_action"]),
    ]
    assert [e["seq"] for e in doc["failures"]] == [4, 5]
    # Numbers in details print as logged, not as the floats a protobuf Struct carries.
    assert doc["failures"][0]["details"]["decision_seq"] == 3
    assert (doc["security_event_count"], doc["failure_count"]) == (4, 2)

    code, out, _ = cli(capsys, "report", "--since", since, "--max-entries", "1", gw=gw)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"6 entries (seq 3..8) from {since} until the head"
    assert "BY OUTCOME" in lines and "  hold" in out
    assert [line.split() for line in lines if line.startswith("  allow")] == [["allow", "1"]]
    security = lines.index("SECURITY EVENTS: 4, the last 1 below")
    assert lines[security + 1].split()[-1] == "REASONS"
    assert lines[security + 2].split()[0] == "6" and lines[security + 2].endswith(
        "  held,finding:suspicious_action"
    )
    failures = lines.index("FAILURES: 2, the last 1 below")
    assert lines[failures + 2].split()[0] == "5"


def test_cli_offline_over_an_export_answers_as_the_server_does(
    story: Story,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, marks = story.gw, story.marks
    export = tmp_path / "audit.jsonl"
    assert cli(capsys, "export", "--out", str(export), gw=gw)[0] == 0
    monkeypatch.delenv("AGENTGW_TOKEN", raising=False)
    since = rfc3339(marks[1])
    for args in (
        ["query"],
        ["query", "--json", "--agent", "agent-1"],
        ["query", "--since", since, "--outcome", "hold", "--limit", "1"],
        ["query", "--session", "s2", "--after-seq", "2"],
        ["report", "--json"],
        ["report", "--since", since, "--until", rfc3339(marks[2]), "--max-entries", "2"],
    ):
        online = cli(capsys, *args, gw=gw)
        # No token and no server: a port nothing listens on.
        offline = cli(capsys, *args, "--export", str(export), "--server", "127.0.0.1:1")
        assert online[0] == 0 and online[1].strip(), args
        assert offline == online, args


def test_cli_rejects_bad_arguments_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    export = tmp_path / "audit.jsonl"
    export.write_text("{}\n")
    for args, message in [
        (["query", "--since", "yesterday"], "--since: 'yesterday' is not an RFC 3339 time"),
        (["query", "--since", "2026-11-25", "--until", "2026-11-24"], "--until: "),
        (["query", "--actor-type", "robot"], "--actor-type: 'robot' is not agent"),
        (["query", "--agent", "a" * 300], "--agent: is 300 characters"),
        (["query", "--limit", "-1"], "--limit: -1 is not in"),
        (["report", "--max-entries", "20000"], "--max-entries: 20000 is not in 0..10000"),
        (["report", "--export", str(tmp_path / "missing")], "--export "),
        (["query", "--export", str(export)], f"--export {export}:1: not an audit entry"),
    ]:
        code, out, err = cli(capsys, *args)
        assert (code, out) == (2, ""), args
        assert err.startswith(f"agentgw: {message}"), (args, err)


DOC = Path(__file__).resolve().parents[2] / "docs" / "audit-queries.md"


def doc_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_doc_examples_run_and_show_the_real_output(
    story: Story,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the examples write and read audit.jsonl
    commands = [
        shlex.split(line)[2:]  # without "agentgw audit"
        for block in doc_blocks("sh")
        for line in block.splitlines()
        if line.startswith("agentgw audit ")
    ]
    assert len(commands) == 12
    outputs = {}
    for args in commands:
        code, out, err = cli(capsys, *args, gw=story.gw)
        assert code == 0, (args, err)
        outputs[" ".join(args)] = out
    documented = json.loads(doc_blocks("json")[0])
    actual = json.loads(outputs["report --export audit.jsonl --json"])
    assert list(documented) == list(actual)
    assert set(documented["security_events"][0]) == set(actual["security_events"][0])
    query_header = doc_blocks("text")[0].splitlines()[0]
    assert outputs["query --event-type hold_rejected --json"].count("\n") == 1
    code, out, _ = cli(capsys, "query", "--event-type", "hold_rejected", gw=story.gw)
    assert out.splitlines()[0] == query_header


def test_cli_offline_mode_needs_no_server_code() -> None:
    probe = (
        "import sys, clients.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis' "
        "or m.startswith(('gateway.store', 'gateway.app', 'gateway.services.audit_queries'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=DOC.parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"

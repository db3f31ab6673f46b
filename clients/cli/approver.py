"""`agentgw holds list|watch|approve|reject` and `agentgw sessions list|resume`: the
approver's commands over held actions and paused sessions.

`holds watch` draws a live table of the pending holds from the WatchHolds stream.
What the table holds is worked out by `apply_event` (a `Board` and one event give the
next board and a note to print), which needs no terminal; `hold_table` only draws a
board with rich. The stream is read on a thread of its own, so that the table is
drawn again every second (the ages move on) while no event comes.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agentgw.v1 import approvals_pb2, approvals_pb2_grpc
from clients.agent import Metadata
from clients.cli import agent
from clients.cli.common import (
    EXIT_EXPIRED,
    EXIT_FAILED,
    EXIT_HELD,
    EXIT_OK,
    EXIT_REJECTED,
    Commands,
    add_client_options,
    add_output_options,
    approvals_stub,
    describe_refusal,
    format_age,
    is_json,
    message_document,
    message_json,
    positive_int,
    print_records,
    report_refusals,
)
from clients.wire import struct_to_python

Kind = approvals_pb2.HoldEvent
PENDING = approvals_pb2.HOLD_STATUS_PENDING

# Longest parameters JSON a watch row shows, in characters.
PARAMETERS_WIDTH = 40
# Longest reason a watch note quotes, in characters.
NOTE_REASON_WIDTH = 80
# How often the watch table is drawn again when nothing happens (the ages move on).
REDRAW_SECONDS = 1.0
WATCH_COLUMNS = (
    "HOLD",
    "AGENT",
    "SESSION",
    "ACTION",
    "RESOURCE",
    "PARAMETERS",
    "FINDINGS",
    "APPROVALS",
    "AGE",
)


def add_commands(sub: Commands) -> None:
    holds = sub.add_parser("holds", help="held actions (approvers)").add_subparsers(
        metavar="ACTION"
    )
    hold_list = add_client_options(
        holds.add_parser("list", help="list pending holds, oldest first")
    )
    hold_list.add_argument("--agent", default="", help="only this agent's holds")
    hold_list.add_argument("--session", default="", help="only holds in this session")
    hold_list.add_argument("--action-type", default="", help="only holds of this action type")
    hold_list.add_argument(
        "--min-age",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="only holds pending at least this long",
    )
    hold_list.add_argument(
        "--page-size",
        type=positive_int,
        default=0,
        metavar="N",
        help="holds per request, at most 1000 (default: the server's, 100); every page is listed",
    )
    add_output_options(hold_list)
    hold_list.set_defaults(run=run_holds_list)

    watch = add_client_options(
        holds.add_parser("watch", help="a live table of pending holds, until Ctrl-C")
    )
    add_output_options(watch)
    watch.add_argument(
        "--max-events",
        type=positive_int,
        default=0,
        metavar="N",
        help="exit after N events (default: watch until Ctrl-C)",
    )
    watch.set_defaults(run=run_holds_watch)

    waiting = add_client_options(
        holds.add_parser(
            "await",
            help="wait until a hold is approved, rejected or expired",
            description="Wait until a hold is decided and print it. An agent waits on its "
            "own holds (Gateway.Await) and gets the final decision; an approver passes "
            "--watch (WatchHolds) and gets the hold. Exit code: 0 approved, 5 rejected, "
            "6 expired, 3 still pending when --wait-timeout runs out (docs/cli.md).",
        )
    )
    waiting.add_argument("hold_id", metavar="HOLD_ID", help="the hold id, as submit printed it")
    waiting.add_argument(
        "--wait-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up after this long (default: wait until it is decided)",
    )
    waiting.add_argument(
        "--watch",
        action="store_true",
        help="wait through WatchHolds, with an approver's token (Await is the agent's own)",
    )
    add_output_options(waiting, default="json")
    waiting.set_defaults(run=run_holds_await)

    for verb in ("approve", "reject"):
        p = add_client_options(holds.add_parser(verb, help=f"{verb} a held action"))
        p.add_argument("hold_id")
        p.add_argument("--reason", required=True)
        add_output_options(p)
        p.set_defaults(run=run_hold_resolve, verb=verb)

    sessions = sub.add_parser("sessions", help="paused sessions (approvers)").add_subparsers(
        metavar="ACTION"
    )
    session_list = add_client_options(
        sessions.add_parser("list", help="list sessions paused for review")
    )
    session_list.add_argument("--agent", default="", help="only this agent's sessions")
    add_output_options(session_list)
    session_list.set_defaults(run=run_sessions_list)
    resume = add_client_options(
        sessions.add_parser("resume", help="resume a session paused for review")
    )
    resume.add_argument("agent")
    resume.add_argument("session")
    resume.add_argument("--reason", required=True)
    add_output_options(resume)
    resume.set_defaults(run=run_session_resume)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must not be negative")
    return value


def approvals_count(hold: approvals_pb2.Hold) -> str:
    """Approvals so far / approvals needed, e.g. `1/2`."""
    return f"{len(hold.approvals)}/{max(hold.approvals_required, 1)}"


# --- holds list ----------------------------------------------------------------------


def list_holds(
    stub: approvals_pb2_grpc.ApprovalsStub,
    md: Metadata,
    request: approvals_pb2.ListHoldsRequest,
    timeout: float,
) -> Iterator[approvals_pb2.Hold]:
    """Every hold that matches `request`, page after page until the last."""
    while True:
        response = stub.ListHolds(request, metadata=md, timeout=timeout)
        yield from response.holds
        if not response.next_page_token:
            return
        request.page_token = response.next_page_token


@report_refusals
def run_holds_list(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    request = approvals_pb2.ListHoldsRequest(
        agent_id=args.agent,
        session_id=args.session,
        action_type=args.action_type,
        page_size=args.page_size,
    )
    if args.min_age:
        request.min_age.CopyFrom(_duration(args.min_age))
    if is_json(args):
        holds_found = list_holds(stub, md, request, args.timeout)
        print_records((message_document(h) for h in holds_found), args.format)
        return EXIT_OK
    holds = list(list_holds(stub, md, request, args.timeout))
    if not holds:
        print("no pending holds")
        return EXIT_OK
    print(
        f"{'HOLD':<30} {'AGENT':<16} {'SESSION':<12} {'ACTION':<20} {'APPROVALS':<9} "
        f"{'EXPIRES':<19} REASON"
    )
    for h in holds:
        expires = h.expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{h.hold_id:<30} {h.agent_id:<16} {h.session_id:<12} {h.action.action_type:<20} "
            f"{approvals_count(h):<9} {expires:<19} {h.reason}"
        )
        params = json.dumps(struct_to_python(h.action.parameters), ensure_ascii=False)
        print(f"{'':<30} resource={h.action.resource!r} parameters={params}")
    return EXIT_OK


def _duration(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


# --- holds await ---------------------------------------------------------------------------

HOLD_EXIT_CODES = {
    approvals_pb2.HOLD_STATUS_APPROVED: EXIT_OK,
    approvals_pb2.HOLD_STATUS_REJECTED: EXIT_REJECTED,
    approvals_pb2.HOLD_STATUS_EXPIRED: EXIT_EXPIRED,
}


def run_holds_await(args: argparse.Namespace) -> int:
    if not args.watch:
        return agent.run_holds_await(args)
    stub, md = approvals_stub(args)
    stream = stub.WatchHolds(
        approvals_pb2.WatchHoldsRequest(), metadata=md, timeout=args.wait_timeout
    )
    try:
        return _await_watching(stream, args)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            print(agent.still_pending(args.hold_id, " --watch"), file=sys.stderr)
            return EXIT_HELD
        print(f"agentgw: {describe_refusal(e, args.server)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        stream.cancel()


def _await_watching(stream: Iterator[approvals_pb2.HoldEvent], args: argparse.Namespace) -> int:
    """Follows the watch until the hold leaves the pending set; a hold the first
    snapshot does not have is not pending (decided already, or no such hold)."""
    pending = False
    for event in stream:
        if event.kind == Kind.KIND_SYNCED and not pending:
            print(
                f"agentgw: {args.hold_id} is not pending: it was decided already, or there "
                "is no such hold (or it is an agent you own)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if event.hold.hold_id != args.hold_id:
            continue
        if event.hold.status == PENDING:
            if not pending:
                print(f"agentgw: waiting on {args.hold_id}...", file=sys.stderr, flush=True)
            pending = True
            continue
        if is_json(args):
            print(message_json(event.hold))
        else:
            print(resolution_note(event.hold))
        return HOLD_EXIT_CODES.get(event.hold.status, EXIT_FAILED)
    print("agentgw: the gateway ended the watch", file=sys.stderr)
    return EXIT_FAILED


# --- holds approve|reject ----------------------------------------------------------------


@report_refusals
def run_hold_resolve(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    if args.verb == "approve":
        hold = stub.Approve(
            approvals_pb2.ApproveRequest(hold_id=args.hold_id, reason=args.reason),
            metadata=md,
            timeout=args.timeout,
        )
    else:
        hold = stub.Reject(
            approvals_pb2.RejectRequest(hold_id=args.hold_id, reason=args.reason),
            metadata=md,
            timeout=args.timeout,
        )
    if is_json(args):
        print(message_json(hold))
    else:
        print(decided_message(args.verb, hold))
    return EXIT_OK


def decided_message(verb: str, hold: approvals_pb2.Hold) -> str:
    """What `holds approve|reject` prints for the hold the server answered with."""
    if hold.status == approvals_pb2.HOLD_STATUS_REJECTED:
        return f"rejected {hold.hold_id}"
    if hold.status == approvals_pb2.HOLD_STATUS_APPROVED:
        return f"approved {hold.hold_id}: the action is released"
    if hold.status == PENDING:
        got, needed = len(hold.approvals), max(hold.approvals_required, 1)
        return f"approved {hold.hold_id} ({got} of {needed} approvals; {needed - got} more needed)"
    status = approvals_pb2.HoldStatus.Name(hold.status).removeprefix("HOLD_STATUS_").lower()
    return f"{verb}: {hold.hold_id} is {status}"


# --- holds watch: the board, pure ----------------------------------------------------------


@dataclass(frozen=True)
class HoldRow:
    """One pending hold as the watch table shows it (the age is drawn from created_at)."""

    hold_id: str
    agent_id: str
    session_id: str
    action_type: str
    resource: str
    parameters: str  # short JSON of the redacted parameters
    findings: str  # the findings' types
    approvals: str  # so far / needed: "1/2"
    created_at: float  # seconds since the epoch

    @classmethod
    def of(cls, hold: approvals_pb2.Hold) -> HoldRow:
        return cls(
            hold_id=hold.hold_id,
            agent_id=hold.agent_id,
            session_id=hold.session_id,
            action_type=hold.action.action_type,
            resource=hold.action.resource,
            parameters=short_json(struct_to_python(hold.action.parameters), PARAMETERS_WIDTH),
            findings=", ".join(dict.fromkeys(f.type for f in hold.findings)),
            approvals=approvals_count(hold),
            created_at=hold.created_at.ToNanoseconds() / 1e9,
        )


@dataclass(frozen=True)
class Board:
    """What the watch table shows: the pending holds, oldest first; whether every hold
    pending when the stream started (or resynced) has arrived; and, until then, the ids
    of that snapshot, which replaces the rows once it is complete (KIND_SYNCED)."""

    rows: tuple[HoldRow, ...] = ()
    synced: bool = False
    snapshot: frozenset[str] = frozenset()


def apply_event(board: Board, event: approvals_pb2.HoldEvent) -> tuple[Board, str | None]:
    """The board after one WatchHolds event, and the one-line note to print, if any.

    An event carries the hold as it was read when the event was sent, so its status
    wins: a hold that is no longer pending leaves the table whatever the event's kind.
    """
    hold = event.hold
    if event.kind == Kind.KIND_SYNCED:
        rows = tuple(r for r in board.rows if r.hold_id in board.snapshot)
        return Board(rows=rows, synced=True), None
    if event.kind == Kind.KIND_PENDING:
        if board.synced:  # a resync: the gateway may have missed changes
            board = replace(board, synced=False, snapshot=frozenset())
        return _put(board, hold), None
    if event.kind == Kind.KIND_RESOLVED:
        return _remove(board, hold.hold_id), resolution_note(hold)
    if event.kind in (Kind.KIND_HELD, Kind.KIND_APPROVED_PARTLY):
        if hold.status != PENDING:
            return _remove(board, hold.hold_id), None
        note = partial_approval_note(hold) if event.kind == Kind.KIND_APPROVED_PARTLY else None
        return _put(board, hold), note
    return board, None  # a kind this client does not know yet


def board_after(events: Iterable[approvals_pb2.HoldEvent]) -> Board:
    """The board after these events, from an empty one."""
    board = Board()
    for event in events:
        board, _ = apply_event(board, event)
    return board


def _put(board: Board, hold: approvals_pb2.Hold) -> Board:
    row = HoldRow.of(hold)
    rows = sorted(
        (*(r for r in board.rows if r.hold_id != row.hold_id), row),
        key=lambda r: (r.created_at, r.hold_id),
    )
    snapshot = board.snapshot if board.synced else board.snapshot | {row.hold_id}
    return replace(board, rows=tuple(rows), snapshot=snapshot)


def _remove(board: Board, hold_id: str) -> Board:
    return replace(board, rows=tuple(r for r in board.rows if r.hold_id != hold_id))


def resolution_note(hold: approvals_pb2.Hold) -> str:
    resolution = hold.resolution
    if hold.status == approvals_pb2.HOLD_STATUS_EXPIRED:
        return f"{hold.hold_id} expired"
    verb = "approved" if hold.status == approvals_pb2.HOLD_STATUS_APPROVED else "rejected"
    note = f"{hold.hold_id} {verb} by {resolution.decided_by}"
    reason = " ".join(resolution.reason.split())
    if reason:
        note += f": {_truncated(reason, NOTE_REASON_WIDTH)}"
    return note


def partial_approval_note(hold: approvals_pb2.Hold) -> str:
    who = hold.approvals[-1].approver if hold.approvals else "an approver"
    got, needed = len(hold.approvals), max(hold.approvals_required, 1)
    return f"{hold.hold_id} approved by {who} ({got} of {needed})"


def short_json(value: dict[str, Any], width: int) -> str:
    """`value` as compact JSON (keys sorted, whole numbers without `.0`), cut to `width`
    characters."""
    text = json.dumps(
        _whole_numbers(value), ensure_ascii=False, separators=(",", ":"), sort_keys=True
    )
    return _truncated(text, width)


def _whole_numbers(value: Any) -> Any:
    # A Struct has only doubles: show 3, not 3.0.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _truncated(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def row_cells(row: HoldRow, now: float) -> tuple[str, ...]:
    """The cells of one row, in WATCH_COLUMNS order, at time `now`."""
    return (
        row.hold_id,
        row.agent_id,
        row.session_id,
        row.action_type,
        row.resource,
        row.parameters,
        row.findings,
        row.approvals,
        format_age(now - row.created_at),
    )


def hold_table(board: Board, now: float) -> Table:
    caption = "watching; Ctrl-C to stop" if board.synced else "reading the pending holds…"
    table = Table(title=f"pending holds: {len(board.rows)}", caption=caption)
    for column in WATCH_COLUMNS:
        table.add_column(column, no_wrap=column in ("HOLD", "APPROVALS", "AGE"))
    for row in board.rows:
        # Text, not markup: agents choose these strings.
        table.add_row(*(Text(cell) for cell in row_cells(row, now)))
    return table


def event_json(event: approvals_pb2.HoldEvent) -> str:
    """One event as a line of JSON: its kind first, then the hold (none for KIND_SYNCED)."""
    document = json_format.MessageToDict(event, preserving_proto_field_name=True)
    document.pop("kind", None)
    return json.dumps({"kind": Kind.Kind.Name(event.kind), **document}, ensure_ascii=False)


# --- holds watch: reading the stream ---------------------------------------------------------


@dataclass(frozen=True)
class _StreamEnd:
    error: grpc.RpcError | None


def run_holds_watch(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    # No deadline: a watch lasts until Ctrl-C, --max-events or the gateway ends it.
    stream = stub.WatchHolds(approvals_pb2.WatchHoldsRequest(), metadata=md)
    try:
        if is_json(args):
            return _watch_lines(stream, args.max_events)
        return _watch_table(stream, args.max_events)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        stream.cancel()


def _watch_lines(stream: Iterator[approvals_pb2.HoldEvent], max_events: int) -> int:
    seen = 0
    try:
        for event in stream:
            print(event_json(event), flush=True)
            seen += 1
            if seen == max_events:
                return EXIT_OK
    except grpc.RpcError as e:
        return _watch_ended(e, seen)
    return _watch_ended(None, seen)


def _watch_table(stream: Iterator[approvals_pb2.HoldEvent], max_events: int) -> int:
    # A reader thread waits on the stream, so that this one can redraw every second.
    events: queue.Queue[approvals_pb2.HoldEvent | _StreamEnd] = queue.Queue()
    reader = threading.Thread(
        target=_read_stream, args=(stream, events), name="agentgw-watch", daemon=True
    )
    reader.start()
    board, seen = Board(), 0
    with Live(hold_table(board, time.time()), console=Console(), auto_refresh=False) as live:
        while True:
            try:
                item = events.get(timeout=REDRAW_SECONDS)
            except queue.Empty:
                live.update(hold_table(board, time.time()), refresh=True)
                continue
            if isinstance(item, _StreamEnd):
                end = item
                break
            board, note = apply_event(board, item)
            if note:
                live.console.print(note, markup=False, highlight=False)
            live.update(hold_table(board, time.time()), refresh=True)
            seen += 1
            if seen == max_events:
                return EXIT_OK
    return _watch_ended(end.error, seen)


def _read_stream(
    stream: Iterator[approvals_pb2.HoldEvent],
    events: queue.Queue[approvals_pb2.HoldEvent | _StreamEnd],
) -> None:
    try:
        for event in stream:
            events.put(event)
    except grpc.RpcError as e:
        events.put(_StreamEnd(e))
        return
    events.put(_StreamEnd(None))


def _watch_ended(error: grpc.RpcError | None, seen: int) -> int:
    if error is None:
        message = "the gateway ended the watch"
    elif seen:
        message = f"the watch ended: {describe_refusal(error)}"
    else:
        message = f"could not watch holds: {describe_refusal(error)}"
    print(f"agentgw: {message}", file=sys.stderr)
    return EXIT_FAILED


# --- sessions list|resume --------------------------------------------------------------------


@report_refusals
def run_sessions_list(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    response = stub.ListSessions(
        approvals_pb2.ListSessionsRequest(agent_id=args.agent), metadata=md, timeout=args.timeout
    )
    if is_json(args):
        print_records((message_document(s) for s in response.sessions), args.format)
        return EXIT_OK
    if not response.sessions:
        print("no paused sessions")
        return EXIT_OK
    print(f"{'AGENT':<16} {'SESSION':<16} {'HOLD':<30} {'PAUSED AT':<19} REASON")
    for s in response.sessions:
        paused_at = s.paused_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{s.agent_id:<16} {s.session_id:<16} {s.hold_id:<30} {paused_at:<19} {s.reason}")
    return EXIT_OK


@report_refusals
def run_session_resume(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    response = stub.ResumeSession(
        approvals_pb2.ResumeSessionRequest(
            agent_id=args.agent, session_id=args.session, reason=args.reason
        ),
        metadata=md,
        timeout=args.timeout,
    )
    if is_json(args):
        document = {
            "agent_id": args.agent,
            "session_id": args.session,
            "was_paused": response.was_paused,
            "audit_seq": response.audit_seq,
        }
        print(json.dumps(document))
    elif response.was_paused:
        print(f"session {args.agent}/{args.session} resumed (audit seq {response.audit_seq})")
    else:
        print(f"session {args.agent}/{args.session} was not paused")
    return EXIT_OK

"""`agentgw audit query` and `agentgw audit report` (docs/audit-queries.md).

From the server, or offline over an export (`--export`): the filters, the report and
its JSON form are the pure audit library's (`gateway.domain.audit.query`), so both
ways print the same. This module parses flags and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agentgw.v1 import audit_pb2
from clients.cli.common import (
    EXIT_OK,
    CliError,
    Commands,
    add_client_options,
    add_output_options,
    audit_stub,
    is_json,
    micros_of_time,
    print_records,
)
from clients.wire import entry_from_proto, report_from_proto
from gateway.domain.audit.entry import AuditEntry
from gateway.domain.audit.query import (
    EntryFilter,
    Report,
    build_report,
    check_max_entries,
    security_reasons,
    select,
)
from gateway.errors import InvalidRequest

# The CLI flag for each field a filter can reject, so errors name what the user typed.
_QUERY_FLAGS = {
    "start_time": "--since",
    "end_time": "--until",
    "actor": "--actor",
    "actor_type": "--actor-type",
    "event_type": "--event-type",
    "action_id": "--action-id",
    "outcome": "--outcome",
    "agent_id": "--agent",
    "session_id": "--session",
    "after_seq": "--after-seq",
    "max_entries": "--max-entries",
}
_UINT32_MAX, _UINT64_MAX = 2**32 - 1, 2**64 - 1


def add_commands(audit: Commands) -> None:
    """`audit query` and `audit report`, added to the `audit` subcommands."""

    def period(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--since",
            metavar="TIME",
            help="entries stamped at or after TIME: RFC 3339 (UTC if no offset), a date, "
            "or a span before now (15m, 2h, 7d)",
        )
        p.add_argument("--until", metavar="TIME", help="entries stamped before TIME (the same)")
        p.add_argument(
            "--export",
            type=Path,
            metavar="FILE",
            help="read an export (`agentgw audit export`) instead of the server",
        )

    query = add_client_options(
        audit.add_parser("query", help="print the entries that match every filter")
    )
    period(query)
    query.add_argument("--actor", default="", help="who acted: an agent, user or system name")
    query.add_argument("--actor-type", default="", help="agent, user or system")
    query.add_argument("--event-type", default="", help="e.g. action_decided, hold_rejected")
    query.add_argument("--action-id", default="")
    query.add_argument("--outcome", default="", help="e.g. allow, deny, hold, rejected")
    query.add_argument("--agent", default="", help="entries about this agent")
    query.add_argument("--session", default="", help="entries of this session")
    query.add_argument("--limit", type=int, default=0, help="at most N entries (0: all)")
    query.add_argument("--after-seq", type=int, default=0, help="only entries after this seq")
    add_output_options(query)
    query.set_defaults(run=run_audit_query)

    report = add_client_options(
        audit.add_parser("report", help="counts, security events and failures of a period")
    )
    period(report)
    report.add_argument(
        "--max-entries",
        type=int,
        default=0,
        help="list at most N security events and N failures, the most recent (default 100)",
    )
    add_output_options(report)
    # A report reads every entry of its period; give it longer than a single lookup.
    report.set_defaults(run=run_audit_report, timeout=300.0)


def _query_error(e: InvalidRequest) -> CliError:
    return CliError(f"{_QUERY_FLAGS.get(e.field, e.field)}: {e.why}")


def _period(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """--since and --until in microseconds since the epoch (None when not given)."""
    now = time.time()
    since = None if args.since is None else micros_of_time("--since", args.since, now)
    until = None if args.until is None else micros_of_time("--until", args.until, now)
    return since, until


def _bounded(flag: str, value: int, limit: int) -> int:
    if not 0 <= value <= limit:
        raise CliError(f"{flag}: {value} is not in 0..{limit}")
    return value


def _export_entries(path: Path) -> Iterator[AuditEntry]:
    """The entries of an export file, read lazily; not verified (`audit verify` does)."""
    try:
        with path.open("r", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    entry = AuditEntry.from_json_line(line)
                except (ValueError, RecursionError) as e:
                    raise CliError(f"--export {path}:{number}: not an audit entry: {e}") from None
                yield entry
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"--export {path}: {e}") from e


def _set_period(
    request: audit_pb2.QueryRequest | audit_pb2.ReportRequest, since: int | None, until: int | None
) -> None:
    if since is not None:
        request.start_time.FromMicroseconds(since)
    if until is not None:
        request.end_time.FromMicroseconds(until)


def run_audit_query(args: argparse.Namespace) -> int:
    limit = _bounded("--limit", args.limit, _UINT32_MAX)
    after_seq = _bounded("--after-seq", args.after_seq, _UINT64_MAX)
    try:
        since, until = _period(args)
        criteria = {
            "actor": args.actor,
            "actor_type": args.actor_type,
            "event_type": args.event_type,
            "action_id": args.action_id,
            "outcome": args.outcome,
            "agent_id": args.agent,
            "session_id": args.session,
        }
        flt = EntryFilter.create(
            start_micros=since, end_micros=until, after_seq=after_seq, **criteria
        )
    except InvalidRequest as e:
        raise _query_error(e) from None
    entries: Iterator[AuditEntry]
    if args.export:
        entries = select(_export_entries(args.export), flt, limit)
    else:
        stub, md = audit_stub(args)
        request = audit_pb2.QueryRequest(limit=limit, after_seq=after_seq, **criteria)
        _set_period(request, since, until)
        entries = (entry_from_proto(msg) for msg in stub.Query(request, metadata=md))
    count = 0
    if args.format == "jsonl":  # the export's own lines, byte for byte
        for entry in entries:
            print(entry.to_json_line())
            count += 1
    elif args.format == "json":
        count = print_records((_entry_json(entry) for entry in entries), "json")
    else:
        for entry in entries:
            if count == 0:
                print(_entry_header())
            print(_entry_row(entry))
            count += 1
        if count == 0:
            print("no matching entries")
    print(f"{count} entries", file=sys.stderr)
    return EXIT_OK


def run_audit_report(args: argparse.Namespace) -> int:
    try:
        since, until = _period(args)
        flt = EntryFilter.create(start_micros=since, end_micros=until)
        max_entries = check_max_entries(args.max_entries)
    except InvalidRequest as e:
        raise _query_error(e) from None
    if args.export:
        report = build_report(_export_entries(args.export), flt, max_entries)
    else:
        stub, md = audit_stub(args)
        request = audit_pb2.ReportRequest(max_entries=max_entries)
        _set_period(request, since, until)
        report = report_from_proto(stub.Report(request, metadata=md, timeout=args.timeout))
    if is_json(args):
        print(json.dumps(report_document(report, flt), ensure_ascii=False))
    else:
        _print_report(report, flt)
    return EXIT_OK


def _entry_json(entry: AuditEntry) -> Any:
    # Through the canonical line, so numbers read back from the server's Struct
    # (floats) print as they are in the log and in an export.
    return json.loads(entry.to_json_line())


def _by_count(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def report_document(report: Report, flt: EntryFilter) -> dict[str, Any]:
    """The JSON form of `audit report --json`; the same from the server and an export."""
    return {
        "start_time": flt.start_time or None,
        "end_time": flt.end_time or None,
        "total": report.total,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "by_actor_type": _by_count(report.by_actor_type),
        "by_event_type": _by_count(report.by_event_type),
        "by_outcome": _by_count(report.by_outcome),
        "by_finding_type": _by_count(report.by_finding_type),
        "security_event_count": report.security_event_count,
        "failure_count": report.failure_count,
        "security_events": [
            {"reasons": list(security_reasons(e)), "entry": _entry_json(e)}
            for e in report.security_events
        ],
        "failures": [_entry_json(e) for e in report.failures],
    }


def _entry_header(extra: str = "ACTION_ID") -> str:
    return (
        f"{'SEQ':>7}  {'TIME':<27}  {'EVENT':<16}  {'ACTOR':<22}  {'OUTCOME':<9}  "
        f"{'ACTION':<16}  {'SESSION':<12}  {extra}"
    )


def _entry_row(entry: AuditEntry, extra: str | None = None) -> str:
    actor = f"{entry.actor_type}:{entry.actor}"
    session = str(entry.details.get("session_id", "") or "-")
    return (
        f"{entry.seq:>7}  {entry.timestamp:<27}  {entry.event_type:<16}  {actor:<22}  "
        f"{entry.outcome:<9}  {entry.action_type or '-':<16}  {session:<12}  "
        f"{entry.action_id if extra is None else extra}"
    )


def _print_report(report: Report, flt: EntryFilter) -> None:
    period = f"from {flt.start_time or 'the first entry'} until {flt.end_time or 'the head'}"
    if report.total:
        print(f"{report.total} entries (seq {report.first_seq}..{report.last_seq}) {period}")
    else:
        print(f"no entries {period}")
    for title, counts in (
        ("BY ACTOR TYPE", report.by_actor_type),
        ("BY EVENT TYPE", report.by_event_type),
        ("BY OUTCOME", report.by_outcome),
        ("BY FINDING TYPE", report.by_finding_type),
    ):
        print(f"\n{title}")
        for key, count in _by_count(counts).items():
            print(f"  {key:<30} {count:>9}")
        if not counts:
            print("  (none)")
    for title, total, entries, reasons in (
        ("SECURITY EVENTS", report.security_event_count, report.security_events, True),
        ("FAILURES", report.failure_count, report.failures, False),
    ):
        shown = f", the last {len(entries)} below" if len(entries) < total else ""
        print(f"\n{title}: {total}{shown}")
        if entries:
            print(_entry_header("REASONS" if reasons else "ACTION_ID"))
        for entry in entries:
            print(_entry_row(entry, ",".join(security_reasons(entry)) if reasons else None))

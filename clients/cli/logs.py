"""`agentgw logs`: the gateway's structured logs (admins and auditors).

Prints the newest records that match every filter, oldest first, as a table or as
JSON Lines (`--json`: the gateway's own JSON form plus the record's `id`), and with
`--follow` keeps printing new ones until Ctrl-C. `--since`/`--until` take an RFC 3339
time or a date, or a span back from now: `90s`, `15m`, `2h`, `7d`, `2w`. The filters
are checked by the gateway, which names the field it refuses.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from agentgw.v1 import logs_pb2, logs_pb2_grpc
from clients.agent import Metadata
from clients.cli.common import (
    EXIT_OK,
    CliError,
    Commands,
    add_client_options,
    add_output_options,
    is_json,
    micros_of_time,
    one_line,
    print_records,
    quiet_stdout,
    report_refusals,
    stub_for,
)
from clients.wire import struct_to_python

# The gateway's (gateway/domain/log_records.py); repeated here because the CLI
# imports no server code. The gateway checks them again.
CATEGORIES = ("action", "decision", "error", "security", "performance", "user")
LEVELS = ("debug", "info", "warning", "error", "critical")


def add_commands(sub: Commands) -> None:
    p = add_client_options(
        sub.add_parser("logs", help="the gateway's structured logs (admins, auditors)")
    )
    p.add_argument(
        "--category",
        action="append",
        choices=CATEGORIES,
        default=[],
        help="only this category (repeat for more; default: all)",
    )
    p.add_argument("--agent", default="", help="only records about this agent")
    p.add_argument("--session", default="", help="only records of this session")
    p.add_argument("--level", default="", choices=LEVELS, help="only this level and above")
    p.add_argument("--since", metavar="TIME", help="records at or after TIME (or 15m, 2h, 7d ago)")
    p.add_argument("--until", metavar="TIME", help="records before TIME (not with --follow)")
    p.add_argument("--trace", default="", help="only records of this trace id")
    p.add_argument(
        "--limit", type=int, default=100, help="at most N records before following (max 10000)"
    )
    p.add_argument(
        "--follow", "-f", action="store_true", help="then print new records, until Ctrl-C"
    )
    add_output_options(p)
    p.set_defaults(run=run_logs)


def logs_stub(args: argparse.Namespace) -> tuple[logs_pb2_grpc.LogsStub, Metadata]:
    return stub_for(args, logs_pb2_grpc.LogsStub)


def log_query(args: argparse.Namespace, now: float) -> logs_pb2.LogQuery:
    request = logs_pb2.LogQuery(
        categories=args.category,
        agent_id=args.agent,
        session_id=args.session,
        min_level=args.level,
        trace_id=args.trace,
        limit=max(args.limit, 0),
        follow=args.follow,
    )
    if args.since is not None:
        request.since.FromMicroseconds(micros_of_time("--since", args.since, now))
    if args.until is not None:
        request.until.FromMicroseconds(micros_of_time("--until", args.until, now))
    return request


@report_refusals
def run_logs(args: argparse.Namespace) -> int:
    if args.follow and args.until is not None:
        raise CliError("--until cannot be combined with --follow")
    request = log_query(args, time.time())
    stub, md = logs_stub(args)
    # A follow lasts until Ctrl-C or the gateway ends it: no deadline then.
    stream = stub.Query(request, metadata=md, timeout=None if args.follow else args.timeout)
    try:
        if is_json(args):
            # A follow never ends, so it is JSON Lines (as -o jsonl) whatever is asked.
            fmt = "jsonl" if args.follow else args.format
            print_records((record_document(msg) for msg in stream), fmt)
        else:
            print_table(stream)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        quiet_stdout()
    finally:
        stream.cancel()
    return EXIT_OK


def print_table(records: Iterator[logs_pb2.LogRecord]) -> None:
    print(
        f"{'TIME':<24} {'LEVEL':<8} {'CATEGORY':<11} {'EVENT':<24} {'AGENT':<16} "
        f"{'SESSION':<12} MESSAGE",
        flush=True,
    )
    for msg in records:
        print(table_row(msg), flush=True)


def record_document(msg: logs_pb2.LogRecord) -> dict[str, Any]:
    """A record as the gateway writes it in JSON, with its stream `id` first."""
    return {
        "id": msg.id,
        "timestamp": format_time(msg),
        "level": msg.level,
        "category": msg.category,
        "event_type": msg.event_type,
        "message": msg.message,
        "agent_id": msg.agent_id,
        "session_id": msg.session_id,
        "trace_id": msg.trace_id,
        "logger": msg.logger,
        "data": struct_to_python(msg.data),
    }


def table_row(msg: logs_pb2.LogRecord) -> str:
    data = struct_to_python(msg.data)
    row = (
        f"{format_time(msg):<24} {msg.level:<8} {msg.category:<11} {msg.event_type:<24} "
        f"{msg.agent_id or '-':<16} {msg.session_id or '-':<12} {one_line(msg.message)}"
    )
    if msg.trace_id:
        row += f" trace={msg.trace_id}"
    if data:
        row += " " + json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return row


def format_time(msg: logs_pb2.LogRecord) -> str:
    ms = msg.timestamp.ToMilliseconds()
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"

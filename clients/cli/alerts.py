"""`agentgw alerts list|watch|ack`: the operator's (admin's) commands over the alerts
the gateway's rules fire.

`list` prints the newest alerts first, as a table or as JSON Lines (one Alert a line,
as `holds list --json` prints holds); `watch` prints a line per alert fired or
acknowledged from the moment it is subscribed (it says so on stderr) until Ctrl-C or
`--max-events`; `ack` records who looked at an alert. The gateway checks the filters
and the role, and its refusals are printed as one line.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Iterable
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2

from agentgw.v1 import alerts_pb2, alerts_pb2_grpc
from clients.agent import Metadata
from clients.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    add_client_options,
    add_output_options,
    describe_refusal,
    format_age,
    is_json,
    message_document,
    message_json,
    one_line,
    positive_int,
    print_records,
    print_result,
    quiet_stdout,
    report_refusals,
    server_of,
    stub_for,
)

SEVERITIES = ("low", "medium", "high", "critical")
# Longest message a `list` row shows, in characters (--json has all of it).
MESSAGE_WIDTH = 60


def add_commands(sub: Commands) -> None:
    group = sub.add_parser(
        "alerts",
        help="alerts fired by the gateway's rules (admins)",
        description="List, watch and acknowledge the alerts the gateway's rules fire (admins).",
    )
    group.set_defaults(run=lambda _: _print_help(group))
    alerts = group.add_subparsers(metavar="ACTION")

    listing = add_client_options(
        alerts.add_parser(
            "list",
            help="list alerts, newest first",
            description="List alerts, newest first: a table, or one JSON object per alert.",
        )
    )
    listing.add_argument(
        "--active", action="store_true", help="only alerts nobody has acknowledged yet"
    )
    _add_severity_option(listing)
    listing.add_argument("--subject", default="", help="only alerts about this agent (or gateway)")
    listing.add_argument(
        "--limit",
        type=positive_int,
        default=0,
        metavar="N",
        help="at most N alerts (default 100, at most 1000)",
    )
    add_output_options(listing)
    listing.set_defaults(run=run_alerts_list)

    watch = add_client_options(
        alerts.add_parser(
            "watch",
            help="print alerts as they fire or are acknowledged, until Ctrl-C",
            description="Print a line per alert fired or acknowledged from now on, until "
            "Ctrl-C (or --max-events).",
        )
    )
    _add_severity_option(watch)
    add_output_options(watch)
    watch.add_argument(
        "--max-events",
        type=positive_int,
        default=0,
        metavar="N",
        help="exit after N alerts (default: watch until Ctrl-C)",
    )
    watch.set_defaults(run=run_alerts_watch)

    ack = add_client_options(
        alerts.add_parser(
            "ack",
            help="acknowledge an alert",
            description="Acknowledge an alert: it is no longer active, and the audit log "
            "records who acknowledged it, when and why.",
        )
    )
    ack.add_argument("alert_id", metavar="ALERT_ID")
    ack.add_argument(
        "--note", default="", metavar="TEXT", help="why, or what is being done (audited)"
    )
    add_output_options(ack)
    ack.set_defaults(run=run_alerts_ack)


def _add_severity_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--severity", choices=SEVERITIES, default="", help="only this severity and above"
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def alerts_stub(args: argparse.Namespace) -> tuple[alerts_pb2_grpc.AlertsStub, Metadata]:
    return stub_for(args, alerts_pb2_grpc.AlertsStub)


def severity(name: str) -> alerts_pb2.Severity.ValueType:
    """`high` as SEVERITY_HIGH; no name is SEVERITY_UNSPECIFIED (no filter)."""
    return alerts_pb2.Severity.Value(f"SEVERITY_{name.upper()}" if name else "SEVERITY_UNSPECIFIED")


def severity_name(alert: alerts_pb2.Alert) -> str:
    return alerts_pb2.Severity.Name(alert.severity).removeprefix("SEVERITY_").lower()


def moment(ts: timestamp_pb2.Timestamp) -> str:
    return f"{ts.ToDatetime(tzinfo=UTC):%Y-%m-%dT%H:%M:%SZ}"


# --- alerts list -------------------------------------------------------------------------


@report_refusals
def run_alerts_list(args: argparse.Namespace) -> int:
    stub, md = alerts_stub(args)
    request = alerts_pb2.ListAlertsRequest(
        unacknowledged_only=args.active,
        min_severity=severity(args.severity),
        subject=args.subject,
        limit=args.limit,
    )
    alerts = stub.List(request, metadata=md, timeout=args.timeout).alerts
    try:
        if is_json(args):
            print_records((message_document(a) for a in alerts), args.format)
        elif not alerts:
            print("no active alerts" if args.active else "no alerts")
        else:
            print_table(alerts, time.time())
    except BrokenPipeError:
        quiet_stdout()
    return EXIT_OK


def print_table(alerts: Iterable[alerts_pb2.Alert], now: float) -> None:
    print(
        f"{'ID':<30} {'FIRED':<10} {'SEVERITY':<8} {'RULE':<24} {'SUBJECT':<16} "
        f"{'MESSAGE':<{MESSAGE_WIDTH}} ACKED BY"
    )
    for a in alerts:
        fired = format_age(now - a.fired_at.ToNanoseconds() / 1e9) + " ago"
        message = textwrap.shorten(a.message, MESSAGE_WIDTH, placeholder="…")
        print(
            f"{a.alert_id:<30} {fired:<10} {severity_name(a):<8} {a.rule:<24} {a.subject:<16} "
            f"{message:<{MESSAGE_WIDTH}} {a.acknowledged_by or '-'}",
            flush=True,
        )


# --- alerts watch ------------------------------------------------------------------------


def run_alerts_watch(args: argparse.Namespace) -> int:
    stub, md = alerts_stub(args)
    # No deadline: a watch lasts until Ctrl-C, --max-events or the gateway ends it.
    stream = stub.Watch(
        alerts_pb2.WatchAlertsRequest(min_severity=severity(args.severity)), metadata=md
    )
    try:
        return _watch(stream, args)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        quiet_stdout()
        return EXIT_OK
    finally:
        stream.cancel()


def _watch(stream: Any, args: argparse.Namespace) -> int:
    subscribed, seen = False, 0
    try:
        # The gateway sends its headers once subscribed: from then on no alert is missed.
        stream.initial_metadata()
        if not stream.done():
            subscribed = True
            which = f"{args.severity} and above" if args.severity else "all severities"
            print(f"agentgw: watching alerts ({which}); Ctrl-C to stop", file=sys.stderr)
        for alert in stream:
            print(message_json(alert) if is_json(args) else watch_line(alert), flush=True)
            seen += 1
            if seen == args.max_events:
                return EXIT_OK
    except grpc.RpcError as e:
        if subscribed:
            message = f"the watch ended: {describe_refusal(e, server_of(args))}"
        else:
            message = f"could not watch alerts: {describe_refusal(e, server_of(args))}"
        print(f"agentgw: {message}", file=sys.stderr)
        return EXIT_FAILED
    print("agentgw: the gateway ended the watch", file=sys.stderr)
    return EXIT_FAILED


def watch_line(alert: alerts_pb2.Alert) -> str:
    """One alert as `watch` prints it: fired, or acknowledged (with by whom). Text with
    line breaks or control characters is quoted as JSON, so an alert stays one line."""
    if alert.acknowledged_by:
        line = (
            f"{moment(alert.acknowledged_at)} acknowledged {alert.alert_id} "
            f"({alert.rule}, {alert.subject}) by {alert.acknowledged_by}"
        )
        note = alert.acknowledgement_note
        return f"{line}: {one_line(note)}" if note else line
    return (
        f"{moment(alert.fired_at)} {severity_name(alert):<8} {alert.rule} {alert.subject} "
        f"{alert.alert_id}: {one_line(alert.message)}"
    )


# --- alerts ack --------------------------------------------------------------------------


@report_refusals
def run_alerts_ack(args: argparse.Namespace) -> int:
    stub, md = alerts_stub(args)
    alert = stub.Acknowledge(
        alerts_pb2.AcknowledgeRequest(alert_id=args.alert_id, note=args.note),
        metadata=md,
        timeout=args.timeout,
    )
    document = json_format.MessageToDict(alert, preserving_proto_field_name=True)
    print_result(document, is_json(args), lambda: acknowledged_message(alert))
    return EXIT_OK


def acknowledged_message(alert: alerts_pb2.Alert) -> str:
    return (
        f"acknowledged {alert.alert_id} ({alert.rule}, {alert.subject}) by "
        f"{alert.acknowledged_by} at {moment(alert.acknowledged_at)} "
        f"(audit seq {alert.acknowledgement_audit_seq})"
    )

"""`agentgw holds list|approve|reject` and `agentgw sessions resume`: the approver's
commands over held actions and paused sessions."""

from __future__ import annotations

import argparse
import json

from google.protobuf import json_format

from agentgw.v1 import approvals_pb2
from clients.cli.common import EXIT_OK, Commands, add_client_options, approvals_stub
from clients.wire import struct_to_python


def add_commands(sub: Commands) -> None:
    holds = sub.add_parser("holds", help="held actions (approvers)").add_subparsers(
        metavar="ACTION"
    )
    hold_list = add_client_options(holds.add_parser("list", help="list pending holds"))
    hold_list.add_argument("--agent", default="")
    hold_list.add_argument("--session", default="")
    hold_list.add_argument("--json", action="store_true")
    hold_list.set_defaults(run=run_holds_list)
    for verb in ("approve", "reject"):
        p = add_client_options(holds.add_parser(verb, help=f"{verb} a held action"))
        p.add_argument("hold_id")
        p.add_argument("--reason", required=True)
        p.set_defaults(run=run_hold_resolve, verb=verb)

    sessions = sub.add_parser("sessions", help="paused sessions (approvers)").add_subparsers(
        metavar="ACTION"
    )
    resume = add_client_options(
        sessions.add_parser("resume", help="resume a session paused for review")
    )
    resume.add_argument("agent")
    resume.add_argument("session")
    resume.add_argument("--reason", required=True)
    resume.set_defaults(run=run_session_resume)


def run_holds_list(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    response = stub.ListHolds(
        approvals_pb2.ListHoldsRequest(agent_id=args.agent, session_id=args.session),
        metadata=md,
        timeout=args.timeout,
    )
    if args.json:
        for hold in response.holds:
            print(json_format.MessageToJson(hold, indent=None, preserving_proto_field_name=True))
        return EXIT_OK
    if not response.holds:
        print("no pending holds")
        return EXIT_OK
    print(f"{'HOLD':<30} {'AGENT':<16} {'SESSION':<12} {'ACTION':<20} {'EXPIRES':<20} REASON")
    for h in response.holds:
        expires = h.expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{h.hold_id:<30} {h.agent_id:<16} {h.session_id:<12} {h.action.action_type:<20} "
            f"{expires:<20} {h.reason}"
        )
        params = json.dumps(struct_to_python(h.action.parameters), ensure_ascii=False)
        print(f"{'':<30} resource={h.action.resource!r} parameters={params}")
    return EXIT_OK


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
    status = approvals_pb2.HoldStatus.Name(hold.status).removeprefix("HOLD_STATUS_").lower()
    print(f"{hold.hold_id}: {status} (audit seq {hold.resolution.audit_seq})")
    return EXIT_OK


def run_session_resume(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    response = stub.ResumeSession(
        approvals_pb2.ResumeSessionRequest(
            agent_id=args.agent, session_id=args.session, reason=args.reason
        ),
        metadata=md,
        timeout=args.timeout,
    )
    if response.was_paused:
        print(f"session {args.agent}/{args.session} resumed (audit seq {response.audit_seq})")
    else:
        print(f"session {args.agent}/{args.session} was not paused")
    return EXIT_OK

"""`agentgw submit`: one action as an agent, and waiting for its hold to resolve;
`agentgw holds await` (its parser is in `approver`): waiting on a hold later, with
the agent's Gateway.Await; `agentgw outcome`: how an action went, once it was
carried out.

What became of the action is the exit code (`decision_exit_code`, the table in
docs/cli.md): allowed 0, held and still pending 3, denied 4, rejected by an approver
5, expired 6. A wait that runs out while the hold is pending says how to wait again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from clients.agent import AgentClient
from clients.cli.common import (
    EXIT_DENIED,
    EXIT_EXPIRED,
    EXIT_FAILED,
    EXIT_HELD,
    EXIT_OK,
    EXIT_REJECTED,
    CliError,
    Commands,
    add_client_options,
    add_output_options,
    describe_refusal,
    stub_for,
    tls_of,
    token,
)


def add_commands(sub: Commands) -> None:
    submit = add_client_options(sub.add_parser("submit", help="submit one action as an agent"))
    submit.add_argument("action_type")
    submit.add_argument(
        "--agent",
        default=os.environ.get("AGENTGW_AGENT"),
        help="your agent name (env AGENTGW_AGENT; default: your token's principal)",
    )
    submit.add_argument("--session", default="cli", help="session id (default: cli)")
    submit.add_argument("--resource", default="")
    submit.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter; VALUE is parsed as JSON when it can be",
    )
    submit.add_argument("--params-json", help="all parameters as one JSON object")
    submit.add_argument("--reasoning", default="")
    submit.add_argument("--action-id")
    submit.add_argument("--wait", action="store_true", help="if held, wait for the approver")
    submit.add_argument("--wait-timeout", type=float, default=None, help="seconds to wait")
    add_output_options(submit, default="json")
    submit.set_defaults(run=run_submit)

    outcome = add_client_options(
        sub.add_parser("outcome", help="report how an action you submitted went (once)")
    )
    outcome.add_argument("action_id")
    outcome.add_argument(
        "--agent",
        default=os.environ.get("AGENTGW_AGENT"),
        help="your agent name (env AGENTGW_AGENT; default: your token's principal)",
    )
    result = outcome.add_mutually_exclusive_group(required=True)
    result.add_argument("--success", action="store_true", help="it succeeded")
    result.add_argument("--failure", action="store_true", help="it failed")
    outcome.add_argument("--error", default="", help="the error message (redacted when stored)")
    outcome.add_argument("--error-type", default="", help="the error's type, e.g. Timeout")
    outcome.add_argument("--duration", type=float, default=0.0, help="seconds it took")
    outcome.add_argument("--tokens", type=int, default=None, help="model tokens it used")
    outcome.add_argument("--cost", type=float, default=0.0)
    add_output_options(outcome, default="json")
    outcome.set_defaults(run=run_outcome)


def parse_params(pairs: Sequence[str], as_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if as_json:
        try:
            loaded = json.loads(as_json)
        except json.JSONDecodeError as e:
            raise CliError(f"--params-json: {e}") from e
        if not isinstance(loaded, dict):
            raise CliError("--params-json: expected a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def decision_json(decision: gateway_pb2.Decision) -> str:
    return json_format.MessageToJson(decision, indent=None, preserving_proto_field_name=True)


def decision_exit_code(decision: gateway_pb2.Decision) -> int:
    """What became of the action, as an exit code (docs/cli.md, "Exit codes")."""
    if decision.verdict == gateway_pb2.VERDICT_ALLOW:
        return EXIT_OK
    if decision.verdict == gateway_pb2.VERDICT_HOLD and not decision.HasField("resolution"):
        return EXIT_HELD
    status = decision.resolution.status
    if status == gateway_pb2.RESOLUTION_STATUS_REJECTED:
        return EXIT_REJECTED
    if status == gateway_pb2.RESOLUTION_STATUS_EXPIRED:
        return EXIT_EXPIRED
    return EXIT_DENIED


def decision_line(decision: gateway_pb2.Decision) -> str:
    """A decision as `-o table` prints it: one line for people."""
    verdict = gateway_pb2.Verdict.Name(decision.verdict).removeprefix("VERDICT_").lower()
    if decision.HasField("resolution"):
        status = gateway_pb2.ResolutionStatus.Name(decision.resolution.status)
        verdict += f" ({status.removeprefix('RESOLUTION_STATUS_').lower()})"
    line = f"{verdict} {decision.action_id}"
    if decision.hold_id:
        line += f" hold {decision.hold_id}"
    line += f" (audit seq {decision.audit_seq})"
    return f"{line}: {decision.reason}" if decision.reason else line


def print_decision(decision: gateway_pb2.Decision, output_format: str) -> None:
    print(decision_line(decision) if output_format == "table" else decision_json(decision))
    sys.stdout.flush()


def still_pending(hold_id: str, options: str = "") -> str:
    """The line for a wait that ran out while the hold is pending."""
    return f"agentgw: {hold_id} is still pending; run `agentgw holds await {hold_id}{options}`"


def run_submit(args: argparse.Namespace) -> int:
    params = parse_params(args.param, args.params_json)
    with AgentClient(args.server, token(args), args.agent or "", tls=tls_of(args)) as agent:
        decision = agent.submit(
            args.action_type,
            session_id=args.session,
            resource=args.resource,
            parameters=params,
            reasoning=args.reasoning,
            action_id=args.action_id,
            timeout=args.timeout,
        )
        print_decision(decision, args.format)
        if args.wait and decision_exit_code(decision) == EXIT_HELD:
            print(
                f"held as {decision.hold_id}; waiting for an approver...",
                file=sys.stderr,
                flush=True,
            )
            try:
                decision = agent.wait(decision, timeout=args.wait_timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                print(still_pending(decision.hold_id), file=sys.stderr)
                return EXIT_HELD
            print_decision(decision, args.format)
    return decision_exit_code(decision)


def run_holds_await(args: argparse.Namespace) -> int:
    stub, md = stub_for(args, gateway_pb2_grpc.GatewayStub)
    request = gateway_pb2.AwaitRequest(hold_id=args.hold_id)
    try:
        decision = stub.Await(request, metadata=md, timeout=args.wait_timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            print(still_pending(args.hold_id), file=sys.stderr)
            return EXIT_HELD
        print(f"agentgw: {describe_refusal(e, args.server)}", file=sys.stderr)
        return EXIT_FAILED
    print_decision(decision, args.format)
    return decision_exit_code(decision)


def run_outcome(args: argparse.Namespace) -> int:
    with AgentClient(args.server, token(args), args.agent or "", tls=tls_of(args)) as agent:
        seq = agent.report_outcome(
            args.action_id,
            success=args.success,
            error=args.error,
            error_type=args.error_type,
            duration_seconds=args.duration,
            tokens=args.tokens,
            cost=args.cost,
            timeout=args.timeout,
        )
    if args.format == "table":
        print(f"reported the outcome of {args.action_id} (audit seq {seq})")
    else:
        print(json.dumps({"action_id": args.action_id, "audit_seq": seq}), flush=True)
    return EXIT_OK

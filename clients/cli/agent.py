"""`agentgw submit`: one action as an agent, and waiting for its hold to resolve;
`agentgw outcome`: how an action went, once it was carried out."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from agentgw.v1 import gateway_pb2
from clients.agent import AgentClient
from clients.cli.common import (
    EXIT_NOT_ALLOWED,
    EXIT_OK,
    CliError,
    Commands,
    add_client_options,
    tls_of,
    token,
)


def add_commands(sub: Commands) -> None:
    submit = add_client_options(sub.add_parser("submit", help="submit one action as an agent"))
    submit.add_argument("action_type")
    submit.add_argument(
        "--agent",
        default=os.environ.get("AGENTGW_AGENT"),
        help="your agent name (env AGENTGW_AGENT)",
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
    submit.set_defaults(run=run_submit)

    outcome = add_client_options(
        sub.add_parser("outcome", help="report how an action you submitted went (once)")
    )
    outcome.add_argument("action_id")
    outcome.add_argument(
        "--agent",
        default=os.environ.get("AGENTGW_AGENT"),
        help="your agent name (env AGENTGW_AGENT)",
    )
    result = outcome.add_mutually_exclusive_group(required=True)
    result.add_argument("--success", action="store_true", help="it succeeded")
    result.add_argument("--failure", action="store_true", help="it failed")
    outcome.add_argument("--error", default="", help="the error message (redacted when stored)")
    outcome.add_argument("--error-type", default="", help="the error's type, e.g. Timeout")
    outcome.add_argument("--duration", type=float, default=0.0, help="seconds it took")
    outcome.add_argument("--tokens", type=int, default=None, help="model tokens it used")
    outcome.add_argument("--cost", type=float, default=0.0)
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


def run_submit(args: argparse.Namespace) -> int:
    if not args.agent:
        raise CliError("no agent name: pass --agent or set AGENTGW_AGENT")
    params = parse_params(args.param, args.params_json)
    with AgentClient(args.server, token(args), args.agent, tls=tls_of(args)) as agent:
        decision = agent.submit(
            args.action_type,
            session_id=args.session,
            resource=args.resource,
            parameters=params,
            reasoning=args.reasoning,
            action_id=args.action_id,
            timeout=args.timeout,
        )
        print(decision_json(decision), flush=True)
        if (
            args.wait
            and decision.verdict == gateway_pb2.VERDICT_HOLD
            and not decision.HasField("resolution")
        ):
            print(
                f"held as {decision.hold_id}; waiting for an approver...",
                file=sys.stderr,
                flush=True,
            )
            decision = agent.wait(decision, timeout=args.wait_timeout)
            print(decision_json(decision), flush=True)
    return EXIT_OK if decision.verdict == gateway_pb2.VERDICT_ALLOW else EXIT_NOT_ALLOWED


def run_outcome(args: argparse.Namespace) -> int:
    if not args.agent:
        raise CliError("no agent name: pass --agent or set AGENTGW_AGENT")
    with AgentClient(args.server, token(args), args.agent, tls=tls_of(args)) as agent:
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
    print(json.dumps({"action_id": args.action_id, "audit_seq": seq}), flush=True)
    return EXIT_OK

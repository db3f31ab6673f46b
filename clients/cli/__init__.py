"""The `agentgw` command: serve, submit, outcome, holds, sessions, agents, audit, logs, alerts.

One module per audience: `agent` (submit, outcome), `approver` (holds list, watch,
approve, reject; sessions list, resume), `auditor` (audit export, keys, checkpoint,
verify, verify-in-place, prove-*) with `queries` (audit query, report), `admin`
(serve, keys rotate, agents quarantine|release), `logs` (query and follow the log
streams) and `alerts` (list, watch, ack); `common` holds the connection options,
exit codes and output helpers; `completion` prints shell completion scripts drawn
from the parser. `serve` imports the server lazily; every other command is a gRPC
client, and `audit verify` (and `audit query|report --export`) works offline with
only the pure audit-format package. `main` is where every command ends: a failed
call, a closed pipe and Ctrl-C become an exit code and at most one line on stderr
(docs/cli.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

# gRPC's core prints its own INFO lines on stderr (a failed TLS handshake, say) unless
# told not to; the CLI explains failures in one line of its own. Read at import.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc

from clients.cli import admin, agent, alerts, approver, auditor, completion, logs, policy, tokens
from clients.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    describe_status,
    explain_connection,
    quiet_stdout,
    server_of,
)

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "CliError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        code: int = args.run(args)
        # Inside the try: a reader that went away makes this flush fail, not the exit.
        sys.stdout.flush()
        return code
    except CliError as e:
        print(f"agentgw: {e}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as e:
        # Commands without their own refusal printing: the status code stays in front.
        message = explain_connection(e, server_of(args)) or describe_status(e)
        print(f"agentgw: {message}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # `agentgw audit export | head -1`: the reader has what it wanted.
        quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def version() -> str:
    """The installed agentgw's version ("unknown" when run from a tree not installed)."""
    try:
        return metadata.version("agentgw")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(
        prog="agentgw",
        description=__doc__.split("\n")[0],
        epilog="Exit codes: 0 ok/allowed, 1 failed, 2 usage, 3 held, 4 denied, 5 rejected, "
        "6 expired, 130 interrupted (docs/cli.md).",
    )
    parser.add_argument("--version", action="version", version=f"agentgw {version()}")
    sub = parser.add_subparsers(metavar="COMMAND")
    admin.add_serve_command(sub)
    agent.add_commands(sub)
    approver.add_commands(sub)
    admin.add_key_commands(sub)
    admin.add_agent_commands(sub)
    auditor.add_commands(sub)
    logs.add_commands(sub)
    alerts.add_commands(sub)
    policy.add_commands(sub)
    tokens.add_commands(sub)
    completion.add_command(sub, parser)
    give_groups_their_help(parser)
    return parser


def give_groups_their_help(parser: argparse.ArgumentParser) -> None:
    """Every group command (`holds`, `audit`, ...) run alone prints its own help on
    stderr and exits EXIT_USAGE, not the top-level help."""
    for child in completion.subcommands(parser).values():
        if completion.subcommands(child) and child.get_default("run") is None:
            child.set_defaults(run=lambda _, group=child: _group_help(group))
        give_groups_their_help(child)


def _group_help(group: argparse.ArgumentParser) -> int:
    group.print_help(sys.stderr)
    return EXIT_USAGE

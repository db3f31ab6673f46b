"""The `agentgw` command: serve, submit, outcome, holds, sessions, agents, audit, logs, alerts.

One module per audience: `agent` (submit, outcome), `approver` (holds list, watch,
approve, reject; sessions list, resume), `auditor` (audit export, keys, checkpoint,
verify, verify-in-place, prove-*) with `queries` (audit query, report), `admin`
(serve, keys rotate, agents quarantine|release), `logs` (query and follow the log
streams) and `alerts` (list, watch, ack); `common` holds the connection options,
exit codes and output helpers. `serve` imports the server lazily; every other
command is a gRPC client, and `audit verify` (and `audit query|report --export`)
works offline with only the pure audit-format package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from clients.cli import admin, agent, alerts, approver, auditor, logs
from clients.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "CliError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(args)
        return code
    except CliError as e:
        print(f"agentgw: {e}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as e:
        print(f"agentgw: {e.code().name}: {e.details()}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(prog="agentgw", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(metavar="COMMAND")
    admin.add_serve_command(sub)
    agent.add_commands(sub)
    approver.add_commands(sub)
    admin.add_key_commands(sub)
    admin.add_agent_commands(sub)
    auditor.add_commands(sub)
    logs.add_commands(sub)
    alerts.add_commands(sub)
    return parser

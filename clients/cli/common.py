"""What every `agentgw` command shares: exit codes (the table in docs/cli.md), usage
errors, the connection options (--server, --token, --timeout and their environment
variables), stubs, how a failed call is explained in one line, the output options
(-o table|json|jsonl, --json) and output helpers. No command lives here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO, TypeAlias, TypeVar

import grpc
from google.protobuf import json_format

from agentgw.v1 import approvals_pb2_grpc, audit_pb2_grpc
from clients.agent import Metadata, bearer
from clients.transport import Tls, TlsFileError, is_local, open_channel
from gateway.domain.audit.query import micros_from_text
from gateway.errors import InvalidRequest

DEFAULT_SERVER = "127.0.0.1:50051"
# The exit codes (docs/cli.md, "Exit codes"). 3..6 say what became of an action:
# `submit` and `holds await` exit with them.
EXIT_OK = 0  # done; for `submit`, `holds await`: the action is allowed
EXIT_FAILED = 1  # a refused call, an unreachable gateway, a failed verification
EXIT_USAGE = 2  # a wrong command line or input file
EXIT_HELD = 3  # the action is held and still pending (or the wait ran out)
EXIT_DENIED = 4  # the gateway denied the action
EXIT_REJECTED = 5  # an approver rejected the held action
EXIT_EXPIRED = 6  # the hold expired before anyone decided
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), except where Ctrl-C is how a watch ends

# The output formats of -o: a table for people; one JSON document (an array for a
# list, an object for one record); JSON Lines (an object per record, a line each).
# Streaming commands (watch, --follow, export) print JSON Lines for json too.
OUTPUT_FORMATS = ("table", "json", "jsonl")

# The subparsers object argparse gives each audience's module to add commands to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CliError(Exception):
    """A usage or input problem: printed, exit code 2."""


# A time before now, as `--since 15m` (s, m, h, d, w) takes it.
_SPAN = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def micros_of_time(flag: str, text: str, now: float) -> int:
    """Microseconds since the epoch of an RFC 3339 time (UTC without an offset), a
    date (UTC midnight), or a span before `now` (seconds since the epoch) as 15m, 2h,
    7d; a CliError naming `flag` otherwise."""
    span = _SPAN.fullmatch(text.strip())
    if span:
        return round((now - float(span.group(1)) * _UNIT_SECONDS[span.group(2)]) * 1_000_000)
    try:
        return micros_from_text(flag, text)
    except InvalidRequest:
        raise CliError(
            f"{flag}: {text!r} is not an RFC 3339 time, a date, or a span like 15m, 2h, 7d"
        ) from None


# Refusals whose status message is written for the person who made the call (it names
# the hold, the agent or the field and the rule): printed as they are, without the code.
PLAIN_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


# What gRPC says (in an UNAVAILABLE status it makes up itself, the server never
# reached) when the TLS handshake failed, in lower case.
_TLS_FAILURES = ("handshake", "ssl", "tls", "certificate", "tsi_", "x509")


def describe_refusal(error: grpc.RpcError, server: str | None = None) -> str:
    """A failed call in one line that says what to do: `explain_connection`'s, or the
    server's message, with the status code in front unless it is one of
    PLAIN_REFUSALS. `server`: the address dialled, if known."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    explained = explain_connection(error, server)
    if explained:
        return explained
    if code in PLAIN_REFUSALS and details:
        return details
    return describe_status(error)


def describe_status(error: grpc.RpcError) -> str:
    """`CODE: the server's message`."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    return f"{code.name}: {details}" if details else code.name


def explain_connection(error: grpc.RpcError, server: str | None) -> str | None:
    """What to check when the call never reached the gateway (not running, a TLS
    handshake that failed), the gateway does not know the token, or it did not answer
    before the deadline; None otherwise. (A wait on a hold that runs out is the
    caller's to explain: the hold is still pending.)"""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    where = f" at {server}" if server else ""
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        if any(word in details.lower() for word in _TLS_FAILURES):
            return (
                f"TLS handshake with the gateway{where} failed: check --tls-ca (the CA "
                "that signed its certificate), --tls-server-name, and for mTLS "
                f"--tls-cert/--tls-key ({details})"
            )
        return (
            f"cannot reach the gateway{where}: is `agentgw serve` running? "
            "(set --server or AGENTGW_SERVER; with TLS, --tls-ca)"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        reason = f" ({details})" if details else ""
        return f"the gateway does not know this token: check --token / AGENTGW_TOKEN{reason}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            f"the gateway{where} did not answer in time: try again with a longer --timeout, "
            "or see whether it is healthy (docs/operations.md)"
        )
    return None


Command: TypeAlias = Callable[[argparse.Namespace], int]


def report_refusals(run: Command) -> Command:
    """Wraps a command: a failed call prints `agentgw: <describe_refusal>` on stderr and
    exits EXIT_FAILED (instead of reaching `main`'s generic status dump)."""

    @functools.wraps(run)
    def reporting(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except grpc.RpcError as e:
            print(f"agentgw: {describe_refusal(e, server_of(args))}", file=sys.stderr)
            return EXIT_FAILED

    return reporting


def add_client_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--server, --token and --timeout: the options of every command that calls the gateway."""
    p.add_argument(
        "--server",
        default=os.environ.get("AGENTGW_SERVER", DEFAULT_SERVER),
        help=f"gateway address (env AGENTGW_SERVER, default {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("AGENTGW_TOKEN"),
        help="bearer token (env AGENTGW_TOKEN)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    add_insecure_option(p)
    tls = p.add_argument_group("TLS")
    tls.add_argument(
        "--tls-ca",
        type=Path,
        default=_env_path("AGENTGW_TLS_CA"),
        help="connect with TLS, trusting this CA (env AGENTGW_TLS_CA)",
    )
    tls.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("AGENTGW_TLS", "") in ("1", "true", "yes"),
        help="connect with TLS, trusting the system's CAs (env AGENTGW_TLS=1)",
    )
    tls.add_argument(
        "--tls-cert",
        type=Path,
        default=_env_path("AGENTGW_TLS_CLIENT_CERT"),
        help="client certificate for mTLS (env AGENTGW_TLS_CLIENT_CERT)",
    )
    tls.add_argument(
        "--tls-key",
        type=Path,
        default=_env_path("AGENTGW_TLS_CLIENT_KEY"),
        help="its private key (env AGENTGW_TLS_CLIENT_KEY)",
    )
    tls.add_argument(
        "--tls-server-name",
        default=os.environ.get("AGENTGW_TLS_SERVER_NAME", ""),
        help="check the gateway's certificate for this name instead of the address's host",
    )
    return p


def add_insecure_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("AGENTGW_INSECURE", "") in ("1", "true", "yes"),
        help="send the token in cleartext to a host off loopback (env AGENTGW_INSECURE=1); "
        "without it such a call is refused: use TLS",
    )


def refuse_cleartext(where: str, local: bool, args: argparse.Namespace) -> None:
    """CliError when a bearer token would cross the network in cleartext (to `where`,
    not `local`) and --insecure was not given: as the gateway refuses to serve so."""
    if not local and args.token and not getattr(args, "insecure", False):
        raise CliError(
            f"{where}: refusing to send the token in cleartext off loopback; connect with "
            "TLS (--tls-ca FILE or --tls), or pass --insecure if the network is trusted"
        )


def server_of(args: argparse.Namespace | None) -> str | None:
    """The --server of a command that has one."""
    server: str | None = getattr(args, "server", None)
    return server


def add_output_options(
    p: argparse.ArgumentParser, default: str = "table", formats: tuple[str, ...] = OUTPUT_FORMATS
) -> argparse.ArgumentParser:
    """-o/--output FORMAT and --json (JSON Lines: an object per record, a line each;
    the same as `-o json` for a command that prints one record or a stream)."""
    p.add_argument(
        "-o",
        "--output",
        dest="format",
        choices=formats,
        default=default,
        help=f"output format (default: {default}); json is one JSON document, "
        "jsonl one JSON object per line",
    )
    p.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="jsonl",
        help="JSON Lines: one JSON object per record (as -o jsonl)",
    )
    return p


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def tls_of(args: argparse.Namespace) -> Tls | None:
    """The TLS settings of the command line to connect to --server with; None:
    plaintext, which a token may take off loopback only with --insecure."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        refuse_cleartext(f"--server {args.server}", is_local(args.server), args)
        return None
    return Tls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def token(args: argparse.Namespace) -> str:
    """The bearer token; "" when a client certificate stands for it (mTLS)."""
    if not args.token:
        if args.tls_cert:
            return ""
        raise CliError("no token: pass --token or set AGENTGW_TOKEN")
    value: str = args.token
    return value


Stub = TypeVar("Stub")


def stub_for(
    args: argparse.Namespace, stub_class: Callable[[grpc.Channel], Stub]
) -> tuple[Stub, Metadata]:
    """A stub of `stub_class` on a channel to --server, and the caller's metadata."""
    try:
        channel = open_channel(args.server, tls_of(args))
    except TlsFileError as e:
        raise CliError(str(e)) from None
    return stub_class(channel), bearer(token(args))


def approvals_stub(args: argparse.Namespace) -> tuple[approvals_pb2_grpc.ApprovalsStub, Metadata]:
    return stub_for(args, approvals_pb2_grpc.ApprovalsStub)


def audit_stub(args: argparse.Namespace) -> tuple[audit_pb2_grpc.AuditStub, Metadata]:
    return stub_for(args, audit_pb2_grpc.AuditStub)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def message_json(message: Any) -> str:
    """A protobuf message as one line of JSON (proto field names; unset fields left out)."""
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)


def format_age(seconds: float) -> str:
    """A duration as tables show it: 7s, 2m05s, 1h02m, 3d04h."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def one_line(text: str) -> str:
    """Text that fits one output line: as it is, or as a JSON string if it has line
    breaks or other unprintable characters."""
    return text if text.isprintable() else json.dumps(text, ensure_ascii=False)


def quiet_stdout() -> None:
    """The reader went away (`| head`): point stdout at /dev/null, so that the
    interpreter's last flush at exit does not fail with a traceback."""
    # OSError, ValueError: stdout is no file (captured, in tests).
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def output(path: Path | None) -> TextIO:
    """`path` opened for writing, or stdout when there is none."""
    return path.open("w", encoding="utf-8") if path else sys.stdout


def print_result(document: dict[str, Any], as_json: bool, text: Callable[[], str]) -> None:
    """`document` as one line of JSON with --json, else the text."""
    print(json.dumps(document) if as_json else text())


def is_json(args: argparse.Namespace) -> bool:
    """Whether -o json, -o jsonl or --json was asked for."""
    return getattr(args, "format", "table") in ("json", "jsonl")


def print_records(documents: Iterable[Any], output_format: str) -> int:
    """Records as JSON: one array (json) or one object a line (jsonl); the number
    printed. Each line is flushed, so a reader sees records as they come."""
    count = 0
    if output_format == "json":
        # Nothing is written before the first record is in hand: a call that fails
        # leaves stdout empty, not an array half open.
        for document in documents:
            text = json.dumps(document, ensure_ascii=False)
            sys.stdout.write(("," if count else "[") + "\n" + text)
            count += 1
        sys.stdout.write("\n]\n" if count else "[]\n")
        sys.stdout.flush()
        return count
    for document in documents:
        print(json.dumps(document, ensure_ascii=False), flush=True)
        count += 1
    return count


def message_document(message: Any) -> dict[str, Any]:
    """A protobuf message as a JSON object (proto field names; unset fields left out)."""
    document: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return document

"""The `agentgw` command: serve, submit, holds, sessions, audit.

`serve` imports the server lazily; every other command is a gRPC client, and
`audit verify` (and `audit query|report --export`) works offline with only the pure
audit-format package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from agentgw.v1 import approvals_pb2, approvals_pb2_grpc, audit_pb2, audit_pb2_grpc, gateway_pb2
from clients.agent import AgentClient, bearer
from gateway.api.convert import entry_from_proto, report_from_proto
from gateway.api.structs import struct_to_python
from gateway.domain.audit.entry import AuditEntry
from gateway.domain.audit.query import (
    EntryFilter,
    Report,
    build_report,
    check_max_entries,
    micros_from_text,
    security_reasons,
    select,
)
from gateway.errors import InvalidRequest

DEFAULT_SERVER = "127.0.0.1:50051"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A usage or input problem: printed, exit code 2."""


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
    parser = argparse.ArgumentParser(prog="agentgw", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="YAML config file (env AGENTGW_CONFIG)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (env AGENTGW_LISTEN)")
    serve.add_argument("--data-dir", type=Path, help="state directory (env AGENTGW_DATA_DIR)")
    serve.add_argument(
        "--redis-url", help="use this Redis instead of the embedded one (env AGENTGW_REDIS_URL)"
    )
    serve.set_defaults(run=run_serve)

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
        return p

    submit = client(sub.add_parser("submit", help="submit one action as an agent"))
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

    holds = sub.add_parser("holds", help="held actions (approvers)").add_subparsers(
        metavar="ACTION"
    )
    hold_list = client(holds.add_parser("list", help="list pending holds"))
    hold_list.add_argument("--agent", default="")
    hold_list.add_argument("--session", default="")
    hold_list.add_argument("--json", action="store_true")
    hold_list.set_defaults(run=run_holds_list)
    for verb in ("approve", "reject"):
        p = client(holds.add_parser(verb, help=f"{verb} a held action"))
        p.add_argument("hold_id")
        p.add_argument("--reason", required=True)
        p.set_defaults(run=run_hold_resolve, verb=verb)

    sessions = sub.add_parser("sessions", help="paused sessions (approvers)").add_subparsers(
        metavar="ACTION"
    )
    resume = client(sessions.add_parser("resume", help="resume a session paused for review"))
    resume.add_argument("agent")
    resume.add_argument("session")
    resume.add_argument("--reason", required=True)
    resume.set_defaults(run=run_session_resume)

    signing = sub.add_parser("keys", help="the audit signing key (admins)").add_subparsers(
        metavar="ACTION"
    )
    rotate = client(
        signing.add_parser("rotate", help="sign the log with a new key from the next entry on")
    )
    rotate.add_argument("--reason", required=True, help="recorded in the rotation entry")
    rotate.add_argument(
        "--key-id",
        default="",
        help="rotate to a key provisioned as <audit.key_dir>/<KEY_ID>.pem (default: a new one)",
    )
    rotate.set_defaults(run=run_keys_rotate)

    audit = sub.add_parser("audit", help="the signed audit log (auditors)").add_subparsers(
        metavar="ACTION"
    )
    export = client(audit.add_parser("export", help="write the log as JSON Lines"))
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export.add_argument("--from-seq", type=int, default=1)
    export.add_argument("--to-seq", type=int, default=0, help="last seq (default: the head)")
    export.set_defaults(run=run_audit_export)
    keys = client(audit.add_parser("keys", help="save the log's public keys (for verify)"))
    keys.add_argument("--out", type=Path)
    keys.set_defaults(run=run_audit_keys)
    checkpoint = client(audit.add_parser("checkpoint", help="save a signed checkpoint note"))
    checkpoint.add_argument("--out", type=Path)
    checkpoint.add_argument(
        "--published",
        action="store_true",
        help="the latest published checkpoint instead of a newly signed one",
    )
    checkpoint.set_defaults(run=run_audit_checkpoint)
    verify = audit.add_parser("verify", help="verify an export offline")
    verify.add_argument("export", type=Path)
    verify.add_argument(
        "--keys",
        type=Path,
        help="key set from `agentgw audit keys`: its key for seq 1 is the trust anchor "
        "unless one is pinned; checked against the key history the chain carries",
    )
    add_anchor_arguments(verify)
    verify.add_argument(
        "--checkpoint", type=Path, help="checkpoint from `agentgw audit checkpoint`"
    )
    verify.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(run=run_audit_verify)
    inclusion = client(
        audit.add_parser("prove-inclusion", help="prove an entry is in a saved checkpoint's tree")
    )
    inclusion.add_argument("--seq", type=int, required=True, help="the entry's seq")
    inclusion.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint from `agentgw audit checkpoint`"
    )
    inclusion.add_argument(
        "--keys", type=Path, required=True, help="key set from `agentgw audit keys`"
    )
    add_anchor_arguments(inclusion)
    source = inclusion.add_mutually_exclusive_group()
    source.add_argument(
        "--entry-line", metavar="FILE:LINE", help="the entry is line LINE (from 1) of FILE"
    )
    source.add_argument(
        "--export", type=Path, metavar="FILE", help="the entry is the line of FILE with --seq"
    )
    inclusion.set_defaults(run=run_audit_prove_inclusion)
    consistency = client(
        audit.add_parser(
            "prove-consistency", help="prove a newer saved checkpoint extends an older one"
        )
    )
    consistency.add_argument("--old", type=Path, required=True, help="the older checkpoint")
    consistency.add_argument("--new", type=Path, required=True, help="the newer checkpoint")
    consistency.add_argument(
        "--keys", type=Path, required=True, help="key set from `agentgw audit keys`"
    )
    add_anchor_arguments(consistency)
    consistency.set_defaults(run=run_audit_prove_consistency)
    add_query_commands(audit, client)
    return parser


def add_anchor_arguments(parser: argparse.ArgumentParser) -> None:
    """--trust-key and --key-id: the key trusted to sign seq 1 (docs/audit-format.md §8)."""
    anchor = parser.add_mutually_exclusive_group()
    anchor.add_argument(
        "--trust-key",
        metavar="KEY",
        help="the log's first public key, trusted out of band: base64 of the raw key, or "
        "its note verifier key (origin+hash+key)",
    )
    anchor.add_argument(
        "--key-id",
        help="pin the trust anchor by key id: it must be the --keys file's key for seq 1",
    )


# --- serve --------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.app import serve
    from gateway.config import Overrides, load_config
    from gateway.errors import GatewayError

    overrides = Overrides(
        config_file=args.config,
        listen=args.listen,
        data_dir=args.data_dir,
        redis_url=args.redis_url,
    )
    try:
        config, tokens = load_config(overrides, os.environ)
        asyncio.run(serve(config, tokens))
    except GatewayError as e:
        print(f"agentgw: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# --- agents -------------------------------------------------------------------------


def _token(args: argparse.Namespace) -> str:
    if not args.token:
        raise CliError("no token: pass --token or set AGENTGW_TOKEN")
    token: str = args.token
    return token


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
    with AgentClient(args.server, _token(args), args.agent) as agent:
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
    return EXIT_OK if decision.verdict == gateway_pb2.VERDICT_ALLOW else 3


# --- approvers ----------------------------------------------------------------------


def _approvals(args: argparse.Namespace) -> tuple[approvals_pb2_grpc.ApprovalsStub, Any]:
    channel = grpc.insecure_channel(args.server)
    return approvals_pb2_grpc.ApprovalsStub(channel), bearer(_token(args))


def run_holds_list(args: argparse.Namespace) -> int:
    stub, md = _approvals(args)
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
    stub, md = _approvals(args)
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
    stub, md = _approvals(args)
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


# --- auditors -----------------------------------------------------------------------


def _audit(args: argparse.Namespace) -> tuple[audit_pb2_grpc.AuditStub, Any]:
    channel = grpc.insecure_channel(args.server)
    return audit_pb2_grpc.AuditStub(channel), bearer(_token(args))


def _output(path: Path | None) -> TextIO:
    return path.open("w", encoding="utf-8") if path else sys.stdout


def run_audit_export(args: argparse.Namespace) -> int:
    stub, md = _audit(args)
    stream = stub.ReadEntries(
        audit_pb2.ReadEntriesRequest(start_seq=args.from_seq, end_seq=args.to_seq), metadata=md
    )
    out = _output(args.out)
    count = 0
    try:
        for msg in stream:
            out.write(entry_from_proto(msg).to_json_line() + "\n")
            count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} entries", file=sys.stderr)
    return EXIT_OK


def run_audit_keys(args: argparse.Namespace) -> int:
    stub, md = _audit(args)
    keys = stub.GetPublicKeys(audit_pb2.GetPublicKeysRequest(), metadata=md, timeout=args.timeout)
    document = {
        "origin": keys.origin,
        "keys": [
            {
                "key_id": k.key_id,
                "public_key": k.public_key,
                "note_verifier_key": k.note_verifier_key,
                "first_seq": k.first_seq,
                "last_seq": k.last_seq,
            }
            for k in keys.keys
        ],
    }
    out = _output(args.out)
    out.write(json.dumps(document, indent=2) + "\n")
    if out is not sys.stdout:
        out.close()
    return EXIT_OK


def run_audit_checkpoint(args: argparse.Namespace) -> int:
    stub, md = _audit(args)
    cp = stub.GetCheckpoint(
        audit_pb2.GetCheckpointRequest(published=args.published), metadata=md, timeout=args.timeout
    )
    out = _output(args.out)
    out.write(cp.note)
    if out is not sys.stdout:
        out.close()
    print(f"checkpoint: size {cp.size}, root {cp.root_hash}", file=sys.stderr)
    return EXIT_OK


def run_keys_rotate(args: argparse.Namespace) -> int:
    stub, md = _audit(args)
    rotation = stub.RotateKey(
        audit_pb2.RotateKeyRequest(reason=args.reason, key_id=args.key_id),
        metadata=md,
        timeout=args.timeout,
    )
    old, new = rotation.old_key, rotation.new_key
    print(f"rotated at seq {rotation.entry.seq}: key {old.key_id} signed", end=" ")
    print(f"{old.first_seq}..{old.last_seq}")
    print(f"key {new.key_id} signs from seq {new.first_seq} on")
    print(f"note verifier key: {new.note_verifier_key}")
    print(
        "auditors: `agentgw audit verify` learns the new key from the chain; save the key "
        "set again for prove-inclusion/prove-consistency (agentgw audit keys --out keys.json)"
    )
    return EXIT_OK


def _lines(path: Path) -> Iterator[str]:
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        yield from f


def run_audit_verify(args: argparse.Namespace) -> int:
    from gateway.domain.audit.verify import verify_export

    if args.keys is None and args.trust_key is None:
        raise CliError(
            "give the trust anchor: --keys FILE (and optionally --key-id) or --trust-key"
        )
    if args.key_id is not None and args.keys is None:
        raise CliError("--key-id picks the anchor out of --keys: give --keys too")
    keys = None if args.keys is None else _key_set_file(args.keys)
    anchor = _trust_key(args) or args.key_id
    if not args.export.is_file():
        raise CliError(f"{args.export}: no such file")
    note = None
    if args.checkpoint is not None:
        try:
            # The bytes as saved: read_text would turn a CR into LF (accepting an edited
            # note) and crash on bad UTF-8, which opening reports as checkpoint_signature.
            note = args.checkpoint.read_bytes().decode("utf-8", errors="surrogateescape")
        except OSError as e:
            raise CliError(f"--checkpoint {args.checkpoint}: {e}") from e
    # This process has no other thread (no channel, no server) when it verifies, so the
    # pool may fork; elsewhere, and where fork is unsafe (macOS), it spawns.
    forkable = sys.platform == "linux" and threading.active_count() == 1
    report = verify_export(
        _lines(args.export),
        keys,
        note,
        workers=max(1, args.workers),
        start_method="fork" if forkable else "spawn",
        anchor=anchor,
    )
    if report.ok:
        _report(
            {
                "ok": True,
                "count": report.count,
                "root_hash": report.root_hash,
                "head_hash": report.head_hash,
            },
            args.json,
            lambda: f"OK: {report.count} entries verified; root {report.root_hash}",
        )
        return EXIT_OK
    failure = report.failure
    assert failure is not None
    where = "" if failure.line_number is None else f" at line {failure.line_number}"
    _report(
        {
            "ok": False,
            "kind": str(failure.kind.value),
            "seq": failure.seq,
            "line": failure.line_number,
            "message": failure.message,
        },
        args.json,
        lambda: f"FAILED {failure.kind.value}{where}: {failure.message}",
    )
    return EXIT_FAILED


def _trust_key(args: argparse.Namespace) -> Any:
    """The TrustAnchor of --trust-key, or None."""
    from gateway.domain.audit.keys import KeyFileError, TrustAnchor

    if args.trust_key is None:
        return None
    try:
        return TrustAnchor.parse(args.trust_key)
    except KeyFileError as e:
        raise CliError(f"--trust-key: {e}") from e


def _report(document: dict[str, Any], as_json: bool, text: Callable[[], str]) -> None:
    print(json.dumps(document) if as_json else text())


# --- proofs (fetched from the server, verified with gateway.domain.audit only) --------------


class ProofFailed(Exception):
    """A checkpoint or a proof did not verify: printed as FAILED, exit code 1."""


def _key_set_file(path: Path) -> Any:
    from gateway.domain.audit.keys import KeySet

    try:
        return KeySet.load(path)
    except (OSError, ValueError) as e:
        raise CliError(f"--keys {path}: {e}") from e


def _anchored_keys(args: argparse.Namespace) -> Any:
    """--keys for proofs: one key history, starting at the pinned anchor if one is given.

    There is no chain here to check the rest of the history against; `audit verify`
    with the same key set does that.
    """
    from gateway.domain.audit.keys import KeyHistoryError

    keys = _key_set_file(args.keys)
    anchor = _trust_key(args)
    try:
        first = keys.anchor(args.key_id if anchor is None else anchor.key_id)
    except KeyHistoryError as e:
        raise ProofFailed(f"key_history_mismatch: --keys {args.keys}: {e}") from e
    if anchor is not None and (
        first.public_key_raw != anchor.public_key_raw or anchor.origin not in (None, keys.origin)
    ):
        raise ProofFailed(
            f"key_history_mismatch: --keys {args.keys}: its key for seq 1 is not --trust-key"
        )
    return keys


def _saved_checkpoint(flag: str, path: Path, keys: Any) -> Any:
    """The checkpoint in `path`, signed by the key `keys` names for the seq after it."""
    from gateway.domain.audit.checkpoint import CheckpointError, open_checkpoint

    try:
        # As in `audit verify`: no newline translation; bad UTF-8 fails to open.
        note = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as e:
        raise CliError(f"{flag} {path}: {e}") from e
    try:
        return open_checkpoint(note, keys)
    except CheckpointError as e:
        raise ProofFailed(f"checkpoint_signature: {flag} {path}: {e}") from e


def _proof_hashes(hexes: Sequence[str]) -> list[bytes]:
    try:
        return [bytes.fromhex(h) for h in hexes]
    except ValueError as e:
        raise ProofFailed(f"the server sent a proof hash that is not hex: {e}") from e


def _entry_line(args: argparse.Namespace) -> tuple[str, str] | None:
    """(line, where) of the entry from --entry-line or --export; None: ask the server."""
    if args.entry_line:
        name, sep, number = args.entry_line.rpartition(":")
        if not sep or not name or not number.isdigit() or int(number) < 1:
            raise CliError(f"--entry-line {args.entry_line!r}: expected FILE:LINE, LINE >= 1")
        try:
            for i, line in enumerate(_lines(Path(name)), start=1):
                if i == int(number):
                    return line, f"{name}:{number}"
        except OSError as e:
            raise CliError(f"--entry-line {name}: {e}") from e
        raise CliError(f"--entry-line {args.entry_line}: {name} has fewer lines")
    if args.export:
        try:
            # An export starts at seq 1, so the entry is usually line `seq`.
            lines = list(_lines(args.export))
        except OSError as e:
            raise CliError(f"--export {args.export}: {e}") from e
        guess = args.seq - 1
        order = [guess, *range(len(lines))] if guess < len(lines) else range(len(lines))
        for i in order:
            try:
                obj = json.loads(lines[i])
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("seq") == args.seq:
                return lines[i], f"{args.export}:{i + 1}"
        raise CliError(f"--export {args.export}: no line has seq {args.seq}")
    return None


def _leaf_hash_of_line(line: str, seq: int, where: str) -> bytes:
    """The RFC 6962 leaf hash of an export line, recomputed from its canonical bytes."""
    from gateway.domain.audit.entry import EntryFormatError, read_export_object
    from gateway.domain.audit.merkle import leaf_hash_of

    text = line[:-1] if line.endswith("\n") else line
    try:
        entry, canonical = read_export_object(json.loads(text), text)
    except (ValueError, RecursionError) as e:
        raise CliError(f"{where}: not an audit entry line: {e}") from e
    except EntryFormatError as e:
        raise CliError(f"{where}: not an audit entry line: {e}") from e
    if entry.seq != seq:
        raise CliError(f"{where}: the entry has seq {entry.seq}, not --seq {seq}")
    return leaf_hash_of(canonical)


def _proved(check: Callable[[], str]) -> int:
    try:
        message = check()
    except ProofFailed as e:
        print(f"FAILED {e}")
        return EXIT_FAILED
    print(f"OK: {message}")
    return EXIT_OK


def run_audit_prove_inclusion(args: argparse.Namespace) -> int:
    return _proved(lambda: _prove_inclusion(args))


def _prove_inclusion(args: argparse.Namespace) -> str:
    from gateway.domain.audit.merkle import verify_inclusion

    seq: int = args.seq
    if seq < 1:
        raise CliError("--seq: must be >= 1")
    keys = _anchored_keys(args)
    found = _entry_line(args)
    checkpoint = _saved_checkpoint("--checkpoint", args.checkpoint, keys)
    if seq > checkpoint.size:
        raise CliError(f"--seq {seq} is beyond the checkpoint's size {checkpoint.size}")
    stub, md = _audit(args)
    if found is None:
        entries = list(
            stub.ReadEntries(
                audit_pb2.ReadEntriesRequest(start_seq=seq, end_seq=seq),
                metadata=md,
                timeout=args.timeout,
            )
        )
        if len(entries) != 1:
            raise ProofFailed(f"inclusion: the server has no entry with seq {seq}")
        found = entry_from_proto(entries[0]).to_json_line(), f"the server's entry {seq}"
    line, where = found
    leaf = _leaf_hash_of_line(line, seq, where)
    response = stub.GetInclusionProof(
        audit_pb2.GetInclusionProofRequest(seq=seq, tree_size=checkpoint.size),
        metadata=md,
        timeout=args.timeout,
    )
    if (response.seq, response.tree_size) != (seq, checkpoint.size):
        raise ProofFailed(
            f"inclusion: asked for seq {seq} in size {checkpoint.size}, the server answered "
            f"seq {response.seq} in size {response.tree_size}"
        )
    proof = _proof_hashes(response.hashes)
    if not verify_inclusion(leaf, seq - 1, checkpoint.size, proof, checkpoint.root_hash):
        why = f"inclusion: the proof for seq {seq} ({where}, leaf hash {leaf.hex()})"
        why += f" does not lead to the checkpoint's root {checkpoint.root_hash.hex()}"
        if response.leaf_hash != leaf.hex():
            why += f"; the log's leaf {seq} is {response.leaf_hash}: not the logged entry"
        raise ProofFailed(why)
    return (
        f"seq {seq} ({where}) is included in the checkpoint of size {checkpoint.size}, "
        f"root {checkpoint.root_hash.hex()} ({len(proof)} proof hashes)"
    )


def run_audit_prove_consistency(args: argparse.Namespace) -> int:
    return _proved(lambda: _prove_consistency(args))


def _prove_consistency(args: argparse.Namespace) -> str:
    from gateway.domain.audit.merkle import verify_consistency

    keys = _anchored_keys(args)
    old = _saved_checkpoint("--old", args.old, keys)
    new = _saved_checkpoint("--new", args.new, keys)
    if old.size > new.size:
        raise CliError(f"--old has size {old.size}, larger than --new's {new.size}: swap them")
    if old.size == new.size:
        # Nothing to fetch: equal trees have equal roots (and new_size 0 means the head).
        if old.root_hash != new.root_hash:
            raise ProofFailed(
                f"consistency: both checkpoints have size {old.size} but different roots "
                f"({old.root_hash.hex()} and {new.root_hash.hex()}): the log forked"
            )
        return f"both checkpoints have size {old.size} and root {old.root_hash.hex()}"
    stub, md = _audit(args)
    response = stub.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(old_size=old.size, new_size=new.size),
        metadata=md,
        timeout=args.timeout,
    )
    if (response.old_size, response.new_size) != (old.size, new.size):
        raise ProofFailed(
            f"consistency: asked for sizes {old.size} to {new.size}, the server answered "
            f"{response.old_size} to {response.new_size}"
        )
    proof = _proof_hashes(response.hashes)
    if not verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof):
        raise ProofFailed(
            f"consistency: the proof does not show that root {new.root_hash.hex()} (size "
            f"{new.size}) extends root {old.root_hash.hex()} (size {old.size}): the log "
            "was rewritten or forked between the checkpoints"
        )
    return (
        f"the checkpoint of size {new.size} (root {new.root_hash.hex()}) extends the one "
        f"of size {old.size} (root {old.root_hash.hex()}) ({len(proof)} proof hashes)"
    )


# --- audit queries and reports (from the server, or offline over an export) --------

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


def add_query_commands(
    audit: argparse._SubParsersAction[argparse.ArgumentParser],
    client: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """`audit query` and `audit report` (docs/audit-queries.md)."""

    def period(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--since",
            metavar="TIME",
            help="entries stamped at or after TIME: RFC 3339 (UTC if no offset) or a date",
        )
        p.add_argument("--until", metavar="TIME", help="entries stamped before TIME")
        p.add_argument(
            "--export",
            type=Path,
            metavar="FILE",
            help="read an export (`agentgw audit export`) instead of the server",
        )

    query = client(audit.add_parser("query", help="print the entries that match every filter"))
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
    query.add_argument("--json", action="store_true", help="print export lines (JSON Lines)")
    query.set_defaults(run=run_audit_query)

    report = client(
        audit.add_parser("report", help="counts, security events and failures of a period")
    )
    period(report)
    report.add_argument(
        "--max-entries",
        type=int,
        default=0,
        help="list at most N security events and N failures, the most recent (default 100)",
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    # A report reads every entry of its period; give it longer than a single lookup.
    report.set_defaults(run=run_audit_report, timeout=300.0)


def _query_error(e: InvalidRequest) -> CliError:
    return CliError(f"{_QUERY_FLAGS.get(e.field, e.field)}: {e.why}")


def _period(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """--since and --until in microseconds since the epoch (None when not given)."""
    since = None if args.since is None else micros_from_text("start_time", args.since)
    until = None if args.until is None else micros_from_text("end_time", args.until)
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
        stub, md = _audit(args)
        request = audit_pb2.QueryRequest(limit=limit, after_seq=after_seq, **criteria)
        _set_period(request, since, until)
        entries = (entry_from_proto(msg) for msg in stub.Query(request, metadata=md))
    count = 0
    for entry in entries:
        if args.json:
            print(entry.to_json_line())
        else:
            if count == 0:
                print(_entry_header())
            print(_entry_row(entry))
        count += 1
    if count == 0 and not args.json:
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
        stub, md = _audit(args)
        request = audit_pb2.ReportRequest(max_entries=max_entries)
        _set_period(request, since, until)
        report = report_from_proto(stub.Report(request, metadata=md, timeout=args.timeout))
    if args.json:
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


if __name__ == "__main__":
    sys.exit(main())

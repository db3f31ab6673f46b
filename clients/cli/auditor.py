"""`agentgw audit export|keys|checkpoint|verify|prove-inclusion|prove-consistency`.

The auditor's commands over the signed log: save what the gateway serves, verify an
export offline, and check the gateway's proofs against saved checkpoints. Every check
is the pure audit library's (`gateway.domain.audit.verify` and `.proofs`); this module
parses flags, fetches, and prints. `audit query|report` are in `queries.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from agentgw.v1 import audit_pb2
from clients.cli import queries
from clients.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    Commands,
    add_client_options,
    add_insecure_option,
    add_output_options,
    audit_stub,
    is_json,
    output,
    print_result,
    refuse_cleartext,
)
from clients.cli.tile_fetch import ServedLogFailed, TileFetch, printable
from clients.transport import is_local
from clients.wire import consistency_proof_from_proto, entry_from_proto, inclusion_proof_from_proto
from gateway.domain.audit.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from gateway.domain.audit.entry import MAX_ENTRY_BYTES
from gateway.domain.audit.keys import KeyFileError, KeySet, TrustAnchor
from gateway.domain.audit.merkle import HASH_SIZE, fold_subtrees, root_nodes
from gateway.domain.audit.proofs import (
    EntryLineError,
    ProofFailed,
    UnreadableFile,
    anchored_keys,
    check_consistency,
    check_inclusion,
    export_lines,
    find_seq_line,
    leaf_hash_of_line,
    line_at,
    load_checkpoint,
    read_note,
)
from gateway.domain.audit.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    ExpectedFiles,
    TileError,
    bundle_widths,
    decode_lines,
    decode_tile,
    entry_data,
    file_difference,
    lines_path,
    node_from_tile,
    tile_of,
    tile_path,
)

if TYPE_CHECKING:
    from gateway.domain.audit.verify import VerifyReport


def add_commands(sub: Commands) -> None:
    audit = sub.add_parser("audit", help="the signed audit log (auditors)").add_subparsers(
        metavar="ACTION"
    )
    export = add_client_options(audit.add_parser("export", help="write the log as JSON Lines"))
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export.add_argument("--from-seq", type=int, default=1)
    export.add_argument("--to-seq", type=int, default=0, help="last seq (default: the head)")
    export.set_defaults(run=run_audit_export)
    keys = add_client_options(
        audit.add_parser("keys", help="save the log's public keys (for verify)")
    )
    keys.add_argument("--out", type=Path)
    keys.set_defaults(run=run_audit_keys)
    checkpoint = add_client_options(
        audit.add_parser("checkpoint", help="save a signed checkpoint note")
    )
    checkpoint.add_argument("--out", type=Path)
    checkpoint.add_argument(
        "--published",
        action="store_true",
        help="the latest published checkpoint instead of a newly signed one",
    )
    checkpoint.set_defaults(run=run_audit_checkpoint)
    verify = audit.add_parser("verify", help="verify an export offline, or the tiles at --url")
    verify.add_argument("export", type=Path, nargs="?", help="the export file (or give --url)")
    verify.add_argument(
        "--keys",
        type=Path,
        help="key set from `agentgw audit keys`: its key for seq 1 is the trust anchor "
        "unless one is pinned; checked against the key history the chain carries",
    )
    add_anchor_arguments(verify)
    verify.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint from `agentgw audit checkpoint`: the export must match it; with "
        "--url, one saved before that the served log must extend (not rolled back, forked)",
    )
    verify.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    add_url_arguments(verify)
    add_output_options(verify)
    verify.set_defaults(run=run_audit_verify)
    in_place = add_client_options(
        audit.add_parser(
            "verify-in-place",
            help="have the gateway verify the log it stores (a failure is audited and alerted)",
        )
    )
    add_output_options(in_place)
    in_place.set_defaults(run=run_audit_verify_in_place)
    inclusion = add_client_options(
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
    consistency = add_client_options(
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
    queries.add_commands(audit)


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


# --- saving what the gateway serves -------------------------------------------------


def run_audit_export(args: argparse.Namespace) -> int:
    stub, md = audit_stub(args)
    stream = stub.ReadEntries(
        audit_pb2.ReadEntriesRequest(start_seq=args.from_seq, end_seq=args.to_seq), metadata=md
    )
    out = output(args.out)
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
    stub, md = audit_stub(args)
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
    out = output(args.out)
    out.write(json.dumps(document, indent=2) + "\n")
    if out is not sys.stdout:
        out.close()
    return EXIT_OK


def run_audit_checkpoint(args: argparse.Namespace) -> int:
    stub, md = audit_stub(args)
    cp = stub.GetCheckpoint(
        audit_pb2.GetCheckpointRequest(published=args.published), metadata=md, timeout=args.timeout
    )
    out = output(args.out)
    out.write(cp.note)
    if out is not sys.stdout:
        out.close()
    print(f"checkpoint: size {cp.size}, root {cp.root_hash}", file=sys.stderr)
    return EXIT_OK


# --- verifying an export offline ----------------------------------------------------


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
    if args.url is not None:
        if args.export is not None:
            raise CliError("--url verifies the served log: give no export file")
        saved = None
        if args.checkpoint is not None:
            if keys is None:
                raise CliError(
                    "--checkpoint with --url is checked with the key history: give --keys"
                )
            try:
                saved = _saved_checkpoint("--checkpoint", args.checkpoint, keys)
            except ProofFailed as e:
                refused = str(e)
                print_result(
                    {"ok": False, "kind": "checkpoint_signature", "message": refused},
                    is_json(args),
                    lambda: f"FAILED {refused}",
                )
                return EXIT_FAILED
        return _verify_served_log(args, keys, anchor, saved)
    if args.export is None:
        raise CliError("give the export file to verify, or --url URL of a tile server")
    if not args.export.is_file():
        raise CliError(f"{args.export}: no such file")
    note = None
    if args.checkpoint is not None:
        try:
            note = read_note(args.checkpoint)
        except UnreadableFile as e:
            raise CliError(f"--checkpoint {args.checkpoint}: {e}") from e
    # This process has no other thread (no channel, no server) when it verifies, so the
    # pool may fork; elsewhere, and where fork is unsafe (macOS), it spawns.
    forkable = sys.platform == "linux" and threading.active_count() == 1
    report = verify_export(
        export_lines(args.export),
        keys,
        note,
        workers=max(1, args.workers),
        start_method="fork" if forkable else "spawn",
        anchor=anchor,
    )
    return _reported(args, report)


def _reported(
    args: argparse.Namespace,
    report: VerifyReport,
    served: _ServedLines | None = None,
) -> int:
    """Prints a verification's report; with `served`, where the served log's lines are."""
    if report.ok:
        document = {
            "ok": True,
            "count": report.count,
            "root_hash": report.root_hash,
            "head_hash": report.head_hash,
        }
        text = f"OK: {report.count} entries verified; root {report.root_hash}"
        if served is not None:
            document |= {"url": served.fetch.base, "files_checked": served.files_checked}
            text += f"; {served.files_checked} files of {served.fetch.base} agree"
        print_result(document, is_json(args), lambda: text)
        return EXIT_OK
    failure = report.failure
    assert failure is not None
    where = "" if failure.line_number is None else f" at line {failure.line_number}"
    document = {
        "ok": False,
        "kind": str(failure.kind.value),
        "seq": failure.seq,
        "line": failure.line_number,
        "message": failure.message,
    }
    if served is not None and failure.line_number is not None:
        path, line = served.where(failure.line_number)
        document["path"] = path
        where = f" at {path} line {line}"
    print_result(
        document,
        is_json(args),
        lambda: f"FAILED {failure.kind.value}{where}: {printable(failure.message)}",
    )
    return EXIT_FAILED


def run_audit_verify_in_place(args: argparse.Namespace) -> int:
    stub, metadata = audit_stub(args)
    result = stub.VerifyLog(audit_pb2.VerifyLogRequest(), metadata=metadata, timeout=args.timeout)
    document = {
        "ok": result.ok,
        "count": result.entries,
        "tree_size": result.tree_size,
        "root_hash": result.root_hash,
    }
    if result.ok:
        print_result(
            document,
            is_json(args),
            lambda: (
                f"OK: the stored log verifies ({result.entries} entries); root {result.root_hash}"
            ),
        )
        return EXIT_OK
    document |= {
        "kind": result.failure_kind,
        "seq": result.failure_seq or None,
        "message": result.failure_message,
        "audit_seq": result.audit_seq,
    }
    print_result(
        document,
        is_json(args),
        lambda: (
            f"FAILED {result.failure_kind}: {result.failure_message} "
            f"(recorded as entry {result.audit_seq}; an alert was raised)"
        ),
    )
    return EXIT_FAILED


# --- verifying the log a tile server serves ------------------------------------------

# The most a file of the log can be: a checkpoint note (with cosignatures), a bundle
# of 256 entries of at most MAX_ENTRY_BYTES, their export lines (C plus the entry hash
# and signature members), a tile.
NOTE_LIMIT = 1 << 16
BUNDLE_LIMIT = TILE_WIDTH * (2 + MAX_ENTRY_BYTES)
LINES_LIMIT = TILE_WIDTH * (MAX_ENTRY_BYTES + 512)
TILE_LIMIT = TILE_WIDTH * HASH_SIZE


def add_url_arguments(parser: argparse.ArgumentParser) -> None:
    served = parser.add_argument_group("a tile server's log (agentgw serve --tiles-listen)")
    served.add_argument(
        "--url",
        help="verify the log served as tlog-tiles at URL, streamed: its checkpoint, every "
        "lines/ bundle, and that tile/entries/ and tile/<L>/ agree with them",
    )
    served.add_argument(
        "--token",
        default=os.environ.get("AGENTGW_TOKEN"),
        help="with --url: an auditor's bearer token (env AGENTGW_TOKEN)",
    )
    served.add_argument(
        "--tls-ca",
        type=Path,
        default=Path(os.environ["AGENTGW_TLS_CA"]) if os.environ.get("AGENTGW_TLS_CA") else None,
        help="with an https --url: trust this CA (env AGENTGW_TLS_CA; default: the system's)",
    )
    served.add_argument(
        "--timeout", type=float, default=30.0, help="with --url: seconds per request"
    )
    add_insecure_option(served)


class _ServedLines:
    """The served log's export lines, a bundle at a time (`lines/<N>`, the last one
    partial), for the streaming verifier; once the verifier has taken a bundle's lines,
    the standard files they imply (tile/entries/<N>, tile/0/<N> and the tiles above)
    are fetched and compared, so a standard client sees the log the lines are.
    Holds a bundle or two at a time (its lines, or its expected and served files),
    and one unfinished tile per level."""

    def __init__(self, fetch: TileFetch, size: int) -> None:
        self.fetch = fetch
        self.size = size
        self.files_checked = 0

    def where(self, line_number: int) -> tuple[str, int]:
        """The lines file of the stream's line `line_number` and its line in that file."""
        index, offset = divmod(line_number - 1, TILE_WIDTH)
        return lines_path(index, min(TILE_WIDTH, self.size - index * TILE_WIDTH)), offset + 1

    def lines(self) -> Iterator[str]:
        expected = ExpectedFiles(self.size)
        for index, width in bundle_widths(self.size):
            path = lines_path(index, width)
            try:
                lines = decode_lines(self.fetch.get(path, LINES_LIMIT))
            except (TileError, UnicodeDecodeError) as e:
                raise ServedLogFailed(
                    "fetch_failed", path, f"{path}: not lines of text: {e}"
                ) from None
            if len(lines) != width:
                raise ServedLogFailed(
                    "tile_mismatch", path, f"{path}: {len(lines)} lines, not {width}"
                )
            self.files_checked += 1
            yield from lines
            # Here the verifier has taken every line: a line's own failure came first.
            entries = []
            for number, line in enumerate(lines, start=1):
                try:
                    entries.append(entry_data(line))
                except TileError as e:
                    raise ServedLogFailed(
                        "tile_mismatch", path, f"{path} line {number}: {e}"
                    ) from None
            del lines
            files = expected.bundle(index, entries)
            del entries
            for file, wanted in files:
                own = file.startswith(("tile/entries/", "tile/0/"))
                self._compare(file, wanted, path if own else f"the lines up to {path}")

    def _compare(self, file: str, wanted: bytes, source: str) -> None:
        served = self.fetch.get(file, BUNDLE_LIMIT)
        difference = file_difference(file, served, wanted)
        if difference is not None:
            raise ServedLogFailed(
                "tile_mismatch", file, f"{file} does not agree with {source}: {difference}"
            )
        self.files_checked += 1


def _verify_served_log(
    args: argparse.Namespace,
    keys: KeySet | None,
    anchor: TrustAnchor | str | None,
    saved: Checkpoint | None = None,
) -> int:
    """`audit verify --url`: the served checkpoint, then every entry streamed through
    the offline verifier (in this process: memory stays that of a bundle or two);
    with `saved` (a checkpoint the auditor kept from before), the served log must
    extend it, or it was rolled back or forked."""
    from gateway.domain.audit.verify import verify_export

    if args.url.startswith("http://"):
        host = urllib.parse.urlsplit(args.url).netloc
        refuse_cleartext(f"--url {args.url}", is_local(host), args)
    fetch = TileFetch(args.url, args.token, args.tls_ca, args.timeout)
    try:
        note = fetch.get("checkpoint", NOTE_LIMIT).decode("utf-8", "replace")
        try:
            size = parse_checkpoint(note).size
        except CheckpointError:
            size = 0  # the verifier names what is wrong with it, before any line
        served = _ServedLines(fetch, size)
        report = verify_export(served.lines(), keys, note, anchor=anchor)
        if saved is not None and report.ok:
            _check_extends(fetch, report.count, saved)
    except ServedLogFailed as e:
        failed = e
        print_result(
            {"ok": False, "kind": failed.kind, "path": failed.path, "message": str(failed)},
            is_json(args),
            lambda: f"FAILED {failed.kind}: {printable(str(failed))}",
        )
        return EXIT_FAILED
    return _reported(args, report, served)


def _check_extends(fetch: TileFetch, size: int, saved: Checkpoint) -> None:
    """ServedLogFailed unless the served tree of `size` leaves (its tiles verified
    against its lines) holds the tree `saved` signed: at least its size, and at that
    size its root, folded from the served tiles' hashes."""
    if size < saved.size:
        raise ServedLogFailed(
            "rolled_back",
            "checkpoint",
            f"the served log has {size} entries, fewer than the {saved.size} of --checkpoint: "
            "it was rolled back, or is another log",
        )
    tiles: dict[tuple[int, int], list[bytes]] = {}
    hashes = []
    for node in root_nodes(saved.size):
        level, index, _, _ = tile_of(node)
        if (level, index) not in tiles:
            row = size >> (TILE_HEIGHT * level)  # the tree's hashes at this tile level
            width = min(TILE_WIDTH, row - index * TILE_WIDTH)
            path = tile_path(level, index, width)
            try:
                tiles[(level, index)] = decode_tile(fetch.get(path, TILE_LIMIT), width)
            except TileError as e:
                raise ServedLogFailed("tile_mismatch", path, f"{path}: {e}") from None
        hashes.append(node_from_tile(node, tiles[(level, index)]))
    root = fold_subtrees(hashes)
    if root != saved.root_hash:
        raise ServedLogFailed(
            "forked",
            "checkpoint",
            f"the served log's first {saved.size} entries have root {root.hex()}, not the "
            f"{saved.root_hash.hex()} of --checkpoint: the log was forked or rewritten",
        )


def _trust_key(args: argparse.Namespace) -> TrustAnchor | None:
    """The TrustAnchor of --trust-key, or None."""
    if args.trust_key is None:
        return None
    try:
        return TrustAnchor.parse(args.trust_key)
    except KeyFileError as e:
        raise CliError(f"--trust-key: {e}") from e


def _key_set_file(path: Path) -> KeySet:
    try:
        return KeySet.load(path)
    except (OSError, ValueError) as e:
        raise CliError(f"--keys {path}: {e}") from e


# --- proofs (fetched from the server, checked by gateway.domain.audit.proofs) -------


def _proved(check: Callable[[], str]) -> int:
    try:
        message = check()
    except ProofFailed as e:
        print(f"FAILED {e}")
        return EXIT_FAILED
    print(f"OK: {message}")
    return EXIT_OK


def _anchored_keys(args: argparse.Namespace) -> KeySet:
    """--keys for proofs: one key history, starting at the pinned anchor if one is given."""
    keys = _key_set_file(args.keys)
    trusted = _trust_key(args)
    return anchored_keys(keys, args.key_id if trusted is None else trusted, f"--keys {args.keys}")


def _saved_checkpoint(flag: str, path: Path, keys: KeySet) -> Checkpoint:
    """The checkpoint in `path`, signed by the key `keys` names for the seq after it."""
    try:
        return load_checkpoint(path, keys, f"{flag} {path}")
    except UnreadableFile as e:
        raise CliError(f"{flag} {path}: {e}") from e


def _entry_line(args: argparse.Namespace) -> tuple[str, str] | None:
    """(line, where) of the entry from --entry-line or --export; None: ask the server."""
    if args.entry_line:
        name, sep, number = args.entry_line.rpartition(":")
        if not sep or not name or not number.isdigit() or int(number) < 1:
            raise CliError(f"--entry-line {args.entry_line!r}: expected FILE:LINE, LINE >= 1")
        try:
            line = line_at(Path(name), int(number))
        except UnreadableFile as e:
            raise CliError(f"--entry-line {name}: {e}") from e
        if line is None:
            raise CliError(f"--entry-line {args.entry_line}: {name} has fewer lines")
        return line, f"{name}:{number}"
    if args.export:
        try:
            found = find_seq_line(args.export, args.seq)
        except UnreadableFile as e:
            raise CliError(f"--export {args.export}: {e}") from e
        if found is None:
            raise CliError(f"--export {args.export}: no line has seq {args.seq}")
        line, line_number = found
        return line, f"{args.export}:{line_number}"
    return None


def run_audit_prove_inclusion(args: argparse.Namespace) -> int:
    return _proved(lambda: _prove_inclusion(args))


def _prove_inclusion(args: argparse.Namespace) -> str:
    seq: int = args.seq
    if seq < 1:
        raise CliError("--seq: must be >= 1")
    keys = _anchored_keys(args)
    found = _entry_line(args)
    checkpoint = _saved_checkpoint("--checkpoint", args.checkpoint, keys)
    if seq > checkpoint.size:
        raise CliError(f"--seq {seq} is beyond the checkpoint's size {checkpoint.size}")
    stub, md = audit_stub(args)
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
    try:
        leaf = leaf_hash_of_line(line, seq, where)
    except EntryLineError as e:
        raise CliError(str(e)) from e
    response = stub.GetInclusionProof(
        audit_pb2.GetInclusionProofRequest(seq=seq, tree_size=checkpoint.size),
        metadata=md,
        timeout=args.timeout,
    )
    included = check_inclusion(leaf, seq, where, checkpoint, inclusion_proof_from_proto(response))
    return (
        f"seq {seq} ({where}) is included in the checkpoint of size {checkpoint.size}, "
        f"root {checkpoint.root_hash.hex()} ({included.proof_length} proof hashes)"
    )


def run_audit_prove_consistency(args: argparse.Namespace) -> int:
    return _proved(lambda: _prove_consistency(args))


def _prove_consistency(args: argparse.Namespace) -> str:
    keys = _anchored_keys(args)
    old = _saved_checkpoint("--old", args.old, keys)
    new = _saved_checkpoint("--new", args.new, keys)
    if old.size > new.size:
        raise CliError(f"--old has size {old.size}, larger than --new's {new.size}: swap them")
    proof = None
    if old.size < new.size:
        # Equal sizes need nothing fetched (and new_size 0 would mean the head).
        stub, md = audit_stub(args)
        response = stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(old_size=old.size, new_size=new.size),
            metadata=md,
            timeout=args.timeout,
        )
        proof = consistency_proof_from_proto(response)
    consistent = check_consistency(old, new, proof)
    if consistent.proof_length is None:
        return f"both checkpoints have size {old.size} and root {old.root_hash.hex()}"
    return (
        f"the checkpoint of size {new.size} (root {new.root_hash.hex()}) extends the one "
        f"of size {old.size} (root {old.root_hash.hex()}) ({consistent.proof_length} proof "
        "hashes)"
    )

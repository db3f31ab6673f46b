"""Checking saved checkpoints and Merkle proofs: the auditor's side of prove-*.

Owns reading what an auditor saved (export lines and checkpoint notes, as saved),
choosing the trust anchor of a key set, opening a saved checkpoint with the key the
set names for it, and checking an inclusion or consistency proof (as the gateway
sent it) against signed checkpoints. It fetches nothing: the caller asks the server
for the proofs and hands them in. It does not walk the chain (see `verify.py`), so a
key set is only checked against its anchor here, not against the chain's rotations.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.domain.audit.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from gateway.domain.audit.entry import read_export_object
from gateway.domain.audit.errors import AuditError, FormatError
from gateway.domain.audit.keys import KeyHistoryError, KeySet, TrustAnchor
from gateway.domain.audit.merkle import leaf_hash_of, verify_consistency, verify_inclusion

__all__ = [
    "ConsistencyProof",
    "Consistent",
    "EntryLineError",
    "Included",
    "InclusionProof",
    "ProofFailed",
    "UnreadableFile",
    "anchored_keys",
    "check_consistency",
    "check_inclusion",
    "export_lines",
    "find_seq_line",
    "leaf_hash_of_line",
    "line_at",
    "load_checkpoint",
    "open_saved_checkpoint",
    "proof_hashes",
    "read_note",
]


class ProofFailed(AuditError):
    """A key set, checkpoint or proof does not verify; the message starts with its kind
    (key_history_mismatch, checkpoint_signature, inclusion, consistency)."""


class UnreadableFile(AuditError):
    """A saved file cannot be read; the message is the operating system's."""


class EntryLineError(FormatError):
    """A line is not the export line of the entry it should be."""


@dataclass(frozen=True)
class InclusionProof:
    """RFC 6962 PATH for entry `seq` (leaf `seq - 1`) in the tree of `tree_size`
    entries, as the gateway serves it. Its root and leaf are for convenience only: a
    checker trusts the root of a signed checkpoint and a leaf it hashed itself."""

    seq: int
    tree_size: int
    hashes: tuple[bytes, ...]
    root_hash: bytes
    leaf_hash: bytes

    @property
    def leaf_index(self) -> int:
        return self.seq - 1


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 6962 PROOF that the tree of `new_size` entries extends the one of
    `old_size`, as the gateway serves it (its roots, too, are for convenience only)."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]
    old_root: bytes
    new_root: bytes


@dataclass(frozen=True)
class Included:
    """Entry `seq` (read from `where`) is in the tree `checkpoint` signs."""

    seq: int
    where: str
    checkpoint: Checkpoint
    proof_length: int


@dataclass(frozen=True)
class Consistent:
    """The tree `new` signs extends the one `old` signs (proof_length None: equal)."""

    old: Checkpoint
    new: Checkpoint
    proof_length: int | None


# --- saved files --------------------------------------------------------------------


def export_lines(path: Path) -> Iterator[str]:
    """The lines of an export as saved: only LF ends a line, bad UTF-8 survives (as
    surrogates) for the verifier to reject. Raises OSError while reading."""
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        yield from f


def line_at(path: Path, number: int) -> str | None:
    """Line `number` (from 1) of `path`, or None if it has fewer lines."""
    try:
        for i, line in enumerate(export_lines(path), start=1):
            if i == number:
                return line
    except OSError as e:
        raise UnreadableFile(str(e)) from e
    return None


def find_seq_line(path: Path, seq: int) -> tuple[str, int] | None:
    """(line, line number) of the export line with `seq`, or None if no line has it."""
    try:
        lines = list(export_lines(path))
    except OSError as e:
        raise UnreadableFile(str(e)) from e
    # An export starts at seq 1, so the entry is usually line `seq`.
    guess = seq - 1
    order = [guess, *range(len(lines))] if 0 <= guess < len(lines) else range(len(lines))
    for i in order:
        try:
            obj = json.loads(lines[i])
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("seq") == seq:
            return lines[i], i + 1
    return None


def read_note(path: Path) -> str:
    """The signed note in `path`, as saved.

    No newline translation (read_text would turn a CR into LF, accepting an edited
    note), and bad UTF-8 survives as surrogates so that opening the note, not reading
    the file, rejects it (as checkpoint_signature).
    """
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as e:
        raise UnreadableFile(str(e)) from e


def leaf_hash_of_line(line: str, seq: int, where: str) -> bytes:
    """The RFC 6962 leaf hash of an export line, recomputed from its canonical bytes.

    Raises EntryLineError (naming `where`) unless the line is the export line of an
    entry with `seq`.
    """
    text = line[:-1] if line.endswith("\n") else line
    try:
        entry, canonical = read_export_object(json.loads(text), text)
    except (ValueError, RecursionError) as e:  # EntryFormatError is a ValueError
        raise EntryLineError(f"{where}: not an audit entry line: {e}") from e
    if entry.seq != seq:
        raise EntryLineError(f"{where}: the entry has seq {entry.seq}, not --seq {seq}")
    return leaf_hash_of(canonical)


# --- trust --------------------------------------------------------------------------


def anchored_keys(keys: KeySet, anchor: TrustAnchor | str | None, where: str) -> KeySet:
    """`keys` if it is one key history starting at `anchor` (a trusted key, a pinned key
    id, or None: its own first key); ProofFailed (key_history_mismatch) if not.

    There is no chain here to check the rest of the history against; `verify_export`
    with the same key set does that.
    """
    pinned = anchor.key_id if isinstance(anchor, TrustAnchor) else anchor
    try:
        first = keys.anchor(pinned)
    except KeyHistoryError as e:
        raise ProofFailed(f"key_history_mismatch: {where}: {e}") from e
    if isinstance(anchor, TrustAnchor) and (
        first.public_key_raw != anchor.public_key_raw or anchor.origin not in (None, keys.origin)
    ):
        raise ProofFailed(f"key_history_mismatch: {where}: its key for seq 1 is not --trust-key")
    return keys


def open_saved_checkpoint(note: str, keys: KeySet, where: str) -> Checkpoint:
    """The checkpoint `note` signs with the key `keys` names for the seq after it;
    ProofFailed (checkpoint_signature) if it does not."""
    try:
        return open_checkpoint(note, keys)
    except CheckpointError as e:
        raise ProofFailed(f"checkpoint_signature: {where}: {e}") from e


def load_checkpoint(path: Path, keys: KeySet, where: str) -> Checkpoint:
    """open_saved_checkpoint of the note in `path` (UnreadableFile if it cannot be read)."""
    return open_saved_checkpoint(read_note(path), keys, where)


# --- proofs -------------------------------------------------------------------------


def proof_hashes(hexes: Sequence[str]) -> tuple[bytes, ...]:
    """Proof hashes as received (hex); ProofFailed if one is not hex."""
    try:
        return tuple(bytes.fromhex(h) for h in hexes)
    except ValueError as e:
        raise ProofFailed(f"the server sent a proof hash that is not hex: {e}") from e


def check_inclusion(
    leaf: bytes, seq: int, where: str, checkpoint: Checkpoint, proof: InclusionProof
) -> Included:
    """That `proof` leads from `leaf` (entry `seq`, read from `where`) to the root the
    checkpoint signs; ProofFailed (inclusion) if not. `seq` must be in 1..size."""
    size = checkpoint.size
    if not 1 <= seq <= size:
        raise ValueError(f"seq {seq} is not in 1..{size}")
    if (proof.seq, proof.tree_size) != (seq, size):
        raise ProofFailed(
            f"inclusion: asked for seq {seq} in size {size}, the server answered "
            f"seq {proof.seq} in size {proof.tree_size}"
        )
    hashes = proof.hashes
    if not verify_inclusion(leaf, seq - 1, size, hashes, checkpoint.root_hash):
        why = f"inclusion: the proof for seq {seq} ({where}, leaf hash {leaf.hex()})"
        why += f" does not lead to the checkpoint's root {checkpoint.root_hash.hex()}"
        if proof.leaf_hash != leaf:
            why += f"; the log's leaf {seq} is {proof.leaf_hash.hex()}: not the logged entry"
        raise ProofFailed(why)
    return Included(seq, where, checkpoint, len(hashes))


def check_consistency(
    old: Checkpoint, new: Checkpoint, proof: ConsistencyProof | None
) -> Consistent:
    """That the tree `new` signs extends the one `old` signs; ProofFailed (consistency)
    if not. Checkpoints of equal size need no proof (None): equal trees have equal roots.
    `old` must not be larger than `new`."""
    if old.size > new.size:
        raise ValueError(f"old size {old.size} is larger than new size {new.size}")
    if old.size == new.size:
        if old.root_hash != new.root_hash:
            raise ProofFailed(
                f"consistency: both checkpoints have size {old.size} but different roots "
                f"({old.root_hash.hex()} and {new.root_hash.hex()}): the log forked"
            )
        return Consistent(old, new, None)
    if proof is None:
        raise ValueError("checkpoints of different sizes need a consistency proof")
    if (proof.old_size, proof.new_size) != (old.size, new.size):
        raise ProofFailed(
            f"consistency: asked for sizes {old.size} to {new.size}, the server answered "
            f"{proof.old_size} to {proof.new_size}"
        )
    hashes = proof.hashes
    if not verify_consistency(old.size, new.size, old.root_hash, new.root_hash, hashes):
        raise ProofFailed(
            f"consistency: the proof does not show that root {new.root_hash.hex()} (size "
            f"{new.size}) extends root {old.root_hash.hex()} (size {old.size}): the log "
            "was rewritten or forked between the checkpoints"
        )
    return Consistent(old, new, len(hashes))

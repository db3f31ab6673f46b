"""Streaming offline verification of an export from a trust anchor.

Owns the verification algorithm of `docs/audit-format.md`: the chain and seq checks
with the rules that name the first bad entry's failure kind, the key history the chain
carries (the anchor signs seq 1, each `key_rotated` entry introduces the next key)
checked against what a key set file claims, and the comparison with a signed
checkpoint. The checks of each line on its own (format, entry hash, key, signature)
are `inspection.py`'s: in line, or with `workers > 1` in a process pool over bounded
chunks, against the keys the lines before them name; the walk re-checks any line whose
key turns out to be another, so the result never depends on `workers`. Memory is
constant: the previous entry's seq and hash, a Merkle compact range, the log's few
keys and a bounded number of lines in flight. It reads the lines it is given, or the
export file it is given; printing belongs to the CLI.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from itertools import chain
from os import PathLike
from typing import Final

from gateway.domain.audit.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from gateway.domain.audit.entry import GENESIS_HASH, signature_verifies
from gateway.domain.audit.failures import FailureKind as FailureKind
from gateway.domain.audit.inspection import (
    Inspected,
    Piece,
    Run,
    inspect_file,
    inspect_in_pool,
    inspect_strings,
    items_of,
)
from gateway.domain.audit.keys import (
    KeyHistoryError,
    KeySet,
    NextSigner,
    RotationError,
    TrustAnchor,
    read_next_signer,
)
from gateway.domain.audit.merkle import EMPTY_ROOT, CompactRange, node_hash
from gateway.domain.audit.note import NoteError, NoteVerifier, check_note_signatures

CHUNK_SIZE: Final = 2000


@dataclass(frozen=True)
class VerifyFailure:
    """The first problem found; seq or line_number is None when there is none to name."""

    kind: FailureKind
    seq: int | None
    line_number: int | None
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """`count` entries verified in order; root and head cover exactly those entries."""

    count: int
    root_hash: str
    head_hash: str
    failure: VerifyFailure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def verify_export(
    lines: Iterable[str] | PathLike[str],
    keys: KeySet | None,
    checkpoint: Checkpoint | str | None = None,
    workers: int = 1,
    chunk_size: int = CHUNK_SIZE,
    start_method: str = "spawn",
    *,
    anchor: TrustAnchor | str | None = None,
) -> VerifyReport:
    """Verify an export and stop at the first failure.

    `lines` are its lines (JSON Lines, with or without newlines), or the path of an
    export file, read as `proofs.export_lines` reads it (only LF ends a line; bytes
    that are no UTF-8 make their line malformed): the same report either way, but from
    a file the pool's workers read their own byte ranges of it.

    Trust starts from `anchor`, the key that must sign seq 1: a TrustAnchor, or the key
    id of one of `keys` (pinned), or None for the key of `keys` with first_seq 1. Every
    later key comes from the chain's key_rotated entries; `keys`, when given, is checked
    against them (key_history_mismatch where it disagrees), and before any line is read
    against itself and the anchor.

    `checkpoint` is an already opened Checkpoint, trusted as it is, or a signed note:
    its signatures by keys known before the scan (anchor, key set) are checked before any
    line is read (checkpoint_signature), and at its size it must be signed by the key
    the chain names for the next entry. With `workers` > 1 the pool's processes start
    with `start_method`: spawn by default, as the caller may hold threads (gRPC, logging)
    that fork would copy mid-lock; a caller that knows it has no other thread may pass
    "fork", which starts in milliseconds instead of re-importing the caller's modules
    in every worker. Each worker gets `chunk_size` lines at a time.
    """
    try:
        trust = _Trust.start(keys, anchor)
    except KeyHistoryError as exc:
        return _failed_before_scan(FailureKind.KEY_HISTORY_MISMATCH, str(exc))
    pending = None
    if checkpoint is not None:
        try:
            pending = _PendingCheckpoint.open(checkpoint, trust)
        except CheckpointError as exc:
            return _failed_before_scan(FailureKind.CHECKPOINT_SIGNATURE, f"checkpoint: {exc}")
    candidates = dict(trust.known)
    source = lines if isinstance(lines, PathLike) else enumerate(lines, start=1)
    inspected: Generator[Piece]
    if workers > 1:
        context = multiprocessing.get_context(start_method)
        inspected = inspect_in_pool(source, candidates, workers, chunk_size, context)
    elif isinstance(source, PathLike):
        inspected = inspect_file(source, candidates)
    else:
        inspected = inspect_strings(source, candidates)
    with closing(inspected):
        return _walk(inspected, trust, pending)


def _failed_before_scan(kind: FailureKind, message: str) -> VerifyReport:
    failure = VerifyFailure(kind, None, None, f"{message} ({kind})")
    return VerifyReport(0, EMPTY_ROOT.hex(), GENESIS_HASH, failure)


def _message(line_number: int, seq: int | None, kind: FailureKind, why: str) -> str:
    where = f"line {line_number}" if seq is None else f"seq {seq}"
    return f"{where}: {why} ({kind})"


# --- the keys the chain trusts -----------------------------------------------------------


class _Trust:
    """Which key signs the next entry, the keys the chain has introduced and retired,
    and the key set's claims, as the walk moves along the chain."""

    def __init__(self, anchor: TrustAnchor, key_set: KeySet | None, origin: str | None) -> None:
        self.anchor = anchor
        self.key_set = key_set
        self.origin = origin
        # Every key a line may name: the key set's (claims) and the chain's (trusted).
        self.known: dict[str, bytes] = {}
        if key_set is not None:
            self.known.update((key.key_id, key.public_key_raw) for key in key_set.keys)
        self.known[anchor.key_id] = anchor.public_key_raw
        self.current = NextSigner(anchor.key_id, anchor.public_key_raw)
        self.current_first = 1
        # Keys rotated out: key id -> (first seq, last seq, the key that followed).
        self.retired: dict[str, tuple[int, int, str]] = {}
        self.claims = None if key_set is None else _KeySetClaims(key_set)

    @classmethod
    def start(cls, keys: KeySet | None, anchor: TrustAnchor | str | None) -> _Trust:
        """Step 0: the anchor, and the key set checked against itself and the anchor."""
        if isinstance(anchor, TrustAnchor):
            chosen = anchor
        elif keys is None:
            raise ValueError("verify_export needs a key set or a trust anchor")
        else:
            chosen = keys.anchor(anchor)
        if keys is None:
            return cls(chosen, None, chosen.origin)
        problem = keys.history_problem()
        if problem is not None:
            raise KeyHistoryError(f"key set: {problem}")
        listed = keys.find(chosen.key_id)
        if listed is not None and listed.public_key_raw != chosen.public_key_raw:
            raise KeyHistoryError(
                f"key set: key {chosen.key_id} has another public key than the trust anchor"
            )
        if chosen.origin is not None and chosen.origin != keys.origin:
            raise KeyHistoryError(
                f"key set: it is for origin {keys.origin!r}, the trust anchor for {chosen.origin!r}"
            )
        return cls(chosen, keys, keys.origin)

    def line_problem(self, item: Inspected) -> tuple[FailureKind, str] | None:
        """unknown_key or bad_signature for a line that passed its own checks."""
        public = self.known.get(item.key_id)
        if public is None:
            return _failure_text(
                item,
                FailureKind.UNKNOWN_KEY,
                f"key_id {item.key_id} is not a trusted key (not the anchor, not in the key "
                "set, introduced by no rotation so far)",
            )
        if item.checked_with == public:
            verified = item.signature_ok
        else:
            verified = signature_verifies(item.signature, item.entry_hash, public)
        if not verified:
            return _failure_text(
                item,
                FailureKind.BAD_SIGNATURE,
                f"signature does not verify under key {item.key_id}",
            )
        return None

    def sound(self, item: Inspected) -> bool:
        return item.problem is None and self.line_problem(item) is None

    def accept(self, item: Inspected, seq: int) -> tuple[FailureKind, str] | None:
        """Step 3, for a sound entry that continues the chain at `seq`; on success the
        chain moves to the next key if it is a rotation."""
        current = self.current
        if item.key_id != current.key_id:
            return self._wrong_key(item, seq)
        next_signer = None
        if item.rotation is not None:
            resource, raw = item.rotation
            try:
                next_signer = read_next_signer(resource, raw, self.origin)
            except RotationError as exc:
                return _failure_text(item, FailureKind.BAD_ROTATION, f"key_rotated entry: {exc}")
            if next_signer.key_id == current.key_id or next_signer.key_id in self.retired:
                return _failure_text(
                    item,
                    FailureKind.BAD_ROTATION,
                    f"key_rotated entry: key {next_signer.key_id} has already signed this log",
                )
        claims = self.claims
        if claims is not None and (seq > claims.end or item.key_id != claims.key_id):
            why = claims.problem(seq, item.key_id, self.retired)
            if why is not None:
                return _failure_text(item, FailureKind.KEY_HISTORY_MISMATCH, why)
            if claims.exhausted:
                self.claims = None
        if next_signer is not None:
            return self._rotate(item, seq, next_signer)
        return None

    def _wrong_key(self, item: Inspected, seq: int) -> tuple[FailureKind, str]:
        current = self.current
        retired = self.retired.get(item.key_id)
        if retired is not None:
            first, last, successor = retired
            return _failure_text(
                item,
                FailureKind.KEY_OUT_OF_RANGE,
                f"key {item.key_id} may only sign seq {first}..{last}: the rotation at seq "
                f"{last} moved the chain to key {successor}",
            )
        if seq == 1:
            why = f"signed by key {item.key_id}, not by the trust anchor {current.key_id}"
        else:
            why = (
                f"signed by key {item.key_id}, which no rotation in the chain introduced; "
                f"seq {seq} is signed by key {current.key_id} (since seq {self.current_first})"
            )
        return _failure_text(item, FailureKind.UNTRUSTED_KEY, why)

    def _rotate(
        self, item: Inspected, seq: int, next_signer: NextSigner
    ) -> tuple[FailureKind, str] | None:
        listed = None if self.key_set is None else self.key_set.find(next_signer.key_id)
        if listed is not None and listed.public_key_raw != next_signer.public_key_raw:
            return _failure_text(
                item,
                FailureKind.KEY_HISTORY_MISMATCH,
                f"the key set gives key {next_signer.key_id} another public key than the "
                "rotation that introduces it",
            )
        self.retired[self.current.key_id] = (self.current_first, seq, next_signer.key_id)
        self.current, self.current_first = next_signer, seq + 1
        self.known[next_signer.key_id] = next_signer.public_key_raw
        return None

    def end_problem(self, next_seq: int) -> str | None:
        """Step 4: the key set's key for the seq after the export is the chain's current."""
        if self.claims is None:
            return None
        return self.claims.problem(next_seq, self.current.key_id, self.retired)

    def signed_checkpoint(self, note: str, keys: Iterable[bytes]) -> bool:
        """Does `note` carry a valid signature by one of `keys` under the origin?"""
        assert self.origin is not None  # set from the checkpoint if nothing else named it
        verifiers = [NoteVerifier(self.origin, public) for public in keys]
        try:
            return bool(check_note_signatures(note, verifiers).signed_by)
        except NoteError:
            return False


def _failure_text(item: Inspected, kind: FailureKind, why: str) -> tuple[FailureKind, str]:
    return kind, _message(item.line_number, item.seq, kind, why)


class _KeySetClaims:
    """Checks, seq by seq, that a key set's ranges name the keys the chain uses.

    `key_id` and `end` describe the set's key for the seqs checked last, so that the
    walk needs to ask again only at a range's end or where the chain changes key.
    """

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys.by_first_seq()
        self._index = 0
        self.key_id = ""
        self.end = 0.0
        self.exhausted = False  # the set was saved before a rotation: it says no more

    def problem(
        self, seq: int, signer: str, retired: Mapping[str, tuple[int, int, str]]
    ) -> str | None:
        """Why the set's key for `seq` is not `signer`, the key the chain has for it."""
        keys = self._keys
        # Seqs only grow, and the ranges tile from 1 (history_problem): walk forward.
        while self._index + 1 < len(keys):
            last = keys[self._index].last_seq
            if last is None or last >= seq:
                break
            self._index += 1
        key = keys[self._index]
        if not key.covers(seq):
            return f"the key set names no key for seq {seq}; the chain's key for it is {signer}"
        if key.key_id == signer:
            self.key_id = key.key_id
            self.end = math.inf if key.last_seq is None else key.last_seq
            return None
        if key.last_seq is None and key.key_id in retired:
            # Saved before the rotation that retired its current key: still true of the
            # seqs it knew about, and silent about the later ones.
            self.exhausted = True
            return None
        said = f"the key set says key {key.key_id} signs seq {key.describe_range()}"
        if key.key_id in retired:
            last = retired[key.key_id][1]
            return f"{said}, but the chain rotated it out after seq {last}; seq {seq} is {signer}'s"
        return f"{said}, but no rotation introduced it; the chain's key for seq {seq} is {signer}"


# --- the checkpoint ----------------------------------------------------------------------


@dataclass(frozen=True)
class _PendingCheckpoint:
    """A checkpoint to compare at its size; `note` None: opened and trusted by the caller."""

    checkpoint: Checkpoint
    note: str | None

    @classmethod
    def open(cls, checkpoint: Checkpoint | str, trust: _Trust) -> _PendingCheckpoint:
        """Step 0: parse the note and check its signatures by the keys known before the
        scan; raises CheckpointError."""
        if isinstance(checkpoint, Checkpoint):
            opened, note = checkpoint, None
        else:
            opened, note = parse_checkpoint(checkpoint), checkpoint
        if trust.origin is None:
            # A bare public key as anchor: the checkpoint names the origin, and the
            # anchor's (or a chain key's) signature under that name vouches for it.
            trust.origin = opened.origin
        if opened.origin != trust.origin:
            raise CheckpointError(
                f"checkpoint origin {opened.origin!r} is not the key set's {trust.origin!r}"
            )
        if note is not None:
            verifiers = [NoteVerifier(trust.origin, public) for public in trust.known.values()]
            try:
                check_note_signatures(note, verifiers)
            except NoteError as exc:
                raise CheckpointError(str(exc)) from None
        return cls(opened, note)


def _walk(
    pieces: Iterable[Piece], trust: _Trust, pending: _PendingCheckpoint | None
) -> VerifyReport:
    """Steps 2 to 5 over the inspected lines, a run of sound lines at a time where it can."""
    walk = _Walk(trust, pending)
    if pending is not None and walk.size == 0:
        failure = _compare_checkpoint(pending, trust, walk.compact, walk.last_hash, None)
        if failure is not None:
            return walk.report(failure)
    pieces = iter(pieces)
    for piece in pieces:
        if not isinstance(piece, Run):
            failure = walk.step(piece, items_of(pieces))
            if failure is not None:
                return walk.report(failure)
            continue
        index = 0
        while index < piece.size:
            accepted = walk.accept_run(piece, index)
            if accepted:
                index += accepted
                failure = walk.at_checkpoint(piece.first_line + index - 1)
            else:
                rest = chain(piece.items(index + 1), items_of(pieces))
                failure = walk.step(piece.item(index), rest)
                index += 1
            if failure is not None:
                return walk.report(failure)
    last_seq = walk.last_seq
    why = trust.end_problem(last_seq + 1)
    if why is not None:
        kind = FailureKind.KEY_HISTORY_MISMATCH
        return walk.report(
            VerifyFailure(kind, last_seq + 1, None, f"seq {last_seq + 1}: {why} ({kind})")
        )
    if pending is not None and last_seq < walk.size:
        return walk.report(_truncated(pending, trust, last_seq))
    return walk.report()


class _Walk:
    """The chain verified so far: its Merkle frontier, last seq and hash."""

    def __init__(self, trust: _Trust, pending: _PendingCheckpoint | None) -> None:
        self.trust = trust
        self.pending = pending
        self.size = -1 if pending is None else pending.checkpoint.size
        self.compact = CompactRange()
        self.last_seq, self.last_hash = 0, GENESIS_HASH

    def report(self, failure: VerifyFailure | None = None) -> VerifyReport:
        compact = self.compact
        return VerifyReport(compact.size, compact.root().hex(), self.last_hash, failure)

    def step(self, item: Inspected, rest: Iterator[Inspected]) -> VerifyFailure | None:
        """Steps 1 to 4 for one line; `rest` is the lines after it, for classifying."""
        trust = self.trust
        if item.problem is not None:
            kind, why = item.problem
            message = _message(item.line_number, item.seq, kind, why)
            return VerifyFailure(kind, item.seq, item.line_number, message)
        problem = trust.line_problem(item)
        if problem is not None:
            kind, message = problem
            return VerifyFailure(kind, item.seq, item.line_number, message)
        if item.seq != self.last_seq + 1 or item.prev_hash != self.last_hash:
            return _classify(item, rest, self.last_seq, self.last_hash, trust)
        problem = trust.accept(item, self.last_seq + 1)
        if problem is not None:
            kind, message = problem
            return VerifyFailure(kind, item.seq, item.line_number, message)
        self.compact.append(item.leaf_hash)
        self.last_seq, self.last_hash = self.last_seq + 1, item.entry_hash
        return self.at_checkpoint(item.line_number)

    def accept_run(self, run: Run, index: int) -> int:
        """Accept the lines of `run` from `index` on that `step` would accept without a
        question it could answer otherwise: how many (0: step the line at `index`).

        They continue the chain, are signed by the current key, checked against the
        very key the chain trusts for it, lie within the key set's range for it, and go
        no further than the checkpoint's size.
        """
        trust = self.trust
        seq = run.first_seq + index
        if seq != self.last_seq + 1 or run.prev_hash_of(index) != self.last_hash:
            return 0
        if run.key_id != trust.current.key_id or trust.known.get(run.key_id) != run.checked_with:
            return 0
        accepted = run.size - index
        claims = trust.claims
        if claims is not None:
            if claims.key_id != run.key_id or claims.end < seq:
                return 0
            accepted = int(min(accepted, claims.end - seq + 1))
        if self.size >= seq:
            accepted = min(accepted, self.size - seq + 1)
        self.compact = _extended(
            self.compact, run.leaf_hashes[32 * index : 32 * (index + accepted)]
        )
        self.last_seq = seq + accepted - 1
        self.last_hash = run.entry_hash(index + accepted - 1)
        return accepted

    def at_checkpoint(self, line_number: int) -> VerifyFailure | None:
        """Step 4, once the chain has reached the checkpoint's size."""
        if self.last_seq != self.size:
            return None
        assert self.pending is not None
        return _compare_checkpoint(
            self.pending, self.trust, self.compact, self.last_hash, line_number
        )


def _extended(compact: CompactRange, leaves: bytes) -> CompactRange:
    """`compact` with the leaf hashes `leaves` (32 bytes each) appended, as many
    appends would leave it, but a perfect subtree at a time: the largest that starts
    at the range's size, hashed level by level, then carried into the frontier."""
    size, frontier = compact.size, [bytes.fromhex(h) for h in compact.to_hex_list()]
    start, count = 0, len(leaves) // 32
    while start < count:
        # 2**level leaves: no more than are left, and aligned at `size`.
        level = (count - start).bit_length() - 1
        if size:
            level = min(level, (size & -size).bit_length() - 1)
        nodes = [leaves[i : i + 32] for i in range(32 * start, 32 * (start + (1 << level)), 32)]
        while len(nodes) > 1:
            nodes = [node_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)]
        current, carried = nodes[0], level
        while (size >> carried) & 1:
            current = node_hash(frontier.pop(), current)
            carried += 1
        frontier.append(current)
        size += 1 << level
        start += 1 << level
    return CompactRange.from_hex_list(size, [h.hex() for h in frontier])


def _truncated(pending: _PendingCheckpoint, trust: _Trust, last_seq: int) -> VerifyFailure:
    size = pending.checkpoint.size
    # Which key should have signed it is in the entries that are missing: any key
    # trusted so far will do to say the log was longer.
    if pending.note is not None and not trust.signed_checkpoint(pending.note, trust.known.values()):
        kind = FailureKind.CHECKPOINT_SIGNATURE
        return VerifyFailure(
            kind,
            None,
            None,
            f"the checkpoint of size {size} is signed by no key the anchor, the key set or "
            f"the chain up to seq {last_seq} trusts ({kind})",
        )
    return VerifyFailure(
        FailureKind.TRUNCATED,
        last_seq + 1,
        None,
        f"seq {last_seq + 1}: export ends after {last_seq} entries but the checkpoint "
        f"covers {size} (truncated)",
    )


def _compare_checkpoint(
    pending: _PendingCheckpoint,
    trust: _Trust,
    compact: CompactRange,
    head: str,
    line_number: int | None,
) -> VerifyFailure | None:
    checkpoint = pending.checkpoint
    size = checkpoint.size
    where = f"seq {size}: " if size else ""
    signer = trust.current.key_id
    if pending.note is not None and not trust.signed_checkpoint(
        pending.note, [trust.current.public_key_raw]
    ):
        kind = FailureKind.CHECKPOINT_SIGNATURE
        return VerifyFailure(
            kind,
            size or None,
            line_number,
            f"{where}the checkpoint of size {size} is not signed by key {signer}, the key "
            f"the chain names for seq {size + 1} ({kind})",
        )
    if compact.root() != checkpoint.root_hash:
        return VerifyFailure(
            FailureKind.ROOT_MISMATCH,
            size or None,
            line_number,
            f"seq {size}: Merkle root of entries 1..{size} is {compact.root().hex()}, "
            f"the checkpoint says {checkpoint.root_hash.hex()} (root_mismatch)",
        )
    if head != checkpoint.head_hash:
        return VerifyFailure(
            FailureKind.HEAD_MISMATCH,
            size or None,
            line_number,
            f"seq {size}: entry_hash is {head}, the checkpoint head says "
            f"{checkpoint.head_hash} (head_mismatch)",
        )
    return None


def _classify(
    item: Inspected, rest: Iterator[Inspected], last_seq: int, last_hash: str, trust: _Trust
) -> VerifyFailure:
    """Name the kind of the first sound entry that does not continue the chain.

    Uses one entry of lookahead (`after`) and, only to tell a move from a copy or a
    gap, a scan of the seqs in the rest of the export. The rule order is the spec's.
    """
    seq = item.seq
    assert seq is not None  # a sound entry always has a seq
    after = next(rest, None)
    expected = last_seq + 1
    # Does the entry after this one continue the chain as if this one were absent?
    after_fits = (
        after is not None
        and after.seq == expected
        and after.prev_hash == last_hash
        and trust.sound(after)
    )
    previous = f"seq {last_seq}" if last_seq else "the genesis hash"

    def failure(kind: FailureKind, why: str) -> VerifyFailure:
        return VerifyFailure(kind, seq, item.line_number, f"seq {seq}: {why} ({kind})")

    def seen_later(wanted: range) -> bool:
        later = chain(() if after is None else (after,), rest)
        return any(x.seq in wanted for x in later if x.seq is not None)

    if seq <= last_seq:
        if seq == last_seq and item.entry_hash == last_hash:
            return failure(FailureKind.DUPLICATE_SEQ, f"repeats the entry at seq {last_seq}")
        if after_fits:
            return failure(
                FailureKind.INSERTED,
                f"extra entry after seq {last_seq}; the next entry continues the chain without it",
            )
        if seq == last_seq:
            return failure(FailureKind.DUPLICATE_SEQ, f"a second, different entry for seq {seq}")
        return failure(FailureKind.REORDERED, f"comes after seq {last_seq}: seq goes backwards")
    if seq == expected:
        if after_fits:
            return failure(
                FailureKind.INSERTED,
                f"extra entry claiming seq {seq}; the next entry (also seq {seq}) links to "
                f"{previous}",
            )
        return failure(
            FailureKind.BROKEN_LINK, f"prev_hash does not match the entry_hash of {previous}"
        )
    if after_fits:
        assert after is not None
        if seq == expected + 1 and item.prev_hash == after.entry_hash:
            return failure(FailureKind.REORDERED, f"swapped with seq {expected}, which follows it")
        if seen_later(range(seq, seq + 1)):
            return failure(
                FailureKind.INSERTED,
                f"extra copy spliced in after seq {last_seq}; seq {seq} appears again later",
            )
        return failure(FailureKind.REORDERED, f"moved before seq {expected}, which follows it")
    missing = range(expected, seq)
    span = f"seq {expected}" if len(missing) == 1 else f"seq {expected}..{seq - 1}"
    if seen_later(missing):
        return failure(
            FailureKind.REORDERED, f"comes before {span}, which appears later in the export"
        )
    return failure(FailureKind.DELETED, f"follows seq {last_seq}; {span} missing")

"""Streaming offline verification of an audit export against trusted keys.

Owns the verification algorithm of `docs/audit-format.md`: per-line checks (format,
entry hash, key, signature), the chain and seq checks with the rules that name the
first bad entry's failure kind, and the comparison with a signed checkpoint. Memory is
constant: the previous entry's seq and hash plus a Merkle compact range. With
`workers > 1` the per-line checks run in a process pool over bounded chunks. It reads
only the lines it is given; opening files and printing belong to the CLI.
"""

from __future__ import annotations

import enum
import json
import multiprocessing
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import chain, islice
from multiprocessing.context import BaseContext
from typing import Final, NamedTuple

from gateway.audit.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from gateway.audit.entry import (
    GENESIS_HASH,
    EntryFormatError,
    SignedLine,
    entry_hash_of,
    read_export_object,
    read_signed_line,
    signature_verifies,
)
from gateway.audit.keys import KeySet
from gateway.audit.merkle import EMPTY_ROOT, CompactRange, leaf_hash_of

CHUNK_SIZE: Final = 2000


class FailureKind(enum.StrEnum):
    """Why verification stopped; the rules are in docs/audit-format.md."""

    MALFORMED = "malformed"
    EDITED = "edited"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    KEY_OUT_OF_RANGE = "key_out_of_range"
    BROKEN_LINK = "broken_link"
    DELETED = "deleted"
    DUPLICATE_SEQ = "duplicate_seq"
    REORDERED = "reordered"
    INSERTED = "inserted"
    TRUNCATED = "truncated"
    CHECKPOINT_SIGNATURE = "checkpoint_signature"
    ROOT_MISMATCH = "root_mismatch"
    HEAD_MISMATCH = "head_mismatch"


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


class _Inspected(NamedTuple):
    """What the chain walk needs from one line, after the checks that need no context.

    A tuple rather than a dataclass: one is built per line, and pickled in the pool.
    """

    line_number: int
    seq: int | None
    prev_hash: str
    entry_hash: str
    leaf_hash: bytes
    problem: tuple[FailureKind, str] | None

    @property
    def sound(self) -> bool:
        return self.problem is None


def verify_export(
    lines: Iterable[str],
    keys: KeySet,
    checkpoint: Checkpoint | str | None = None,
    workers: int = 1,
    chunk_size: int = CHUNK_SIZE,
    start_method: str = "spawn",
) -> VerifyReport:
    """Verify an export (JSON Lines, with or without newlines) and stop at the first failure.

    `checkpoint` is an already opened Checkpoint, or a signed note that is opened here
    against `keys` (a bad note is reported as checkpoint_signature before any line is read).
    With `workers` > 1 the pool's processes start with `start_method`: spawn by default,
    as the caller may hold threads (gRPC, logging) that fork would copy mid-lock; a
    caller that knows it has no other thread may pass "fork", which starts in
    milliseconds instead of re-importing the caller's modules in every worker.
    """
    if isinstance(checkpoint, str):
        try:
            checkpoint = open_checkpoint(checkpoint, keys)
        except CheckpointError as exc:
            return _failed_before_scan(f"checkpoint: {exc}")
    if checkpoint is not None and checkpoint.origin != keys.origin:
        return _failed_before_scan(
            f"checkpoint origin {checkpoint.origin!r} is not the key set's {keys.origin!r}"
        )
    numbered = enumerate(lines, start=1)
    if workers > 1:
        context = multiprocessing.get_context(start_method)
        inspected: Generator[_Inspected] = _inspect_in_pool(
            numbered, keys, workers, chunk_size, context
        )
    else:
        inspected = (_inspect_line(number, line, keys) for number, line in numbered)
    with closing(inspected):
        return _walk(inspected, checkpoint)


def _failed_before_scan(message: str) -> VerifyReport:
    failure = VerifyFailure(
        FailureKind.CHECKPOINT_SIGNATURE, None, None, f"{message} (checkpoint_signature)"
    )
    return VerifyReport(0, EMPTY_ROOT.hex(), GENESIS_HASH, failure)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _inspect_line(line_number: int, line: str, keys: KeySet) -> _Inspected:
    """Checks that depend on this line alone, in the documented order."""
    text = line[:-1] if line.endswith("\n") else line
    read = read_signed_line(text)
    if read is None:
        slow = _read_line(line_number, text)
        if isinstance(slow, _Inspected):
            return slow
        read = slow
    seq = read.seq
    if entry_hash_of(read.canonical) != read.entry_hash:
        return _problem(
            line_number, seq, FailureKind.EDITED, "entry_hash does not match its contents"
        )
    key = keys.find(read.key_id)
    if key is None:
        return _problem(
            line_number, seq, FailureKind.UNKNOWN_KEY, f"key_id {read.key_id} is not a trusted key"
        )
    if not signature_verifies(read.signature, read.entry_hash, key.public_key_raw):
        return _problem(
            line_number,
            seq,
            FailureKind.BAD_SIGNATURE,
            f"signature does not verify under key {key.key_id}",
        )
    if not key.covers(seq):
        return _problem(
            line_number,
            seq,
            FailureKind.KEY_OUT_OF_RANGE,
            f"key {key.key_id} may only sign seq {key.describe_range()}",
        )
    return _Inspected(
        line_number, seq, read.prev_hash, read.entry_hash, leaf_hash_of(read.canonical), None
    )


def _read_line(line_number: int, text: str) -> SignedLine | _Inspected:
    """The exact reading of a line read_signed_line did not judge: its fields, or why not."""
    seq: int | None = None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return _problem(line_number, seq, FailureKind.MALFORMED, f"not a JSON value: {exc}")
    if isinstance(obj, dict):
        candidate = obj.get("seq")
        if isinstance(candidate, int) and not isinstance(candidate, bool) and candidate >= 1:
            seq = candidate
    try:
        entry, canonical = read_export_object(obj, text)
    except EntryFormatError as exc:
        # "$" is the whole line; any other key is named in the message.
        why = exc.why if exc.key == "$" else str(exc)
        return _problem(line_number, seq, FailureKind.MALFORMED, why)
    return SignedLine(
        entry.seq, entry.prev_hash, entry.key_id, entry.entry_hash, entry.signature, canonical
    )


def _problem(line_number: int, seq: int | None, kind: FailureKind, why: str) -> _Inspected:
    where = f"line {line_number}" if seq is None else f"seq {seq}"
    return _Inspected(line_number, seq, "", "", b"", (kind, f"{where}: {why} ({kind})"))


def _inspect_chunk(chunk: list[tuple[int, str]], keys: KeySet) -> list[_Inspected]:
    return [_inspect_line(number, line, keys) for number, line in chunk]


def _inspect_in_pool(
    numbered: Iterator[tuple[int, str]],
    keys: KeySet,
    workers: int,
    chunk_size: int,
    context: BaseContext,
) -> Generator[_Inspected]:
    # Two chunks per worker in flight keep the pool busy and memory bounded.
    pool = ProcessPoolExecutor(workers, mp_context=context)
    pending: deque[Future[list[_Inspected]]] = deque()
    try:
        while True:
            chunk = list(islice(numbered, chunk_size))
            if chunk:
                pending.append(pool.submit(_inspect_chunk, chunk, keys))
            if pending and (not chunk or len(pending) >= 2 * workers):
                yield from pending.popleft().result()
            elif not chunk:
                return
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _walk(inspected: Iterator[_Inspected], checkpoint: Checkpoint | None) -> VerifyReport:
    compact = CompactRange()
    last_seq, last_hash = 0, GENESIS_HASH

    def report(failure: VerifyFailure | None = None) -> VerifyReport:
        return VerifyReport(compact.size, compact.root().hex(), last_hash, failure)

    if checkpoint is not None and checkpoint.size == 0:
        failure = _compare_checkpoint(checkpoint, compact, last_hash, None)
        if failure is not None:
            return report(failure)
    for item in inspected:
        if item.problem is not None:
            kind, message = item.problem
            return report(VerifyFailure(kind, item.seq, item.line_number, message))
        if item.seq != last_seq + 1 or item.prev_hash != last_hash:
            return report(_classify(item, inspected, last_seq, last_hash))
        compact.append(item.leaf_hash)
        last_seq, last_hash = last_seq + 1, item.entry_hash
        if checkpoint is not None and last_seq == checkpoint.size:
            failure = _compare_checkpoint(checkpoint, compact, last_hash, item.line_number)
            if failure is not None:
                return report(failure)
    if checkpoint is not None and last_seq < checkpoint.size:
        return report(
            VerifyFailure(
                FailureKind.TRUNCATED,
                last_seq + 1,
                None,
                f"seq {last_seq + 1}: export ends after {last_seq} entries but the checkpoint "
                f"covers {checkpoint.size} (truncated)",
            )
        )
    return report()


def _compare_checkpoint(
    checkpoint: Checkpoint, compact: CompactRange, head: str, line_number: int | None
) -> VerifyFailure | None:
    size = checkpoint.size
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
    item: _Inspected, rest: Iterator[_Inspected], last_seq: int, last_hash: str
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
        after is not None and after.sound and after.seq == expected and after.prev_hash == last_hash
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

"""Step 1 of verifying an export: the checks of each line on its own, in line or in a pool.

Owns turning export lines into what the chain walk (`verify.py`) needs: each line's
format and canonical form, entry hash, Merkle leaf hash and signature, the signature
checked against the key the lines before it name for its key id. Consecutive lines
that pass all of that, link to one another and name one key travel as one `Run`, their
hashes and signatures packed in bytes; every other line is one `Inspected`. Lines come
as strings, or as an export file that is read in byte ranges split at line boundaries,
each pool worker opening the file and reading its own ranges. It knows nothing of the
chain's trust: which key is trusted, and whether a line continues the chain, are the
walk's to decide.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import mmap
import os
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import count as numbers_from
from itertools import islice
from multiprocessing.context import BaseContext
from os import PathLike
from typing import Any, Final, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.domain.audit.canonical import COMPILED
from gateway.domain.audit.entry import (
    ENTRY_HASH_PREFIX,
    MAX_ENTRY_BYTES,
    SIGNATURE_PREFIX,
    EntryFormatError,
    SignedLine,
    entry_hash_of,
    read_export_object,
    read_signed_line,
    signature_verifies,
)
from gateway.domain.audit.failures import FailureKind
from gateway.domain.audit.keys import ROTATION_EVENT, decode_public_key, key_id_for
from gateway.domain.audit.line_reader import read_signed_bytes
from gateway.domain.audit.merkle import leaf_hash_of

# Every canonical key_rotated line contains this; a line that merely contains it (a
# nested key) is parsed and told apart.
_ROTATION_MARK: Final = f'"event_type":"{ROTATION_EVENT}"'
_ROTATION_MARK_BYTES: Final = _ROTATION_MARK.encode()
# Lines given as strings travel as UTF-8 with their lone surrogates kept, so that a
# line that is no valid UTF-8 reads back as the very string it was; bad bytes in a file
# are decoded as export_lines decodes them (proofs.py).
_FROM_STRINGS: Final = "surrogatepass"
_FROM_FILE: Final = "surrogateescape"
# A run in line holds at most this many lines' hashes, so memory stays constant; in
# the pool a chunk is bounded already.
RUN_LIMIT: Final = 256
_WHOLE_CHUNK: Final = sys.maxsize
_SMALLEST_RANGE: Final = 100
_BATCH: Final = 64
_HASH: Final = 32
_SIGNATURE: Final = 64


class Inspected(NamedTuple):
    """What the chain walk needs from one line, after the checks that need no context.

    A tuple rather than a dataclass: it may be pickled in the pool. The signature was
    checked against `checked_with`, the public key the lines before this one name for
    `key_id` (b"" if none did); the walk uses that answer only if it trusts that very
    key for `key_id`, and checks the signature itself otherwise. `problem` is the kind
    and why of a line that is bad on its own; the walk writes the message.
    """

    line_number: int
    seq: int | None
    prev_hash: str
    entry_hash: str
    leaf_hash: bytes
    problem: tuple[FailureKind, str] | None  # malformed or edited: the line alone is bad
    key_id: str = ""
    signature: str = ""
    checked_with: bytes = b""
    signature_ok: bool = False
    rotation: tuple[str, object] | None = None  # a key_rotated entry's resource, next_signer


class Run(NamedTuple):
    """Consecutive lines from `first_line` that are each sound by themselves: no problem,
    no key_rotated entry, key `key_id` with a signature that verifies under
    `checked_with`, seqs that count up from `first_seq`, each prev_hash the entry_hash
    before it (`prev_hash` is the first line's). The same as the `Inspected` of each
    line (see `item`), packed: 32 bytes of entry hash, 32 of leaf hash and 64 of
    signature a line."""

    first_line: int
    first_seq: int
    prev_hash: str
    key_id: str
    checked_with: bytes
    entry_hashes: bytes
    leaf_hashes: bytes
    signatures: bytes

    @property
    def size(self) -> int:
        return len(self.leaf_hashes) // _HASH

    def entry_hash(self, index: int) -> str:
        return self.entry_hashes[_HASH * index : _HASH * (index + 1)].hex()

    def prev_hash_of(self, index: int) -> str:
        return self.prev_hash if index == 0 else self.entry_hash(index - 1)

    def item(self, index: int) -> Inspected:
        """The Inspected that line `first_line + index` alone would have given."""
        return Inspected(
            self.first_line + index,
            self.first_seq + index,
            self.prev_hash_of(index),
            self.entry_hash(index),
            self.leaf_hashes[_HASH * index : _HASH * (index + 1)],
            None,
            self.key_id,
            self.signatures[_SIGNATURE * index : _SIGNATURE * (index + 1)].hex(),
            self.checked_with,
            True,
        )

    def items(self, start: int = 0) -> Iterator[Inspected]:
        return (self.item(index) for index in range(start, self.size))


Piece = Inspected | Run


def items_of(pieces: Iterable[Piece]) -> Iterator[Inspected]:
    """The pieces line by line."""
    for piece in pieces:
        if isinstance(piece, Run):
            yield from piece.items()
        else:
            yield piece


# --- the checks of one line ------------------------------------------------------------


def _read_with_the_stdlib(data: bytes) -> SignedLine | None:
    # Any error handler will do: a line that is no UTF-8 is not judged either way.
    return read_signed_line(data.decode("utf-8", _FROM_FILE))


# The fields of a sound line by a shortcut (orjson, else the stdlib's C json), or None.
_fast_read: Final = read_signed_bytes if COMPILED else _read_with_the_stdlib


@functools.lru_cache(maxsize=64)
def _verify_with(public_key_raw: bytes) -> Callable[[bytes, bytes], None]:
    # Parsing the key costs about as much as a verification; a log has few keys.
    return Ed25519PublicKey.from_public_bytes(public_key_raw).verify


# A line the shortcut read whose entry hash matches, its signature still to check:
# (number, data, reading, raw entry hash, public key).
_Sound = tuple[int, bytes, SignedLine, bytes, bytes]


def inspect_lines(
    numbered: Iterable[tuple[int, bytes]],
    candidates: dict[str, bytes],
    errors: str = _FROM_STRINGS,
    run_limit: int = RUN_LIMIT,
) -> Generator[Piece]:
    """Inspect lines (numbered, without their LF) against the keys `candidates` names,
    learning the key each rotation line introduces; runs of at most `run_limit` lines.

    `errors` is how bytes that are no UTF-8 become text for the strict reader. The
    signatures of up to _BATCH lines are checked together, after their other checks:
    Ed25519 runs faster with its tables still in the cache.
    """
    runs = _Runs(run_limit, candidates, errors)
    batch: list[_Sound] = []
    for number, data in numbered:
        read = _fast_read(data)
        # (find, not in: `in` on bytes costs a TypeError raised and cleared inside)
        if (
            read is not None
            and len(read.canonical) <= MAX_ENTRY_BYTES
            and data.find(_ROTATION_MARK_BYTES) < 0
        ):
            digest = hashlib.sha256(ENTRY_HASH_PREFIX + read.canonical).digest()
            public = candidates.get(read.key_id)
            if public is not None and digest.hex() == read.entry_hash:
                batch.append((number, data, read, digest, public))
                if len(batch) == _BATCH:
                    yield from runs.check(batch)
                continue
        # Any other line goes on its own, after every line before it.
        yield from runs.check(batch)
        yield from runs.finish()
        item = _inspect_line(number, data, read, candidates, errors)
        if item.rotation is not None:
            _learn(candidates, item.rotation[1])
        yield item
    yield from runs.check(batch)
    yield from runs.finish()


class _Runs:
    """Checks the signatures of sound lines a batch at a time and collects the lines
    whose signature verifies into runs, in order."""

    def __init__(self, limit: int, candidates: Mapping[str, bytes], errors: str) -> None:
        self.limit = limit
        self.candidates = candidates
        self.errors = errors
        self.entries: list[bytes] = []
        self.leaves: list[bytes] = []
        self.signatures: list[bytes] = []
        self.first = (0, 0, "", "", b"")  # line, seq, prev_hash, key_id, public
        self.next_seq, self.last_hash = 0, ""

    def check(self, batch: list[_Sound]) -> Iterator[Piece]:
        """The runs the batch ends and the lines whose signature does not verify."""
        signatures = [bytes.fromhex(line[2].signature) for line in batch]
        verdicts = []
        for (_, _, _, digest, public), signature in zip(batch, signatures, strict=True):
            try:
                _verify_with(public)(signature, SIGNATURE_PREFIX + digest)
            except InvalidSignature:
                verdicts.append(False)
            else:
                verdicts.append(True)
        entries, leaves, kept = self.entries, self.leaves, self.signatures
        for line, signature, verified in zip(batch, signatures, verdicts, strict=True):
            number, data, read, digest, public = line
            if not verified:
                yield from self.finish()
                yield _inspect_line(number, data, read, self.candidates, self.errors)
                continue
            if entries and not (
                read.seq == self.next_seq
                and read.prev_hash == self.last_hash
                and read.key_id == self.first[3]
                and len(entries) < self.limit
            ):
                yield from self.finish()
            if not entries:
                self.first = (number, read.seq, read.prev_hash, read.key_id, public)
            entries.append(digest)
            leaves.append(leaf_hash_of(read.canonical))
            kept.append(signature)
            self.next_seq, self.last_hash = read.seq + 1, read.entry_hash
        batch.clear()

    def finish(self) -> Iterator[Run]:
        """The run collected so far, if any."""
        entries, leaves, signatures = self.entries, self.leaves, self.signatures
        if entries:
            yield Run(*self.first, b"".join(entries), b"".join(leaves), b"".join(signatures))
            entries.clear()
            leaves.clear()
            signatures.clear()


def _inspect_line(
    line_number: int,
    data: bytes,
    read: SignedLine | None,
    candidates: Mapping[str, bytes],
    errors: str,
) -> Inspected:
    """Every check of one line (`read` is the shortcut's reading, if it had one)."""
    text = None
    if read is None:
        text = data.decode("utf-8", errors)
        slow = _read_line(line_number, text)
        if isinstance(slow, Inspected):
            return slow
        read = slow
    seq = read.seq
    if len(read.canonical) > MAX_ENTRY_BYTES:  # no tile's bundle could hold it
        return _problem(
            line_number,
            seq,
            FailureKind.MALFORMED,
            f"the entry is {len(read.canonical)} bytes; an audit entry is at most "
            f"{MAX_ENTRY_BYTES}",
        )
    if entry_hash_of(read.canonical) != read.entry_hash:
        return _problem(
            line_number, seq, FailureKind.EDITED, "entry_hash does not match its contents"
        )
    public = candidates.get(read.key_id, b"")
    verified = bool(public) and signature_verifies(read.signature, read.entry_hash, public)
    rotation = None
    if data.find(_ROTATION_MARK_BYTES) >= 0:
        rotation = _rotation_claim(data.decode("utf-8", errors) if text is None else text)
    return Inspected(
        line_number,
        seq,
        read.prev_hash,
        read.entry_hash,
        leaf_hash_of(read.canonical),
        None,
        read.key_id,
        read.signature,
        public,
        verified,
        rotation,
    )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _read_line(line_number: int, text: str) -> SignedLine | Inspected:
    """The exact reading of a line the shortcut did not judge: its fields, or why not."""
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


def _problem(line_number: int, seq: int | None, kind: FailureKind, why: str) -> Inspected:
    return Inspected(line_number, seq, "", "", b"", (kind, why))


def _rotation_claim(text: str) -> tuple[str, object] | None:
    """(resource, details.next_signer) of a sound line whose event_type is key_rotated."""
    obj = json.loads(text)
    if obj["event_type"] != ROTATION_EVENT:
        return None
    return obj["resource"], obj["details"].get("next_signer")


def _claimed_next_signer(line: str) -> object:
    """details.next_signer of a line that says it is a key_rotated entry, unchecked."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("event_type") != ROTATION_EVENT:
        return None
    details = obj.get("details")
    return details.get("next_signer") if isinstance(details, dict) else None


def _learn(candidates: dict[str, bytes], next_signer: object) -> None:
    """Remember the key a rotation line names, for checking the lines after it.

    Only a guess at the key for a key id: the walk decides whether the rotation counts.
    """
    public = next_signer.get("public") if isinstance(next_signer, dict) else None
    raw = decode_public_key(public) if isinstance(public, str) else None
    if raw is not None:
        candidates.setdefault(key_id_for(raw), raw)


# --- where the lines come from -------------------------------------------------------------


def numbered_strings(numbered: Iterable[tuple[int, str]]) -> Iterator[tuple[int, bytes]]:
    """Lines given as strings, each without one trailing LF, as bytes."""
    for number, line in numbered:
        text = line[:-1] if line.endswith("\n") else line
        yield number, text.encode("utf-8", _FROM_STRINGS)


def inspect_strings(
    numbered: Iterable[tuple[int, str]], candidates: dict[str, bytes]
) -> Generator[Piece]:
    return inspect_lines(numbered_strings(numbered), candidates)


def inspect_file(path: PathLike[str], candidates: dict[str, bytes]) -> Generator[Piece]:
    """The lines of an export file, read as export_lines reads it (only LF ends a line)."""
    return inspect_lines(_file_lines(path), candidates, _FROM_FILE)


def _file_lines(path: PathLike[str]) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as export:
        yield from _split_lines(export)


def _split_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    # readline finds LF with memchr; bytes.split compares byte by byte.
    for number, line in enumerate(lines, start=1):
        yield number, line[:-1] if line.endswith(b"\n") else line


def _line_ranges(
    path: PathLike[str], lines: int, workers: int = 1
) -> Iterator[tuple[int, int, int, list[str]]]:
    """(start, end, line count, rotation lines) of consecutive byte ranges of at most
    `lines` lines each. Rotation lines are the lines that contain the rotation mark, as
    text. Towards the end of the file the ranges shrink, so that the last ones keep all
    `workers` busy rather than one. The file is mapped, not read: this process only
    looks for line ends and rotation marks."""
    with open(path, "rb") as export:
        size = os.fstat(export.fileno()).st_size
        if size == 0:
            return  # (an empty file cannot be mapped)
        with mmap.mmap(export.fileno(), 0, access=mmap.ACCESS_READ) as view:
            start, seen = 0, 0
            while start < size:
                wanted = lines
                if seen:  # about a quarter per worker of the lines that seem to be left
                    left = (size - start) * seen // start
                    wanted = max(min(lines, _SMALLEST_RANGE), min(lines, left // (4 * workers)))
                end, counted = start, 0
                while counted < wanted and end < size:
                    newline = view.find(b"\n", end)
                    end = size if newline < 0 else newline + 1  # the last line may have no LF
                    counted += 1
                yield start, end, counted, _marked(view, start, end)
                start, seen = end, seen + counted


def _marked(view: mmap.mmap, start: int, end: int) -> list[str]:
    found: list[str] = []
    mark = view.find(_ROTATION_MARK_BYTES, start, end)
    while mark >= 0:
        first = max(start, view.rfind(b"\n", start, mark) + 1)
        last = view.find(b"\n", mark, end)
        last = end if last < 0 else last
        found.append(view[first:last].decode("utf-8", _FROM_FILE))
        mark = view.find(_ROTATION_MARK_BYTES, last, end)
    return found


# --- the pool ----------------------------------------------------------------------------


def _inspect_chunk(first_line: int, lines: list[str], candidates: dict[str, bytes]) -> list[Piece]:
    numbered = numbered_strings(zip(numbers_from(first_line), lines, strict=False))
    return list(inspect_lines(numbered, candidates, run_limit=_WHOLE_CHUNK))


def _inspect_range(
    path: PathLike[str], start: int, end: int, first_line: int, candidates: dict[str, bytes]
) -> list[Piece]:
    with open(path, "rb") as export:
        export.seek(start)
        data = export.read(end - start)
    numbered = ((first_line - 1 + n, line) for n, line in _split_lines(io.BytesIO(data)))
    return list(inspect_lines(numbered, candidates, _FROM_FILE, run_limit=_WHOLE_CHUNK))


def inspect_in_pool(
    source: Iterator[tuple[int, str]] | PathLike[str],
    candidates: dict[str, bytes],
    workers: int,
    chunk_size: int,
    context: BaseContext,
) -> Generator[Piece]:
    """Inspect `chunk_size` lines at a time in `workers` processes, in order.

    Each chunk gets the candidate keys plus every key that a rotation line before it
    names; the worker adds those named inside it. From a file, the workers read their
    own byte ranges and this process only finds where the ranges start and the
    rotation lines; from strings, the chunks' lines are sent to the workers.
    """
    if isinstance(source, PathLike):
        chunks = _range_chunks(source, chunk_size, workers)
    else:
        chunks = _string_chunks(source, chunk_size)
    # Two chunks per worker in flight keep the pool busy and memory bounded.
    pool = ProcessPoolExecutor(workers, mp_context=context)
    pending: deque[Future[list[Piece]]] = deque()
    try:
        while True:
            chunk = next(chunks, None)
            if chunk is not None:
                inspect, arguments, rotation_lines = chunk
                # A copy: the pool pickles its arguments later, in another thread.
                pending.append(pool.submit(inspect, *arguments, dict(candidates)))
                for line in rotation_lines:
                    _learn(candidates, _claimed_next_signer(line))
            if pending and (chunk is None or len(pending) >= 2 * workers):
                yield from pending.popleft().result()
            elif chunk is None:
                return
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# A chunk for the pool: the function a worker runs, its arguments but the candidate
# keys, and the chunk's rotation lines (as text), which name keys for later chunks.
_Chunk = tuple[Callable[..., list[Piece]], tuple[Any, ...], list[str]]


def _range_chunks(path: PathLike[str], chunk_size: int, workers: int) -> Iterator[_Chunk]:
    first_line = 1
    for start, end, lines, marked in _line_ranges(path, chunk_size, workers):
        yield _inspect_range, (path, start, end, first_line), marked
        first_line += lines


def _string_chunks(numbered: Iterator[tuple[int, str]], chunk_size: int) -> Iterator[_Chunk]:
    while chunk := list(islice(numbered, chunk_size)):
        lines = [line for _, line in chunk]
        marked = [line for line in lines if _ROTATION_MARK in line]
        yield _inspect_chunk, (chunk[0][0], lines), marked

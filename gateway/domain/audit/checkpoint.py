"""Checkpoints: signed tree heads in the C2SP tlog-checkpoint format.

Owns the v1 checkpoint body (origin, size, base64 root, then exactly the extension
lines `head <hex>` and `timestamp <RFC 3339>`), signing it as a C2SP signed note
under the origin as key name, and opening a note against trusted keys. It does not
compute roots (see `merkle.py`) nor compare a checkpoint with an export (`verify.py`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gateway.domain.audit.entry import EntryFormatError, parse_timestamp
from gateway.domain.audit.errors import FormatError
from gateway.domain.audit.keys import KeySet
from gateway.domain.audit.note import (
    NoteError,
    NoteSigner,
    NoteVerifier,
    check_key_name,
    note_key_hash,
    note_verifier_key,
    open_note,
    sign_note,
    split_note,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "note_key_hash",
    "note_verifier_key",
    "open_checkpoint",
    "parse_checkpoint",
    "parse_checkpoint_body",
    "sign_checkpoint",
]

_SIZE: Final = re.compile(r"0|[1-9][0-9]*")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


class CheckpointError(FormatError):
    """A checkpoint note is malformed, signed by no trusted key, or badly signed."""


@dataclass(frozen=True)
class Checkpoint:
    """The signed head of the log at `size` entries."""

    origin: str
    size: int
    root_hash: bytes
    head_hash: str
    timestamp: str

    def __post_init__(self) -> None:
        try:
            check_key_name(self.origin)
        except NoteError as exc:
            raise CheckpointError(f"origin: {exc}") from None
        if self.size < 0:
            raise CheckpointError("size: must be >= 0")
        if len(self.root_hash) != 32:
            raise CheckpointError("root_hash: must be 32 bytes")
        if not _HEX64.fullmatch(self.head_hash):
            raise CheckpointError("head: must be 64 lowercase hex digits")
        try:
            parse_timestamp(self.timestamp)
        except EntryFormatError as exc:
            raise CheckpointError(str(exc)) from None

    def body(self) -> str:
        """The note text that is signed; every line ends with a newline."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        return (
            f"{self.origin}\n{self.size}\n{root}\n"
            f"head {self.head_hash}\ntimestamp {self.timestamp}\n"
        )


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """The whole signed note: body, blank line, one signature line named by the origin."""
    return sign_note(checkpoint.body(), checkpoint.origin, signer)


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Strictly parse a v1 checkpoint body (the note text, ending in a newline)."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint body must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) != 5:
        raise CheckpointError(f"checkpoint body has {len(lines)} lines, expected 5")
    origin, size_text, root_b64, head_line, time_line = lines
    if not _SIZE.fullmatch(size_text):
        raise CheckpointError(f"size {size_text!r} is not a decimal without leading zeros")
    try:
        root = base64.b64decode(root_b64, validate=True)
    except (ValueError, binascii.Error):
        raise CheckpointError("root hash is not base64") from None
    # Only the one canonical spelling of the root is accepted, so a body has one form.
    if base64.b64encode(root).decode("ascii") != root_b64:
        raise CheckpointError("root hash is not canonical base64")
    head_key, _, head_hash = head_line.partition(" ")
    time_key, _, timestamp = time_line.partition(" ")
    if head_key != "head":
        raise CheckpointError("line 4 must be 'head <hex entry hash>'")
    if time_key != "timestamp":
        raise CheckpointError("line 5 must be 'timestamp <RFC 3339 time>'")
    checkpoint = Checkpoint(origin, int(size_text), root, head_hash, timestamp)
    if checkpoint.body() != text:
        raise CheckpointError("checkpoint body is not in canonical form")
    return checkpoint


def parse_checkpoint(note: str) -> Checkpoint:
    """Parse a signed checkpoint note WITHOUT verifying any signature."""
    try:
        text, _ = split_note(note)
    except NoteError as exc:
        raise CheckpointError(str(exc)) from None
    return parse_checkpoint_body(text)


def open_checkpoint(note: str, keys: KeySet | Iterable[tuple[str, bytes]]) -> Checkpoint:
    """Verify `note` against trusted keys and return the checkpoint it signs.

    `keys` is a KeySet or (name, raw public key) pairs. From a KeySet only the key it
    names for seq size + 1 is trusted, under its origin: the key current once entry
    `size` is the head, which the gateway signs that checkpoint with (a retired key
    cannot vouch for a tree grown after its retirement). A signature by a trusted key
    named as the body's origin is required.
    """
    try:
        if isinstance(keys, KeySet):
            # The size is read before the signature is checked only to pick the key.
            verifier = keys.checkpoint_verifier(parse_checkpoint(note).size)
            verifiers: tuple[NoteVerifier, ...] = () if verifier is None else (verifier,)
        else:
            verifiers = tuple(NoteVerifier(name, raw) for name, raw in keys)
        opened = open_note(note, verifiers)
    except NoteError as exc:
        raise CheckpointError(str(exc)) from None
    checkpoint = parse_checkpoint_body(opened.text)
    if all(verifier.name != checkpoint.origin for verifier in opened.signed_by):
        raise CheckpointError(
            f"checkpoint for origin {checkpoint.origin!r} is not signed by a key of that name"
        )
    return checkpoint

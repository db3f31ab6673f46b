"""C2SP signed notes (https://c2sp.org/signed-note), Ed25519 keys only.

Owns the envelope that carries a checkpoint: key hashes, verifier key strings, and
signing and opening a note byte-compatible with Go's golang.org/x/mod/sumdb/note.
It knows nothing about what the note text means (see `checkpoint.py`) and never
reads key files (see `keys.py`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.domain.audit.errors import FormatError

ALGORITHM_ED25519: Final = 0x01
SIGNATURE_PREFIX: Final = "\u2014 "  # em dash, space
# Go's note.Open stops at this many signature lines; so do we, for the same reason.
MAX_SIGNATURES: Final = 100


class NoteError(FormatError):
    """A note or verifier key is malformed, unknown, or its signature is invalid."""


class NoteSigner(Protocol):
    """What signing a note needs from a key; `keys.Signer` satisfies it."""

    @property
    def public_key_raw(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class NoteVerifier:
    """One trusted (name, Ed25519 public key) pair and its 4-byte key hash."""

    name: str
    public_key_raw: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key_raw) != 32:
            raise NoteError(f"public key for {self.name!r} is not 32 bytes")

    @property
    def key_hash(self) -> bytes:
        return note_key_hash(self.name, self.public_key_raw)

    @property
    def verifier_key(self) -> str:
        return note_verifier_key(self.name, self.public_key_raw)


@dataclass(frozen=True)
class OpenedNote:
    """A note whose text was signed by every verifier in `signed_by` (open_note: at
    least one)."""

    text: str
    signed_by: tuple[NoteVerifier, ...]


def check_key_name(name: str) -> None:
    """Raise NoteError unless `name` is a valid note key name (non-empty, no space, no +)."""
    if not name:
        raise NoteError("key name is empty")
    if "+" in name or any(ch.isspace() for ch in name):
        raise NoteError(f"key name {name!r} contains a space or '+'")


def note_key_hash(name: str, public_key_raw: bytes) -> bytes:
    """The 4-byte key hash: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    data = name.encode("utf-8") + b"\n" + bytes([ALGORITHM_ED25519]) + public_key_raw
    return hashlib.sha256(data).digest()[:4]


def note_verifier_key(name: str, public_key_raw: bytes) -> str:
    """The verifier key string `<name>+<8 hex key hash>+<base64(0x01 || public key)>`."""
    check_key_name(name)
    key_b64 = base64.b64encode(bytes([ALGORITHM_ED25519]) + public_key_raw).decode("ascii")
    return f"{name}+{note_key_hash(name, public_key_raw).hex()}+{key_b64}"


def parse_verifier_key(verifier_key: str) -> NoteVerifier:
    """Parse `<name>+<hash>+<base64 key>`, checking the hash and the algorithm byte."""
    # The base64 part may itself contain '+', so split at most twice.
    parts = verifier_key.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"verifier key {verifier_key!r} is not name+hash+key")
    name, hash_hex, key_b64 = parts
    check_key_name(name)
    try:
        key_hash = bytes.fromhex(hash_hex)
        key = base64.b64decode(key_b64, validate=True)
    except (ValueError, binascii.Error):
        raise NoteError(f"verifier key for {name!r}: bad hex hash or base64 key") from None
    if len(hash_hex) != 8 or len(key) != 33 or key[0] != ALGORITHM_ED25519:
        raise NoteError(f"verifier key for {name!r} is not an Ed25519 key")
    verifier = NoteVerifier(name, key[1:])
    if verifier.key_hash != key_hash:
        raise NoteError(f"verifier key for {name!r}: key hash does not match the key")
    return verifier


def sign_note(text: str, name: str, signer: NoteSigner) -> str:
    """Return `text`, a blank line and one signature line by `signer` under `name`."""
    check_key_name(name)
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _check_characters(text)
    body = text.encode("utf-8")
    blob = note_key_hash(name, signer.public_key_raw) + signer.sign(body)
    return f"{text}\n{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode('ascii')}\n"


def split_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a note into its text and (name, key hash, signature) triples, unverified."""
    _check_characters(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("note does not end with a signature line and newline")
    signatures: list[tuple[str, bytes, bytes]] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"signature line {line!r} does not start with an em dash")
        name, _, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error):
            raise NoteError(f"signature by {name!r} is not valid base64") from None
        if base64.b64encode(blob).decode("ascii") != b64:
            # Unused bits set, or no padding: another spelling of the same bytes. One
            # spelling per note, so that no byte of a note can change and it still verify.
            raise NoteError(f"signature by {name!r} is not canonical base64")
        check_key_name(name)
        if not b64 or len(blob) < 5:
            raise NoteError(f"signature by {name!r} is too short")
        signatures.append((name, blob[:4], blob[4:]))
        if len(signatures) > MAX_SIGNATURES:
            raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, signatures


def open_note(note: str, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Verify `note` against trusted `verifiers`, following Go's note.Open.

    Signatures by unknown keys are ignored; a signature by a known key that does not
    verify is an error; at least one known key must have signed.
    """
    opened = check_note_signatures(note, verifiers)
    if not opened.signed_by:
        raise NoteError("note has no signature by a trusted key")
    return opened


def check_note_signatures(note: str, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """open_note without its last rule: `signed_by` may be empty.

    For a reader that learns more trusted keys later (the audit verifier learns them
    from the chain): a bad signature by a key known now is still an error.
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for trusted in verifiers:
        slot = (trusted.name, trusted.key_hash)
        if known.setdefault(slot, trusted) != trusted:
            raise NoteError(f"ambiguous key {trusted.name}+{trusted.key_hash.hex()}")
    text, signatures = split_note(note)
    body = text.encode("utf-8")
    signed_by: list[NoteVerifier] = []
    for name, key_hash, signature in signatures:
        verifier = known.get((name, key_hash))
        if verifier is None or verifier in signed_by:
            continue
        if not _ed25519_verify(verifier.public_key_raw, signature, body):
            raise NoteError(f"invalid signature for key {name}+{key_hash.hex()}")
        signed_by.append(verifier)
    return OpenedNote(text, tuple(signed_by))


def _ed25519_verify(public_key_raw: bytes, signature: bytes, data: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _check_characters(note: str) -> None:
    # Go rejects invalid UTF-8 and ASCII control characters other than newline.
    for index, ch in enumerate(note):
        if (ch < " " and ch != "\n") or "\ud800" <= ch <= "\udfff":
            raise NoteError(f"note contains control character {ch!r} at offset {index}")

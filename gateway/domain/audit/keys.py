"""Audit signing keys: the server's Ed25519 signer, the trust anchor and the key set.

Owns key ids, the private key file (PKCS#8 PEM, mode 0600), the trust anchor (the
public key an auditor trusts to sign seq 1), the `next_signer` details by which a
`key_rotated` entry introduces the next key, and the JSON key set file that
`agentgw audit keys` writes and `agentgw audit verify` checks against the chain. It
does not verify entries nor walk the chain (see `verify.py`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.domain.audit.errors import TrustError
from gateway.domain.audit.events import EventType
from gateway.domain.audit.note import (
    NoteError,
    NoteVerifier,
    check_key_name,
    note_verifier_key,
    parse_verifier_key,
)

KEY_ID_PREFIX: Final = b"agentgw/audit/v1/key-id\x00"
ROTATION_EVENT: Final = EventType.KEY_ROTATED.value
SIGNER_RESOURCE_PREFIX: Final = "audit-signer:"
NEXT_SIGNER_MEMBERS: Final = frozenset({"id", "public", "verifier"})
_HEX16: Final = re.compile(r"[0-9a-f]{16}")

_T = TypeVar("_T")


class KeyFileError(TrustError):
    """A private key file or key set file is unreadable or breaks the format."""


class KeyHistoryError(TrustError):
    """A key set contradicts itself or the trust anchor (verify: key_history_mismatch)."""


class RotationError(TrustError):
    """A key_rotated entry does not name its next key as the format says (bad_rotation)."""


def key_id_for(public_key_raw: bytes) -> str:
    """hex(SHA-256("agentgw/audit/v1/key-id" 0x00 || raw public key)[:8])."""
    if len(public_key_raw) != 32:
        raise KeyFileError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(KEY_ID_PREFIX + public_key_raw).digest()[:8].hex()


class Signer:
    """An Ed25519 private key with its raw public key and key id; never printed."""

    __slots__ = ("_key", "key_id", "public_key_raw")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key_raw: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id_for(self.public_key_raw)

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        """Build from a 32-byte RFC 8032 seed (test vectors; Go's note signer keys)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load(cls, path: Path) -> Signer:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path}: not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """Load the key at `path`, or create it (mode 0600, parents made) if absent."""
        if path.exists():
            return cls.load(path)
        signer = cls.generate()
        # O_EXCL: if another process created the key between exists() and here, use
        # theirs rather than overwrite a key that may already have signed entries.
        try:
            signer.save(path)
        except FileExistsError:
            return cls.load(path)
        return signer

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, mode 0600; FileExistsError if `path` exists.

        The key is written to a temporary file and linked into place, so a process
        that reads `path` at the same moment sees the whole key or no file at all.
        """
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:  # mkstemp creates it 0600
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path)
        finally:
            os.unlink(temporary)


class SigningKeys:
    """The private keys a gateway may sign with: the first key and the rotated ones.

    The first key is the configured key file (created at first start). Keys made by a
    rotation live in `directory` as `<key_id>.pem` (mode 0600), so that every replica
    that shares the directory can sign with whichever key the log's head names. It
    never decides which key is current: the audit log's head does.
    """

    def __init__(self, first_key_file: Path, directory: Path) -> None:
        self.first_key_file = first_key_file
        self.directory = directory
        self.first = Signer.load_or_create(first_key_file)
        self._loaded: dict[str, Signer] = {self.first.key_id: self.first}

    def get(self, key_id: str) -> Signer | None:
        """The signer with `key_id`, or None if this gateway does not have its key."""
        if key_id in self._loaded:
            return self._loaded[key_id]
        path = self.directory / f"{key_id}.pem"
        if not _HEX16.fullmatch(key_id) or not path.exists():
            return None
        signer = Signer.load(path)
        if signer.key_id != key_id:
            raise KeyFileError(f"{path}: holds key {signer.key_id}, not {key_id}")
        self._loaded[key_id] = signer
        return signer

    def create(self) -> Signer:
        """A new key, saved in the directory before it is used for anything."""
        signer = Signer.generate()
        signer.save(self.directory / f"{signer.key_id}.pem")
        self._loaded[signer.key_id] = signer
        return signer


@dataclass(frozen=True)
class TrustedKey:
    """A public key said to sign entries first_seq..last_seq (None: still current)."""

    key_id: str
    public_key_raw: bytes
    first_seq: int
    last_seq: int | None

    def __post_init__(self) -> None:
        if key_id_for(self.public_key_raw) != self.key_id:
            raise KeyFileError(f"key {self.key_id}: key_id does not match the public key")
        if self.first_seq < 1:
            raise KeyFileError(f"key {self.key_id}: first_seq must be >= 1")
        if self.last_seq is not None and self.last_seq < self.first_seq:
            raise KeyFileError(f"key {self.key_id}: last_seq is before first_seq")

    def covers(self, seq: int) -> bool:
        return self.first_seq <= seq and (self.last_seq is None or seq <= self.last_seq)

    def describe_range(self) -> str:
        return f"{self.first_seq}..{'' if self.last_seq is None else self.last_seq}"


@dataclass(frozen=True)
class KeySet:
    """What a key set file says about one log's (`origin`) keys, each for a seq range.

    A claim, not the authority: `agentgw audit verify` takes its first key (or a pinned
    one) as the trust anchor and checks the rest against the keys the chain introduces.
    """

    origin: str
    keys: tuple[TrustedKey, ...]

    def __post_init__(self) -> None:
        try:
            check_key_name(self.origin)
        except NoteError as exc:
            raise KeyFileError(f"origin: {exc}") from None
        ids = [key.key_id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise KeyFileError("keys: a key_id appears twice")

    @classmethod
    def for_signer(cls, origin: str, signer: Signer, first_seq: int = 1) -> KeySet:
        return cls(origin, (TrustedKey(signer.key_id, signer.public_key_raw, first_seq, None),))

    def find(self, key_id: str) -> TrustedKey | None:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        return None

    def key_for_seq(self, seq: int) -> TrustedKey | None:
        """The key whose range contains `seq` (the first such in a set that overlaps)."""
        for key in self.keys:
            if key.covers(seq):
                return key
        return None

    def by_first_seq(self) -> tuple[TrustedKey, ...]:
        return tuple(sorted(self.keys, key=lambda key: key.first_seq))

    def history_problem(self) -> str | None:
        """Why the ranges are not one key history, or None.

        A history tiles the seqs from 1: sorted by first_seq, the first key starts at
        1, each later key starts right after the previous one's last_seq, and only the
        last key may be open-ended.
        """
        expected = 1
        previous: TrustedKey | None = None
        for key in self.by_first_seq():
            if previous is not None and previous.last_seq is None:
                return (
                    f"keys {previous.key_id} and {key.key_id} are both open-ended or overlap "
                    f"(ranges {previous.describe_range()} and {key.describe_range()})"
                )
            if key.first_seq < expected:
                assert previous is not None
                return (
                    f"the ranges of keys {previous.key_id} ({previous.describe_range()}) and "
                    f"{key.key_id} ({key.describe_range()}) overlap"
                )
            if key.first_seq > expected:
                after = "" if previous is None else f" after key {previous.key_id}"
                return f"no key for seq {expected}..{key.first_seq - 1}{after}"
            previous = key
            expected = 0 if key.last_seq is None else key.last_seq + 1
        if previous is None:
            return "no keys"
        return None

    def anchor(self, key_id: str | None = None) -> TrustAnchor:
        """The trust anchor this set names: key `key_id` (pinned), else its first key.

        Raises KeyHistoryError if the set is not one history (history_problem) or the
        pinned key is not in it as the key of seq 1.
        """
        problem = self.history_problem()
        if problem is not None:
            raise KeyHistoryError(f"key set: {problem}")
        first = self.by_first_seq()[0]
        if key_id is not None and key_id != first.key_id:
            pinned = self.find(key_id)
            if pinned is None:
                raise KeyHistoryError(
                    f"key set: the pinned trust anchor {key_id} is not in it "
                    f"(its key for seq 1 is {first.key_id})"
                )
            raise KeyHistoryError(
                f"key set: the pinned trust anchor {key_id} signs seq "
                f"{pinned.describe_range()}, not from seq 1 (its key for seq 1 is {first.key_id})"
            )
        return TrustAnchor(first.key_id, first.public_key_raw, self.origin)

    def checkpoint_verifier(self, size: int) -> NoteVerifier | None:
        """The key that may sign a checkpoint of `size` entries: the key for seq size + 1,
        which the gateway signs with once entry `size` is the head."""
        key = self.key_for_seq(size + 1)
        return None if key is None else NoteVerifier(self.origin, key.public_key_raw)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "keys": [
                {
                    "key_id": key.key_id,
                    "public_key": base64.b64encode(key.public_key_raw).decode("ascii"),
                    "note_verifier_key": note_verifier_key(self.origin, key.public_key_raw),
                    "first_seq": key.first_seq,
                    "last_seq": 0 if key.last_seq is None else key.last_seq,
                }
                for key in self.keys
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2) + "\n"

    @classmethod
    def from_json_dict(cls, obj: object) -> KeySet:
        if not isinstance(obj, Mapping):
            raise KeyFileError("key set: not a JSON object")
        origin = obj.get("origin")
        raw_keys = obj.get("keys")
        if not isinstance(origin, str):
            raise KeyFileError("origin: missing or not a string")
        if not isinstance(raw_keys, list):
            raise KeyFileError("keys: missing or not a list")
        try:
            check_key_name(origin)
        except NoteError as exc:
            raise KeyFileError(f"origin: {exc}") from None
        return cls(origin, tuple(_trusted_key(origin, i, item) for i, item in enumerate(raw_keys)))

    @classmethod
    def from_json(cls, text: str) -> KeySet:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"key set: not JSON: {exc}") from None
        return cls.from_json_dict(obj)

    @classmethod
    def load(cls, path: Path) -> KeySet:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{path}: cannot read: {exc}") from None
        try:
            return cls.from_json(text)
        except KeyFileError as exc:
            raise KeyFileError(f"{path}: {exc}") from None


def _trusted_key(origin: str, index: int, item: object) -> TrustedKey:
    where = f"keys[{index}]"
    if not isinstance(item, Mapping):
        raise KeyFileError(f"{where}: not a JSON object")
    key_id = _field(item, where, "key_id", str)
    public_b64 = _field(item, where, "public_key", str)
    first_seq = _field(item, where, "first_seq", int)
    last_seq = _field(item, where, "last_seq", int)
    try:
        public_key_raw = base64.b64decode(public_b64, validate=True)
    except (ValueError, binascii.Error):
        raise KeyFileError(f"{where}.public_key: not base64") from None
    if len(public_key_raw) != 32:
        raise KeyFileError(f"{where}.public_key: not 32 bytes")
    if last_seq < 0:
        raise KeyFileError(f"{where}.last_seq: must be >= 0 (0 means current)")
    verifier = item.get("note_verifier_key")
    if verifier is not None and verifier != note_verifier_key(origin, public_key_raw):
        raise KeyFileError(f"{where}.note_verifier_key: does not match origin and public_key")
    try:
        return TrustedKey(key_id, public_key_raw, first_seq, last_seq or None)
    except KeyFileError as exc:
        raise KeyFileError(f"{where}: {exc}") from None


def _field(item: Mapping[str, object], where: str, name: str, kind: type[_T]) -> _T:
    value = item.get(name)
    # bool is an int subclass; `true` is not a seq number.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KeyFileError(f"{where}.{name}: missing or not a {kind.__name__}")
    return value


@dataclass(frozen=True)
class TrustAnchor:
    """The public key an auditor trusts, out of band, to sign seq 1 of a log.

    Every later key is introduced by the chain itself (`key_rotated` entries); `origin`
    is known when the anchor came with one (a note verifier key, a key set).
    """

    key_id: str
    public_key_raw: bytes
    origin: str | None = None

    def __post_init__(self) -> None:
        if key_id_for(self.public_key_raw) != self.key_id:
            raise KeyFileError(f"trust anchor {self.key_id}: key_id does not match the public key")
        if self.origin is not None:
            try:
                check_key_name(self.origin)
            except NoteError as exc:
                raise KeyFileError(f"trust anchor origin: {exc}") from None

    @classmethod
    def of(cls, public_key_raw: bytes, origin: str | None = None) -> TrustAnchor:
        return cls(key_id_for(public_key_raw), public_key_raw, origin)

    @classmethod
    def parse(cls, text: str) -> TrustAnchor:
        """Base64 of the raw 32-byte public key, or a note verifier key (which names the
        origin too)."""
        raw = decode_public_key(text)
        if raw is not None:
            return cls.of(raw)
        try:
            verifier = parse_verifier_key(text)
        except NoteError as exc:
            raise KeyFileError(
                f"trust key: neither base64 of a 32-byte public key nor a note verifier key: {exc}"
            ) from None
        return cls.of(verifier.public_key_raw, verifier.name)


@dataclass(frozen=True)
class NextSigner:
    """The key a `key_rotated` entry introduces: it signs every entry after that one."""

    key_id: str
    public_key_raw: bytes


def next_signer_details(origin: str, public_key_raw: bytes) -> dict[str, str]:
    """`details.next_signer` of a rotation entry (no member name contains "key": the
    gateway redacts values under such names)."""
    return {
        "id": key_id_for(public_key_raw),
        "public": base64.b64encode(public_key_raw).decode("ascii"),
        "verifier": note_verifier_key(origin, public_key_raw),
    }


def read_next_signer(resource: str, next_signer: object, origin: str | None) -> NextSigner:
    """The key a key_rotated entry introduces; RotationError names the first rule broken.

    Without an origin the verifier key is checked for its key only.
    """
    if not isinstance(next_signer, Mapping) or next_signer.keys() != NEXT_SIGNER_MEMBERS:
        raise RotationError("details.next_signer must be an object of id, public and verifier")
    for member in sorted(NEXT_SIGNER_MEMBERS):
        if not isinstance(next_signer[member], str):
            raise RotationError(f"details.next_signer.{member} must be a string")
    public_key_raw = decode_public_key(next_signer["public"])
    if public_key_raw is None:
        raise RotationError("details.next_signer.public is not base64 of a 32-byte public key")
    key_id = key_id_for(public_key_raw)
    if next_signer["id"] != key_id:
        raise RotationError(
            f"details.next_signer.id {next_signer['id']!r} is not the key id of its public "
            f"key ({key_id})"
        )
    verifier = next_signer["verifier"]
    if origin is not None:
        if verifier != note_verifier_key(origin, public_key_raw):
            raise RotationError(
                f"details.next_signer.verifier is not the note verifier key of origin "
                f"{origin!r} and its public key"
            )
    else:
        try:
            named = parse_verifier_key(verifier)
        except NoteError as exc:
            raise RotationError(f"details.next_signer.verifier: {exc}") from None
        if named.public_key_raw != public_key_raw:
            raise RotationError("details.next_signer.verifier names another public key")
    if resource != SIGNER_RESOURCE_PREFIX + key_id:
        raise RotationError(f"resource must be {SIGNER_RESOURCE_PREFIX}{key_id}")
    return NextSigner(key_id, public_key_raw)


def decode_public_key(text: str) -> bytes | None:
    """The 32 bytes `text` is the canonical base64 of, or None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw

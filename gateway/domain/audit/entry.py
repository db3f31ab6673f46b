"""Audit entries: the record format, its canonical bytes, hashes and signature.

Owns the v1 entry (`docs/audit-format.md`): field names and types, timestamps,
the genesis hash, building and signing an entry from a draft, and strict parsing of
an entry read back from an export. It neither stores entries nor checks how an
entry links to its neighbours (see `verify.py`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.domain.audit.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    CanonicalError,
    canonical_json,
)
from gateway.domain.audit.errors import FormatError
from gateway.domain.audit.events import ActorType
from gateway.domain.audit.keys import Signer
from gateway.domain.audit.merkle import leaf_hash_of

ENTRY_HASH_PREFIX: Final = b"agentgw/audit/v1/entry\x00"
SIGNATURE_PREFIX: Final = b"agentgw/audit/v1/signature\x00"
GENESIS_HASH: Final = hashlib.sha256(b"agentgw/audit/v1/genesis").hexdigest()
ACTOR_TYPES: Final = frozenset(actor.value for actor in ActorType)

STRING_FIELDS: Final = (
    "timestamp",
    "event_type",
    "actor",
    "actor_type",
    "action_id",
    "action_type",
    "resource",
    "outcome",
)
# Every key of an entry object, in the order the dataclass lists them.
ENTRY_KEYS: Final = frozenset(
    {"seq", *STRING_FIELDS, "details", "prev_hash", "key_id", "entry_hash", "signature"}
)
_HEX_LENGTHS: Final = {"prev_hash": 64, "key_id": 16, "entry_hash": 64, "signature": 128}
_LOWER_HEX: Final = re.compile(r"[0-9a-f]*")
_FULL_ORDER: Final = tuple(sorted(ENTRY_KEYS))
_UNSIGNED_ORDER: Final = tuple(k for k in _FULL_ORDER if k not in ("entry_hash", "signature"))
_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class EntryFormatError(FormatError):
    """An entry breaks the v1 format; `key` names the offending JSON key."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key
        self.why = why


# The most bytes an entry's C may have: a sealed tile's entry bundle prefixes each
# entry with its length as a uint16 (C2SP tlog-tiles; audit-format.md §3).
MAX_ENTRY_BYTES: Final = 0xFFFF


class EntryTooLarge(EntryFormatError):
    """An entry whose C would be longer than MAX_ENTRY_BYTES."""

    def __init__(self, size: int) -> None:
        super().__init__(
            "$", f"the entry would be {size} bytes; an audit entry is at most {MAX_ENTRY_BYTES}"
        )
        self.size = size


def format_timestamp(unix_seconds: float) -> str:
    """RFC 3339 UTC with exactly six fractional digits, e.g. 2026-11-25T05:55:27.123456Z."""
    try:
        moment = _EPOCH + timedelta(microseconds=round(unix_seconds * 1_000_000))
    except (OverflowError, ValueError):
        raise EntryFormatError(
            "timestamp", f"{unix_seconds!r} is outside years 1970-9999"
        ) from None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


def parse_timestamp(text: str) -> float:
    """Inverse of format_timestamp; raises EntryFormatError("timestamp", ...)."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise EntryFormatError("timestamp", f"{text!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    year, month, day, hour, minute, second, micro = (int(g) for g in match.groups())
    try:
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError as exc:
        raise EntryFormatError("timestamp", f"{text!r}: {exc}") from None
    return (moment - _EPOCH) // timedelta(microseconds=1) / 1_000_000


@dataclass(frozen=True)
class EntryDraft:
    """What the appender knows about an event before it has a place in the chain."""

    timestamp: str
    event_type: str
    actor: str
    actor_type: str
    action_id: str
    action_type: str
    resource: str
    details: Mapping[str, Any]
    outcome: str

    @classmethod
    def of_no_action(
        cls,
        now: float,
        event_type: str,
        actor: str,
        actor_type: str,
        details: Mapping[str, Any],
        outcome: str,
    ) -> EntryDraft:
        """An entry about something other than one action (a session resumed, an agent
        quarantined, an alert acknowledged, calls refused): no action fields."""
        return cls(
            timestamp=format_timestamp(now),
            event_type=event_type,
            actor=actor,
            actor_type=actor_type,
            action_id="",
            action_type="",
            resource="",
            details=details,
            outcome=outcome,
        )


@dataclass(frozen=True)
class AuditEntry:
    """One signed link of the chain, exactly as it appears in an export line."""

    seq: int
    timestamp: str
    event_type: str
    actor: str
    actor_type: str
    action_id: str
    action_type: str
    resource: str
    details: Mapping[str, Any]
    outcome: str
    prev_hash: str
    key_id: str
    entry_hash: str
    signature: str

    @property
    def leaf_index(self) -> int:
        return self.seq - 1

    def unsigned_dict(self) -> dict[str, Any]:
        """The object whose JCS bytes are hashed: every key but entry_hash and signature."""
        return {
            "seq": self.seq,
            "timestamp": self.timestamp,
            "event_type": self.event_type,
            "actor": self.actor,
            "actor_type": self.actor_type,
            "action_id": self.action_id,
            "action_type": self.action_type,
            "resource": self.resource,
            "details": self.details,
            "outcome": self.outcome,
            "prev_hash": self.prev_hash,
            "key_id": self.key_id,
        }

    def to_json_dict(self) -> dict[str, Any]:
        return {**self.unsigned_dict(), "entry_hash": self.entry_hash, "signature": self.signature}

    def to_json_line(self) -> str:
        """The export line: JCS of the full entry, without a trailing newline."""
        return self.forms[1]

    @functools.cached_property
    def forms(self) -> tuple[bytes, str]:
        """(C, export line), computed once per entry; see canonical_forms."""
        return _assemble(_encoded_fields(self))

    @classmethod
    def from_json_dict(cls, obj: object) -> AuditEntry:
        """Parse and type-check one entry object; raises EntryFormatError naming the key."""
        entry = _entry_from_mapping(obj)
        _check_details(entry)
        return entry

    @classmethod
    def from_json_line(cls, line: str) -> AuditEntry:
        """One stored or exported line; ValueError (EntryFormatError, or not JSON).

        It does not check that the line is canonical nor verify it (see verify.py).
        """
        return cls.from_json_dict(json.loads(line))


def _entry_from_mapping(obj: object) -> AuditEntry:
    """Every check of from_json_dict except encoding details, which callers that
    canonicalize the entry anyway get for free."""
    if not isinstance(obj, Mapping):
        raise EntryFormatError("$", "an entry is a JSON object")
    missing = sorted(ENTRY_KEYS - obj.keys())
    if missing:
        raise EntryFormatError(missing[0], "missing")
    unexpected = sorted(str(k) for k in obj.keys() - ENTRY_KEYS)
    if unexpected:
        raise EntryFormatError(unexpected[0], "unexpected key")
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SAFE_INTEGER:
        raise EntryFormatError("seq", "must be an integer from 1 to 2**53")
    for key in STRING_FIELDS:
        if not isinstance(obj[key], str):
            raise EntryFormatError(key, "must be a string")
    for key, length in _HEX_LENGTHS.items():
        _check_hex(key, obj[key], length)
    details = obj["details"]
    if not isinstance(details, Mapping):
        raise EntryFormatError("details", "must be a JSON object")
    entry = AuditEntry(
        seq=seq,
        details=details,
        **{key: obj[key] for key in (*STRING_FIELDS, *_HEX_LENGTHS)},
    )
    _check_values(entry)
    return entry


def canonical_bytes(entry: AuditEntry) -> bytes:
    """JCS of the entry without entry_hash and signature: the hashed bytes C."""
    return canonical_forms(entry)[0]


def canonical_forms(entry: AuditEntry) -> tuple[bytes, str]:
    """(C, export line), encoding `details` once; EntryFormatError names a bad value.

    Equal to canonical_json of unsigned_dict() and of to_json_dict(): the top-level
    keys are fixed ASCII names, so their RFC 8785 order is the constant _FULL_ORDER and
    only the values need encoding. Verifying an export spends most of its time here.
    """
    return entry.forms


def _encoded_fields(entry: AuditEntry) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, value in entry.to_json_dict().items():
        try:
            fields[key] = str(value) if key == "seq" else canonical_json(value).decode("utf-8")
        except CanonicalError as exc:
            raise EntryFormatError(key, str(exc)) from None
    return fields


def _assemble(fields: Mapping[str, str]) -> tuple[bytes, str]:
    unsigned = ",".join(f'"{key}":{fields[key]}' for key in _UNSIGNED_ORDER)
    full = ",".join(f'"{key}":{fields[key]}' for key in _FULL_ORDER)
    return f"{{{unsigned}}}".encode(), f"{{{full}}}"


def read_export_object(obj: object, line: str) -> tuple[AuditEntry, bytes]:
    """The entry parsed from export line `line` (as `obj`), and its canonical bytes C.

    Raises EntryFormatError unless `obj` is a valid entry and `line` is exactly its
    canonical form.
    """
    entry = _entry_from_mapping(obj)
    canonical, expected_line = canonical_forms(entry)
    if expected_line != line:
        raise EntryFormatError("$", "line is not the RFC 8785 form of its entry")
    return entry, canonical


class SignedLine(NamedTuple):
    """What verifying a sound export line needs from it; see read_signed_line."""

    seq: int
    prev_hash: str
    key_id: str
    entry_hash: str
    signature: str
    canonical: bytes  # C, the bytes entry_hash covers


class _Unsure(Exception):
    """read_signed_line does not judge this line; read_export_object does."""


def _float_written_as_read(text: str) -> float:
    # The C encoder writes repr(value): RFC 8785's form unless the value is integral
    # (RFC 8785 writes 1.0 as 1) or repr uses an exponent (1e-07, where RFC 8785 has 1e-7).
    value = float(text)
    if "e" in text or "E" in text or value.is_integer():
        raise _Unsure
    return value


def _safe_integer(text: str) -> int:
    value = int(text)
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return value
    raise _Unsure


def _no_constant(name: str) -> float:
    raise _Unsure


_LINE_DECODER: Final = json.JSONDecoder(
    parse_float=_float_written_as_read, parse_int=_safe_integer, parse_constant=_no_constant
)
# Decoded JSON has no cycles, so the encoder need not look for them.
_LINE_ENCODER: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
)
# UTF-8 lead bytes of the characters beyond U+FFFF, whose keys sort differently by
# UTF-16 code units (RFC 8785) than by code points (the stdlib encoder).
_BEYOND_BMP_LEADS: Final = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")
_ENTRY_HASH_MEMBER: Final = len(b'"entry_hash":"",') + 64
_SIGNATURE_MEMBER: Final = len(b'"signature":"",') + 128
_HEX_TOTAL: Final = sum(_HEX_LENGTHS.values())
_TIME_OF_DAY: Final = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z"
)


@functools.lru_cache(maxsize=256)
def is_a_date(text: str) -> bool:
    try:
        parse_timestamp(f"{text}T00:00:00.000000Z")
    except EntryFormatError:
        return False
    return True


def read_signed_line(line: str) -> SignedLine | None:
    """The fields of an export line (without its LF) that read_export_object accepts, or None.

    A shortcut for verifying many lines: one C decode, one C encode and a comparison,
    instead of building an AuditEntry and encoding it field by field. It answers only
    for values whose stdlib encoding is their RFC 8785 encoding; None means "not
    judged here": read_export_object then names the problem, or accepts a line with
    exponents, integral floats, integers beyond 2**53, characters beyond U+FFFF or deep
    nesting. A property test holds the two equal.
    """
    try:
        data = line.encode("utf-8")  # a lone surrogate cannot be hashed: not judged here
    except UnicodeEncodeError:
        return None
    if not line.isascii():
        for lead in _BEYOND_BMP_LEADS:
            if lead in data:
                return None
    if line.count("{") + line.count("[") > MAX_DEPTH:
        return None
    try:
        obj, end = _LINE_DECODER.raw_decode(line)
        # The line is its object's stdlib encoding, which with the guards above and in
        # the decoder's number hooks is its RFC 8785 encoding: the line is canonical.
        if end != len(line) or type(obj) is not dict or _LINE_ENCODER.encode(obj) != line:
            return None
    except (_Unsure, ValueError, RecursionError):
        return None
    if obj.keys() != ENTRY_KEYS or type(obj["details"]) is not dict:
        return None
    seq, prev_hash, key_id = obj["seq"], obj["prev_hash"], obj["key_id"]
    entry_hash, signature = obj["entry_hash"], obj["signature"]
    if type(seq) is not int or seq < 1:
        return None
    for key in STRING_FIELDS:
        if type(obj[key]) is not str:
            return None
    if obj["actor_type"] not in ACTOR_TYPES:
        return None
    try:
        hexes = prev_hash + key_id + entry_hash + signature
    except TypeError:
        return None
    if (
        len(hexes) != _HEX_TOTAL
        or (len(prev_hash), len(key_id), len(entry_hash)) != (64, 16, 64)
        or not _LOWER_HEX.fullmatch(hexes)
    ):
        return None
    moment = _TIME_OF_DAY.fullmatch(obj["timestamp"])
    if moment is None or not is_a_date(moment.group(1)):
        return None
    # C is the line without the two members it does not cover. Both follow "details",
    # the only nested value, and a comma before a quote cannot occur inside a
    # canonical string, so the last match of each is the top-level member.
    cut = data.rfind(b',"entry_hash":"') + 1
    unsigned = data[:cut] + data[cut + _ENTRY_HASH_MEMBER :]
    cut = unsigned.rfind(b',"signature":"') + 1
    unsigned = unsigned[:cut] + unsigned[cut + _SIGNATURE_MEMBER :]
    return SignedLine(seq, prev_hash, key_id, entry_hash, signature, unsigned)


def entry_hash_of(canonical: bytes) -> str:
    """hex(SHA-256("agentgw/audit/v1/entry" 0x00 || C))."""
    return hashlib.sha256(ENTRY_HASH_PREFIX + canonical).hexdigest()


def signed_message(entry_hash: str) -> bytes:
    """The bytes Ed25519 signs: "agentgw/audit/v1/signature" 0x00 || raw entry hash."""
    return SIGNATURE_PREFIX + bytes.fromhex(entry_hash)


def leaf_hash(entry: AuditEntry) -> bytes:
    """The RFC 6962 leaf hash SHA-256(0x00 || C) of the entry at index seq - 1."""
    return leaf_hash_of(canonical_bytes(entry))


@functools.lru_cache(maxsize=64)
def _public_key(public_key_raw: bytes) -> Ed25519PublicKey:
    # Parsing the key costs about as much as a verification; a log has few keys.
    return Ed25519PublicKey.from_public_bytes(public_key_raw)


def signature_is_valid(entry: AuditEntry, public_key_raw: bytes) -> bool:
    """Does entry.signature verify over entry.entry_hash under this public key?"""
    return signature_verifies(entry.signature, entry.entry_hash, public_key_raw)


def signature_verifies(signature: str, entry_hash: str, public_key_raw: bytes) -> bool:
    """Does the hex `signature` verify over the hex `entry_hash` under this public key?"""
    try:
        _public_key(public_key_raw).verify(bytes.fromhex(signature), signed_message(entry_hash))
    except InvalidSignature:
        return False
    return True


def build_entry(draft: EntryDraft, seq: int, prev_hash: str, signer: Signer) -> AuditEntry:
    """Place `draft` at `seq` after the entry whose hash is `prev_hash`, and sign it."""
    unsigned = AuditEntry(
        seq=seq,
        timestamp=draft.timestamp,
        event_type=str(draft.event_type),  # an EventType is stored as its plain name
        actor=draft.actor,
        actor_type=str(draft.actor_type),
        action_id=draft.action_id,
        action_type=draft.action_type,
        resource=draft.resource,
        details=draft.details,
        outcome=draft.outcome,
        prev_hash=prev_hash,
        key_id=signer.key_id,
        entry_hash="0" * 64,
        signature="0" * 128,
    )
    if not 1 <= seq <= MAX_SAFE_INTEGER:
        raise EntryFormatError("seq", "must be an integer from 1 to 2**53")
    _check_hex("prev_hash", prev_hash, 64)
    _check_values(unsigned)
    # Encode every field once: C for the hash, then the export line from the same text.
    fields = _encoded_fields(unsigned)
    canonical = _assemble(fields)[0]
    if len(canonical) > MAX_ENTRY_BYTES:
        raise EntryTooLarge(len(canonical))
    entry_hash = entry_hash_of(canonical)
    signature = signer.sign(signed_message(entry_hash)).hex()
    fields["entry_hash"] = f'"{entry_hash}"'
    fields["signature"] = f'"{signature}"'
    entry = replace(unsigned, entry_hash=entry_hash, signature=signature)
    entry.__dict__["forms"] = (canonical, _assemble(fields)[1])
    return entry


def _check_hex(key: str, value: object, length: int) -> None:
    if not (isinstance(value, str) and len(value) == length and _LOWER_HEX.fullmatch(value)):
        raise EntryFormatError(key, f"must be {length} lowercase hex digits")


def _check_values(entry: AuditEntry) -> None:
    parse_timestamp(entry.timestamp)
    if entry.actor_type not in ACTOR_TYPES:
        raise EntryFormatError("actor_type", f"{entry.actor_type!r} is not agent, user or system")


def _check_details(entry: AuditEntry) -> None:
    try:
        canonical_json(entry.details)
    except CanonicalError as exc:
        # The path in the message is relative to details, written "$".
        raise EntryFormatError("details", str(exc)) from None

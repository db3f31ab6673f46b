"""The verifier's compiled shortcut for reading an export line, held to the strict reader.

Owns `read_signed_bytes`: the fields of an export line (its UTF-8 bytes, without the
LF) that `entry.read_export_object` accepts, or None for "not judged here", in which
case the caller reads the line with the strict reader, which accepts it or names its
problem. It never judges a line bad, so it cannot make verification stricter; it
accepts a line only when compiled code has shown it to be the RFC 8785 form of its
object (`canonical.compiled_object`) and the object an entry, so it cannot make
verification laxer. Without msgspec and orjson installed it declines every line.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.domain.audit.canonical import compiled_object
from gateway.domain.audit.entry import (
    ACTOR_TYPES,
    ENTRY_KEYS,
    SignedLine,
    is_a_date,
)

_LOWER_HEX_DIGITS: Final = b"0123456789abcdef"
# prev_hash, key_id, entry_hash and signature, each all lowercase hex.
_HEX_TOTAL: Final = 64 + 16 + 64 + 128
_ENTRY_KEY_COUNT: Final = len(ENTRY_KEYS)
# YYYY-MM-DD (a real date: is_a_date), then a time of day; 27 characters.
_TIME_OF_DAY: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z"
)
# The two members C leaves out, each with the comma after it. The signature is the
# last member but the timestamp, whose value has a fixed length.
_ENTRY_HASH_MEMBER: Final = b',"entry_hash":"'
_ENTRY_HASH_LENGTH: Final = len(b'"entry_hash":"",') + 64
_SIGNATURE_LENGTH: Final = len(b'"signature":"",') + 128
_SIGNATURE_FROM_END: Final = _SIGNATURE_LENGTH + len(b'"timestamp":""}') + 27


def read_signed_bytes(data: bytes) -> SignedLine | None:
    """What read_export_object makes of this line, as a SignedLine, or None: not judged.

    The same checks as `entry.read_signed_line`, on bytes and in compiled code where
    it can: the line must be the RFC 8785 encoding of a JSON object with exactly the
    entry's keys, each of the type and form docs/audit-format.md §1 gives. A property
    test holds it equal to the strict reader on generated and mutated lines.
    """
    obj = compiled_object(data)  # data is canonical: only the entry's rules are left
    if obj is None or len(obj) != _ENTRY_KEY_COUNT:
        return None
    try:
        # Looking up every key of an object with as many keys: exactly the entry's keys.
        details, seq, timestamp, actor_type = (
            obj["details"],
            obj["seq"],
            obj["timestamp"],
            obj["actor_type"],
        )
        prev_hash, key_id = obj["prev_hash"], obj["key_id"]
        entry_hash, signature = obj["entry_hash"], obj["signature"]
        # join raises TypeError unless every field is a string.
        "".join(
            (
                obj["event_type"],
                obj["actor"],
                obj["action_id"],
                obj["action_type"],
                obj["resource"],
                obj["outcome"],
                timestamp,
                actor_type,
            )
        )
        hexes = "".join((prev_hash, key_id, entry_hash, signature)).encode()
    except (KeyError, TypeError, UnicodeEncodeError):
        return None
    if (
        type(details) is not dict
        or type(seq) is not int
        or seq < 1  # and at most 2**53 - 1, or compiled_canonical declines
        or actor_type not in ACTOR_TYPES
        or len(hexes) != _HEX_TOTAL
        or (len(prev_hash), len(key_id), len(entry_hash)) != (64, 16, 64)
        or hexes.translate(None, _LOWER_HEX_DIGITS)
        or _TIME_OF_DAY.fullmatch(timestamp) is None
        or not is_a_date(timestamp[:10])
    ):
        return None
    # C is the line without the two members it does not cover. Both follow "details",
    # the only nested value, and a comma before a quote cannot occur inside a
    # canonical string, so the last match before the signature is the top-level
    # entry_hash member.
    sign = len(data) - _SIGNATURE_FROM_END
    cut = data.rfind(_ENTRY_HASH_MEMBER, 0, sign) + 1
    unsigned = b"".join(
        (data[:cut], data[cut + _ENTRY_HASH_LENGTH : sign], data[sign + _SIGNATURE_LENGTH :])
    )
    return SignedLine(seq, prev_hash, key_id, entry_hash, signature, unsigned)

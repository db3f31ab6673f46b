"""Audit entries: building, hashing, signing, timestamps and strict parsing."""

from __future__ import annotations

import functools
import hashlib
import json
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.audit.canonical import canonical_json
from gateway.domain.audit.entry import (
    GENESIS_HASH,
    AuditEntry,
    EntryFormatError,
    SignedLine,
    build_entry,
    canonical_bytes,
    canonical_forms,
    format_timestamp,
    leaf_hash,
    parse_timestamp,
    read_export_object,
    read_signed_line,
    signature_is_valid,
)
from gateway.domain.audit.keys import Signer
from tests.audit_drafts import sample_draft as draft

SIGNER = Signer.from_seed(bytes(range(32)))


def test_genesis_hash_is_sha256_of_the_genesis_label() -> None:
    assert hashlib.sha256(b"agentgw/audit/v1/genesis").hexdigest() == GENESIS_HASH


def test_built_entry_hashes_and_signs_exactly_the_documented_bytes() -> None:
    entry = build_entry(draft(), 1, GENESIS_HASH, SIGNER)
    unsigned = {
        k: v for k, v in entry.to_json_dict().items() if k not in ("entry_hash", "signature")
    }
    c = canonical_json(unsigned)
    assert canonical_bytes(entry) == c
    assert entry.entry_hash == hashlib.sha256(b"agentgw/audit/v1/entry\x00" + c).hexdigest()
    assert leaf_hash(entry) == hashlib.sha256(b"\x00" + c).digest()
    public = Ed25519PublicKey.from_public_bytes(SIGNER.public_key_raw)
    public.verify(
        bytes.fromhex(entry.signature),
        b"agentgw/audit/v1/signature\x00" + bytes.fromhex(entry.entry_hash),
    )
    assert entry.key_id == SIGNER.key_id
    assert entry.prev_hash == GENESIS_HASH
    assert signature_is_valid(entry, SIGNER.public_key_raw)


def test_canonical_bytes_leave_out_entry_hash_and_signature() -> None:
    entry = build_entry(draft(), 3, "ab" * 32, SIGNER)
    keys = json.loads(canonical_bytes(entry)).keys()
    assert "entry_hash" not in keys and "signature" not in keys
    assert "prev_hash" in keys and "key_id" in keys


def test_export_line_is_jcs_of_the_full_entry_and_parses_back_to_an_equal_entry() -> None:
    entry = build_entry(draft(), 2, "cd" * 32, SIGNER)
    line = entry.to_json_line()
    assert "\n" not in line and " " not in line.replace("agent-7", "")
    assert line.encode() == canonical_json(entry.to_json_dict())
    assert AuditEntry.from_json_dict(json.loads(line)) == entry


def test_building_does_not_mutate_details_and_accepts_read_only_mappings() -> None:
    details = {"z": [1, 2], "a": {"k": "v"}}
    snapshot = json.dumps(details)
    entry = build_entry(draft(details=MappingProxyType(details)), 1, GENESIS_HASH, SIGNER)
    assert json.dumps(details) == snapshot
    assert entry.details["z"] == [1, 2]


def test_signature_from_another_key_is_invalid() -> None:
    entry = build_entry(draft(), 1, GENESIS_HASH, SIGNER)
    assert not signature_is_valid(entry, Signer.from_seed(bytes(32)).public_key_raw)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"actor_type": "robot"}, "actor_type"),
        ({"timestamp": "2026-11-25T05:55:27Z"}, "timestamp"),
        ({"details": {"x": float("nan")}}, "details"),
        ({"details": {"x": {1, 2}}}, "details"),
    ],
)
def test_build_entry_refuses_values_outside_the_format(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(EntryFormatError) as caught:
        build_entry(draft(**changes), 1, GENESIS_HASH, SIGNER)
    assert caught.value.key == key


def test_build_entry_refuses_a_bad_seq_or_prev_hash() -> None:
    with pytest.raises(EntryFormatError, match="seq"):
        build_entry(draft(), 0, GENESIS_HASH, SIGNER)
    with pytest.raises(EntryFormatError, match="prev_hash"):
        build_entry(draft(), 1, GENESIS_HASH.upper(), SIGNER)


def good_object() -> dict[str, Any]:
    return build_entry(draft(), 5, GENESIS_HASH, SIGNER).to_json_dict()


@pytest.mark.parametrize(
    ("mutate", "key", "why"),
    [
        (lambda o: o.pop("outcome"), "outcome", "missing"),
        (lambda o: o.update(extra=1), "extra", "unexpected key"),
        (lambda o: o.update(seq=True), "seq", "integer"),
        (lambda o: o.update(seq=0), "seq", "integer"),
        (lambda o: o.update(seq=1.0), "seq", "integer"),
        (lambda o: o.update(actor=None), "actor", "string"),
        (lambda o: o.update(prev_hash=o["prev_hash"].upper()), "prev_hash", "lowercase hex"),
        (lambda o: o.update(key_id="abc"), "key_id", "16 lowercase hex"),
        (lambda o: o.update(entry_hash="g" * 64), "entry_hash", "64 lowercase hex"),
        (lambda o: o.update(signature="00"), "signature", "128 lowercase hex"),
        (lambda o: o.update(details=[1]), "details", "JSON object"),
        (lambda o: o.update(details={"n": 2**60 + 1}), "details", "IEEE double"),
        (lambda o: o.update(actor_type="root"), "actor_type", "agent, user or system"),
        (lambda o: o.update(timestamp="2026-02-30T00:00:00.000000Z"), "timestamp", "day"),
    ],
)
def test_from_json_dict_names_the_bad_key(mutate: Any, key: str, why: str) -> None:
    obj = good_object()
    mutate(obj)
    with pytest.raises(EntryFormatError, match=why) as caught:
        AuditEntry.from_json_dict(obj)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_from_json_dict_refuses_a_non_object() -> None:
    with pytest.raises(EntryFormatError, match="JSON object"):
        AuditEntry.from_json_dict([1, 2])


def test_entry_format_error_is_a_value_error() -> None:
    assert issubclass(EntryFormatError, ValueError)


def test_format_timestamp_has_six_fraction_digits_and_z() -> None:
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert format_timestamp(1795586127.123456) == "2026-11-25T05:55:27.123456Z"
    assert format_timestamp(1.5) == "1970-01-01T00:00:01.500000Z"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-25T05:55:27Z",
        "2026-11-25T05:55:27.12345Z",
        "2026-11-25T05:55:27.1234567Z",
        "2026-11-25T05:55:27.123456+00:00",
        "2026-11-25 05:55:27.123456Z",
        "2026-11-25t05:55:27.123456z",
        "2026-11-25T24:00:00.000000Z",
        "2026-11-25T23:59:60.000000Z",
        "\uff12026-11-25T05:55:27.123456Z",  # a fullwidth digit two
    ],
)
def test_parse_timestamp_refuses_other_spellings(text: str) -> None:
    with pytest.raises(EntryFormatError):
        parse_timestamp(text)


# Up to 2100: a float of unix seconds keeps microseconds exactly that far.
@given(st.integers(min_value=0, max_value=4102444800_000000))
def test_timestamps_round_trip_at_microsecond_precision(micros: int) -> None:
    text = format_timestamp(micros / 1_000_000)
    assert format_timestamp(parse_timestamp(text)) == text
    assert abs(parse_timestamp(text) * 1_000_000 - micros) <= 1


def test_format_timestamp_refuses_times_beyond_year_9999() -> None:
    with pytest.raises(EntryFormatError, match="timestamp"):
        format_timestamp(1e12)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_objects = st.dictionaries(
    st.text(),
    st.recursive(
        json_scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
        max_leaves=15,
    ),
    max_size=6,
)


@given(json_objects, st.text(), st.text(), st.integers(1, 2**53))
def test_canonical_forms_equal_jcs_of_the_entry_objects(
    details: dict[str, Any], actor: str, resource: str, seq: int
) -> None:
    # canonical_forms lays out the fixed top-level keys itself; it must agree with JCS.
    entry = build_entry(
        draft(details=details, actor=actor, resource=resource), seq, "ab" * 32, SIGNER
    )
    unsigned, line = canonical_forms(entry)
    assert unsigned == canonical_json(entry.unsigned_dict())
    assert line.encode() == canonical_json(entry.to_json_dict())
    # A parser may return 1.0 as 1 or a large double as an int: equal bytes, not objects.
    parsed, parsed_unsigned = read_export_object(json.loads(line), line)
    assert parsed_unsigned == unsigned
    assert parsed.to_json_line() == line


def test_read_export_object_refuses_a_line_that_is_not_canonical() -> None:
    entry = build_entry(draft(), 1, GENESIS_HASH, SIGNER)
    spaced = json.dumps(entry.to_json_dict())
    with pytest.raises(EntryFormatError, match="not the RFC 8785 form") as caught:
        read_export_object(json.loads(spaced), spaced)
    assert caught.value.key == "$"


def test_a_lone_surrogate_is_reported_under_its_own_key() -> None:
    with pytest.raises(EntryFormatError) as caught:
        build_entry(draft(actor="\ud800"), 1, GENESIS_HASH, SIGNER)
    assert caught.value.key == "actor"


# --- read_signed_line: the verifier's shortcut must agree with read_export_object ------


def exact_reading(line: str) -> SignedLine | None:
    """What read_export_object makes of a line, as a SignedLine; None if it refuses it."""
    try:
        entry, canonical = read_export_object(json.loads(line), line)
    except (ValueError, RecursionError):  # EntryFormatError and JSONDecodeError included
        return None
    return SignedLine(
        entry.seq, entry.prev_hash, entry.key_id, entry.entry_hash, entry.signature, canonical
    )


def assert_shortcut_agrees(line: str) -> SignedLine | None:
    fast = read_signed_line(line)
    exact = exact_reading(line)
    # The shortcut may decline a line (None) but never differ from the exact reading.
    assert fast is None or fast == exact, line
    return fast


@given(json_objects, st.text(), st.integers(1, 2**53))
def test_read_signed_line_agrees_with_read_export_object(
    details: dict[str, Any], actor: str, seq: int
) -> None:
    entry = build_entry(draft(details=details, actor=actor), seq, "ab" * 32, SIGNER)
    assert_shortcut_agrees(entry.to_json_line())


MUTATIONS = st.sampled_from(
    [*'0123456789.eE+-"\\{}[],: atfn', "\u00e9", "\u2615", "\ue000", "\U0001f600", "\ud800"]
)


@given(json_objects, st.data())
def test_read_signed_line_agrees_on_mutated_lines(details: dict[str, Any], data: Any) -> None:
    line = build_entry(draft(details=details), 7, "cd" * 32, SIGNER).to_json_line()
    position = data.draw(st.integers(0, len(line) - 1), label="position")
    replacement = data.draw(MUTATIONS, label="replacement")
    insert = data.draw(st.booleans(), label="insert")
    end = position if insert else position + 1
    assert_shortcut_agrees(line[:position] + replacement + line[end:])


def test_read_signed_line_takes_the_gateway_lines_and_declines_what_it_cannot_judge() -> None:
    line = build_entry(draft(), 1, GENESIS_HASH, SIGNER).to_json_line()
    assert assert_shortcut_agrees(line) is not None
    with_unicode = build_entry(draft(resource="caf\u00e9 \u2615"), 1, GENESIS_HASH, SIGNER)
    assert assert_shortcut_agrees(with_unicode.to_json_line()) is not None
    # Accepted by the exact reading, but not judged by the shortcut.
    for details in (
        {"tiny": 1e-7},
        {"big": 1e21},
        {"max_int": 2**53 + 2},
        {"\U0001f600": 1, "\ue000": 2},
        {"many_brackets": [functools.reduce(lambda inner, _: [inner], range(40), [])] * 9},
    ):
        line = build_entry(draft(details=details), 1, GENESIS_HASH, SIGNER).to_json_line()
        assert read_signed_line(line) is None
        assert exact_reading(line) is not None
    # Refused by both.
    assert read_signed_line(line.replace('"seq":1', '"seq":1.0')) is None
    lone = build_entry(draft(), 1, GENESIS_HASH, SIGNER).to_json_line().replace("agent-7", "\udc80")
    assert assert_shortcut_agrees(lone) is None

"""The verifier's compiled line reader must agree with the strict reader on every line.

`read_signed_bytes` may decline a line (None: the strict reader then judges it) but
never accept one the strict reader refuses, nor read one it accepts otherwise.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.audit.canonical import COMPILED
from gateway.domain.audit.entry import (
    GENESIS_HASH,
    SignedLine,
    build_entry,
    read_export_object,
)
from gateway.domain.audit.keys import KeySet, Signer
from gateway.domain.audit.line_reader import read_signed_bytes
from gateway.domain.audit.verify import FailureKind, verify_export
from tests.audit_drafts import sample_draft as draft

pytestmark = pytest.mark.skipif(not COMPILED, reason="msgspec and orjson are not installed")

SIGNER = Signer.from_seed(b"\x09" * 32)
KEYS = KeySet.for_signer("agentgw.example/audit", SIGNER)


def strict_reading(data: bytes) -> SignedLine | None:
    """What the verifier's strict path makes of a line: its fields, or None if refused."""
    text = data.decode("utf-8", "surrogateescape")
    try:
        entry, canonical = read_export_object(json.loads(text), text)
    except (ValueError, RecursionError):  # EntryFormatError and JSONDecodeError included
        return None
    return SignedLine(
        entry.seq, entry.prev_hash, entry.key_id, entry.entry_hash, entry.signature, canonical
    )


def assert_agrees(data: bytes) -> SignedLine | None:
    fast = read_signed_bytes(data)
    assert fast is None or fast == strict_reading(data), data
    return fast


texts = st.text(st.characters(codec="utf-8"), max_size=10) | st.sampled_from(
    ["\ue000", "\U0001f600", "\x00\x1f\x7f", '"\\/', "\u2028", "\ufeff", ',"entry_hash":"']
)
numbers = (
    st.integers(-(2**60), 2**60)
    | st.sampled_from([2**53, 2**53 + 1, -(2**53)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e-7, 1e21, 0.1, -0.0, 1.0, 5e-324])
)
details = st.dictionaries(
    texts,
    st.recursive(
        st.none() | st.booleans() | numbers | texts,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
        max_leaves=15,
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(details, texts, texts, st.integers(1, 2**53))
def test_built_lines_are_read_as_the_strict_reader_reads_them(
    values: dict[str, Any], actor: str, resource: str, seq: int
) -> None:
    try:
        entry = build_entry(
            draft(details=values, actor=actor, resource=resource), seq, "ab" * 32, SIGNER
        )
    except ValueError:  # a value the format refuses (a lone surrogate, a big int)
        return
    assert_agrees(entry.to_json_line().encode())


MUTATIONS = st.sampled_from(
    [
        *'0123456789.eE+-"\\{}[],: \t\r\natfnu',
        "\\u0000",
        "\\u00e9",
        "\u00e9",
        "\ue000",
        "\U0001f600",
        "\ud800",
        ".0",
        "e0",
        "1e-7",
        "9007199254740993",
        '"seq":2,',
        '"x":1,',
        "A",
        "00",
    ]
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(details, st.data())
def test_mutated_lines_are_never_read_otherwise(
    values: dict[str, Any], data: st.DataObject
) -> None:
    try:
        line = build_entry(draft(details=values), 7, "cd" * 32, SIGNER).to_json_line()
    except ValueError:
        return
    position = data.draw(st.integers(0, len(line)), label="position")
    replacement = data.draw(MUTATIONS, label="replacement")
    end = position + data.draw(st.integers(0, 3), label="replaced")
    mutated = line[:position] + replacement + line[end:]
    assert_agrees(mutated.encode("utf-8", "surrogatepass"))


def test_each_field_rule_is_kept() -> None:
    good = build_entry(draft(), 1, GENESIS_HASH, SIGNER)
    assert assert_agrees(good.to_json_line().encode()) is not None
    refused = {
        "actor_type": "robot",
        "timestamp": "2026-02-30T05:55:27.123456Z",
        "outcome": 3,
        "details": [1],
        "seq": 0,
        "key_id": good.key_id.upper(),
        "prev_hash": "ab" * 31,
        "signature": "z" * 128,
    }
    for key, value in refused.items():
        obj = {**good.to_json_dict(), key: value}
        line = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert read_signed_bytes(line.encode()) is None, key
        assert strict_reading(line.encode()) is None, key
    missing = {k: v for k, v in good.to_json_dict().items() if k != "outcome"}
    extra = {**good.to_json_dict(), "zzz": ""}
    for obj in (missing, extra):
        line = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert read_signed_bytes(line.encode()) is None


def test_a_line_that_is_json_but_not_canonical_is_still_refused_as_before() -> None:
    entries = []
    prev = GENESIS_HASH
    for seq in (1, 2, 3):
        entries.append(build_entry(draft(details={"amount": seq + 0.5}), seq, prev, SIGNER))
        prev = entries[-1].entry_hash
    lines = [entry.to_json_line() for entry in entries]
    # The same entry, re-encoded: every value equal, but not byte for byte canonical.
    for spaced in (
        json.dumps(entries[1].to_json_dict(), sort_keys=True),
        json.dumps(entries[1].to_json_dict(), separators=(",", ":")),
        lines[1].replace('"amount":2.5', '"amount":2.50'),
        lines[1].replace('"amount":2.5', '"amount":25e-1'),
        lines[1].replace("agent-7", "agent\\u002d7"),
    ):
        assert read_signed_bytes(spaced.encode()) is None
        for workers in (1, 2):
            report = verify_export(
                [lines[0], spaced, lines[2]], KEYS, workers=workers, start_method="fork"
            )
            assert report.failure is not None
            assert report.failure.kind is FailureKind.MALFORMED
            assert (report.failure.seq, report.failure.line_number) == (2, 2)
            assert report.failure.message == (
                "seq 2: line is not the RFC 8785 form of its entry (malformed)"
            )
            assert report.count == 1

"""The compiled proof that a text is canonical (msgspec and orjson) against the reference.

`compiled_object` may decline any text (None) but must never call a text canonical
that the reference encoder would write otherwise, nor read it as another value.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.audit.canonical import (
    COMPILED,
    MAX_DEPTH,
    CanonicalError,
    compiled_object,
    format_number,
    is_canonical_float,
    reference_canonical_json,
)

pytestmark = pytest.mark.skipif(not COMPILED, reason="msgspec and orjson are not installed")


def reference_or_none(value: object) -> bytes | None:
    try:
        return reference_canonical_json(value)
    except CanonicalError:
        return None


def assert_never_wrong(text: bytes) -> dict[str, Any] | None:
    """compiled_object(text) declines, or text is exactly the RFC 8785 form of what it read."""
    value = compiled_object(text)
    if value is not None:
        assert value == json.loads(text), text
        assert reference_canonical_json(json.loads(text)) == text, text
    return value


# --- every code point, every number spelling ---------------------------------------------

SCALARS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


@pytest.mark.parametrize("start", range(0, 0x110000, 0x10000), ids=lambda s: f"U+{s:05X}")
def test_every_code_point_is_escaped_as_the_rfc_escapes_it(start: int) -> None:
    text = "".join(chr(c) for c in SCALARS if start <= c < start + 0x10000)
    canonical = reference_canonical_json({"s": text})
    assert compiled_object(canonical) == {"s": text}


def test_the_escapes_the_rfc_does_not_use_are_refused() -> None:
    for spelling in (
        b'"\\u00e9"',
        b'"\\/"',
        b'"\\u000A"',
        b'"\\u000a"',
        b'"\\u0041"',
        b'"\\ud83d\\ude00"',
    ):
        assert compiled_object(b'{"s":' + spelling + b"}") is None, spelling


DOUBLES = [
    0.1,
    -0.5,
    1.5,
    123.456,
    1e-7,
    1e-6,
    1e-5,
    0.0001,
    1e16,
    1e20,
    1e21,
    1e22,
    5e-324,
    1.7976931348623157e308,
    2.0**53,
    333333333.3333333,
    9.999999999999997e-7,
    -0.0,
    0.0,
    1.0,
]


def spellings(value: float) -> set[str]:
    """Ways a JSON text may write `value`, canonical or not."""
    shortest = repr(value)
    out = {shortest, format_number(value), f"{value:.17g}", f"{value:e}", f"{value:E}"}
    out |= {shortest.upper(), shortest.replace("e-0", "e-"), shortest.replace("e+", "e")}
    out |= {shortest + "0" if "." in shortest and "e" not in shortest else shortest}
    if value.is_integer() and abs(value) < 1e21:
        out.add(str(int(value)))
        out.add(f"{int(value)}.0")
    return {s for s in out if s not in ("inf", "-inf", "nan")}


@pytest.mark.parametrize("value", DOUBLES, ids=repr)
def test_a_number_is_accepted_only_as_the_rfc_spells_it(value: float) -> None:
    for spelling in spellings(value):
        read = assert_never_wrong(b'{"x":' + spelling.encode() + b"}")
        if read is not None:
            assert spelling == format_number(float(spelling)), spelling


@pytest.mark.parametrize("spelling", ["0.1", "-0.5", "1e-7", "0.00001", "1e+21", "5e-324"])
def test_canonical_numbers_with_a_fraction_or_an_exponent_are_judged(spelling: str) -> None:
    assert compiled_object(b'{"x":' + spelling.encode() + b"}") == {"x": float(spelling)}


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_is_canonical_float_agrees_with_format_number(value: float) -> None:
    for spelling in spellings(value):
        number = float(spelling)
        assert is_canonical_float(number, spelling) == (spelling == format_number(number)), spelling


@pytest.mark.parametrize("bits", ["7ff0000000000000", "fff0000000000000", "7ff8000000000000"])
def test_a_number_too_large_for_a_double_is_not_judged(bits: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert not is_canonical_float(value, "1e999")
    assert compiled_object(b'{"x":1e999}') is None


def test_integers_beyond_2_to_the_53_are_left_to_the_reference() -> None:
    for number in (2**53 - 1, 2**53, 2**53 + 1, 2**64, -(2**53), 10**30):
        text = b'{"n":' + str(number).encode() + b"}"
        read = assert_never_wrong(text)
        assert (read is not None) == (abs(number) < 2**53), number


def test_keys_are_in_utf16_order_or_not_judged() -> None:
    # U+1F600 is D83D DE00 in UTF-16: it sorts before U+E000 there, after it by code point.
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    canonical = reference_canonical_json(value)
    assert_never_wrong(canonical)
    by_code_point = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert by_code_point.encode() != canonical
    assert compiled_object(by_code_point.encode()) is None
    # Without U+E000..U+FFFF the two orders agree, and the text is judged.
    assert compiled_object(reference_canonical_json({"\U0001f600": 1, "z": 2})) is not None


def test_nesting_deeper_than_the_reference_allows_is_not_judged() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    text = json.dumps({"deep": value}, separators=(",", ":")).encode()
    assert reference_or_none({"deep": value}) is None
    assert compiled_object(text) is None


def test_non_canonical_layouts_are_refused() -> None:
    value = {"b": [1, 2.5, None, True], "a": {"y": "caf\u00e9", "x": ""}}
    canonical = reference_canonical_json(value)
    assert compiled_object(canonical) == value
    for text in (
        json.dumps(value),  # whitespace, key order
        json.dumps(value, sort_keys=True),
        json.dumps(value, sort_keys=True, separators=(",", ":")),  # \u00e9
        canonical.decode().replace('"a"', ' "a"'),
        canonical.decode().replace("{", '{"a":0,', 1),  # a duplicate key
        canonical.decode() + " ",
        canonical.decode() + "\n",
        "\ufeff" + canonical.decode(),
    ):
        assert compiled_object(text.encode()) is None, text
    assert compiled_object(b"[1]") is None  # not an object
    assert compiled_object(b'{"s":"\xff"}') is None  # not UTF-8
    assert compiled_object(b'{"s":"\\ud800"}') is None  # a lone surrogate


# --- generated values and texts ----------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    ["\ue000", "\U0001f600", "\uffff", "\x00\x1f\x7f", '"\\/', "\u2028\u2029", "\ufeff"]
)
numbers = (
    st.integers(-(2**60), 2**60)
    | st.sampled_from([2**53, 2**53 + 1, -(2**53), 0, -1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(DOUBLES)
)
values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
    max_leaves=20,
)
objects = st.dictionaries(texts, values, max_size=6)


@settings(max_examples=400, deadline=None)
@given(objects)
def test_the_canonical_text_of_a_value_is_read_back_or_declined(value: dict[str, Any]) -> None:
    canonical = reference_or_none(value)
    if canonical is not None:
        read = assert_never_wrong(canonical)
        if read is not None:
            assert reference_canonical_json(read) == canonical


@settings(max_examples=400, deadline=None)
@given(objects, st.booleans(), st.booleans(), st.sampled_from([(",", ":"), (", ", ": ")]))
def test_other_encodings_of_a_value_are_never_taken_for_canonical(
    value: dict[str, Any], sort_keys: bool, ensure_ascii: bool, separators: tuple[str, str]
) -> None:
    try:
        text = json.dumps(
            value, sort_keys=sort_keys, ensure_ascii=ensure_ascii, separators=separators
        )
        data = text.encode()
    except (ValueError, UnicodeEncodeError):  # a lone surrogate
        return
    assert_never_wrong(data)


MUTATIONS = st.sampled_from(
    [
        *'0123456789.eE+-"\\{}[],: \t\natfnu',
        "\\u0000",
        "\\u00e9",
        "\\n",
        "\u00e9",
        "\ue000",
        "\U0001f600",
        "\ud800",
        ".0",
        "e0",
        "E+00",
    ]
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects, st.data())
def test_mutated_canonical_texts_are_never_taken_for_canonical(
    value: dict[str, Any], data: st.DataObject
) -> None:
    canonical = reference_or_none(value)
    if canonical is None:
        return
    text = canonical.decode()
    position = data.draw(st.integers(0, len(text)), label="position")
    replacement = data.draw(MUTATIONS, label="replacement")
    end = position + data.draw(st.integers(0, 2), label="replaced")
    mutated = (text[:position] + replacement + text[end:]).encode("utf-8", "surrogatepass")
    assert_never_wrong(mutated)


def test_math_isfinite_is_what_refuses_infinity() -> None:
    # A token beyond the double range reads as inf: never canonical.
    assert math.isinf(float("1e999")) and not is_canonical_float(float("1e999"), "1e999")

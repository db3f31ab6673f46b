"""RFC 8785 canonical JSON: the RFC's own examples, rejections, and round-trip properties."""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.audit.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalError,
    canonical_json,
    format_number,
    reference_canonical_json,
)

# RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_numbers_match_rfc_8785_appendix_b(bits: str, expected: str) -> None:
    assert canonical_json(double(bits)) == expected.encode()
    assert canonical_json([double(bits)]) == f"[{expected}]".encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_nan_and_infinity_are_rejected(bits: str) -> None:
    with pytest.raises(CanonicalError, match="not a JSON number"):
        canonical_json({"x": double(bits)})


def test_rfc_8785_section_3_2_2_sample_serializes_to_the_published_bytes() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(value) == expected.encode("utf-8")
    # The RFC prints the same output as hex; its first and last bytes:
    assert canonical_json(value)[:4].hex() == "7b226c69"
    assert canonical_json(value)[-3:].hex() == "2f227d"


def test_keys_sort_by_utf16_code_units_as_in_rfc_8785_section_3_2_3() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    order = list(json.loads(canonical_json(value)))
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_strings_escape_only_quote_backslash_and_control_characters() -> None:
    text = '"\\\b\t\n\f\r\x00\x1f\x7f/\u2028\u00e9\U0001d11e'
    assert canonical_json(text) == (
        '"\\"\\\\\\b\\t\\n\\f\\r\\u0000\\u001f\x7f/\u2028\u00e9\U0001d11e"'
    ).encode("utf-8")


def test_bool_is_a_literal_not_an_integer() -> None:
    assert canonical_json([True, False, 1, 0]) == b"[true,false,1,0]"


def test_integers_must_be_exactly_representable_as_doubles() -> None:
    assert canonical_json(MAX_SAFE_INTEGER) == b"9007199254740992"
    assert canonical_json(-MAX_SAFE_INTEGER) == b"-9007199254740992"
    # What a JSON parser returns for the canonical text of the double 1.2033610967305176e16.
    assert canonical_json(12033610967305176) == b"12033610967305176"
    assert canonical_json(10**21) == b"1e+21"
    # The exact value of the double 6.024009071947745e16, and its canonical spelling.
    assert canonical_json(60240090719477448) == b"60240090719477450"
    assert canonical_json(60240090719477450) == b"60240090719477450"
    with pytest.raises(CanonicalError, match=r"\$\.n: integer .* is not exactly an IEEE double"):
        canonical_json({"n": MAX_SAFE_INTEGER + 1})
    with pytest.raises(CanonicalError, match="not exactly an IEEE double"):
        canonical_json(10**400)


def test_integral_floats_print_as_integers_and_negative_zero_as_zero() -> None:
    assert canonical_json([1.0, -0.0, 1e20, 1e21, 1e-6, 1e-7]) == (
        b"[1,0,100000000000000000000,1e+21,0.000001,1e-7]"
    )


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({1: "x"}, "object key 1 is not a string"),
        ({"a": {1, 2}}, r"\$\.a: set is not a JSON type"),
        ([b"bytes"], r"\$\[0\]: bytes is not a JSON type"),
        (Decimal("1.5"), "Decimal is not a JSON type"),
        (object(), "object is not a JSON type"),
    ],
)
def test_non_json_values_are_rejected_with_their_path(value: object, where: str) -> None:
    with pytest.raises(CanonicalError, match=where):
        canonical_json(value)


def test_a_lone_surrogate_is_rejected() -> None:
    with pytest.raises(CanonicalError, match="lone surrogate"):
        canonical_json({"k": "\ud800"})
    with pytest.raises(CanonicalError, match="lone surrogate"):
        canonical_json({"\udfff": 1})


def test_canonical_error_is_a_value_error() -> None:
    assert issubclass(CanonicalError, ValueError)


def test_tuples_and_read_only_mappings_encode_like_lists_and_dicts() -> None:
    assert canonical_json(MappingProxyType({"b": (1, 2), "a": None})) == b'{"a":null,"b":[1,2]}'


def test_whitespace_and_key_order_of_the_input_do_not_matter() -> None:
    assert canonical_json(json.loads('{ "b" : [ 1 , 2 ] , "a" : "x" }')) == b'{"a":"x","b":[1,2]}'


def test_excessive_nesting_is_rejected_not_a_crash() -> None:
    value: Any = []
    for _ in range(1000):
        value = [value]
    with pytest.raises(CanonicalError, match="nesting deeper"):
        canonical_json(value)


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | finite_floats
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)


def as_ecmascript_number(text: str) -> int | float:
    """Parse a JSON integer the way JSON.parse does once it exceeds 2**53: as a double."""
    number = int(text)
    return number if abs(number) <= MAX_SAFE_INTEGER else float(number)


@given(json_values)
def test_canonical_json_round_trips_through_a_json_parser(value: object) -> None:
    encoded = canonical_json(value)
    assert json.loads(encoded, parse_int=as_ecmascript_number) == value
    # Canonical form is a fixed point: parsing and re-encoding changes nothing.
    assert canonical_json(json.loads(encoded)) == encoded


@given(finite_floats)
def test_every_finite_double_round_trips_exactly(value: float) -> None:
    text = format_number(value)
    assert float(text) == value
    assert math.copysign(1, float(text)) == 1 or value != 0 or text == "0"
    assert "E" not in text and not text.startswith("+")


@given(st.dictionaries(st.text(), st.integers(-5, 5), max_size=8))
def test_key_insertion_order_does_not_change_the_bytes(value: dict[str, int]) -> None:
    reversed_value = dict(reversed(list(value.items())))
    assert canonical_json(value) == canonical_json(reversed_value)


# -- the fast path must be byte-identical to the reference encoder ----------------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 1e-7, 1e-6, 1e21, 1e16 + 2, 2.0**53, 2.0**60, -0.0, 5e-324]),
    st.text(),
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=25,
)


@settings(max_examples=1000)
@given(_json_values)
def test_fast_path_equals_the_reference_encoder(value: object) -> None:
    try:
        expected = reference_canonical_json(value)
    except CanonicalError:
        with pytest.raises(CanonicalError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [{"\U0001f600": 1, "\ufb01": 2}, {"a": 1e-5}, {"n": 2.0**60}, {"b": 2**54}],
)
def test_values_the_fast_path_cannot_take_still_encode_canonically(value: object) -> None:
    assert canonical_json(value) == reference_canonical_json(value)

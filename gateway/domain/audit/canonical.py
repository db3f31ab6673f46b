"""RFC 8785 JSON Canonicalization Scheme (JCS): the one byte encoding that is hashed.

Owns turning a JSON value (None, bool, int, float, str, list/tuple, Mapping with str
keys) into its canonical UTF-8 bytes. Written here rather than taken from a library
because every hash and signature in the audit chain depends on these exact bytes and
an auditor must be able to re-implement them from `docs/audit-format.md`. The fast
path of `canonical_json` (the stdlib's C encoder) gives the same bytes or declines.
It parses JSON only to prove a text canonical (`compiled_object`, with msgspec and
orjson, for the verifier) and knows nothing about audit entries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from gateway.domain.audit.errors import FormatError

try:
    import msgspec
    import orjson
except ImportError:  # optional: without them compiled_object judges no text
    COMPILED = False
else:
    COMPILED = True

# ECMAScript numbers are IEEE doubles. Every integer up to 2**53 is one; a larger
# integer is accepted only if it is exactly a double, since any other verifier would
# silently round it. Refusing is safer than rounding.
MAX_SAFE_INTEGER: Final = 2**53

_SHORT_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_ESCAPES: Final = {chr(c): _SHORT_ESCAPES.get(chr(c), f"\\u{c:04x}") for c in range(0x20)}
_ESCAPES.update(_SHORT_ESCAPES)
_NEEDS_ESCAPE: Final = frozenset(_ESCAPES)

# Deeper nesting than this cannot be a genuine audit record and would exhaust the
# Python stack before producing a useful error.
MAX_DEPTH: Final = 256


class CanonicalError(FormatError):
    """The value is outside the JSON data model that RFC 8785 can encode."""


def canonical_json(value: object) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of `value`."""
    fast = _fast_canonical(value)
    return fast if fast is not None else reference_canonical_json(value)


def reference_canonical_json(value: object) -> bytes:
    """The encoder as the RFC describes it, one value at a time (slower; always right)."""
    parts: list[str] = []
    _encode(value, parts, "$", 0)
    text = "".join(parts)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError(f"string contains a lone surrogate at offset {exc.start}") from None


_ENCODER: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


class _NotFast(Exception):
    """The value needs the reference encoder below."""


def _fast_canonical(value: object) -> bytes | None:
    """The same bytes as the reference encoder, from the C json encoder, or None.

    The stdlib encoder with sorted keys and no whitespace already writes RFC 8785 for
    the common case: its string escapes are the RFC's, and a float whose repr has no
    exponent is laid out as ECMAScript does. What it gets wrong is rewritten or
    refused first: integral floats become ints, and exponent floats, large integers,
    keys outside the BMP's lower range (UTF-16 order differs) and non-dict mappings
    send the value to the reference encoder. A property test holds the two equal.
    """
    try:
        return _ENCODER.encode(_prepare(value, 0)).encode("utf-8")
    except (_NotFast, ValueError, TypeError, UnicodeEncodeError):
        return None


def _prepare(value: object, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise _NotFast
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # type: ignore[operator]
            return value
        raise _NotFast
    if kind is float:
        number: float = value  # type: ignore[assignment]
        if number.is_integer():
            # ECMAScript prints large integral doubles with their shortest digits.
            if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
                return int(number)
            raise _NotFast
        text = repr(number)
        if "e" in text or "n" in text:  # exponent notation, nan, inf
            raise _NotFast
        return number
    if kind is dict:
        out = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str or (not key.isascii() and max(key) >= "\ud800"):
                raise _NotFast
            out[key] = _prepare(item, depth + 1)
        return out
    if kind is list or kind is tuple:
        return [_prepare(item, depth + 1) for item in value]  # type: ignore[attr-defined]
    raise _NotFast


def is_canonical_float(value: float, text: str) -> bool:
    """Is `text` the RFC 8785 spelling of the finite double `value` it denotes?"""
    # repr's digits are the RFC's; without an exponent and not integral, so is its layout.
    if "e" not in text and repr(value) == text and not value.is_integer():
        return True
    return math.isfinite(value) and format_number(value) == text


class _NotCanonical(Exception):
    """A number is not written as RFC 8785 writes it (raised inside the decoder)."""


def _float_as_written(text: str) -> float:
    value = float(text)
    if is_canonical_float(value, text):
        return value
    raise _NotCanonical


# UTF-8 lead bytes of the characters beyond U+FFFF, and of U+E000..U+FFFF.
_BEYOND_BMP_LEADS: Final = (0xF0, 0xF1, 0xF2, 0xF3, 0xF4)
_TOP_OF_BMP_LEADS: Final = (0xEE, 0xEF)
if COMPILED:
    # Every number with a fraction or an exponent goes through the hook.
    _DECODER: Final = msgspec.json.Decoder(float_hook=_float_as_written)
    _ENCODER_OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def compiled_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object `data` encodes if `data` is exactly its RFC 8785 form, else None.

    None also means "not judged": a text this leaves to the reference encoder. The
    work is done by compiled code. msgspec decodes, handing every number with a
    fraction or an exponent to a hook that refuses it unless it is written as RFC 8785
    writes its value (is_canonical_float). orjson encodes the object again with sorted
    keys and no whitespace, refusing integers beyond +-(2**53 - 1) and nesting 255
    deep (less than MAX_DEPTH), and that must be `data` byte for byte: its string
    escapes are the RFC's (a test checks every code point), its integers are their
    digits, its other numbers the tokens the hook accepted. The one rule left is the
    key order: orjson sorts by code point, RFC 8785 by UTF-16 code unit, and the two
    differ only between a character beyond U+FFFF and one from U+E000 to U+FFFF, so a
    text that has both is not judged. What msgspec reads and orjson writes back
    unchanged is what json.loads reads: a canonical text has one spelling of each
    value. Property tests hold this against the reference encoder.
    """
    if not COMPILED:
        return None
    try:
        value = _DECODER.decode(data)
        if type(value) is not dict or orjson.dumps(value, option=_ENCODER_OPTIONS) != data:
            return None
    except (msgspec.DecodeError, _NotCanonical, orjson.JSONEncodeError):
        return None
    if not data.isascii() and _may_sort_otherwise(data):
        return None
    return value


def _may_sort_otherwise(data: bytes) -> bool:
    for lead in _TOP_OF_BMP_LEADS:
        if lead in data:  # an int: memchr, without the TypeError `bytes in bytes` raises
            return any(beyond in data for beyond in _BEYOND_BMP_LEADS)
    return False


def format_number(value: float) -> str:
    """Format a finite double the way ECMAScript's Number.prototype.toString does."""
    if math.isnan(value) or math.isinf(value):
        raise CanonicalError(f"{value!r} is not a JSON number")
    if value == 0:
        return "0"  # covers -0.0, which ECMAScript also prints as "0"
    # repr() gives the shortest digit string that round-trips, choosing the closest
    # when several exist: the same digits ECMAScript requires. Only the layout differs.
    text = repr(value)
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        exp = n - 1
        exp_text = f"e+{exp}" if exp >= 0 else f"e-{-exp}"
        body = (digits if k == 1 else f"{digits[0]}.{digits[1:]}") + exp_text
    return sign + body


def _encode(value: object, out: list[str], path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalError(f"{path}: nesting deeper than {MAX_DEPTH}")
    # bool before int: bool is a subclass of int and must print as a literal.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) <= MAX_SAFE_INTEGER:
            out.append(str(int(value)))
        else:
            out.append(_format_large_integer(value, path))
    elif isinstance(value, float):
        try:
            out.append(format_number(value))
        except CanonicalError as exc:
            raise CanonicalError(f"{path}: {exc}") from None
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, Mapping):
        _encode_object(value, out, path, depth)
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out, f"{path}[{index}]", depth + 1)
        out.append("]")
    else:
        raise CanonicalError(f"{path}: {type(value).__name__} is not a JSON type")


def _format_large_integer(value: int, path: str) -> str:
    # A JSON parser returns the canonical text of a large double, such as
    # 60240090719477450 for 6.024009071947745e16, as an int that is not the double's
    # exact value. Accept that spelling and the exact value; refuse any other integer
    # rather than silently round it.
    try:
        double = float(value)
    except OverflowError:
        double = math.inf
    text = format_number(double) if math.isfinite(double) else ""
    if text and (int(double) == value or text == str(value)):
        return text
    raise CanonicalError(f"{path}: integer {value} is not exactly an IEEE double")


def _encode_object(value: Mapping[object, object], out: list[str], path: str, depth: int) -> None:
    keys: list[str] = []
    for key in value:
        if not isinstance(key, str):
            raise CanonicalError(f"{path}: object key {key!r} is not a string")
        keys.append(key)
    # RFC 8785 §3.2.3 sorts by UTF-16 code units; big-endian UTF-16 bytes compare the
    # same way. surrogatepass lets a lone surrogate reach the clear error below.
    keys.sort(key=lambda k: k.encode("utf-16-be", "surrogatepass"))
    out.append("{")
    for index, key in enumerate(keys):
        if index:
            out.append(",")
        out.append(_encode_string(key))
        out.append(":")
        _encode(value[key], out, f"{path}.{key}", depth + 1)
    out.append("}")


def _encode_string(value: str) -> str:
    if _NEEDS_ESCAPE.isdisjoint(value):
        return f'"{value}"'
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'

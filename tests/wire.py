"""Protobuf wire bytes built by hand, for requests no protobuf library would encode:
invalid UTF-8, truncation, wrong wire types, nesting beyond the parser's limit."""

from __future__ import annotations

VARINT, I64, LEN, SGROUP, EGROUP, I32 = range(6)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return tag(number, LEN) + varint(len(payload)) + payload


def nested_struct(depth: int) -> bytes:
    """A google.protobuf.Struct nested `depth` Structs deep: {"a": {"a": ... {}}}.

    Each level is three messages on the wire (Struct, its map entry, the Value)."""
    inner = b""
    for _ in range(depth):
        value = field(5, inner)  # Value.struct_value
        entry = field(1, b"a") + field(2, value)  # FieldsEntry: key, value
        inner = field(1, entry)  # Struct.fields
    return inner

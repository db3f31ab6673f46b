"""hiredis packs every command to the same bytes as redis-py's own Python packer, and
refuses what it refuses (gateway/store/packing.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from gateway.store import packing

NAMES = st.sampled_from(["EVALSHA", "SET", "CONFIG GET", b"XADD", b"CLIENT SETNAME", "hset"])
ARGS = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary().map(memoryview),
    st.binary().map(bytearray),
)


def joined(parts: list[bytes]) -> bytes:
    return b"".join(bytes(p) for p in parts)


@settings(max_examples=500)
@given(NAMES, st.lists(ARGS, max_size=60))
def test_hiredis_packs_the_same_bytes_as_redis_py(name: str | bytes, args: list[Any]) -> None:
    connection = Connection()
    assert joined(packing.pack_with_hiredis(connection, name, *args)) == joined(
        packing.python_pack(connection, name, *args)
    )


def test_a_long_argument_is_packed_the_same_too() -> None:
    connection = UnixDomainSocketConnection(path="/nowhere")
    line = '{"seq": 1, "details": "' + "é" * 10_000 + '"}'
    args = ("EVALSHA", "f" * 40, 4, "k1", "k2", "k3", "k4", 7, line, line.encode())
    assert joined(packing.pack_with_hiredis(connection, *args)) == joined(
        packing.python_pack(connection, *args)
    )


@pytest.mark.parametrize("bad", [True, None, object(), ["a"]])
def test_what_redis_py_refuses_hiredis_refuses_alike(bad: object) -> None:
    connection = Connection()
    with pytest.raises(DataError):
        packing.python_pack(connection, "SET", "k", bad)
    with pytest.raises(DataError):
        packing.pack_with_hiredis(connection, "SET", "k", bad)


def test_installing_makes_every_asyncio_connection_pack_with_hiredis() -> None:
    packing.install()
    for cls in (Connection, UnixDomainSocketConnection):
        assert cls.pack_command is packing.pack_with_hiredis

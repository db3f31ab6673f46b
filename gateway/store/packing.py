"""Commands packed into the Redis protocol by hiredis, on redis-py's asyncio client.

redis-py's synchronous connections pack commands with hiredis when it is installed;
its asyncio connections still pack them in Python (redis-py issue 4176), which is
most of the client's CPU on the decision path: a 45-argument EVALSHA of observe.lua
takes about 70 µs to pack in Python and under 10 µs in hiredis (bench/redis_clients.py,
docs/benchmark.md). `install` gives every asyncio connection class (single server,
unix socket, TLS, Sentinel's, Cluster's nodes) the hiredis packer, once; the bytes
are the same (tests/unit/test_packing.py holds them equal on generated commands).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

# The arguments hiredis encodes exactly as redis-py's encoder does (str as UTF-8,
# bytes as they are, int in decimal); anything else goes through the encoder first
# (a float as its repr, a bool refused with redis-py's DataError).
_AS_IS = (bytes, str, int)

_python_pack = AbstractConnection.pack_command


def pack_with_hiredis(self: AbstractConnection, *args: Any) -> list[bytes]:
    """`AbstractConnection.pack_command`, by hiredis."""
    if isinstance(args[0], str):
        args = tuple(args[0].encode().split()) + args[1:]
    elif b" " in args[0]:
        args = tuple(args[0].split()) + args[1:]
    encode = self.encoder.encode
    ready = []
    for arg in args:
        if type(arg) not in _AS_IS:
            arg = encode(arg)  # type: ignore[no-untyped-call]
            if not isinstance(arg, bytes):  # a memoryview or bytearray
                arg = bytes(arg)
        ready.append(arg)
    return [hiredis.pack_command(tuple(ready))]


def install() -> None:
    """Packs with hiredis from now on (hiredis is a dependency of the gateway)."""
    AbstractConnection.pack_command = pack_with_hiredis  # type: ignore[method-assign]


def python_pack(connection: AbstractConnection, *args: Any) -> list[bytes]:
    """redis-py's own packer (for comparing)."""
    return _python_pack(connection, *args)

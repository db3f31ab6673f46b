"""The Redis connection, its Lua scripts, and the mapping of Redis failures.

Every Redis error becomes `StoreUnavailable`, which the wire maps to UNAVAILABLE
(never an allow). Scripts are *.lua files beside this module, run with EVALSHA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable


def connect(url: str) -> aioredis.Redis:
    # Two quick retries ride out a reconnect (e.g. the embedded server restarting);
    # beyond that the caller gets StoreUnavailable fast rather than hanging.
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=5.0,
        socket_connect_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        max_connections=256,
    )


def load_script(client: aioredis.Redis, name: str) -> AsyncScript:
    text = resources.files("gateway.store").joinpath("scripts", f"{name}.lua").read_text()
    return client.register_script(text)


@contextlib.contextmanager
def unavailable_on_error(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as e:
        raise StoreUnavailable(f"{what}: {type(e).__name__}: {e}") from e

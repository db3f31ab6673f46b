"""The Redis connection, its Lua scripts, and the mapping of Redis failures.

Every Redis error becomes `StoreUnavailable`, which the wire maps to UNAVAILABLE
(never an allow). Scripts are *.lua files beside this module, run with EVALSHA.

A gateway opens separate pools (see `app.py`), each connection named
`agentgw:<key prefix>:<pool>` in `CLIENT LIST`: `decisions` for the decision path
and the audit writer, `holds` (small, and waiting for a free connection instead of
failing) for hold notifications, waiters and approvals, so that no number of waiting
agents can take the decision path's connections, and `health` (one connection) for
the health probe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable

DECISION_POOL_SIZE = 256
HOLD_POOL_SIZE = 8
# How long a call may wait for a free connection of a waiting pool before it fails.
POOL_WAIT_SECONDS = 5.0


def connect(
    url: str,
    *,
    name: str | None = None,
    max_connections: int = DECISION_POOL_SIZE,
    wait_for_connection: float | None = None,
    timeout: float = 5.0,
    retries: int = 2,
) -> aioredis.Redis:
    """A client with its own pool of at most `max_connections`, named `name` in
    `CLIENT LIST`. With `wait_for_connection` (seconds), a call finding every
    connection busy waits that long for one instead of failing at once."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": min(timeout, 2.0),
        # Quick retries ride out a reconnect (e.g. the embedded server restarting);
        # beyond that the caller gets StoreUnavailable fast rather than hanging.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries),
        "max_connections": max_connections,
    }
    if name is not None:
        options["client_name"] = name
    if wait_for_connection is None:
        return aioredis.Redis.from_url(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=wait_for_connection, **options)
    return aioredis.Redis.from_pool(pool)


def load_script(client: aioredis.Redis, name: str) -> AsyncScript:
    text = resources.files("gateway.store").joinpath("scripts", f"{name}.lua").read_text()
    return client.register_script(text)


@contextlib.contextmanager
def unavailable_on_error(what: str) -> Iterator[None]:
    """Turns a Redis failure into StoreUnavailable: a plain message for the caller
    ("recording the action: Redis timed out"), the client's own words for the log."""
    try:
        yield
    except (RedisError, OSError, TimeoutError) as e:
        raise StoreUnavailable(
            f"{what}: {_failure_kind(e)}", detail=f"{type(e).__name__}: {e}"
        ) from e


def _failure_kind(error: BaseException) -> str:
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return "Redis timed out"
    if isinstance(error, ResponseError):
        # The first word of a Redis error is its code: OOM, READONLY, BUSY, WRONGTYPE...
        code = str(error).split(" ", 1)[0]
        return f"Redis refused the command ({code})" if code.isupper() else "Redis failed"
    return "Redis is unreachable"

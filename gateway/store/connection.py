"""The Redis connection, its Lua scripts, and the mapping of Redis failures.

Every Redis error becomes `StoreUnavailable`, which the wire maps to UNAVAILABLE
(never an allow). Scripts are *.lua files beside this module, run with EVALSHA.

A gateway opens separate pools (see `app.py`), each connection named
`agentgw:<key prefix>:<pool>` in `CLIENT LIST`: `decisions` for the decision path
and the audit writer, `holds` (small, and waiting for a free connection instead of
failing) for hold notifications, waiters and approvals, so that no number of waiting
agents can take the decision path's connections, and `health` (one connection) for
the health probe.

`redis.url` picks the server: `redis://`, `rediss://` and `unix://` as redis-py reads
them, or `redis+sentinel://[[user]:password@]host:port[,host:port...]/master_name`
(`?db=N&sentinel_password=...`), whose pools ask the sentinels for the master before
each new connection and so follow a failover, or
`redis+cluster://[[user]:password@]host:port[,host:port...]` for Redis Cluster: the
nodes given are where the client starts; it learns the others and the slot map from
them, and follows MOVED/ASK redirections. Every script call touches one hash slot
(`store/keys.py`). `parse_redis_url` checks a URL once, at config time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import ConfigError, OutcomeUnknown, StoreUnavailable
from gateway.store import packing

DECISION_POOL_SIZE = 256
HOLD_POOL_SIZE = 8
# How long a call may wait for a free connection of a waiting pool before it fails.
POOL_WAIT_SECONDS = 5.0


# Everything a Redis call can raise: redis-py's errors (its cluster errors are not
# RedisErrors), and the socket's.
REDIS_FAILURES: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)
# Failures of a command that was never sent, or that Redis refused without running.
NOT_SENT = (ResponseError, MaxConnectionsError, SlotNotCoveredError)

SENTINEL_PORT = 26379
SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


@dataclass(frozen=True)
class ClusterAddress:
    """A parsed `redis+cluster://` URL: the startup nodes and the credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class SentinelAddress:
    """A parsed `redis+sentinel://` URL: where the sentinels are, which master to ask
    them for, and the credentials of the master (and of the sentinels)."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_redis_url(url: str) -> SentinelAddress | ClusterAddress | None:
    """Checks `redis.url`; the sentinel or cluster address for `redis+sentinel://` and
    `redis+cluster://`, None for the URLs redis-py reads itself. Raises ValueError
    saying what is wrong, never quoting the URL (it may hold a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or f"{scheme}://" not in SCHEMES:
        raise ValueError(f"expected a URL starting with {', '.join(SCHEMES)}")
    if scheme not in ("redis+sentinel", "redis+cluster"):
        parse_url(url)  # raises ValueError for a bad port or query value
        return None
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    username, _, password = userinfo.partition(":")
    options = {name: values[0] for name, values in parse_qs(query).items()}
    if scheme == "redis+cluster":
        if path or options:
            raise ValueError(
                "redis+cluster://: expected host:port[,host:port...] only (a cluster has "
                "no databases; no options are read)"
            )
        return ClusterAddress(
            nodes=tuple(_host_port(h, scheme, 6379) for h in hosts.split(",")),
            username=unquote(username) or None,
            password=unquote(password) or None,
        )
    master_name, _, db_path = unquote(path).partition("/")
    if not master_name:
        raise ValueError("redis+sentinel:// needs a master name: host:port[,host:port...]/name")
    unknown = sorted(options.keys() - {"db", "sentinel_password"})
    if unknown:
        raise ValueError(
            f"redis+sentinel://: unknown option {unknown[0]} (expected db, sentinel_password)"
        )
    db_text = options.get("db", db_path or "0")
    if not db_text.isdigit():
        raise ValueError("redis+sentinel://: db must be a number")
    return SentinelAddress(
        sentinels=tuple(_host_port(h, scheme, SENTINEL_PORT) for h in hosts.split(",")),
        master_name=master_name,
        db=int(db_text),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _host_port(text: str, scheme: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        where = "" if scheme == "redis+cluster" else " before the master name"
        raise ValueError(f"{scheme}://: expected host:port[,host:port...]{where}")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        what = "node" if scheme == "redis+cluster" else "sentinel"
        raise ValueError(f"{scheme}://: {what} {host}: port must be 1-65535")
    return host, int(port) if port else default_port


def is_cluster(client: aioredis.Redis | RedisCluster) -> bool:
    return isinstance(client, RedisCluster)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A sentinel pool that waits for a free connection (redis-py has none)."""


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
    connection busy waits that long for one instead of failing at once.

    Behind sentinels, each new connection asks them for the master; a connection
    to a master that was demoted fails (redis-py turns READONLY into a connection
    error and drops it), so a retry or the next call reaches the new master, and a
    call during the failover fails (MasterNotFoundError) rather than waits."""
    try:
        address = parse_redis_url(url)
    except ValueError as e:
        raise ConfigError(f"redis.url: {e}") from None
    packing.install()  # hiredis packs the commands (see packing.py)
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
    if isinstance(address, SentinelAddress):
        return _master_client(address, options, wait_for_connection)
    if isinstance(address, ClusterAddress):
        return _cluster_client(address, options, wait_for_connection)
    if wait_for_connection is None:
        return aioredis.Redis.from_url(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=wait_for_connection, **options)
    return aioredis.Redis.from_pool(pool)


def _master_client(
    address: SentinelAddress, options: dict[str, Any], wait_for_connection: float | None
) -> aioredis.Redis:
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        address.sentinels,
        sentinel_kwargs={
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "password": address.sentinel_password,
            "decode_responses": True,
        },
    )
    pool_options: dict[str, Any] = {
        "db": address.db,
        "username": address.username,
        "password": address.password,
    }
    if wait_for_connection is not None:
        pool_options |= {
            "connection_pool_class": _BlockingSentinelPool,
            "timeout": wait_for_connection,
        }
    client: aioredis.Redis = sentinels.master_for(address.master_name, **options, **pool_options)
    return client


class _WaitingCluster(RedisCluster):
    """A cluster client whose commands wait (up to `wait` seconds) for one of
    `limit` slots instead of failing when every connection is busy: redis-py's
    cluster has no waiting pool. Its nodes get four times `limit` connections, so
    that pipelines (which bypass the slots) find one too."""

    def __init__(self, limit: int, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs, max_connections=limit * 4)
        self._slots = asyncio.Semaphore(limit)
        self._wait = wait

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.wait_for(self._slots.acquire(), self._wait)
        except TimeoutError:
            raise MaxConnectionsError(f"no free connection within {self._wait} s") from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._slots.release()


def _cluster_client(
    address: ClusterAddress, options: dict[str, Any], wait_for_connection: float | None
) -> aioredis.Redis:
    """A cluster client: `max_connections` per node; with `wait_for_connection`, at
    most `max_connections` commands at once, the others waiting that long for their
    turn. MOVED and ASK are followed, and the slot map is re-read after a failover."""
    common: dict[str, Any] = {
        "startup_nodes": [ClusterNode(host, port) for host, port in address.nodes],
        "username": address.username,
        "password": address.password,
    }
    client: RedisCluster
    if wait_for_connection is None:
        client = RedisCluster(**common, **options)
    else:
        limit = options.pop("max_connections")
        client = _WaitingCluster(limit, wait_for_connection, **common, **options)
    # The commands used are the same on both; the store checks `is_cluster` where a
    # call must differ (a script's keys in one slot).
    return cast(aioredis.Redis, client)


class SingleConnection:
    """One connection, held across commands that must share it: a script and the WAIT
    that counts its writes (WAIT counts the writes of the connection it runs on).

    On one server or behind sentinels, a connection of `client`'s own pool. On a
    cluster, a connection to the master that owns `key`'s slot: found from the
    cluster's slot map, and found again (the map re-read) after that master fails,
    answers MOVED, or the cluster is down, so a failover is followed by the next call.
    """

    CLUSTER_OPTIONS = (
        "username",
        "password",
        "client_name",
        "decode_responses",
        "socket_timeout",
        "socket_connect_timeout",
    )

    def __init__(self, client: aioredis.Redis, key: str, wait_for_connection: float) -> None:
        self.client = client
        self.key = key
        self.wait_for_connection = wait_for_connection
        self._owner: aioredis.Redis | None = None
        self._stale = False

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[aioredis.Redis]:
        if not is_cluster(self.client):
            async with self.client.client() as connection:
                yield connection
            return
        owner = await self._find_owner()
        try:
            async with owner.client() as connection:
                yield connection
        except (MovedError, ClusterDownError, RedisConnectionError, OSError, TimeoutError):
            await self._forget()
            raise

    async def _find_owner(self) -> aioredis.Redis:
        if self._owner is not None:
            return self._owner
        cluster = cast(RedisCluster, self.client)
        await cluster.initialize()
        if self._stale:
            await cluster.nodes_manager.initialize()
            self._stale = False
        node = cluster.get_node_from_key(self.key)
        if node is None:
            raise ClusterDownError(f"no master owns the slot of {self.key}")
        options = {k: cluster.connection_kwargs[k] for k in self.CLUSTER_OPTIONS}
        pool = aioredis.BlockingConnectionPool(
            host=node.host,
            port=node.port,
            max_connections=1,
            timeout=self.wait_for_connection,
            **options,
        )
        self._owner = aioredis.Redis.from_pool(pool)
        return self._owner

    async def _forget(self) -> None:
        owner, self._owner, self._stale = self._owner, None, True
        if owner is not None:
            with contextlib.suppress(RedisError, OSError):
                await owner.aclose()

    async def aclose(self) -> None:
        await self._forget()


async def close(client: aioredis.Redis) -> None:
    """Closes a client from `connect` with its pool (and its sentinel clients)."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)  # a cluster has one per node
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()


# Shared Lua functions prepended to a script when it is loaded.
PREPENDED = {"observe": ("welford",), "outcome": ("welford",)}


def script_text(name: str) -> str:
    """The text Redis runs for scripts/<name>.lua: its prepended parts, then itself."""
    scripts = resources.files("gateway.store").joinpath("scripts")
    parts = (*PREPENDED.get(name, ()), name)
    return "\n".join(scripts.joinpath(f"{part}.lua").read_text() for part in parts)


class LuaScript:
    """scripts/<name>.lua, run with EVALSHA. A server that does not know it yet (a
    fresh or restarted one) gets it with EVAL, which runs it on the server its keys
    name and caches it there: redis-py's own fallback, SCRIPT LOAD, goes to every
    master of a cluster, and fails while any one of them is down, failing a call
    whose keys are on a master that is up."""

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        self.client = client
        self.name = name
        self.text = script_text(name)
        self.sha = hashlib.sha1(self.text.encode("utf-8")).hexdigest()

    async def __call__(
        self,
        keys: Sequence[str] = (),
        args: Sequence[str | int | float | bytes] = (),
        client: aioredis.Redis | None = None,
    ) -> Any:
        runner = client or self.client
        try:
            return await runner.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await runner.eval(self.text, len(keys), *keys, *args)


def load_script(client: aioredis.Redis, name: str) -> LuaScript:
    return LuaScript(client, name)


# Called on every Redis failure `unavailable_on_error` turns into an error (the app
# counts them); process-wide, as the failures are.
FAILURE_LISTENERS: list[Callable[[], None]] = []


@contextlib.contextmanager
def unavailable_on_error(what: str) -> Iterator[None]:
    """Turns a Redis failure into StoreUnavailable: a plain message for the caller
    ("recording the action: Redis timed out"), the client's own words for the log.

    Redis answering with an error (a ResponseError) means the command was refused or
    the script failed before it wrote, and a command that found no connection or (on
    a cluster) no node for its slot was never sent: StoreUnavailable. Any other
    failure (a lost connection, a timeout) leaves it unknown whether the command ran:
    OutcomeUnknown, which whoever holds a claim on what it writes must not release.
    """
    try:
        yield
    except REDIS_FAILURES as e:
        for listener in FAILURE_LISTENERS:
            listener()
        kind = StoreUnavailable if isinstance(e, NOT_SENT) else OutcomeUnknown
        raise kind(f"{what}: {_failure_kind(e)}", detail=f"{type(e).__name__}: {e}") from e
    except (AttributeError, TypeError) as e:
        if not _raised_by_the_client(e):
            raise
        # redis-py writing to a connection that was closed under it (a failover, a
        # reset) can leak the transport's own AttributeError/TypeError instead of a
        # ConnectionError (redis-py issues 3546, 4287): the connection broke.
        raise OutcomeUnknown(
            f"{what}: Redis is unreachable", detail=f"{type(e).__name__}: {e}"
        ) from e


def _raised_by_the_client(error: BaseException) -> bool:
    """The innermost frame of the error is redis-py's or asyncio's transport code."""
    tb = error.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    path = last.tb_frame.f_code.co_filename.replace("\\", "/")
    return "/redis/" in path or path.endswith(
        ("/asyncio/streams.py", "/asyncio/selector_events.py")
    )


def _failure_kind(error: BaseException) -> str:
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return "Redis timed out"
    if isinstance(error, MaxConnectionsError):
        return "no free Redis connection"
    if isinstance(error, ResponseError):
        # The first word of a Redis error is its code: OOM, READONLY, BUSY, WRONGTYPE...
        code = str(error).split(" ", 1)[0]
        return f"Redis refused the command ({code})" if code.isupper() else "Redis failed"
    return "Redis is unreachable"

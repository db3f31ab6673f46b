"""`redis.url`: every scheme, the errors for bad ones, and no password in any message.

Building a client opens no connection, so these need no server; the failover
itself is tests/integration/test_sentinel.py.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.config import Overrides, load_config, parse_config
from gateway.errors import ConfigError
from gateway.store.connection import (
    ClusterAddress,
    SentinelAddress,
    close,
    connect,
    is_cluster,
    parse_redis_url,
)

SECRET = "s3cr3t-pw"
SOURCE = "agentgw.yaml"


def test_plain_urls_are_left_to_redis_py() -> None:
    for url in (
        "redis://localhost",
        f"redis://:{SECRET}@redis.internal:6379/0",
        f"rediss://user:{SECRET}@redis.internal:6380/2",
        f"unix:///run/redis.sock?password={SECRET}&db=0",
    ):
        assert parse_redis_url(url) is None


def test_sentinel_url_names_sentinels_master_and_credentials() -> None:
    url = (
        f"redis+sentinel://app:{SECRET}@s1:26380,s2,[::1]:26381/main"
        "?db=3&sentinel_password=sentinel-pw"
    )
    assert parse_redis_url(url) == SentinelAddress(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        master_name="main",
        db=3,
        username="app",
        password=SECRET,
        sentinel_password="sentinel-pw",
    )
    assert parse_redis_url("redis+sentinel://s1/main") == SentinelAddress((("s1", 26379),), "main")


def test_cluster_url_names_startup_nodes_and_credentials() -> None:
    url = f"redis+cluster://app:{SECRET}@c1:7000,c2,[::1]:7002"
    assert parse_redis_url(url) == ClusterAddress(
        nodes=(("c1", 7000), ("c2", 6379), ("::1", 7002)), username="app", password=SECRET
    )
    assert parse_redis_url("redis+cluster://c1:7000") == ClusterAddress((("c1", 7000),))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"http://:{SECRET}@h", "expected a URL starting with redis://"),
        (f"redis://:{SECRET}@h:99999", "Port out of range"),
        (f"redis+sentinel://:{SECRET}@s1:26379", "needs a master name"),
        (f"redis+sentinel://:{SECRET}@s1:port/main", "sentinel s1: port must be 1-65535"),
        (f"redis+sentinel://:{SECRET}@/main", "expected host:port"),
        (f"redis+sentinel://:{SECRET}@s1,,s2/main", "expected host:port"),
        (f"redis+sentinel://s1/main?db=x&sentinel_password={SECRET}", "db must be a number"),
        (f"redis+sentinel://s1/main?password={SECRET}", "unknown option password"),
        (f"redis+cluster://:{SECRET}@c1:x", "node c1: port must be 1-65535"),
        (f"redis+cluster://:{SECRET}@c1:7000,,c2", "expected host:port"),
        (f"redis+cluster://:{SECRET}@c1:7000/0", "a cluster has no databases"),
        (f"redis+cluster://c1:7000?password={SECRET}", "no options are read"),
    ],
)
def test_bad_url_is_refused_without_its_password(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as refused:
        parse_redis_url(url)
    assert SECRET not in str(refused.value)


def test_config_file_error_names_line_and_key_but_not_the_password() -> None:
    text = textwrap.dedent(
        f"""\
        redis:
          key_prefix: gw
          url: redis+sentinel://:{SECRET}@s1:26379
        """
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text, SOURCE, Path("/"))
    message = str(refused.value)
    assert message.startswith(f"{SOURCE}:3: redis.url: redis+sentinel:// needs a master name")
    assert SECRET not in message


@pytest.mark.parametrize(("flag", "source"), [(True, "--redis-url"), (False, "AGENTGW_REDIS_URL")])
def test_flag_and_environment_urls_are_checked(tmp_path: Path, flag: bool, source: str) -> None:
    path = tmp_path / "agentgw.yaml"
    path.write_text(
        "principals:\n  - name: a\n    role: agent\n    token_sha256: " + "ab" * 32 + "\n"
    )
    url = f"redis+cluster://:{SECRET}@c1:port"
    overrides = Overrides(config_file=path, redis_url=url if flag else None)
    with pytest.raises(ConfigError) as refused:
        load_config(overrides, {} if flag else {"AGENTGW_REDIS_URL": url})
    assert str(refused.value).startswith(f"{source}: redis.url: redis+cluster://: node c1: port")
    assert SECRET not in str(refused.value)


def test_replica_acknowledgement_settings() -> None:
    redis = parse_config(
        "redis:\n  min_replicas_acked: 2\n  replica_ack_timeout_seconds: 0.25\n",
        SOURCE,
        Path("/"),
    ).redis
    assert (redis.min_replicas_acked, redis.replica_ack_timeout_seconds) == (2, 0.25)
    defaults = parse_config("redis:\n  key_prefix: gw\n", SOURCE, Path("/")).redis
    assert (defaults.min_replicas_acked, defaults.replica_ack_timeout_seconds) == (0, 1.0)
    with pytest.raises(ConfigError, match=r":2: redis.min_replicas_acked: expected an integer"):
        parse_config("redis:\n  min_replicas_acked: -1\n", SOURCE, Path("/"))
    with pytest.raises(ConfigError, match=r"redis.replica_ack_timeout_seconds: expected a number"):
        parse_config("redis:\n  replica_ack_timeout_seconds: 0\n", SOURCE, Path("/"))


def test_connect_builds_a_client_for_each_scheme() -> None:
    async def scenario() -> None:
        plain = connect("redis://h:6379/1", name="agentgw:p:decisions")
        tls = connect("rediss://h:6380/0")
        unix = connect("unix:///run/redis.sock?db=0", wait_for_connection=1.0)
        sentinel = connect(
            f"redis+sentinel://:{SECRET}@s1:26379,s2:26380/main?db=2", name="agentgw:p:decisions"
        )
        waiting = connect("redis+sentinel://s1/main", max_connections=8, wait_for_connection=2.0)
        try:
            assert plain.connection_pool.connection_kwargs["db"] == 1
            assert tls.connection_pool.connection_class is SSLConnection
            assert unix.connection_pool.connection_class is UnixDomainSocketConnection
            assert isinstance(unix.connection_pool, aioredis.BlockingConnectionPool)
            pool = sentinel.connection_pool
            assert isinstance(pool, SentinelConnectionPool) and pool.is_master
            assert pool.service_name == "main"
            assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, SECRET)
            assert pool.connection_kwargs["client_name"] == "agentgw:p:decisions"
            hosts = [
                s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels
            ]
            assert hosts == [26379, 26380]
            blocking = waiting.connection_pool
            assert isinstance(blocking, SentinelConnectionPool)
            assert isinstance(blocking, aioredis.BlockingConnectionPool)
            assert (blocking.max_connections, blocking.timeout) == (8, 2.0)
        finally:
            for client in (plain, tls, unix, sentinel, waiting):
                await close(client)

    asyncio.run(scenario())


def test_connect_builds_a_cluster_client_from_startup_nodes() -> None:
    async def scenario() -> None:
        client = connect(f"redis+cluster://:{SECRET}@c1:7000,c2:7001", name="agentgw:p:holds")
        try:
            assert is_cluster(client) and isinstance(client, RedisCluster)
            nodes = client.nodes_manager.startup_nodes
            assert sorted(nodes) == ["c1:7000", "c2:7001"]
            options = client.connection_kwargs
            assert (options["password"], options["client_name"]) == (SECRET, "agentgw:p:holds")
        finally:
            await close(client)

    asyncio.run(scenario())


def test_connect_refuses_a_bad_url_as_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^redis.url: redis\+cluster://: node c1: port"):
        connect(f"redis+cluster://:{SECRET}@c1:0")


def test_replica_acknowledgement_needs_a_redis_with_replicas(tmp_path: Path) -> None:
    path = tmp_path / "agentgw.yaml"
    path.write_text(
        "principals:\n  - name: a\n    role: agent\n    token_sha256: " + "ab" * 32 + "\n"
        "redis:\n  min_replicas_acked: 1\n"
    )
    with pytest.raises(ConfigError, match=r"redis.min_replicas_acked: the embedded Redis has no"):
        load_config(Overrides(config_file=path), {})
    config, _ = load_config(Overrides(config_file=path, redis_url="redis://r:6379/0"), {})
    assert config.redis.min_replicas_acked == 1

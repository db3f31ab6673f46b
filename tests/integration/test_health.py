"""Health follows Redis: NOT_SERVING while it is unreachable, SERVING once it is back."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Config, RedisSettings
from gateway.store.embedded import EmbeddedRedis, find_server_binary
from tests.harness import ManualClock, RunningGateway, wait_for
from tests.processes import server_binary

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "own-redis", binary=find_server_binary(server_binary()))
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop_blocking()


def restart_with_the_same_url(server: EmbeddedRedis) -> subprocess.Popen[bytes]:
    """The stopped server again, from the config it left behind: same socket or
    port, same password, same AOF, so the gateway's URL is valid again."""
    return subprocess.Popen(
        [str(server.binary), str(server.redis_dir / "redis.conf")],
        cwd=server.redis_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def status_of(stub: health_pb2_grpc.HealthStub, service: str = "") -> Callable[[], int]:
    def check() -> int:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)

    return check


def test_health_is_not_serving_while_redis_is_down_and_serving_once_it_is_back(
    own_redis: EmbeddedRedis, gateway_config: Config
) -> None:
    config = replace(gateway_config, redis=RedisSettings(url=own_redis.url, key_prefix="health"))
    gw = RunningGateway(config, ManualClock())
    restarted: subprocess.Popen[bytes] | None = None
    try:
        health = health_pb2_grpc.HealthStub(gw.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        own_redis.stop_blocking()
        assert next(watch).status == NOT_SERVING  # within about a second
        assert status_of(health, "agentgw.v1.Gateway")() == NOT_SERVING
        restarted = restart_with_the_same_url(own_redis)
        assert next(watch).status == SERVING
        watch.cancel()
        wait_for(lambda: status_of(health, "agentgw.v1.Gateway")() == SERVING, what="SERVING")
        # and decisions work again, on the clients' own reconnections
        assert gw.agent().submit("search", session_id="s1").audit_seq == 1
    finally:
        gw.stop()
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)

"""Health follows Redis: NOT_SERVING while it is unreachable, SERVING once it is back."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgw.v1 import audit_pb2
from gateway.config import AuditSettings, Config, RedisSettings
from gateway.store.embedded import EmbeddedRedis, find_server_binary
from tests.harness import GatewayLogs, ManualClock, RunningGateway, wait_for
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


SERVICES = (
    "agentgw.v1.Gateway",
    "agentgw.v1.Approvals",
    "agentgw.v1.Audit",
    "agentgw.v1.Alerts",
    "agentgw.v1.Logs",
)


def statuses(gw: RunningGateway) -> dict[str, int]:
    health = health_pb2_grpc.HealthStub(gw.channel)
    return {service: status_of(health, service)() for service in ("", *SERVICES)}


def test_a_replica_without_the_key_the_log_names_is_not_ready_for_what_signs(
    make_gateway: Callable[..., RunningGateway], tmp_path: Path, gateway_logs: GatewayLogs
) -> None:
    one = make_gateway()
    lonely_dir = tmp_path / "replica-keys"
    two = make_gateway(
        audit=AuditSettings(signing_key_file=one.config.signing_key_path, key_dir=lonely_dir)
    )
    assert set(statuses(two).values()) == {SERVING}
    rotation = one.audit.RotateKey(
        audit_pb2.RotateKeyRequest(reason="scheduled"), metadata=one.md("admin-1")
    )
    # Every service that writes audit entries is out; reading the logs is not.
    expected = {service: NOT_SERVING for service in ("", *SERVICES)}
    expected["agentgw.v1.Logs"] = SERVING
    wait_for(lambda: statuses(two) == expected, what="two to be NOT_SERVING")
    assert set(statuses(one).values()) == {SERVING}  # the replica with the key serves
    changes = [r for r in gateway_logs.records if r.getMessage().startswith("health changed")]
    assert changes and rotation.new_key.key_id in changes[-1].failing["signing_key"]

    lonely_dir.mkdir()
    name = f"{rotation.new_key.key_id}.pem"
    shutil.copy(one.config.key_dir_path / name, lonely_dir / name)
    wait_for(lambda: set(statuses(two).values()) == {SERVING}, what="two to serve again")
    assert two.agent().submit("search", session_id="after").audit_seq == 2


def test_a_stopped_audit_writer_takes_the_services_that_sign_out(gw: RunningGateway) -> None:
    assert set(statuses(gw).values()) == {SERVING}
    gw.loop.call_soon_threadsafe(gw.app._audit_writer.cancel)
    expected = {service: NOT_SERVING for service in ("", *SERVICES)}
    expected["agentgw.v1.Logs"] = SERVING
    wait_for(lambda: statuses(gw) == expected, what="NOT_SERVING without the audit writer")

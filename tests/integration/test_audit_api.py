"""The audit log through gRPC: entries, checkpoints, keys, fail-closed, many writers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis

from agentgw.v1 import audit_pb2, gateway_pb2
from gateway.domain.audit.checkpoint import open_checkpoint
from gateway.domain.audit.verify import verify_export
from tests.harness import GatewayLogs, RunningGateway


def test_checkpoint_is_signed_and_matches_the_export(gw: RunningGateway) -> None:
    agent = gw.agent()
    for i in range(7):
        agent.submit("search" if i % 2 else "send_email", session_id=f"s{i}", parameters={"i": i})
    keys = gw.key_set()
    cp = gw.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=gw.md("auditor-1"))
    assert cp.size == 7
    opened = open_checkpoint(cp.note, keys)
    assert opened.size == 7 and opened.root_hash.hex() == cp.root_hash
    report = verify_export(gw.export_lines(), keys, opened)
    assert report.ok, report.failure
    assert (
        report.count == 7 and report.root_hash == cp.root_hash and report.head_hash == cp.head_hash
    )


def test_read_entries_by_range(gw: RunningGateway) -> None:
    agent = gw.agent()
    for i in range(5):
        agent.submit("search", session_id=f"s{i}")
    stream = gw.audit.ReadEntries(
        audit_pb2.ReadEntriesRequest(start_seq=2, end_seq=4), metadata=gw.md("auditor-1")
    )
    assert [e.seq for e in stream] == [2, 3, 4]


def test_agents_cannot_read_the_audit_log(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gw.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=gw.md("agent-1"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        list(gw.audit.ReadEntries(audit_pb2.ReadEntriesRequest(), metadata=gw.md("approver-1")))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_failed_audit_append_fails_closed_and_frees_the_action_id(
    gw: RunningGateway, redis_url: str, key_prefix: str
) -> None:
    agent = gw.agent()
    agent.submit("search", session_id="s", parameters={"n": 1})
    raw = redis.Redis.from_url(redis_url)
    head_key = f"{key_prefix}:{{audit}}:head"
    saved = raw.hgetall(head_key)
    # Corrupt the log head's type: the append script now fails inside Redis.
    raw.delete(head_key)
    raw.set(head_key, "not a hash")
    with pytest.raises(grpc.RpcError) as e:
        agent.submit("search", session_id="s", action_id="retry-me")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raw.llen(f"{key_prefix}:{{audit}}:entries") == 1
    raw.delete(head_key)
    raw.hset(head_key, mapping=saved)
    # The same action_id can be retried once the log is healthy again.
    retried = agent.submit("search", session_id="s", action_id="retry-me")
    assert retried.verdict == gateway_pb2.VERDICT_ALLOW
    assert retried.audit_seq == 2
    raw.close()


def test_redis_down_is_unavailable_never_allow(make_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.config import RedisSettings
    from gateway.store.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "own-redis")
    server.start_blocking()
    try:
        gw = make_gateway(redis=RedisSettings(url=server.url, key_prefix="down"))
        assert gw.agent().submit("search", session_id="s").verdict == gateway_pb2.VERDICT_ALLOW
    finally:
        server.stop_blocking()
    with pytest.raises(grpc.RpcError) as e:
        gw.agent().submit("search", session_id="s")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_two_gateways_append_to_one_chain_without_forks_or_gaps(make_gateway) -> None:  # type: ignore[no-untyped-def]
    # Replicas share the signing key (here: the same data dir), as in a deployment
    # where the key is mounted into every replica.
    one, two = make_gateway(), make_gateway()

    def burst(args: tuple[RunningGateway, int]) -> int:
        gw, n = args
        agent = gw.agent("agent-1" if n % 2 else "agent-2")
        return agent.submit("search", session_id=f"s{n % 7}", parameters={"n": n}).audit_seq

    with ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(burst, [(one if n % 2 else two, n) for n in range(120)]))
    assert sorted(seqs) == list(range(1, 121))
    lines = one.export_lines()
    report = verify_export(lines, two.key_set())
    assert report.ok, report.failure
    assert report.count == 120


def test_a_damaged_stored_entry_is_data_loss_not_an_answer(
    gw: RunningGateway, redis_url: str, key_prefix: str, gateway_logs: GatewayLogs
) -> None:
    gw.agent().submit("search", session_id="s")
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.lset(f"{key_prefix}:{{audit}}:entries", 0, '{"seq": 1, "not": "an entry"}')
    finally:
        raw.close()
    with pytest.raises(grpc.RpcError) as e:
        list(gw.audit.ReadEntries(audit_pb2.ReadEntriesRequest(), metadata=gw.md("auditor-1")))
    assert e.value.code() == grpc.StatusCode.DATA_LOSS
    ref = e.value.details().rsplit("ref ", 1)[1].rstrip(")")
    assert e.value.details() == f"the stored audit log is malformed (ref {ref})"
    assert gateway_logs.with_ref(ref)

"""Sealing the audit log into tiles, on real Redis with in-process gateways: what Redis
keeps, what the tile store holds (byte for byte the tlog-tiles reference's files),
reads across the sealed/unsealed boundary answering as a log that was never sealed,
the margin, replicas sharing one store (and one on another), and a store that cannot
be written (the backlog fails closed, then sealing catches up).

A log that was never sealed is built beside the sealed one from the same drafts with
the same key, in another key prefix: Ed25519 signatures are deterministic, so its
entries are byte-identical. Its sealer is kept off by a seal lease the test holds
(as another replica would), so nothing in the gateway needs a switch for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentgw.v1 import audit_pb2
from clients.cli import main as cli_main
from clients.wire import consistency_proof_from_proto, inclusion_proof_from_proto
from gateway.config import Config, RedisSettings
from gateway.domain.audit.chain import Head, KeyIntroduced, Segment, extend
from gateway.domain.audit.checkpoint import Checkpoint, open_checkpoint
from gateway.domain.audit.entry import EntryDraft, format_timestamp, read_export_object
from gateway.domain.audit.keys import KeySet, SigningKeys
from gateway.domain.audit.merkle import (
    CompactRange,
    leaf_hash_of,
    root_nodes,
    root_of,
    verify_inclusion,
)
from gateway.domain.audit.proofs import InclusionProof, check_consistency, check_inclusion
from gateway.domain.audit.verify import verify_export
from gateway.domain.audit_settings import AuditSettings, TileSettings
from gateway.store.audit_log import AuditLog, key_history_fields
from gateway.store.connection import close, connect, load_script
from gateway.store.embedded import EmbeddedRedis
from gateway.store.intents import IntentWriter, Lifetimes
from gateway.store.keys import KeySpace
from gateway.store.sealed_log import SealedLog, SealedState, Sealer, SealError, WrongTileStore
from gateway.store.tile_store import IDENTITY_FILE, DirectoryTileStore, TileConflict, TileStoreError
from tests import tlog_tiles_reference as reference
from tests.harness import (
    GatewayLogs,
    ManualClock,
    RunningGateway,
    test_principals,
    token_for,
    wait_for,
)
from tests.integration.test_alerts import of_rule

TILE = 256
ORIGIN = "agentgw.test/sealing"
T = TypeVar("T")
T0 = 1_800_000_000  # entry n is stamped T0 + 60 n: time-bounded queries cross tiles too
FAST = TileSettings(seal_interval_seconds=0.05)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
AUDITOR = "auditor-1"

# --- building logs -------------------------------------------------------------------


def draft(n: int) -> EntryDraft:
    """The n-th entry's draft (n from 1): the same for every log built from it."""
    kinds = [
        ("action_decided", "agent", "allow"),
        ("action_decided", "agent", "deny"),
        ("session_resumed", "user", "ok"),
        ("security_permission_denied", "agent", "denied"),
        ("action_decided", "agent", "hold"),
    ]
    event_type, actor_type, outcome = kinds[n % len(kinds)]
    actor = f"agent-{n % 3}" if actor_type == "agent" else f"user-{n % 2}"
    return EntryDraft(
        timestamp=format_timestamp(T0 + 60 * n),
        event_type=event_type,
        actor=actor,
        actor_type=actor_type,
        action_id=f"a-{n}" if event_type == "action_decided" else "",
        action_type="search" if event_type == "action_decided" else "",
        resource="",
        details={"n": n, "session_id": f"s{n % 4}", "agent_id": actor},
        outcome=outcome,
    )


async def append(audit: AuditLog, first: int, last: int, per_commit: int = 100) -> None:
    """Commits the drafts of entries first..last (seqs, when the log holds first - 1)."""
    for start in range(first, last + 1, per_commit):
        stop = min(start + per_commit - 1, last)
        await audit.commit([draft(n) for n in range(start, stop + 1)])


def grow(gw: RunningGateway, to: int) -> None:
    """Appends drafted entries until the log holds `to`."""
    head = gw.audit_head()
    gw.run(append(gw.app.audit, head + 1, to))
    assert gw.audit_head() == to


# --- what Redis and the tile store hold ----------------------------------------------------


def canonical(line: str) -> bytes:
    """The entry's C (the leaf data and bundle entry), from its export line."""
    return read_export_object(json.loads(line), line)[1]


def sealed_fields(raw: redis.Redis, keys: KeySpace) -> dict[str, str]:
    return raw.hgetall(keys.audit_sealed)  # type: ignore[return-value]


def sealed_size(raw: redis.Redis, keys: KeySpace) -> int:
    return int(str(raw.hget(keys.audit_sealed, "size") or 0))


def stored_files(root: Path) -> tuple[dict[str, bytes], list[str]]:
    """The tile store's files by path (not its identity file), and its hidden
    temporary files (a crashed write's leftovers), which must never count as tiles."""
    files, hidden = {}, []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if name.startswith("."):
                assert name.endswith(".tmp"), f"{relative}: a hidden file that is no temp file"
                hidden.append(relative)
            elif relative != IDENTITY_FILE:
                files[relative] = path.read_bytes()
    return files, hidden


def expected_files(lines: list[str], sealed: int) -> dict[str, bytes]:
    """The files a log sealed to `sealed` holds: of the reference's files for the
    export's entries, the full tiles and bundles within `sealed` (a sealed log has no
    partial ones), and lines/<N>, each bundle's export lines."""
    files = {}
    for path, data in reference.tile_log_files([canonical(line) for line in lines]).items():
        parsed = reference.parse_tile_path(path)
        level = parsed.level if isinstance(parsed, reference.Tile) else 0
        if not parsed.is_partial and (parsed.index + 1) * TILE ** (level + 1) <= sealed:
            files[path] = data
    for index in range(sealed // TILE):
        bundle = lines[index * TILE : (index + 1) * TILE]
        files[f"lines/{reference.encode_index(index)}"] = "".join(f"{x}\n" for x in bundle).encode()
    return files


def unsealed_tree(size: int, sealed: int) -> set[str]:
    """The tree node fields Redis keeps for a log of `size` sealed to `sealed` (below
    65,536 entries): every node of height 8 and up, and below that only the nodes of
    the unsealed entries. So HLEN < 2 (size - sealed) + 2 size / 256 + 1."""
    fields = set()
    for height in range(size.bit_length()):
        for index in range(size >> height):
            if height < 8 and (index + 1) << height <= sealed:
                continue  # in a sealed level-0 tile
            fields.add(f"{height}:{index}")
    assert len(fields) < 2 * (size - sealed) + 2 * size / TILE + 1
    return fields


def assert_sealed_state(
    raw: redis.Redis, keys: KeySpace, root: Path, lines: list[str], sealed: int, margin: int = 0
) -> None:
    """Redis holds only what is not sealed (beyond the margin), and the store holds
    the reference's bytes for everything that is."""
    head = len(lines)
    trimmed = max(0, sealed - margin - (sealed - margin) % TILE)
    state = sealed_fields(raw, keys)
    assert int(state.get("size", 0)) == sealed
    assert int(state.get("trimmed", 0)) == trimmed
    assert raw.llen(keys.audit_entries) == head - trimmed
    assert raw.lrange(keys.audit_entries, 0, -1) == lines[trimmed:]
    assert set(map(str, raw.hkeys(keys.audit_tree))) == unsealed_tree(head, sealed)
    files, _ = stored_files(root)  # a crashed write's temporary files: never tiles
    assert files == expected_files(lines, sealed)
    if sealed:
        identity = json.loads((root / IDENTITY_FILE).read_text(encoding="utf-8"))
        assert identity["store_id"] == state["store_id"]


def status(gw: RunningGateway, service: str = "agentgw.v1.Audit") -> int:
    health = health_pb2_grpc.HealthStub(gw.channel)
    return int(health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def seal_failures(logs: GatewayLogs) -> list[str]:
    return [
        r.getMessage()
        for r in logs.records
        if r.getMessage().startswith("sealing the audit log failed")
    ]


# --- sealing and trimming ----------------------------------------------------------------


@pytest.mark.parametrize("entries", [255, 512, 600])
def test_sealing_leaves_only_the_unsealed_tail_in_redis_and_the_references_tiles_on_disk(
    make_gateway: Callable[..., RunningGateway],
    gateway_config: Config,
    raw: redis.Redis,
    key_prefix: str,
    entries: int,
) -> None:
    gw = make_gateway(audit=AuditSettings(tiles=FAST))
    keys = KeySpace(key_prefix)
    grow(gw, entries)
    sealed = entries - entries % TILE
    wait_for(lambda: sealed_size(raw, keys) == sealed, what=f"sealed size {sealed}")
    # A round of the sealer after the last append has seen what is left.
    wait_for(lambda: gw.app.sealing.unsealed == entries - sealed, what="a sealing round")
    lines = gw.export_lines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, entries + 1))
    assert_sealed_state(raw, keys, gateway_config.tile_dir_path, lines, sealed)
    assert gw.app.sealing.sealer.sealed == sealed // TILE
    assert status(gw) == SERVING


# --- reading across the boundary: the same answers as a log never sealed ------------------


@dataclass
class LogPair:
    sealed: RunningGateway
    plain: RunningGateway  # the same entries, never sealed
    keys: KeySet
    checkpoints: dict[int, Checkpoint]  # of the sealed log, by size
    lines: list[str]
    tmp: Path


PAIR_SIZE = 600
CHECKPOINT_SIZES = (1, 100, 255, 256, 257, 300, 511, 512, 513, 555, 600)
POINTS = sorted({1, 2, 100, 255, 256, 257, 258, 300, 511, 512, 513, 514, 555, 599, 600})
WINDOW_POINTS = [1, 2, 255, 256, 257, 300, 511, 512, 513, 599, 600]


def pair_config(tmp: Path, url: str, name: str, key: Path) -> Config:
    return Config(
        listen="127.0.0.1:0",
        data_dir=tmp / name,
        principals=test_principals(),
        redis=RedisSettings(url=url, key_prefix=f"{name}{os.urandom(6).hex()}"),
        audit=AuditSettings(signing_key_file=key, tiles=FAST),
    )


@pytest.fixture(scope="module")
def pair(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LogPair]:
    """A 600-entry log sealed to 512 and the same log never sealed, with checkpoints
    of the sealed one at the sizes around the boundaries."""
    tmp = tmp_path_factory.mktemp("pair")
    key = tmp / "audit-signing-key.pem"
    sealed_config = pair_config(tmp, redis_server.url, "sealed", key)
    plain_config = pair_config(tmp, redis_server.url, "plain", key)
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    # The plain log's sealer never gets the lease: "another replica" holds it for good.
    raw.set(KeySpace(plain_config.redis.key_prefix).audit_seal_lease, "held-by-the-test")
    started: list[RunningGateway] = []
    try:
        sealed = RunningGateway(sealed_config, ManualClock())
        started.append(sealed)
        plain = RunningGateway(plain_config, ManualClock())
        started.append(plain)
        keys = sealed.key_set()
        checkpoints = {}
        for size in CHECKPOINT_SIZES:
            grow(sealed, size)
            grow(plain, size)
            note = sealed.audit.GetCheckpoint(
                audit_pb2.GetCheckpointRequest(), metadata=sealed.md(AUDITOR)
            ).note
            checkpoints[size] = open_checkpoint(note, keys)
        sealed_keys = KeySpace(sealed_config.redis.key_prefix)
        wait_for(lambda: sealed_size(raw, sealed_keys) == 512, what="the log sealed to 512")
        plain_keys = KeySpace(plain_config.redis.key_prefix)
        assert sealed_size(raw, plain_keys) == 0
        assert raw.llen(plain_keys.audit_entries) == PAIR_SIZE
        assert raw.llen(sealed_keys.audit_entries) == PAIR_SIZE - 512
        lines = plain.export_lines()
        yield LogPair(sealed, plain, keys, checkpoints, lines, tmp)
    finally:
        for gw in reversed(started):
            gw.stop()
        raw.close()


def read(gw: RunningGateway, start: int, end: int) -> list[str]:
    request = audit_pb2.ReadEntriesRequest(start_seq=start, end_seq=end)
    stream = gw.audit.ReadEntries(request, metadata=gw.md(AUDITOR))
    return [e.SerializeToString(deterministic=True).hex() for e in stream]


@pytest.fixture(scope="module")
def never_sealed(pair: LogPair) -> list[str]:
    """Every entry as the log never sealed sends it (ReadEntries of it all)."""
    return read(pair.plain, 0, 0)


def windows() -> Iterator[tuple[int, int]]:
    """(start, end) around the boundaries: each pair of points at most a tile and a
    bit apart (so every window that crosses 256 or 512, or both), and to the head."""
    for start in [0, *WINDOW_POINTS]:
        yield start, 0
        for end in WINDOW_POINTS:
            if max(start, 1) <= end <= start + 260:
                yield start, end
    yield 1, 700


def test_every_window_around_the_tile_boundaries_reads_as_in_the_log_never_sealed(
    pair: LogPair, never_sealed: list[str]
) -> None:
    assert len(never_sealed) == PAIR_SIZE
    for start, end in windows():
        first, last = max(start, 1), min(end or PAIR_SIZE, PAIR_SIZE)
        assert read(pair.sealed, start, end) == never_sealed[first - 1 : last], (start, end)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_windows_read_as_in_the_log_never_sealed(
    pair: LogPair, never_sealed: list[str], data: st.DataObject
) -> None:
    near = st.sampled_from(POINTS).flatmap(lambda p: st.integers(max(1, p - 3), p + 3))
    start = data.draw(st.one_of(near, st.integers(1, PAIR_SIZE)), label="start")
    end = data.draw(st.one_of(near, st.integers(start, PAIR_SIZE + 5)), label="end")
    if end < start:
        start, end = end, start
    assert read(pair.sealed, start, end) == never_sealed[start - 1 : min(end, PAIR_SIZE)]
    seqs = data.draw(st.lists(st.one_of(near, st.integers(0, PAIR_SIZE + 2)), max_size=6))
    for gw in (pair.sealed, pair.plain):
        lines_at = gw.run(gw.app.audit.read_lines_at(seqs))
        assert lines_at == [pair.lines[s - 1] if 1 <= s <= PAIR_SIZE else None for s in seqs]


QUERIES = [
    {},
    {"event_type": "session_resumed"},
    {"actor": "agent-1", "outcome": "deny"},
    {"after_seq": 250, "limit": 20},
    {"after_seq": 511, "event_type": "action_decided", "limit": 3},
    {"agent_id": "agent-2"},
    {"session_id": "s3", "after_seq": 100},
    {"start_time": T0 + 60 * 250, "end_time": T0 + 60 * 262},
    {"start_time": T0 + 60 * 500, "end_time": T0 + 60 * 530, "actor_type": "user"},
    {"start_time": T0 + 60 * 511, "event_type": "security_permission_denied"},
    {"end_time": T0 + 60 * 257},
    {"start_time": T0 + 60 * 590},
]


def as_request(cls: Any, fields: dict[str, Any]) -> Any:
    times = {k: timestamp_pb2.Timestamp(seconds=v) for k, v in fields.items() if "time" in k}
    return cls(**{**fields, **times})


@pytest.mark.parametrize("fields", QUERIES, ids=lambda f: ",".join(f) or "all")
def test_queries_and_reports_answer_as_in_the_log_never_sealed(
    pair: LogPair, fields: dict[str, Any]
) -> None:
    def query(gw: RunningGateway) -> list[bytes]:
        stream = gw.audit.Query(as_request(audit_pb2.QueryRequest, fields), metadata=gw.md(AUDITOR))
        return [e.SerializeToString(deterministic=True) for e in stream]

    found = query(pair.sealed)
    assert found == query(pair.plain)
    if not fields:
        assert len(found) == PAIR_SIZE
    timed = {k: v for k, v in fields.items() if "time" in k}
    report = as_request(audit_pb2.ReportRequest, {**timed, "max_entries": 7})
    answers = [gw.audit.Report(report, metadata=gw.md(AUDITOR)) for gw in (pair.sealed, pair.plain)]
    assert answers[0] == answers[1]
    assert answers[0].total > 0


def inclusion(gw: RunningGateway, seq: int, size: int) -> audit_pb2.InclusionProof:
    request = audit_pb2.GetInclusionProofRequest(seq=seq, tree_size=size)
    proof: audit_pb2.InclusionProof = gw.audit.GetInclusionProof(request, metadata=gw.md(AUDITOR))
    return proof


def consistency(gw: RunningGateway, old: int, new: int) -> audit_pb2.ConsistencyProof:
    request = audit_pb2.GetConsistencyProofRequest(old_size=old, new_size=new)
    proof: audit_pb2.ConsistencyProof = gw.audit.GetConsistencyProof(
        request, metadata=gw.md(AUDITOR)
    )
    return proof


def test_proofs_from_sealed_and_unsealed_parts_verify_against_checkpoints(pair: LogPair) -> None:
    leaves = [leaf_hash_of(canonical(line)) for line in pair.lines]
    for size, checkpoint in pair.checkpoints.items():
        for seq in [p for p in POINTS if p <= size]:
            path = inclusion(pair.sealed, seq, size)
            assert path == inclusion(pair.plain, seq, size), (seq, size)
            check_inclusion(
                leaves[seq - 1], seq, "export", checkpoint, inclusion_proof_from_proto(path)
            )
    sizes = sorted(pair.checkpoints)
    for old in sizes:
        for new in [s for s in sizes if s > old]:
            proof = consistency(pair.sealed, old, new)
            assert proof == consistency(pair.plain, old, new), (old, new)
            check_consistency(
                pair.checkpoints[old], pair.checkpoints[new], consistency_proof_from_proto(proof)
            )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_proofs_are_those_of_the_log_never_sealed(
    pair: LogPair, data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, PAIR_SIZE), label="size")
    seq = data.draw(st.integers(1, size), label="seq")
    assert inclusion(pair.sealed, seq, size) == inclusion(pair.plain, seq, size)
    old = data.draw(st.integers(1, size), label="old")
    assert consistency(pair.sealed, old, size) == consistency(pair.plain, old, size)


def test_an_export_is_the_log_never_sealed_and_verifies(pair: LogPair) -> None:
    exports = {}
    for name, gw in (("sealed", pair.sealed), ("plain", pair.plain)):
        out = pair.tmp / f"{name}.jsonl"
        server = ["--server", gw.target, "--token", token_for(AUDITOR)]
        assert cli_main(["audit", "export", "--out", str(out), *server]) == 0
        exports[name] = out.read_bytes()
    assert exports["sealed"] == exports["plain"]
    lines = exports["sealed"].decode().splitlines()
    assert lines == pair.lines
    report = verify_export(lines, pair.keys, pair.checkpoints[PAIR_SIZE])
    assert report.ok, report.failure
    assert report.count == PAIR_SIZE


# --- the margin ----------------------------------------------------------------------------


def test_a_margin_keeps_the_last_sealed_tile_in_redis_and_reads_it_from_there(
    make_gateway: Callable[..., RunningGateway],
    gateway_config: Config,
    raw: redis.Redis,
    key_prefix: str,
) -> None:
    gw = make_gateway(audit=AuditSettings(tiles=replace(FAST, margin_entries=256)))
    keys = KeySpace(key_prefix)
    grow(gw, 600)
    wait_for(lambda: sealed_size(raw, keys) == 512, what="the log sealed to 512")
    lines = gw.export_lines()
    root = gateway_config.tile_dir_path
    assert_sealed_state(raw, keys, root, lines, 512, margin=256)
    assert json.loads(raw.lindex(keys.audit_entries, 0))["seq"] == 257  # type: ignore[arg-type]
    # Entries 257..512 come from Redis: without their bundle, they still read.
    (root / "lines/001").unlink()
    assert gw.export_lines() == lines


# --- replicas --------------------------------------------------------------------------------


def submit_from(gw: RunningGateway, agent: str, count: int, errors: list[BaseException]) -> None:
    client = gw.agent(agent)
    try:
        for i in range(count):
            client.submit("search", session_id=f"{agent}-{gw.target}-{i}", parameters={"i": i})
    except BaseException as e:  # reported by the test, not lost in the thread
        errors.append(e)


def test_two_replicas_sharing_the_store_seal_each_tile_exactly_once(
    make_gateway: Callable[..., RunningGateway],
    gateway_config: Config,
    raw: redis.Redis,
    key_prefix: str,
    gateway_logs: GatewayLogs,
) -> None:
    replicas = [make_gateway(audit=AuditSettings(tiles=FAST)) for _ in range(2)]
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=submit_from, args=(gw, agent, 70, errors))
        for gw in replicas
        for agent in ("agent-1", "agent-2", "agent-1", "agent-2")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    keys = KeySpace(key_prefix)
    head = replicas[0].audit_head()
    assert head == 8 * 70
    sealed = head - head % TILE
    wait_for(lambda: sealed_size(raw, keys) == sealed, what=f"the log sealed to {sealed}")
    assert sum(gw.app.sealing.sealer.sealed for gw in replicas) == sealed // TILE
    assert not seal_failures(gateway_logs)
    assert not [r for r in gateway_logs.records if "TileConflict" in r.getMessage()]
    lines = replicas[1].export_lines()
    assert_sealed_state(raw, keys, gateway_config.tile_dir_path, lines, sealed)
    report = verify_export(lines, replicas[0].key_set())
    assert report.ok, report.failure
    assert report.count == head


def test_a_replica_on_another_tile_store_says_so_and_does_not_stop_the_others(
    make_gateway: Callable[..., RunningGateway],
    gateway_config: Config,
    raw: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    keys = KeySpace(key_prefix)
    one = make_gateway(audit=AuditSettings(tiles=FAST))
    grow(one, 300)
    wait_for(lambda: sealed_size(raw, keys) == 256, what="the first tile sealed")
    other_store = tmp_path / "another-store"
    two = make_gateway(audit=AuditSettings(tiles=replace(FAST, dir=other_store)))
    wait_for(lambda: status(two) == NOT_SERVING, what="two's Audit service NOT_SERVING")
    assert "sealed into tile store" in two.app.sealing.problem()
    with pytest.raises(WrongTileStore, match=str(other_store)):
        two.run(two.app.sealing.sealer.seal_once())
    assert status(two, "agentgw.v1.Gateway") == SERVING
    assert status(one) == SERVING
    (alert,) = wait_for(lambda: of_rule(two, "audit_sealing_failed"), what="the alert")
    assert str(other_store) in alert.message
    # Two still appends; with the lease free (as once one's lease ends), two does not
    # take it, so one seals the next tile.
    raw.delete(keys.audit_seal_lease)
    decision = two.agent().submit("search", session_id="on-two")
    assert decision.audit_seq == 301
    grow(two, 560)
    wait_for(lambda: sealed_size(raw, keys) == 512, timeout=15, what="one to seal tile 1")
    assert two.app.sealing.sealer.sealed == 0
    assert not (other_store / "tile").exists()
    assert status(two) == NOT_SERVING


# --- a store that cannot be written ----------------------------------------------------------


def test_an_unwritable_store_fails_loudly_then_closed_and_sealing_catches_up(
    make_gateway: Callable[..., RunningGateway],
    raw: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
    gateway_logs: GatewayLogs,
) -> None:
    store = tmp_path / "tiles"
    store.write_text("not a directory")  # so mkdir fails, as root too
    gw = make_gateway(
        audit=AuditSettings(
            tiles=replace(FAST, dir=store, max_unsealed_entries=600, not_serving_after_entries=300)
        )
    )
    keys = KeySpace(key_prefix)
    grow(gw, 300)
    (alert,) = wait_for(lambda: of_rule(gw, "audit_sealing_failed"), what="the alert")
    assert str(store) in alert.message
    assert seal_failures(gateway_logs)
    assert status(gw) == SERVING  # 300 waiting: not past not_serving_after_entries
    grow(gw, 600)
    wait_for(lambda: status(gw) == NOT_SERVING, what="the Audit service NOT_SERVING")
    assert status(gw, "agentgw.v1.Gateway") == SERVING  # decisions still go on
    with pytest.raises(grpc.RpcError) as refused:
        gw.agent().submit("search", session_id="s", action_id="over", attempts=1)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "max_unsealed_entries" in (refused.value.details() or "")
    assert "600 entries not sealed" in (refused.value.details() or "")
    assert gw.audit_head() == 600 and raw.llen(keys.audit_entries) == 600
    assert sealed_size(raw, keys) == 0

    store.unlink()
    store.mkdir()
    wait_for(lambda: sealed_size(raw, keys) == 512, what="sealing to catch up")
    wait_for(lambda: status(gw) == SERVING, what="the Audit service SERVING again")
    decision = gw.agent().submit("search", session_id="s", action_id="over", attempts=1)
    assert decision.audit_seq == 601
    lines = gw.export_lines()
    assert_sealed_state(raw, keys, store, lines, 512)
    assert verify_export(lines, gw.key_set()).ok


# --- one sealer at a time, and only from where the log is ------------------------------------


@dataclass(frozen=True)
class BareLog:
    """An audit log in Redis built without a gateway, so no sealer runs but the test's,
    and its reads (AuditLog with the tile store's SealedLog), each on a loop of its own."""

    url: str
    keys: KeySpace
    key_file: Path
    tiles: Path

    @contextlib.asynccontextmanager
    async def audit(self) -> AsyncIterator[AuditLog]:
        client = connect(self.url)
        audit = AuditLog(
            client,
            IntentWriter(self.keys, Lifetimes(), single_node=True),
            SigningKeys(self.key_file, self.key_file.parent / "audit-keys"),
            ORIGIN,
            time.time,
        )
        audit.sealed = SealedLog(DirectoryTileStore(self.tiles))
        writer = asyncio.create_task(audit.run())
        try:
            yield audit
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await close(client)

    def grow(self, to: int) -> None:
        async def appending() -> None:
            async with self.audit() as audit:
                await append(audit, (await audit.head()).seq + 1, to)

        asyncio.run(appending())

    def lines(self) -> list[str]:
        """The whole log as the gateway reads it (Redis, and the store for the sealed)."""

        async def reading() -> list[str]:
            async with self.audit() as audit:
                return await audit.read_lines(1, (await audit.head()).seq)

        return asyncio.run(reading())

    def lines_between(self, first: int, last: int) -> list[str]:
        async def reading() -> list[str]:
            async with self.audit() as audit:
                return await audit.read_lines(first, last)

        return asyncio.run(reading())

    def inclusion_proof(self, seq: int, size: int) -> InclusionProof:
        async def proving() -> InclusionProof:
            async with self.audit() as audit:
                return await audit.inclusion_proof(seq, size)

        return asyncio.run(proving())

    def key_set(self) -> KeySet:
        async def reading() -> KeySet:
            async with self.audit() as audit:
                return KeySet(origin=ORIGIN, keys=await audit.key_history())

        return asyncio.run(reading())

    def sealer(self, **options: Any) -> Callable[[aioredis.Redis], Sealer]:
        return lambda client: Sealer(client, self.keys, DirectoryTileStore(self.tiles), **options)

    def run(self, make: Callable[[aioredis.Redis], Sealer], seal: str = "seal_all") -> Any:
        """Runs a sealer's seal_all (or seal_once) on a loop and connection of its own."""

        async def sealing() -> Any:
            client = connect(self.url)
            try:
                return await getattr(make(client), seal)()
            finally:
                await close(client)

        return elsewhere(sealing())

    def verify(self, size: int) -> list[str]:
        """No entry lost or doubled: seqs 1..size, and the chain verifies."""
        lines = self.lines()
        assert [json.loads(line)["seq"] for line in lines] == list(range(1, size + 1))
        report = verify_export(lines, self.key_set())
        assert report.ok, report.failure
        assert report.count == size
        return lines


@pytest.fixture
def bare(redis_url: str, key_prefix: str, tmp_path: Path) -> BareLog:
    return BareLog(
        redis_url, KeySpace(key_prefix), tmp_path / "signing-key.pem", tmp_path / "tiles"
    )


def elsewhere(coro: Coroutine[Any, Any, T]) -> T:
    """Runs `coro` to the end on an event loop of its own, in a thread of its own (so
    it can be called from inside a coroutine, as a sealer's on_step hook is)."""
    result: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as e:  # handed to the caller's thread
            failed.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if failed:
        raise failed[0]
    assert result, "the coroutine did not finish"
    return result[0]


def test_seal_lua_records_only_for_the_lease_holder_and_from_the_size_it_started_from(
    bare: BareLog, raw: redis.Redis
) -> None:
    keys = bare.keys
    bare.grow(600)
    raw.set(keys.audit_seal_lease, "holder")

    async def record(owner: str, start: int) -> list[str]:
        client = connect(bare.url)
        try:
            script = load_script(client, "seal")
            names = [keys.audit_sealed, keys.audit_seal_lease, keys.audit_entries, keys.audit_tree]
            reply = await script(keys=names, args=[owner, start, start + TILE, "store-x", 0, "0:0"])
            return [str(part) for part in reply]
        finally:
            await close(client)

    def snapshot() -> tuple[Any, ...]:
        return sealed_fields(raw, keys), raw.llen(keys.audit_entries), raw.hlen(keys.audit_tree)

    before = snapshot()
    assert elsewhere(record("someone-else", 0)) == ["lease"]
    assert snapshot() == before
    assert elsewhere(record("holder", 0)) == ["ok", "256"]
    assert snapshot() != before
    before = snapshot()
    assert elsewhere(record("holder", 0)) == ["moved", "256"]  # that tile again: refused
    assert snapshot() == before
    assert elsewhere(record("holder", 256)) == ["ok", "512"]
    assert sealed_fields(raw, keys) == {"size": "512", "trimmed": "512", "store_id": "store-x"}
    assert raw.llen(keys.audit_entries) == 600 - 512


def test_a_sealer_that_lost_its_lease_mid_tile_records_nothing(
    bare: BareLog, raw: redis.Redis
) -> None:
    """A slow sealer whose lease ended while it wrote: another sealed meanwhile (the
    same bytes), and the slow one's record is refused; each tile counted once."""
    bare.grow(600)
    done: list[int] = []

    def meanwhile(step: str) -> None:
        if step == "wrote tile/0/000":
            lease = bare.keys.audit_seal_lease
            wait_for(lambda: raw.get(lease) is None, what="the slow sealer's lease to end")
            done.append(bare.run(bare.sealer(owner="other")))

    def slow(client: aioredis.Redis) -> Sealer:
        sealer = bare.sealer(lease_seconds=0.2, owner="slow")(client)
        sealer.on_step = meanwhile
        return sealer

    assert bare.run(slow, "seal_once") is False
    assert done == [2]
    assert_sealed_state(raw, bare.keys, bare.tiles, bare.verify(600), 512)


def test_a_sealer_that_read_the_state_just_before_another_sealed_seals_the_next_tile(
    bare: BareLog, raw: redis.Redis
) -> None:
    """Between a sealer's first read and its lease, another sealed a tile (and its
    lease ended): what the first seals is read under its lease, so it is the next."""
    bare.grow(600)

    def late(client: aioredis.Redis) -> Sealer:
        sealer = bare.sealer(owner="late")(client)
        first_read = sealer.state

        async def state_then_another_seals() -> SealedState:
            state = await first_read()
            if state.size == 0:
                bare.run(bare.sealer(owner="other"), "seal_once")
                raw.delete(bare.keys.audit_seal_lease)  # the other's lease ends
            return state

        sealer.state = state_then_another_seals  # type: ignore[method-assign]
        return sealer

    assert bare.run(late, "seal_once") is True
    assert_sealed_state(raw, bare.keys, bare.tiles, bare.verify(600), 512)


@pytest.mark.parametrize("broken", ["cannot write", "lost its files"])
def test_a_sealer_whose_store_fails_says_so_and_gives_the_lease_up(
    bare: BareLog, raw: redis.Redis, tmp_path: Path, broken: str
) -> None:
    """A replica whose mount of the shared store is broken (same identity): it fails
    as the store's failure (alert, not "waiting for Redis") and leaves the lease to a
    replica whose store works."""
    bare.grow(600)
    assert bare.run(bare.sealer(owner="good"), "seal_once") is True
    mount = tmp_path / "broken-mount"
    if broken == "cannot write":
        shutil.copytree(bare.tiles, mount)
        shutil.rmtree(mount / "tile/entries")
        (mount / "tile/entries").write_text("not a directory")
    else:
        mount.mkdir()
        shutil.copy(bare.tiles / IDENTITY_FILE, mount / IDENTITY_FILE)
    raw.delete(bare.keys.audit_seal_lease)

    def on_broken(client: aioredis.Redis) -> Sealer:
        return Sealer(client, bare.keys, DirectoryTileStore(mount), owner="broken")

    with pytest.raises(TileStoreError, match=str(mount)):
        bare.run(on_broken, "seal_once")
    assert raw.get(bare.keys.audit_seal_lease) is None
    assert bare.run(bare.sealer(owner="good"), "seal_once") is True
    assert_sealed_state(raw, bare.keys, bare.tiles, bare.verify(600), 512)


DAMAGES = [
    "an entry changed",
    "two entries swapped",
    "two entries swapped with their leaves",
    "a leaf changed",
    "a leaf not hex",
    "the entry before the tile not JSON",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_entries_that_disagree_with_their_leaves_or_their_chain_are_never_sealed(
    bare: BareLog, raw: redis.Redis, damage: str
) -> None:
    """Tiles are immutable: the sealer checks what it reads before it writes a byte,
    and fails as sealing fails (SealError: logged, alerted), never by crashing."""
    entries, tree = bare.keys.audit_entries, bare.keys.audit_tree
    if damage == "the entry before the tile not JSON":
        bare.grow(600)  # tile 0 sealed with a margin: entry 256 stays in Redis
        assert bare.run(bare.sealer(margin_entries=256), "seal_once") is True
        raw.delete(bare.keys.audit_seal_lease)
        raw.lset(entries, 255, "not json")
        expected, files = "entry 256 ", 3
    else:
        bare.grow(300)
        line = str(raw.lindex(entries, 99))
        if damage == "an entry changed":
            raw.lset(entries, 99, line.replace('"outcome":"', '"outcome":"not-', 1))
        elif damage.startswith("two entries swapped"):
            raw.lset(entries, 99, str(raw.lindex(entries, 100)))
            raw.lset(entries, 100, line)
            if damage.endswith("with their leaves"):  # each hashes to its leaf: the chain breaks
                leaves = raw.hmget(tree, ["0:99", "0:100"])
                raw.hset(tree, mapping={"0:99": str(leaves[1]), "0:100": str(leaves[0])})
        else:
            raw.hset(tree, "0:99", "00" * 32 if damage == "a leaf changed" else "zz" * 32)
        expected = "tile/0/000" if damage == "a leaf not hex" else "entry 100 "
        files = 0
    before = sealed_fields(raw, bare.keys), raw.llen(entries)
    with pytest.raises(SealError, match=expected):
        bare.run(bare.sealer(margin_entries=256), "seal_once")
    assert (sealed_fields(raw, bare.keys), raw.llen(entries)) == before
    assert len(stored_files(bare.tiles)[0]) == files  # nothing more written
    assert raw.get(bare.keys.audit_seal_lease) is None


# --- each file durably -----------------------------------------------------------------------


def test_a_tile_is_fsynced_before_its_link_and_its_folders_after_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What survives a crash of the machine, not only of the process (which kill -9
    tests cannot tell): the file's bytes before its name, each new name after."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_mkdir = os.fsync, os.link, os.mkdir

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        real_link(source, target, *args, **kwargs)
        events.append(("link", str(target)))

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        real_mkdir(path, *args, **kwargs)
        events.append(("mkdir", str(path)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "mkdir", mkdir)
    root = tmp_path / "tiles"
    store = DirectoryTileStore(root)
    store.write("tile/0/000", b"x" * 8192)
    assert (root / "tile/0/000").read_bytes() == b"x" * 8192
    kinds = [kind for kind, _ in events]
    at = {event: i for i, event in enumerate(events)}
    target = str(root / "tile/0/000")
    (temp_sync,) = [i for i, (k, p) in enumerate(events) if k == "fsync" and p.endswith(".tmp")]
    assert temp_sync < at[("link", target)] < at[("fsync", str(root / "tile/0"))]
    for folder in (root, root / "tile", root / "tile/0"):
        assert at[("mkdir", str(folder))] < at[("fsync", str(folder.parent))], folder
    assert kinds.count("link") == 1
    events.clear()
    store.write("tile/0/000", b"x" * 8192)  # found written (by a sealer that died?)
    assert events == [("fsync", str(root / "tile/0"))]
    with pytest.raises(TileConflict):
        store.write("tile/0/000", b"y" * 8192)


# --- the first level-1 tile ---------------------------------------------------------------
#
# Signing 65,536 entries takes longer than this whole suite may (about 11 s), so the
# log that completes tile/1/000 stands in for its first 65,024 entries: they are
# sealed and trimmed already, and all that sealing further reads of them is what
# Redis keeps (their level-8 hashes and the frontier) and the store holds (the
# identity). Tile 254 (entries 65,025..65,280, sealed) and 255 (unsealed) are real
# entries signed by the log's key, chained from a stand-in hash.

LEVEL_1 = 65536


@dataclass(frozen=True)
class StandIn:
    level_8: list[bytes]  # the 255 level-8 hashes Redis holds: 254 stand-ins, tile 254's
    sealed_lines: list[str]  # entries 65,025..65,280, in the store


def stand_in_for_sealed_tiles(bare: BareLog, raw: redis.Redis) -> StandIn:
    """A log of 65,280 entries sealed and trimmed, the last 256 of them real; then 256
    more appended through AuditLog, so the next tile completes tile/1/000."""
    signer = SigningKeys(bare.key_file, bare.key_file.parent / "audit-keys").first
    level_8 = [hashlib.sha256(b"stand-in tile %d" % i).digest() for i in range(254)]

    def node(height: int, index: int) -> bytes:  # from the level-8 hashes
        span = 1 << (height - 8)
        return root_of(level_8[index * span : (index + 1) * span])

    before = 254 * TILE
    frontier = CompactRange.from_hex_list(before, [node(*n).hex() for n in root_nodes(before)])
    start = Head(before, hashlib.sha256(b"stand-in entry").hexdigest(), frontier, signer.key_id)
    grown = extend(
        start, [Segment([draft(n) for n in range(before + 1, before + TILE + 1)])], signer
    )
    entries = grown.entries[0]
    lines = [entry.to_json_line() for entry in entries]
    leaves = [reference.leaf_hash(canonical(line)) for line in lines]
    level_8.append(reference.merkle_tree_hash(leaves))
    assert (8, 254, level_8[254]) in grown.nodes  # the product's tree agrees

    store = DirectoryTileStore(bare.tiles)
    store_id = store.identity(create=True)
    assert store_id is not None
    store.write("lines/254", "".join(line + "\n" for line in lines).encode())
    store.write("tile/entries/254", reference.entry_bundle([canonical(line) for line in lines]))
    store.write("tile/0/254", b"".join(leaves))
    sealed = 255 * TILE
    keys = bare.keys
    head = {
        "seq": str(sealed),
        "hash": grown.head.hash,
        "frontier": json.dumps(grown.head.tree.to_hex_list()),
        "key_id": signer.key_id,
    }
    above = {
        f"{height}:{index}": node(height, index).hex() if height > 8 else level_8[index].hex()
        for height in range(8, 16)
        for index in range(sealed >> height)
    }
    written: list[tuple[str, dict[str, str]]] = [
        (keys.audit_sealed, {"size": str(sealed), "trimmed": str(sealed), "store_id": store_id}),
        (keys.audit_head, head),
        (keys.audit_keys, dict([key_history_fields(KeyIntroduced(signer, 1))])),
        (keys.audit_tree, above),
    ]
    for name, fields in written:
        raw.hset(name, mapping=fields)  # type: ignore[arg-type]
    bare.grow(LEVEL_1)
    return StandIn(level_8, lines)


def assert_level_1_sealed(bare: BareLog, raw: redis.Redis, stand_in: StandIn) -> None:
    """Sealed to 65,536: tile/1/000 is the stored level-8 hashes and the reference's
    root of tile 255, Redis keeps the root alone, and entries and proofs read back."""
    keys = bare.keys
    last = bare.lines_between(255 * TILE + 1, LEVEL_1)
    leaves = [reference.leaf_hash(canonical(line)) for line in last]
    level_1 = [*stand_in.level_8, reference.merkle_tree_hash(leaves)]
    files, _ = stored_files(bare.tiles)
    assert files == {
        "lines/254": "".join(line + "\n" for line in stand_in.sealed_lines).encode(),
        "lines/255": "".join(line + "\n" for line in last).encode(),
        "tile/entries/254": reference.entry_bundle([canonical(x) for x in stand_in.sealed_lines]),
        "tile/entries/255": reference.entry_bundle([canonical(line) for line in last]),
        "tile/0/254": b"".join(reference.leaf_hash(canonical(x)) for x in stand_in.sealed_lines),
        "tile/0/255": b"".join(leaves),
        "tile/1/000": b"".join(level_1),
    }
    assert sealed_fields(raw, keys)["size"] == str(LEVEL_1)
    assert sealed_fields(raw, keys)["trimmed"] == str(LEVEL_1)
    assert raw.llen(keys.audit_entries) == 0
    root = reference.merkle_tree_hash(level_1)
    assert raw.hgetall(keys.audit_tree) == {"16:0": root.hex()}
    chain = [json.loads(line) for line in stand_in.sealed_lines + last]
    assert [e["seq"] for e in chain] == list(range(254 * TILE + 1, LEVEL_1 + 1))
    assert all(b["prev_hash"] == a["entry_hash"] for a, b in itertools.pairwise(chain))
    for seq in (254 * TILE + 1, 255 * TILE, 255 * TILE + 1, LEVEL_1):
        proof = bare.inclusion_proof(seq, LEVEL_1)
        line = (stand_in.sealed_lines + last)[seq - 254 * TILE - 1]
        leaf = leaf_hash_of(canonical(line))
        assert verify_inclusion(leaf, seq - 1, LEVEL_1, list(proof.hashes), root)


def test_the_tile_that_completes_65536_entries_completes_the_first_level_1_tile(
    bare: BareLog, raw: redis.Redis
) -> None:
    stand_in = stand_in_for_sealed_tiles(bare, raw)
    assert bare.run(bare.sealer(), "seal_all") == 1
    assert_level_1_sealed(bare, raw, stand_in)

"""Crashes: kill -9 under load, restart on the same data dir, and the log still tells the truth.

What a client can know, and so what these tests hold the gateway to:

- An answer (a Decision) is sent only after its entry is stored, so every answer
  received has an entry with its seq, action_id and verdict, after any crash.
- A call that got no answer (it was in flight at the kill) may or may not have an
  entry: Redis may have applied the append before the gateway died. That is the only
  way an entry without an answer can arise, so such entries are allowed only for
  calls in flight at the kill -- at most one per client, as each client waits for
  its answer before sending again. Retrying the same action_id after the restart
  returns the decision of that entry (same seq); no action is ever recorded twice.
- The chain verifies offline against a checkpoint taken after the restart, and
  against one taken before the kill (the crash rewrote nothing that was answered).

Two crashes: the gateway alone (its embedded redis-server must then shut itself
down, and the restart must find the data dir free), and the gateway together with
its redis-server under `appendfsync always` (the AOF replayed on restart must hold
every answered entry). Two more tests lose the reply to one commit on the wire:
the client library resends the script, which must not append the batch twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from agentgw.v1 import (
    approvals_pb2,
    audit_pb2,
    audit_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from clients.agent import bearer
from gateway.domain.audit.keys import Signer
from gateway.store.embedded import EmbeddedRedis
from gateway.store.keys import KeySpace
from tests.failover import action
from tests.harness import RunningGateway, token_for, wait_for
from tests.processes import (
    GatewayProcess,
    embedded_redis_pids,
    export_and_verify,
    reap_embedded_redis,
    verify_offline,
    write_config,
)
from tests.redis_proxy import ReplyDroppingProxy
from tests.redis_proxy import lossy_gateway as start_lossy_gateway

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds the embedded server through /proc"
)

CONCURRENCY = 16  # clients, each with one Submit in flight at a time
KILL_AFTER = 400  # answers received before the kill

VERDICT_OUTCOMES = {
    gateway_pb2.VERDICT_ALLOW: "allow",
    gateway_pb2.VERDICT_DENY: "deny",
    gateway_pb2.VERDICT_HOLD: "hold",
}


@dataclass(frozen=True)
class Answer:
    verdict: int
    audit_seq: int


@dataclass
class Ledger:
    """What the clients saw: answers, and the calls in flight at the kill."""

    answered: dict[str, Answer] = field(default_factory=dict)
    in_flight_at_kill: dict[str, str] = field(default_factory=dict)  # action_id -> status
    checkpoint_before_kill: str = ""


async def load_until_killed(target: str, kill: Callable[[], None]) -> Ledger:
    """CONCURRENCY clients submit until KILL_AFTER answers arrived; then an auditor
    saves a checkpoint, `kill` runs (once), and no client starts another call."""
    ledger = Ledger()
    numbers = itertools.count()
    killed = asyncio.Event()
    channel = grpc.aio.insecure_channel(target)
    audit = audit_pb2_grpc.AuditStub(channel)

    async def trigger() -> None:
        checkpoint = await audit.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(), metadata=bearer(token_for("auditor-1")), timeout=10
        )
        ledger.checkpoint_before_kill = checkpoint.note
        kill()
        killed.set()

    async def client() -> None:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        while not killed.is_set():
            request, metadata = action(next(numbers))
            try:
                decision = await stub.Submit(request, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as e:
                # Before the kill nothing fails; after it, this call was in flight.
                assert killed.is_set(), f"{request.action_id}: {e.code().name}: {e.details()}"
                ledger.in_flight_at_kill[request.action_id] = e.code().name
                return
            ledger.answered[request.action_id] = Answer(decision.verdict, decision.audit_seq)
            if len(ledger.answered) == KILL_AFTER:
                await trigger()

    try:
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    finally:
        await channel.close()
    return ledger


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(config, data_dir) of one gateway with its embedded Redis; on teardown no
    redis-server of that data dir is left running."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    signing_key = tmp_path / "audit-signing-key.pem"
    Signer.generate().save(signing_key)
    yield tmp_path / "agentgw.yaml", data_dir
    reap_embedded_redis(data_dir)


@linux_only
@pytest.mark.parametrize(
    ("crash", "appendfsync"),
    [("gateway", None), ("gateway_and_redis", "always")],
    ids=["gateway-default-fsync", "gateway-and-redis-fsync-always"],
)
def test_kill_under_load_keeps_every_answer_and_only_in_flight_extras(
    deployment: tuple[Path, Path], tmp_path: Path, crash: str, appendfsync: str | None
) -> None:
    config_path, data_dir = deployment
    config = write_config(
        config_path,
        data_dir=data_dir,
        redis={"key_prefix": "crash", **({"appendfsync": appendfsync} if appendfsync else {})},
        signing_key=tmp_path / "audit-signing-key.pem",
    )
    first = GatewayProcess(config).wait_listening()
    restarted: GatewayProcess | None = None
    try:
        (redis_pid,) = embedded_redis_pids(data_dir)
        # The embedded server runs with the configured fsync policy, everysec by default.
        assert running_appendfsync(data_dir) == (appendfsync or "everysec")

        def kill() -> None:
            if crash == "gateway_and_redis":
                os.kill(redis_pid, signal.SIGKILL)
            first.kill()

        ledger = asyncio.run(load_until_killed(first.target, kill))
        assert len(ledger.answered) >= KILL_AFTER
        assert len(ledger.in_flight_at_kill) <= CONCURRENCY

        # A server the test did not kill gets SIGTERM from the kernel when its gateway
        # dies, and shuts down (fsyncing its AOF): it must not outlive the gateway and
        # keep the data dir from the restart. (A SIGKILLed one ends once the kernel has
        # finished it; with appendfsync always that can wait for an fsync in progress.)
        wait_for(
            lambda: not embedded_redis_pids(data_dir),
            timeout=15,
            what="the killed gateway's redis-server to exit",
        )
        restarted = GatewayProcess(config).wait_listening()
        head_at_restart = checkpoint_size(restarted.target)

        # The agent's recovery: resubmit every unanswered action with its action_id.
        retried = resubmit(restarted.target, ledger.in_flight_at_kill)

        entries, verified = export_and_verify(restarted.target, tmp_path)
        assert verified.returncode == 0, verified.output
        assert verified.report["count"] == len(entries)
        before_kill = tmp_path / "before-kill.note"
        before_kill.write_text(ledger.checkpoint_before_kill, encoding="utf-8")
        still_valid = verify_offline(tmp_path / "log.jsonl", tmp_path / "keys.json", before_kill)
        assert still_valid.returncode == 0, still_valid.output
    finally:
        for process in (first, restarted):
            if process is not None:
                process.stop()

    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    decided = [e for e in entries if e["event_type"] == "action_decided"]
    assert len(decided) == len(entries)
    by_action = {e["action_id"]: e for e in decided}
    assert len(by_action) == len(decided), "an action was recorded twice"

    # No answer without an entry: each answer's seq holds that action and verdict.
    for action_id, answer in ledger.answered.items():
        entry = entries[answer.audit_seq - 1]
        assert entry["action_id"] == action_id
        assert entry["outcome"] == VERDICT_OUTCOMES[answer.verdict]

    # No entry for an answer never given, unless its call was in flight at the kill.
    stored_before_restart = {
        e["action_id"] for e in decided if e["seq"] <= head_at_restart
    } - ledger.answered.keys()
    assert stored_before_restart <= ledger.in_flight_at_kill.keys()
    assert head_at_restart == len(ledger.answered) + len(stored_before_restart)

    # Retrying such an action returns the stored decision, not a second one.
    for action_id, outcome in retried.items():
        if action_id in stored_before_restart:
            assert isinstance(outcome, Answer), f"{action_id}: {outcome}"
            assert outcome.audit_seq == by_action[action_id]["seq"]
            assert VERDICT_OUTCOMES[outcome.verdict] == by_action[action_id]["outcome"]
        elif isinstance(outcome, Answer):
            # Never stored: decided now, after the restart, and recorded as answered.
            assert outcome.audit_seq > head_at_restart
            assert by_action[action_id]["seq"] == outcome.audit_seq
        else:
            # Its claim from before the crash is still held (for up to CLAIM_TTL_MS).
            assert outcome == "ABORTED" and action_id not in by_action
    assert len(entries) == head_at_restart + sum(
        1 for a, o in retried.items() if isinstance(o, Answer) and a not in stored_before_restart
    )


def running_appendfsync(data_dir: Path) -> str:
    """CONFIG GET appendfsync from the embedded server, found through its redis.conf."""
    settings = dict(
        line.split(" ", 1)
        for line in (data_dir / "redis" / "redis.conf").read_text().splitlines()
        if " " in line
    )
    password = settings["requirepass"]
    if "unixsocket" in settings:
        client = redis.Redis(unix_socket_path=json.loads(settings["unixsocket"]), password=password)
    else:
        client = redis.Redis(port=int(settings["port"]), password=password)
    try:
        return str(client.config_get("appendfsync")["appendfsync"])
    finally:
        client.close()


def checkpoint_size(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        checkpoint = audit_pb2_grpc.AuditStub(channel).GetCheckpoint(
            audit_pb2.GetCheckpointRequest(), metadata=bearer(token_for("auditor-1")), timeout=10
        )
    return int(checkpoint.size)


def resubmit(target: str, action_ids: dict[str, str]) -> dict[str, Answer | str]:
    """Submit each action again with its action_id, as a client retrying would."""
    results: dict[str, Answer | str] = {}
    with grpc.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for action_id in action_ids:
            request, metadata = action(int(action_id.removeprefix("act-")))
            try:
                decision = stub.Submit(request, metadata=metadata, timeout=10)
            except grpc.RpcError as e:
                results[action_id] = e.code().name
            else:
                results[action_id] = Answer(decision.verdict, decision.audit_seq)
    return results


# --- a reply lost on the wire ------------------------------------------------------


@pytest.fixture
def lossy_gateway(
    redis_server: EmbeddedRedis, key_prefix: str, make_gateway: Callable[..., RunningGateway]
) -> Iterator[tuple[RunningGateway, ReplyDroppingProxy]]:
    with start_lossy_gateway(redis_server, key_prefix, make_gateway) as running:
        yield running


def log_entries(gw: RunningGateway) -> list[dict[str, object]]:
    return [json.loads(line) for line in gw.export_lines()]


def test_commit_resent_after_a_lost_reply_is_appended_once(
    lossy_gateway: tuple[RunningGateway, ReplyDroppingProxy],
) -> None:
    gw, proxy = lossy_gateway
    proxy.arm("commit")
    decision = gw.agent().submit("search", session_id="s", action_id="lost-reply")
    assert proxy.dropped == 1
    entries = log_entries(gw)
    assert [e["action_id"] for e in entries][1:] == ["lost-reply"]
    assert decision.verdict == gateway_pb2.VERDICT_ALLOW and decision.audit_seq == 2


def test_approval_resent_after_a_lost_reply_succeeds_once(
    lossy_gateway: tuple[RunningGateway, ReplyDroppingProxy],
) -> None:
    gw, proxy = lossy_gateway
    held = gw.agent().submit("send_email", session_id="s", action_id="needs-approval")
    assert held.verdict == gateway_pb2.VERDICT_HOLD
    proxy.arm("commit")
    hold = gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="looks fine"),
        metadata=gw.md("approver-1"),
    )
    assert proxy.dropped == 1
    assert hold.status == approvals_pb2.HOLD_STATUS_APPROVED
    entries = log_entries(gw)
    assert [e["action_id"] for e in entries][1:] == ["needs-approval", "needs-approval"]
    assert hold.resolution.audit_seq == 3


def test_claim_resent_after_a_lost_reply_is_recognised_as_the_same_call(
    lossy_gateway: tuple[RunningGateway, ReplyDroppingProxy], redis_url: str, key_prefix: str
) -> None:
    """observe.lua claims the action_id and pushes the session history; when its reply
    is lost, the resend must find its own claim (not ABORTED, not counted twice)."""
    gw, proxy = lossy_gateway
    proxy.arm("observe")
    # One call, no client-side retry: the gateway alone must get it right.
    action = gateway_pb2.ActionRequest(
        action_id="lost-claim", agent_id="agent-1", session_id="resent", action_type="search"
    )
    decision = gw.gateway.Submit(action, metadata=gw.md("agent-1"), timeout=20)
    assert proxy.dropped == 1
    assert decision.verdict == gateway_pb2.VERDICT_ALLOW
    assert [e["action_id"] for e in log_entries(gw)][1:] == ["lost-claim"]
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        history = raw.lrange(KeySpace(key_prefix).recent_types("agent-1", "resent"), 0, -1)
    finally:
        raw.close()
    assert history == ["search"]
    # The stored decision answers a retry, as for any decided action.
    assert gw.gateway.Submit(action, metadata=gw.md("agent-1"), timeout=20) == decision

"""Redis Cluster: two gateway processes on a real three-master cluster.

`redis+cluster://` with the suite's server binary (tests/servers.py). Every script
the gateway runs touches one hash slot, so the cluster runs them: the `{audit}`
slot holds the log and everything committed with it (decided actions, holds,
session pauses); each agent's claims and session history live in its own slot.
The hash tags put agent-2 on another node than the audit log, so its decisions
take the cross-node path (claim on one node, commit on another, then the claim
marker). Through both gateways: submit, replay, reuse refusal, hold and approve,
reject, expiry by the sweeper, a loop pause and its resume, export and verify.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from redis.crc import key_slot

from agentgw.v1 import approvals_pb2, approvals_pb2_grpc, gateway_pb2
from clients.agent import AgentClient, bearer
from gateway.config import RedisSettings
from gateway.store.keys import KeySpace
from tests.failover import Ledger, check_every_answer_in_chain, drive, wait_async
from tests.harness import RunningGateway, token_for, wait_for
from tests.processes import GatewayProcess, export_and_verify, gateway_processes
from tests.servers import ClusterProcesses, ServerProcess, replica_in_sync, slot_ranges

PREFIX = "clu"
HOLD_TTL = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    with ClusterProcesses(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def gateways(
    cluster: ClusterProcesses, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[GatewayProcess]]:
    with gateway_processes(
        tmp_path_factory.mktemp("gateways"),
        2,
        redis={"url": cluster.url, "key_prefix": PREFIX},
        extra={"holds": {"ttl_seconds": HOLD_TTL}},
    ) as started:
        yield started


def agent(gateway: GatewayProcess, name: str = "agent-2") -> AgentClient:
    return AgentClient(gateway.target, token_for(name), name)


def approvals(gateway: GatewayProcess) -> approvals_pb2_grpc.ApprovalsStub:
    return approvals_pb2_grpc.ApprovalsStub(grpc.insecure_channel(gateway.target))


def as_approver() -> tuple[tuple[str, str], ...]:
    return bearer(token_for("approver-1"))


def node_holds(cluster: ClusterProcesses, key: str) -> bool:
    """The key exists on the node that owns its slot (read there, not redirected)."""
    return bool(cluster.node_for_key(key).client.exists(key))


def test_agent_state_and_the_audit_log_live_on_different_nodes(cluster: ClusterProcesses) -> None:
    # What makes agent-2's decisions cross nodes (and agent-1's stay on one).
    keys = KeySpace(PREFIX)
    audit_node = cluster.node_for_key(keys.audit_head)
    assert cluster.node_for_key(keys.claim("agent-2", "x")) is not audit_node
    assert cluster.node_for_key(keys.claim("agent-1", "x")) is audit_node
    assert key_slot(keys.decided("agent-2", "x").encode()) == key_slot(keys.audit_head.encode())


def test_two_gateways_decide_hold_approve_expire_and_verify_on_a_cluster(
    cluster: ClusterProcesses, gateways: list[GatewayProcess], tmp_path: Path
) -> None:
    first, second = gateways
    keys = KeySpace(PREFIX)
    answers: dict[str, gateway_pb2.Decision] = {}
    with agent(first) as a2, agent(second) as b2, agent(second, "agent-1") as b1:
        # Decisions through both gateways, for agents on two nodes.
        for i in range(10):
            client = (a2, b1)[i % 2]
            answers[f"s{i}"] = client.submit("search", session_id=f"s{i}", action_id=f"s{i}")
        assert {a.verdict for a in answers.values()} == {gateway_pb2.VERDICT_ALLOW}
        # The decided record is in the {audit} slot; the claim marker in the agent's.
        assert node_holds(cluster, keys.decided("agent-2", "s0"))
        wait_for(
            lambda: (
                cluster.node_for_key(keys.claim("agent-2", "s0"))
                .client.get(keys.claim("agent-2", "s0"))
                .startswith("d|")
            ),
            what="the claim marker of agent-2's action",
        )

        # The same request through the other gateway is the first decision, once.
        again = b2.submit("search", session_id="s0", action_id="s0")
        assert again.audit_seq == answers["s0"].audit_seq
        with pytest.raises(grpc.RpcError) as reused:
            b2.submit("send_email", session_id="s0", action_id="s0")
        assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS

        # Held on one gateway, approved on the other, and the waiter is woken.
        held = a2.submit("send_email", session_id="m", action_id="mail-1")
        assert held.verdict == gateway_pb2.VERDICT_HOLD
        assert node_holds(cluster, keys.hold(held.hold_id))
        approvals(second).Approve(
            approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="ok"),
            metadata=as_approver(),
        )
        assert a2.wait(held, timeout=10).verdict == gateway_pb2.VERDICT_ALLOW
        # Approving it again is refused: the hold resolved once.
        with pytest.raises(grpc.RpcError) as twice:
            approvals(first).Reject(
                approvals_pb2.RejectRequest(hold_id=held.hold_id, reason="late"),
                metadata=as_approver(),
            )
        assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        rejected = b2.submit("send_email", session_id="m", action_id="mail-2")
        approvals(first).Reject(
            approvals_pb2.RejectRequest(hold_id=rejected.hold_id, reason="no"),
            metadata=as_approver(),
        )
        assert b2.wait(rejected, timeout=10).verdict == gateway_pb2.VERDICT_DENY

        # Nobody decides this one: a sweeper expires it (deny) after its TTL.
        expiring = a2.submit("send_email", session_id="m", action_id="mail-3")
        assert a2.wait(expiring, timeout=HOLD_TTL + 20).verdict == gateway_pb2.VERDICT_DENY

        # Five reads in a row are a loop: held, and the session paused, on either
        # gateway; an approver resumes it through the other.
        looped = [
            (a2, b2)[i % 2].submit("read_file", session_id="loop", action_id=f"r{i}")
            for i in range(5)
        ]
        assert looped[-1].verdict == gateway_pb2.VERDICT_HOLD
        assert node_holds(cluster, keys.session_pause("agent-2", "loop"))
        paused = b2.submit("search", session_id="loop", action_id="after-pause")
        assert paused.verdict == gateway_pb2.VERDICT_HOLD
        resumed = approvals(first).ResumeSession(
            approvals_pb2.ResumeSessionRequest(agent_id="agent-2", session_id="loop", reason="ok"),
            metadata=as_approver(),
        )
        assert resumed.was_paused
        assert not node_holds(cluster, keys.session_pause("agent-2", "loop"))
        again_resumed = approvals(second).ResumeSession(
            approvals_pb2.ResumeSessionRequest(agent_id="agent-2", session_id="loop", reason="ok"),
            metadata=as_approver(),
        )
        assert not again_resumed.was_paused
        after = a2.submit("search", session_id="loop", action_id="after-resume")
        assert after.verdict == gateway_pb2.VERDICT_ALLOW

        # A quarantine set through one gateway holds the agent on the other (the record
        # is in the {audit} slot, read beside the agent's counting script).
        admin = bearer(token_for("admin-1"))
        approvals(first).QuarantineAgent(
            approvals_pb2.QuarantineAgentRequest(agent_id="agent-2", reason="leak"), metadata=admin
        )
        quarantined = b2.submit("search", session_id="q", action_id="quarantined")
        assert quarantined.reason == "the agent is quarantined: leak"
        approvals(second).ReleaseAgent(
            approvals_pb2.ReleaseAgentRequest(agent_id="agent-2", reason="fixed"), metadata=admin
        )
        assert a2.submit("search", session_id="q", action_id="released").verdict == 1

    # One chain, written by both gateways, verifies offline.
    entries, verify = export_and_verify(second.target, tmp_path)
    assert verify.returncode == 0, verify.output
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    by_seq = {e["seq"]: e for e in entries}
    for action_id, answer in answers.items():
        assert by_seq[answer.audit_seq]["action_id"] == action_id
    events = [e["event_type"] for e in entries]
    for event in (
        "hold_approved",
        "hold_rejected",
        "hold_expired",
        "session_resumed",
        "agent_quarantined",
        "agent_released",
    ):
        assert events.count(event) == 1, event
    assert events.count("security_action_id_reused") == 1


def test_a_decided_action_is_replayed_when_its_claim_marker_is_missing(
    cluster: ClusterProcesses, gateways: list[GatewayProcess]
) -> None:
    # What a gateway that crashed between its commit and the claim marker leaves:
    # the decided record, and the claim still pending. A resubmission is answered
    # from the decided record at once, not after the claim lapses.
    keys = KeySpace(PREFIX)
    with agent(gateways[0]) as client:
        first = client.submit("search", session_id="crash", action_id="c1")
        claim_key = keys.claim("agent-2", "c1")
        node = cluster.node_for_key(claim_key).client
        wait_for(lambda: str(node.get(claim_key)).startswith("d|"), what="the claim marker")
        digest = str(node.get(claim_key))[2:66]
        node.set(claim_key, f"p|{digest}|0123456789abcdef", px=60_000)
        with agent(gateways[1]) as other:
            again = other.submit("search", session_id="crash", action_id="c1", attempts=1)
        assert (again.audit_seq, again.verdict) == (first.audit_seq, first.verdict)


def test_no_script_touches_two_slots(cluster: ClusterProcesses) -> None:
    # The cluster refuses any that would; the gateways above ran every kind. Their
    # servers counted no CROSSSLOT error (errorstats is Redis 6.2+ and Valkey).
    for node in cluster.masters:
        errors = node.client.info("errorstats")
        assert not any("CROSSSLOT" in name for name in errors), errors
        assert isinstance(node.client, redis.Redis)


ANSWERS_BEFORE_KILL = 40
ANSWERS_AFTER_FAILOVER = 30


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[ClusterProcesses]:
    """A cluster whose `{audit}` master has a replica."""
    audit_slot = key_slot(KeySpace(PREFIX).audit_head.encode())
    owner = next(i for i, (low, high) in enumerate(slot_ranges(3)) if low <= audit_slot <= high)
    with ClusterProcesses(tmp_path / "cluster", replicas=1, replica_master=owner) as running:
        yield running


def promoted(node: ServerProcess) -> bool:
    try:
        return node.client.info("replication")["role"] == "master"
    except redis.RedisError:
        return False


def test_gateway_follows_a_cluster_failover_and_keeps_every_answered_decision(
    replicated: ClusterProcesses, make_gateway: Callable[..., RunningGateway]
) -> None:
    # redis.min_replicas_acked: 1 on a cluster: each commit, then WAIT, on the
    # connection to the {audit} slot's master. Kill that master under load: the
    # cluster promotes its replica, the gateway follows, and every answer it gave
    # (before or after) is in the chain.
    settings = RedisSettings(
        url=replicated.url,
        key_prefix=PREFIX,
        min_replicas_acked=1,
        replica_ack_timeout_seconds=0.5,
    )
    gw = make_gateway(redis=settings)
    audit_master = replicated.node_for_key(KeySpace(PREFIX).audit_head)
    replica = replicated.replica()
    ledger = Ledger()

    def answered_after_kill() -> int:
        killed = ledger.killed_at
        return 0 if killed is None else sum(a.answered_at > killed for a in ledger.answers.values())

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        load = asyncio.create_task(
            drive(gw.target, ledger, lambda: answered_after_kill() >= ANSWERS_AFTER_FAILOVER)
        )
        await wait_async(lambda: len(ledger.answers) >= ANSWERS_BEFORE_KILL, 20, "answers")
        audit_master.kill()
        ledger.killed_at = time.monotonic()
        await wait_async(lambda: promoted(replica), 30, "the replica to be promoted")
        # Back as a replica of the new master, so that appends can be acknowledged.
        rejoined = await loop.run_in_executor(None, replicated.restart, audit_master)
        await wait_async(lambda: replica_in_sync(replica), 30, "the old master to rejoin")
        assert rejoined.client.info("replication")["role"] == "slave"
        await asyncio.wait_for(load, 60)

    asyncio.run(scenario())
    assert ledger.failures, "no call was in flight during the failover"
    entries = check_every_answer_in_chain(gw.export_lines(), gw.key_set(), ledger)
    after = gw.agent().submit("search", session_id="after-failover", action_id="after-failover")
    assert after.audit_seq == len(entries) + 1

"""Redis Cluster under races and failures: what must hold when callers collide.

Real servers throughout: a three-master cluster (tests/servers.py), two `agentgw
serve` processes sharing it, and in-process gateways where a test needs a shared
movable clock or to see that an `Await` is waiting. With the key prefix "clu",
agent-1's slot is on the master of the `{audit}` slot and agent-2's on another
(the hash tags decide, so any prefix places them the same), so agent-2's
decisions take the cross-node path: claim on its node, commit on the audit node,
then the claim marker.

Each test tries to break one promise of docs/operations.md ("Redis Cluster",
"Action ids and retries", "Many writers"):

- one action_id, one decision: identical Submits racing on both gateways all get
  the first decision; other content under it is refused, never decided twice;
- a hold resolves once, and a paused session resumes once, whoever races;
- the expiry of a hold is recorded once while sweepers and waiters of two
  gateways race for it;
- a resolution on one gateway wakes an `Await` on the other at once (pub/sub
  across the cluster, not the periodic recheck);
- identifiers with the separators they may contain (':' '@' '/') stay within
  their agent's keys, and the characters that would escape a hash tag are refused;
- a master killed with no replica: its agents fail closed (UNAVAILABLE, never an
  allow without its entry), the agents on the other masters keep being answered
  when the cluster serves the slots it still has, and once the node is back
  (empty: no persistence) the decided actions, their action_ids and the pauses
  survive, as they live in the `{audit}` slot;
- while the `{audit}` master stalls, hold calls queue for a connection of the
  holds pool rather than fail;
- a rate limit counts exactly over two gateways, and a refused action is never
  allowed by retrying it while the window is full.

Every wait is a condition with a timeout (`wait_for`, `wait_async`, thread
barriers); every process started here is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import redis

from agentgw.v1 import approvals_pb2, approvals_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from clients.agent import bearer
from clients.wire import python_to_struct
from gateway.config import RedisSettings
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.rates import AgentLimits, RateSettings
from gateway.store.intents import Projection
from gateway.store.keys import KeySpace
from tests.failover import wait_async
from tests.harness import ManualClock, RunningGateway, token_for, wait_for
from tests.processes import GatewayProcess, export_and_verify, gateway_processes
from tests.servers import ClusterProcesses, ServerProcess

PREFIX = "clu"
KEYS = KeySpace(PREFIX)
# Long enough that no hold of the module's gateways expires during the module.
HOLD_TTL = 300
RESOLUTIONS = ("hold_approved", "hold_rejected", "hold_expired")

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    with ClusterProcesses(tmp_path_factory.mktemp("probe-cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def gateways(
    cluster: ClusterProcesses, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[GatewayProcess]]:
    with gateway_processes(
        tmp_path_factory.mktemp("probe-gateways"),
        2,
        redis={"url": cluster.url, "key_prefix": PREFIX},
        extra={"holds": {"ttl_seconds": HOLD_TTL}},
    ) as started:
        yield started


@dataclass(frozen=True)
class Stubs:
    gateway: gateway_pb2_grpc.GatewayStub
    approvals: approvals_pb2_grpc.ApprovalsStub


@pytest.fixture(scope="module")
def stubs(gateways: list[GatewayProcess]) -> Iterator[list[Stubs]]:
    """One connected channel per gateway process, shared by the threads of a race."""
    channels = [grpc.insecure_channel(g.target) for g in gateways]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=10)
        yield [
            Stubs(gateway_pb2_grpc.GatewayStub(c), approvals_pb2_grpc.ApprovalsStub(c))
            for c in channels
        ]
    finally:
        for channel in channels:
            channel.close()


# --- helpers --------------------------------------------------------------------


def md(name: str) -> Metadata:
    return bearer(token_for(name))


def action(
    agent: str,
    action_id: str,
    session_id: str,
    action_type: str = "search",
    parameters: dict[str, Any] | None = None,
) -> gateway_pb2.ActionRequest:
    return gateway_pb2.ActionRequest(
        action_id=action_id,
        agent_id=agent,
        session_id=session_id,
        action_type=action_type,
        parameters=python_to_struct(parameters or {}),
    )


def race(calls: Sequence[Callable[[], T]]) -> list[T | grpc.RpcError]:
    """Runs every call at once (one thread each, released together by a barrier);
    returns each call's result, or the RpcError it raised, in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T | grpc.RpcError:
        barrier.wait(timeout=10)
        try:
            return call()
        except grpc.RpcError as e:
            return e

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def errors(results: Sequence[object]) -> list[grpc.RpcError]:
    return [r for r in results if isinstance(r, grpc.RpcError)]


def describe(results: Sequence[object]) -> list[str]:
    return [f"{e.code().name}: {e.details()}" for e in errors(results)]


def wire(message: Any) -> bytes:
    return bytes(message.SerializeToString(deterministic=True))


def verified_export(target: str, directory: Path) -> list[dict[str, Any]]:
    """The whole log through the CLI (export, keys, checkpoint), verified offline."""
    directory.mkdir(parents=True, exist_ok=True)
    entries, verify = export_and_verify(target, directory)
    assert verify.returncode == 0, verify.output
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    return entries


def decided(entries: list[dict[str, Any]], agent: str, action_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in entries
        if e["event_type"] == "action_decided"
        and e["actor"] == agent
        and e["action_id"] == action_id
    ]


def no_action_decided_twice(entries: list[dict[str, Any]]) -> None:
    seen = [(e["actor"], e["action_id"]) for e in entries if e["event_type"] == "action_decided"]
    twice = {pair for pair in seen if seen.count(pair) > 1}
    assert not twice, f"decided more than once: {sorted(twice)}"


def resolutions_of(entries: list[dict[str, Any]], hold_id: str) -> list[dict[str, Any]]:
    return [
        e for e in entries if e["event_type"] in RESOLUTIONS and e["details"]["hold_id"] == hold_id
    ]


def pause_session(stub: Stubs, agent: str, session_id: str) -> gateway_pb2.Decision:
    """Five actions of one type in a row: a loop, held, and the session paused."""
    last: gateway_pb2.Decision | None = None
    for i in range(5):
        last = stub.gateway.Submit(
            action(agent, f"{session_id}-r{i}", session_id, "read_file", {"path": f"/{i}"}),
            metadata=md(agent),
            timeout=10,
        )
    assert last is not None and last.verdict == gateway_pb2.VERDICT_HOLD, last
    return last


# --- one action_id, one decision -------------------------------------------------


@pytest.mark.parametrize("action_type", ["search", "send_email"], ids=["allowed", "held"])
def test_thirty_identical_submits_on_two_gateways_get_one_decision(
    gateways: list[GatewayProcess], stubs: list[Stubs], tmp_path: Path, action_type: str
) -> None:
    # agent-2: the claim is on one node, the commit on another, the marker after it.
    action_id = f"storm-{action_type}"
    request = action(
        "agent-2", action_id, f"storm-{action_type}", action_type, {"to": "ops", "n": 1}
    )
    calls = [
        partial(stubs[i % 2].gateway.Submit, request, metadata=md("agent-2"), timeout=15)
        for i in range(30)
    ]
    results = race(calls)
    assert not errors(results), describe(results)
    first = results[0]
    assert isinstance(first, gateway_pb2.Decision)
    assert first.audit_seq > 0
    # Every caller got the same Decision, field for field (a held one: the same hold).
    assert {wire(r) for r in results} == {wire(first)}
    if action_type == "send_email":
        assert first.verdict == gateway_pb2.VERDICT_HOLD and first.hold_id

    entries = verified_export(gateways[1].target, tmp_path)
    assert [e["seq"] for e in decided(entries, "agent-2", action_id)] == [first.audit_seq]
    no_action_decided_twice(entries)


def test_one_action_id_with_two_contents_racing_on_two_gateways_is_decided_once(
    gateways: list[GatewayProcess], stubs: list[Stubs], tmp_path: Path
) -> None:
    contents = {
        "search": {"q": "quarterly numbers"},
        "read_file": {"path": "/etc/hosts"},
    }
    kinds = list(contents)
    rounds: list[tuple[str, list[str], list[object]]] = []
    for n in range(3):
        action_id = f"twin-{n}"
        # 20 calls: each gateway gets 5 of each content, interleaved.
        order = [kinds[i % 2] for i in range(20)]
        calls = [
            partial(
                stubs[(i // 2) % 2].gateway.Submit,
                action("agent-2", action_id, f"twin-{n}", kind, contents[kind]),
                metadata=md("agent-2"),
                timeout=15,
            )
            for i, kind in enumerate(order)
        ]
        rounds.append((action_id, order, race(calls)))

    entries = verified_export(gateways[0].target, tmp_path)
    no_action_decided_twice(entries)
    for action_id, order, results in rounds:
        refused = errors(results)
        assert {e.code() for e in refused} <= {grpc.StatusCode.ALREADY_EXISTS}, describe(results)
        winners = {
            kind for kind, r in zip(order, results, strict=True) if not isinstance(r, Exception)
        }
        assert len(winners) == 1, f"{action_id}: decided for {winners}"
        (winner,) = winners
        answers = [r for r in results if isinstance(r, gateway_pb2.Decision)]
        # Every call with the winning content got the one decision; every other one
        # was refused.
        assert len(answers) == order.count(winner)
        assert len({wire(a) for a in answers}) == 1
        assert len(refused) == len(order) - order.count(winner)
        (record,) = decided(entries, "agent-2", action_id)
        assert (record["seq"], record["action_type"]) == (answers[0].audit_seq, winner)
        reuses = [
            e
            for e in entries
            if e["event_type"] == "security_action_id_reused" and e["action_id"] == action_id
        ]
        assert len(reuses) == len(refused)
        assert {e["action_type"] for e in reuses} == set(kinds) - {winner}


# --- holds and pauses resolve once ------------------------------------------------


def test_racing_approvals_and_rejections_on_two_gateways_resolve_a_hold_once(
    gateways: list[GatewayProcess], stubs: list[Stubs], tmp_path: Path
) -> None:
    outcomes: list[tuple[str, approvals_pb2.Hold]] = []
    for n in range(4):
        held = stubs[n % 2].gateway.Submit(
            action("agent-2", f"contested-{n}", f"contested-{n}", "send_email", {"n": n}),
            metadata=md("agent-2"),
            timeout=10,
        )
        assert held.verdict == gateway_pb2.VERDICT_HOLD
        calls: list[Callable[[], approvals_pb2.Hold]] = []
        for i in range(6):
            desk = stubs[i % 2].approvals
            approver = md(("approver-1", "approver-2")[(i // 2) % 2])
            if i % 3 == 0:
                reject = approvals_pb2.RejectRequest(hold_id=held.hold_id, reason=f"no {i}")
                calls.append(partial(desk.Reject, reject, metadata=approver, timeout=10))
            else:
                approve = approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason=f"ok {i}")
                calls.append(partial(desk.Approve, approve, metadata=approver, timeout=10))
        results = race(calls)
        won = [r for r in results if isinstance(r, approvals_pb2.Hold)]
        assert len(won) == 1, f"hold {held.hold_id}: {len(won)} winners"
        assert {e.code() for e in errors(results)} == {grpc.StatusCode.FAILED_PRECONDITION}
        (winner,) = won
        # The agent sees the winner's resolution, from either gateway.
        for stub in stubs:
            final = stub.gateway.Await(
                gateway_pb2.AwaitRequest(hold_id=held.hold_id), metadata=md("agent-2"), timeout=10
            )
            assert final.resolution.audit_seq == winner.resolution.audit_seq
            approved = winner.status == approvals_pb2.HOLD_STATUS_APPROVED
            assert final.verdict == (
                gateway_pb2.VERDICT_ALLOW if approved else gateway_pb2.VERDICT_DENY
            )
        outcomes.append((held.hold_id, winner))

    entries = verified_export(gateways[1].target, tmp_path)
    for hold_id, winner in outcomes:
        (entry,) = resolutions_of(entries, hold_id)
        assert entry["seq"] == winner.resolution.audit_seq
        assert entry["actor"] == winner.resolution.decided_by


def test_racing_resumes_of_a_paused_session_on_two_gateways_resume_it_once(
    gateways: list[GatewayProcess], stubs: list[Stubs], tmp_path: Path
) -> None:
    resumed: list[tuple[str, approvals_pb2.ResumeSessionResponse]] = []
    for n in range(3):
        session = f"looping-{n}"
        pause_session(stubs[n % 2], "agent-2", session)
        request = approvals_pb2.ResumeSessionRequest(
            agent_id="agent-2", session_id=session, reason="looked at it"
        )
        calls = [
            partial(
                stubs[i % 2].approvals.ResumeSession,
                request,
                metadata=md(("approver-1", "approver-2", "admin-1")[i % 3]),
                timeout=10,
            )
            for i in range(6)
        ]
        results = race(calls)
        assert not errors(results), describe(results)
        answers = [r for r in results if isinstance(r, approvals_pb2.ResumeSessionResponse)]
        winners = [r for r in answers if r.was_paused]
        assert len(winners) == 1, f"{session}: {len(winners)} calls resumed it"
        assert winners[0].audit_seq > 0
        assert all(r.audit_seq == 0 for r in answers if not r.was_paused)
        # Resumed: a new action in the session is decided on its merits again.
        after = stubs[(n + 1) % 2].gateway.Submit(
            action("agent-2", f"{session}-after", session, "search"),
            metadata=md("agent-2"),
            timeout=10,
        )
        assert after.verdict == gateway_pb2.VERDICT_ALLOW, after.reason
        resumed.append((session, winners[0]))

    entries = verified_export(gateways[0].target, tmp_path)
    for session, winner in resumed:
        resumes = [
            e
            for e in entries
            if e["event_type"] == "session_resumed"
            and (e["details"]["agent_id"], e["details"]["session_id"]) == ("agent-2", session)
        ]
        assert [e["seq"] for e in resumes] == [winner.audit_seq]


# --- identifiers ------------------------------------------------------------------


def test_identifiers_with_separators_stay_within_their_agent(
    cluster: ClusterProcesses, gateways: list[GatewayProcess], stubs: list[Stubs], tmp_path: Path
) -> None:
    # Separators an identifier may contain, in the session and the action_id both
    # agents use: nothing of one agent's is found under the other's.
    session = "team:ops@eu/1"
    shared_id = "agent-1:x@agent-2/"
    pause_session(stubs[0], "agent-2", session)
    second = stubs[1].gateway
    two = second.Submit(
        action("agent-2", shared_id, session, "search"), metadata=md("agent-2"), timeout=10
    )
    assert two.verdict == gateway_pb2.VERDICT_HOLD  # agent-2's session is paused
    # agent-1: the same session id and action_id, other content: its own action, in
    # a session of its own (not paused), not a reuse of agent-2's action_id.
    one = second.Submit(
        action("agent-1", shared_id, session, "search", {"q": "other"}),
        metadata=md("agent-1"),
        timeout=10,
    )
    assert one.verdict == gateway_pb2.VERDICT_ALLOW, one.reason
    assert one.audit_seq != two.audit_seq
    again = stubs[0].gateway.Submit(
        action("agent-2", shared_id, session, "search"), metadata=md("agent-2"), timeout=10
    )
    assert (again.audit_seq, again.hold_id) == (two.audit_seq, two.hold_id)
    not_paused = stubs[0].approvals.ResumeSession(
        approvals_pb2.ResumeSessionRequest(agent_id="agent-1", session_id=session, reason="r"),
        metadata=md("approver-1"),
        timeout=10,
    )
    assert not not_paused.was_paused
    # Keys: each agent's claim in its own slot, each decision under its own name.
    for agent in ("agent-1", "agent-2"):
        claim = KEYS.claim(agent, shared_id)
        assert cluster.node_for_key(claim).client.exists(claim)
        assert cluster.node_for_key(KEYS.audit_head).client.exists(KEYS.decided(agent, shared_id))

    # What would end a hash tag, open one, or split a key's two identifiers.
    for bad in ("x}y", "{audit}", "a|b", "x y", "\u00e9t\u00e9"):
        for field in ("action_id", "session_id"):
            ids = {"action_id": "bad-id", "session_id": "bad-session", field: bad}
            with pytest.raises(grpc.RpcError) as refused:
                second.Submit(
                    action("agent-2", ids["action_id"], ids["session_id"]),
                    metadata=md("agent-2"),
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, bad)
    with pytest.raises(grpc.RpcError) as forged:
        second.Submit(action("agent-1", "forged", "s"), metadata=md("agent-2"), timeout=10)
    assert forged.value.code() == grpc.StatusCode.PERMISSION_DENIED

    entries = verified_export(gateways[1].target, tmp_path)
    assert [e["seq"] for e in decided(entries, "agent-1", shared_id)] == [one.audit_seq]
    assert [e["seq"] for e in decided(entries, "agent-2", shared_id)] == [two.audit_seq]
    assert not [e for e in entries if e["action_id"] in ("bad-id", "forged")]


# --- waiting across gateways (in-process, to see an Await waiting) -----------------


def in_process_pair(
    make_gateway: Callable[..., RunningGateway],
    cluster: ClusterProcesses,
    prefix: str,
    clock: ManualClock | None = None,
    **changes: Any,
) -> tuple[RunningGateway, RunningGateway]:
    """Two gateways on the cluster under `prefix` (a log of their own), one data dir
    (one signing key), one clock."""
    clock = clock or ManualClock()
    settings = RedisSettings(url=cluster.url, key_prefix=prefix)
    first = make_gateway(clock=clock, redis=settings, **changes)
    second = make_gateway(clock=clock, redis=settings, **changes)
    return first, second


def test_a_resolution_on_one_gateway_wakes_an_await_on_the_other_at_once(
    cluster: ClusterProcesses, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    # The resolution on one gateway reaches the other's waiter as a notification
    # over the cluster's pub/sub: the waiting gateway hears the hold's "resolved"
    # event (the periodic recheck would wake it too, but hears nothing).
    waiting, deciding = in_process_pair(make_gateway, cluster, "clu-wake")
    heard: list[tuple[str, str]] = []
    waiting.app.listener.listeners.add(lambda kind, hold_id: heard.append((kind, hold_id)))
    with ThreadPoolExecutor(1) as pool:
        for n, (agent, verb) in enumerate(
            [
                ("agent-2", "approve"),
                ("agent-1", "reject"),
                ("agent-2", "reject"),
                ("agent-1", "approve"),
            ]
        ):
            held = waiting.gateway.Submit(
                action(agent, f"wake-{n}", f"wake-{n}", "send_email"),
                metadata=md(agent),
                timeout=10,
            )
            assert held.verdict == gateway_pb2.VERDICT_HOLD
            pending = pool.submit(
                waiting.gateway.Await,
                gateway_pb2.AwaitRequest(hold_id=held.hold_id),
                metadata=md(agent),
                timeout=20,
            )
            wait_for(
                partial(operator.contains, waiting.app.listener._waiters, held.hold_id),
                what="the Await to wait",
            )
            assert not pending.done()
            if verb == "approve":
                deciding.approvals.Approve(
                    approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="fine"),
                    metadata=md("approver-1"),
                )
            else:
                deciding.approvals.Reject(
                    approvals_pb2.RejectRequest(hold_id=held.hold_id, reason="no"),
                    metadata=md("approver-2"),
                )
            final = pending.result(timeout=20)
            expected = gateway_pb2.VERDICT_ALLOW if verb == "approve" else gateway_pb2.VERDICT_DENY
            assert final.verdict == expected
            assert ("resolved", held.hold_id) in heard
    verified_export(deciding.target, tmp_path)


def test_an_expiry_raced_by_two_sweepers_and_waiters_is_recorded_once(
    cluster: ClusterProcesses, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    # Two gateways on one clock: when it jumps past the holds' expiry, both sweepers
    # and the Await on each gateway that finds its hold run out try to expire it.
    # (At most 4 hold calls at once per gateway: see the pool test below.)
    clock = ManualClock()
    pair = in_process_pair(make_gateway, cluster, "clu-expiry", clock, hold_ttl_seconds=60)
    holds = []
    for n in range(4):
        agent = ("agent-1", "agent-2")[n % 2]
        held = pair[n % 2].gateway.Submit(
            action(agent, f"lapse-{n}", f"lapse-{n}", "send_email", {"n": n}),
            metadata=md(agent),
            timeout=10,
        )
        assert held.verdict == gateway_pb2.VERDICT_HOLD
        holds.append((agent, held))
    clock.advance(61)
    calls = [
        partial(
            gw.gateway.Await,
            gateway_pb2.AwaitRequest(hold_id=held.hold_id),
            metadata=md(agent),
            timeout=20,
        )
        for agent, held in holds
        for gw in pair
    ]
    results = race(calls)
    assert not errors(results), describe(results)
    # Too late for an approver: the hold expired, whoever recorded it.
    for i, (_, held) in enumerate(holds):
        with pytest.raises(grpc.RpcError) as late:
            pair[i % 2].approvals.Approve(
                approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="late"),
                metadata=md("approver-1"),
                timeout=10,
            )
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    entries = verified_export(pair[0].target, tmp_path)
    for i, (_, held) in enumerate(holds):
        waits = results[2 * i : 2 * i + 2]
        assert {w.verdict for w in waits} == {gateway_pb2.VERDICT_DENY}
        (entry,) = resolutions_of(entries, held.hold_id)
        assert entry["event_type"] == "hold_expired"
        assert {w.resolution.audit_seq for w in waits} == {entry["seq"]}


# --- the holds pool ----------------------------------------------------------------


def test_hold_calls_wait_for_a_connection_while_the_audit_master_stalls(
    cluster: ClusterProcesses, gateways: list[GatewayProcess], stubs: list[Stubs]
) -> None:
    # The holds pool has up to 8 connections, and a call waits up to 5 s for a free
    # one. The {audit} master stops answering for 2 s (a fork, a slow disk; here
    # CLIENT PAUSE): an agent's Awaits on hold ids it guesses, approvers listing the
    # holds and one approving queue for a connection and are all answered after it.
    desk, gateway = stubs[0].approvals, stubs[0].gateway
    held = gateway.Submit(
        action("agent-1", "stalled-approval", "stalled", "send_email", {"to": "y"}),
        metadata=md("agent-1"),
        timeout=10,
    )
    assert held.verdict == gateway_pb2.VERDICT_HOLD
    calls: list[Callable[[], object]] = [
        partial(
            gateway.Await,
            gateway_pb2.AwaitRequest(hold_id=f"hold_guessed{i}"),
            metadata=md("agent-1"),
            timeout=10,
        )
        for i in range(12)
    ]
    calls += [
        partial(desk.ListHolds, approvals_pb2.ListHoldsRequest(), metadata=md("approver-2"))
        for _ in range(8)
    ]
    calls.append(
        partial(
            desk.Approve,
            approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="after the stall"),
            metadata=md("approver-1"),
            timeout=10,
        )
    )
    audit_master = cluster.node_for_key(KEYS.audit_head)
    # In effect once it answers OK; over by itself after 2 s.
    assert audit_master.client.execute_command("CLIENT", "PAUSE", 2000, "ALL")  # type: ignore[no-untyped-call]
    results = race(calls)
    awaits, lists, approval = results[:12], results[12:20], results[20]
    assert not [e for e in errors(results) if e.code() == grpc.StatusCode.UNAVAILABLE], describe(
        results
    )
    assert {e.code() for e in errors(awaits)} == {grpc.StatusCode.NOT_FOUND}
    assert not errors(lists)
    assert isinstance(approval, approvals_pb2.Hold)
    assert approval.status == approvals_pb2.HOLD_STATUS_APPROVED


# --- rate limits over two gateways ---------------------------------------------------


def test_a_rate_limit_counts_exactly_over_two_gateways_and_never_allows_twice(
    cluster: ClusterProcesses, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    # One sliding window per agent in its slot, counted by the claim's script: two
    # gateways racing admit exactly the limit, and a refused action_id retried while
    # the window is full is refused again, never allowed.
    limit = 4
    limits = AgentLimits(
        actions_per_minute=limit, session_actions_per_minute=0, request_bytes_per_minute=0
    )
    pair = in_process_pair(
        make_gateway, cluster, "clu-rates", detection=DetectionSettings(rates=RateSettings(limits))
    )
    burst = [action("agent-2", f"burst-{i}", f"burst-{i}", "search", {"i": i}) for i in range(12)]
    results = race(
        [
            partial(pair[i % 2].gateway.Submit, r, metadata=md("agent-2"), timeout=10)
            for i, r in enumerate(burst)
        ]
    )
    assert not errors(results), describe(results)
    answers = [r for r in results if isinstance(r, gateway_pb2.Decision)]

    def refused(d: gateway_pb2.Decision) -> bool:
        return any(f.type == "rate_limit" for f in d.findings)

    admitted = [d for d in answers if not refused(d)]
    assert len(admitted) == limit
    assert {d.verdict for d in admitted} == {gateway_pb2.VERDICT_ALLOW}
    assert {d.verdict for d in answers if refused(d)} == {gateway_pb2.VERDICT_DENY}
    again = next(r for r, d in zip(burst, answers, strict=True) if refused(d))
    retries = race(
        [
            partial(pair[i % 2].gateway.Submit, again, metadata=md("agent-2"), timeout=10)
            for i in range(8)
        ]
    )
    assert not errors(retries), describe(retries)
    assert all(refused(d) for d in retries)

    entries = verified_export(pair[1].target, tmp_path)
    kept = [
        e["action_id"]
        for e in entries
        if e["event_type"] == "action_decided" and e["outcome"] != "deny"
    ]
    assert sorted(kept) == sorted(d.action_id for d in admitted)
    for d in [*answers, *retries]:
        entry = entries[d.audit_seq - 1]
        assert (entry["action_id"], entry["event_type"]) == (d.action_id, "action_decided")


# --- a master dies ------------------------------------------------------------------


class ServingCluster(ClusterProcesses):
    """A cluster whose masters keep serving their own slots while another master is
    down (`cluster-require-full-coverage no`), or, with full_coverage, refuse every
    command then (the Redis default)."""

    def __init__(self, root: Path, *, full_coverage: bool) -> None:
        # A short node timeout: the failure is detected, and undone, sooner.
        super().__init__(root, node_timeout_ms=1000)
        self.full_coverage = full_coverage

    def _lines(self) -> list[str]:
        setting = "yes" if self.full_coverage else "no"
        return [*super()._lines(), f"cluster-require-full-coverage {setting}"]


@pytest.fixture(params=[False, True], ids=["partial-coverage", "full-coverage"])
def killable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServingCluster]:
    """A cluster of its own (function scope): the test kills one of its masters."""
    running = ServingCluster(tmp_path / "killable", full_coverage=request.param)
    with running:
        yield running


def node_id(cluster: ClusterProcesses, node: ServerProcess) -> str:
    return cluster.node_ids[node.port]


def flags_of(observer: ServerProcess, target_id: str) -> set[str]:
    try:
        nodes = observer.client.cluster("nodes")
    except redis.RedisError:
        return set()
    for entry in nodes.values():
        if str(entry["node_id"]) == target_id:
            return set(str(entry["flags"]).split(","))
    return set()


def cluster_state(node: ServerProcess) -> str:
    try:
        reply = node.client.cluster("info")
    except redis.RedisError:
        return ""
    if isinstance(reply, dict):
        return str(reply.get("cluster_state", ""))
    return next(
        (
            line.split(":", 1)[1]
            for line in str(reply).splitlines()
            if line.startswith("cluster_state:")
        ),
        "",
    )


@dataclass(frozen=True)
class Attempt:
    agent: str
    request: gateway_pb2.ActionRequest
    sent_at: float
    decision: gateway_pb2.Decision | None
    code: grpc.StatusCode | None


async def storm(target: str, attempts: list[Attempt], stop: asyncio.Event) -> None:
    """Three clients per agent, each submitting new actions one at a time (single
    attempts, so every failure is seen) until `stop`."""
    numbers = itertools.count()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def client(agent: str) -> None:
            metadata = md(agent)
            while not stop.is_set():
                n = next(numbers)
                request = action(agent, f"storm-{n}", f"storm-{n}", "search", {"n": n})
                sent_at = time.monotonic()
                try:
                    decision = await stub.Submit(request, metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError as e:
                    attempts.append(Attempt(agent, request, sent_at, None, e.code()))
                    # An agent's backoff before its next call, as clients/agent.py does.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.02)
                    continue
                attempts.append(Attempt(agent, request, sent_at, decision, None))

        await asyncio.gather(*(client(a) for a in ("agent-1", "agent-2") for _ in range(3)))


def sent_after(attempts: list[Attempt], agent: str, moment: float) -> list[Attempt]:
    return [a for a in list(attempts) if a.agent == agent and a.sent_at > moment]


def answers_in_chain(entries: list[dict[str, Any]], attempts: list[Attempt]) -> None:
    """Every answer is the entry at its audit_seq; nothing is decided twice."""
    no_action_decided_twice(entries)
    for attempt in attempts:
        if attempt.decision is None:
            continue
        entry = entries[attempt.decision.audit_seq - 1]
        assert (entry["actor"], entry["action_id"], entry["event_type"]) == (
            attempt.agent,
            attempt.request.action_id,
            "action_decided",
        )
        assert entry["outcome"] == "allow"


def test_a_killed_master_fails_its_agents_closed_and_spares_the_others(
    killable: ServingCluster, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    # No rate limits: the storm's answers are decisions on their merits, not refusals.
    unlimited = DetectionSettings(rates=RateSettings(defaults=AgentLimits(0, 0, 0)))
    gw = make_gateway(redis=RedisSettings(url=killable.url, key_prefix=PREFIX), detection=unlimited)
    audit_master = killable.node_for_key(KEYS.audit_head)
    victim = killable.node_for_key(KEYS.claim("agent-2", "x"))
    assert victim is not audit_master
    assert killable.node_for_key(KEYS.claim("agent-1", "x")) is audit_master
    survivors = [m for m in killable.masters if m is not victim]
    victim_id = node_id(killable, victim)

    # Before: a decided action and a paused session of agent-2 (both in {audit}).
    agent2 = gw.agent("agent-2")
    decided_before = agent2.submit("search", session_id="before", action_id="before-1")
    paused_by = pause_session(Stubs(gw.gateway, gw.approvals), "agent-2", "paused-before")

    attempts: list[Attempt] = []
    moments: dict[str, float] = {}

    def count(agent: str, after: str, answered: bool | None = None) -> int:
        moment = moments.get(after)
        if moment is None:
            return 0
        return sum(
            answered is None or (a.decision is not None) == answered
            for a in sent_after(attempts, agent, moment)
        )

    async def scenario() -> None:
        stop = asyncio.Event()
        load = asyncio.create_task(storm(gw.target, attempts, stop))
        try:
            moments["start"] = 0.0
            await wait_async(
                lambda: (
                    count("agent-1", "start", True) >= 10 and count("agent-2", "start", True) >= 10
                ),
                20,
                "answers before the kill",
            )
            victim.kill()
            moments["killed"] = time.monotonic()
            # The survivors mark it failed (cluster-node-timeout, 1 s, then a majority).
            await wait_async(
                lambda: all("fail" in flags_of(m, victim_id) for m in survivors),
                30,
                "the survivors to mark the killed master failed",
            )
            if killable.full_coverage:
                await wait_async(lambda: cluster_state(audit_master) == "fail", 10, "cluster down")
            moments["failed"] = time.monotonic()
            # With the cluster down each call takes a while (the client retries
            # CLUSTERDOWN), so fewer are asked for.
            calls = 6 if killable.full_coverage else 20
            await wait_async(
                lambda: count("agent-1", "failed") >= calls and count("agent-2", "failed") >= 6,
                30,
                "calls after the failure was detected",
            )
        finally:
            stop.set()
            await asyncio.wait_for(load, 30)

    asyncio.run(scenario())

    # agent-2: nothing sent after the kill was answered; every call failed closed.
    after_kill = sent_after(attempts, "agent-2", moments["killed"])
    assert after_kill
    assert {a.code for a in after_kill} == {grpc.StatusCode.UNAVAILABLE}
    agent1_failures = [a for a in attempts if a.agent == "agent-1" and a.decision is None]
    if killable.full_coverage:
        # The cluster is down as a whole: agent-1 fails closed too.
        after_down = sent_after(attempts, "agent-1", moments["failed"])
        assert after_down
        assert {a.code for a in after_down} == {grpc.StatusCode.UNAVAILABLE}
    else:
        # agent-1's slot and the log's are on a master that still serves them: no call
        # of agent-1 fails, not even one in flight at the kill (the claim markers that
        # meet the dead master have a client of their own; see the test below).
        assert not agent1_failures, [
            (round(a.sent_at - moments["killed"], 2), a.code) for a in agent1_failures
        ]
        assert count("agent-1", "failed", True) >= 20
        # The log can be audited with the agent's master still down.
        answers_in_chain(verified_export(gw.target, tmp_path / "while-down"), attempts)

    # The master comes back empty (no persistence): agent-2's claims and session
    # history are gone, its decisions, action_ids and pauses are not.
    back = killable.restart(victim)
    wait_for(
        lambda: (
            all(cluster_state(n) == "ok" for n in [back, *survivors])
            and not any({"fail", "fail?"} & flags_of(m, victim_id) for m in survivors)
        ),
        timeout=30,
        what="the cluster to be whole again",
    )
    assert back.client.dbsize() == 0
    wait_for(
        lambda: _answers(gw, "agent-2", "probe-after-restart"),
        timeout=20,
        what="agent-2 to be answered again",
    )
    again = agent2.submit("search", session_id="before", action_id="before-1")
    assert (again.audit_seq, again.verdict) == (decided_before.audit_seq, decided_before.verdict)
    with pytest.raises(grpc.RpcError) as reused:
        agent2.submit("send_email", session_id="before", action_id="before-1", attempts=1)
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    still_paused = agent2.submit("search", session_id="paused-before", action_id="after-restart")
    assert still_paused.verdict == gateway_pb2.VERDICT_HOLD, still_paused.reason
    assert "paused" in still_paused.reason and still_paused.hold_id != paused_by.hold_id

    entries = verified_export(gw.target, tmp_path / "after")
    answers_in_chain(entries, attempts)
    assert [e["seq"] for e in decided(entries, "agent-2", "before-1")] == [decided_before.audit_seq]
    # Nothing agent-2 sent while its master was down was recorded.
    recorded = {e["action_id"] for e in entries if e["actor"] == "agent-2"}
    assert not recorded & {a.request.action_id for a in after_kill}


@pytest.mark.parametrize("killable", [False], ids=["partial-coverage"], indirect=True)
def test_claim_markers_for_a_dead_master_spare_the_calls_in_flight_on_the_others(
    killable: ServingCluster, make_gateway: Callable[..., RunningGateway]
) -> None:
    """The markers a commit writes on the agents' masters meet a dead master while a
    call of the decision path is in flight on a live one: the markers are lost (they
    are best effort), the call's connection is not. (A redis-py cluster pipeline that
    meets a dead node closes every connection of its client, the busy ones too; the
    markers have a client of their own so that this closes only theirs.)"""
    gw = make_gateway(redis=RedisSettings(url=killable.url, key_prefix=PREFIX))
    victim = killable.node_for_key(KEYS.claim("agent-2", "x"))
    live_key = KEYS.claim("agent-1", "in-flight")
    live = killable.node_for_key(live_key)
    assert live is not victim
    gw.agent("agent-2").submit("search", session_id="warm", action_id="warm-1")
    victim.kill()

    async def scenario() -> tuple[list[int], list[int], Any]:
        app = gw.app
        # A blocking read on agent-1's master, in flight on the decision path's client.
        in_flight = asyncio.ensure_future(app.client.blpop([live_key], timeout=2))
        await wait_async(lambda: bool(_blocked_on(live)), 10, "the read to block")
        before = _blocked_on(live)
        marker = Projection(KEYS.claim("agent-2", "lost"), "decided", 60_000)
        await app.audit._write_projections([marker])  # logs the markers it lost
        after = _blocked_on(live)
        return before, after, await in_flight

    before, after, answer = gw.run(scenario())
    # The same connection still waits: it was not closed (and the read retried).
    assert after == before
    assert answer is None


def _blocked_on(node: ServerProcess) -> list[int]:
    """The ids of the connections blocked in BLPOP on `node`."""
    return [int(c["id"]) for c in node.client.client_list() if c.get("cmd") == "blpop"]


def _answers(gw: RunningGateway, agent: str, action_id: str) -> bool:
    try:
        gw.gateway.Submit(action(agent, action_id, action_id), metadata=md(agent), timeout=5)
    except grpc.RpcError as e:
        # ABORTED: an earlier probe's claim whose outcome is unknown, until it lapses.
        assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED), e.details()
        return False
    return True

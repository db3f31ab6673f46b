"""Probes of the guarantee that calls held open (server streams, `Gateway.Await`) end
with UNAUTHENTICATED or PERMISSION_DENIED as soon as the principals change so that
their caller may no longer make them (gateway/api/auth.py `OpenCall`,
gateway/api/status.py `_revocable`), attacked with revocations landing at chosen
points of the event loop, while streams are busy, while clients cancel, and under
thousands of short calls."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc
import pytest

from agentgw.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    approvals_pb2,
    approvals_pb2_grpc,
    audit_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
)
from clients.agent import AgentClient, bearer
from gateway.domain.audit.entry import EntryDraft
from gateway.domain.principals import Principal, Role, token_digest
from tests.audit_drafts import note_draft
from tests.harness import GatewayLogs, RunningGateway, StreamReader, test_principals, wait_for

CHANGED = "(the config changed while this call was open)"
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
MakeGateway = Callable[..., RunningGateway]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def probe(name: str, role: Role) -> Principal:
    return Principal(name, role, token_digest(f"tok-{name}"))


def probe_md(name: str) -> tuple[tuple[str, str], ...]:
    return bearer(f"tok-{name}")


def without(principals: Iterable[Principal], *names: str) -> tuple[Principal, ...]:
    return tuple(p for p in principals if p.name not in names)


def put_in_force(gw: RunningGateway, principals: Iterable[Principal]) -> None:
    """What a reload of the config does, on the gateway's loop."""
    chosen = tuple(principals)

    async def swap() -> None:
        gw.app.auth.replace(chosen)

    gw.run(swap())


def revoke_on_loop(
    gw: RunningGateway,
    principals: Iterable[Principal],
    ready: Callable[[], bool],
    turns: int,
    before: Callable[[], None] | None = None,
) -> Future[None]:
    """On the gateway's loop: once `ready()` holds, `before()` (if any), then `turns`
    turns of the loop, then the principals put in force. Lands a revocation at a
    chosen point of what the loop is doing."""
    chosen = tuple(principals)

    async def revoke() -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while not ready():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("never ready")
            await asyncio.sleep(0)
        if before is not None:
            before()
        for _ in range(turns):
            await asyncio.sleep(0)
        gw.app.auth.replace(chosen)

    return asyncio.run_coroutine_threadsafe(revoke(), gw.loop)


def outcome(future: grpc.Future, timeout: float) -> tuple[str, str]:
    """How a unary future ended: ("OK", "") or (code name, details); ("OPEN", "")
    if it has not ended within `timeout`."""
    try:
        future.result(timeout=timeout)
    except grpc.FutureTimeoutError:
        return "OPEN", ""
    except grpc.FutureCancelledError:
        return "CANCELLED", "by the client"
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""
    return "OK", ""


def errors(logs: GatewayLogs) -> list[str]:
    """What the gateway logged as an error, but for fired alerts (calls that start
    after a revocation are refused credentials, alerted; loops are alerted too)."""
    return [
        r.getMessage()
        for r in logs.records
        if r.levelno >= logging.ERROR and r.name != "agentgw.alerts"
    ]


def big_draft(n: int) -> EntryDraft:
    """A note of about 2 KB, numbered `n`."""
    return replace(note_draft(n), details={"n": n, "pad": "x" * 2000})


def held_by(gw: RunningGateway, agent: str) -> str:
    """A pending hold of a probe agent's."""
    client = AgentClient(gw.target, f"tok-{agent}", agent_id=agent, channel=gw.channel)
    held = client.submit("delete_file")
    assert held.hold_id, held
    return str(held.hold_id)


def await_future(gw: RunningGateway, hold_id: str, md: Any, timeout: float = 30) -> grpc.Future:
    stub = gateway_pb2_grpc.GatewayStub(gw.channel)
    return stub.Await.future(
        gateway_pb2.AwaitRequest(hold_id=hold_id), metadata=md, timeout=timeout
    )


def approve(gw: RunningGateway, hold_id: str, approver: str = "approver-1") -> None:
    approvals_pb2_grpc.ApprovalsStub(gw.channel).Approve(
        approvals_pb2.ApproveRequest(hold_id=hold_id, reason="fine"),
        metadata=gw.md(approver),
        timeout=10,
    )


def healthy(gw: RunningGateway) -> None:
    """The gateway still answers: a Submit, and a WatchHolds that syncs."""
    assert gw.agent("agent-2").submit("search").verdict == gateway_pb2.VERDICT_ALLOW
    watch = StreamReader(
        approvals_pb2_grpc.ApprovalsStub(gw.channel).WatchHolds(
            approvals_pb2.WatchHoldsRequest(), metadata=gw.md("approver-2"), timeout=10
        )
    )
    kind = approvals_pb2.HoldEvent.Kind.KIND_SYNCED
    wait_for(lambda: any(e.kind == kind for e in watch.messages), 10, "a new watch to sync")
    watch.close()


def nothing_held(gw: RunningGateway) -> None:
    wait_for(lambda: gw.app.auth.open_calls == 0, 10, "no call to be held open")
    wait_for(lambda: gw.app.watch.watchers == 0, 10, "no hold watcher left")
    wait_for(lambda: not gw.app.listener._waiters, 10, "no Await waiter left")


# ---------------------------------------------------------------------------
# Holes
# ---------------------------------------------------------------------------


def test_a_revocation_just_after_an_await_wakes_up_still_ends_it(
    make_gateway: MakeGateway,
) -> None:
    """An Await whose agent is revoked in the few loop turns after it was woken up
    (app.py wakes every waiter every RECHECK_SECONDS; a partial quorum approval or a
    resync does too) ends at once, and never hands the revoked agent a decision taken
    after. On Python 3.11 `asyncio.wait_for` swallows a cancel that lands as its inner
    wait ends (CPython gh-86296): a long wait is therefore raced against the
    revocation (status.py `_raced`), not cancelled."""
    agents = tuple(probe(f"probe-agent-{k}", Role.AGENT) for k in range(5))
    everyone = (*test_principals(), *agents)
    gw = make_gateway(principals=everyone)
    ended: dict[str, tuple[str, str]] = {}
    still_open: dict[str, tuple[str, grpc.Future]] = {}
    revoked: list[str] = []
    for k, agent in enumerate(agents):
        hold_id = held_by(gw, agent.name)
        future = await_future(gw, hold_id, probe_md(agent.name))
        held = len(still_open) + 1

        def registered(held: int = held) -> bool:
            return gw.app.auth.open_calls == held

        wait_for(registered, 10, "the Await to be held")
        revoked.append(agent.name)
        revoke_on_loop(
            gw,
            without(everyone, *revoked),
            ready=lambda: True,
            turns=k,
            before=gw.app.listener.wake_all,
        ).result(10)
        ended[agent.name] = outcome(future, 1.5)
        if ended[agent.name][0] == "OPEN":
            still_open[agent.name] = (hold_id, future)
    leaked = {}
    for name, (hold_id, future) in still_open.items():
        approve(gw, hold_id)
        leaked[name] = outcome(future, 10)
    assert not leaked, (
        f"revoked agents still waiting, then handed the decision: {leaked} (all: {ended})"
    )
    for code, details in ended.values():
        assert code == "UNAUTHENTICATED" and details == f"unknown token {CHANGED}"
    nothing_held(gw)


def test_an_alert_watch_revoked_while_it_opens_ends_and_leaves_no_watcher(
    make_gateway: MakeGateway, gateway_logs: GatewayLogs
) -> None:
    """An admin's Alerts.Watch revoked in the first loop turns of the call (while
    subscribing, or about to send its headers) ends with UNAUTHENTICATED, gets no
    alert, and leaves no subscriber behind: the headers are sent between steps
    (`HEADERS`), never while a revocation may cancel, and the subscription ends with
    the call however it ends (`Alerting.subscribed`)."""
    admins = tuple(probe(f"probe-admin-{k}", Role.ADMIN) for k in range(10))
    everyone = (*test_principals(), *admins)
    gw = make_gateway(principals=everyone)
    stub = alerts_pb2_grpc.AlertsStub(gw.channel)
    results: dict[int, tuple[str, str]] = {}
    revoked: list[str] = []
    for k, admin in enumerate(admins):
        revoked.append(admin.name)
        landing = revoke_on_loop(
            gw, without(everyone, *revoked), ready=lambda: gw.app.auth.open_calls > 0, turns=k
        )
        reader = StreamReader(
            stub.Watch(alerts_pb2.WatchAlertsRequest(), metadata=probe_md(admin.name), timeout=20)
        )
        landing.result(10)
        if reader.ended.wait(1):
            assert reader.code is not None
            results[k] = (reader.code.name, reader.details)
        else:
            results[k] = ("OPEN", f"{len(reader.messages)} alerts")
            reader.close()
        wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the call to be let go")
    wrong = {k: r for k, r in results.items() if r[0] != "UNAUTHENTICATED"}
    watchers = len(gw.app.alerting._watchers)
    assert not wrong and watchers == 0, (
        f"revoked watches not refused: {wrong}; alert subscribers left: {watchers}"
    )
    assert not errors(gateway_logs)


def test_a_stream_whose_client_stops_reading_ends_when_it_reads_again(
    gw: RunningGateway,
) -> None:
    """A revoked auditor's ReadEntries whose client holds back its reads (the handler
    blocked handing a message to gRPC, flow control) ends when the client reads
    again: it gets what gRPC had taken before the revocation, then UNAUTHENTICATED,
    never the rest of the log."""
    gw.run(gw.app.audit.commit([big_draft(n) for n in range(3000)]), timeout=120)
    call = gw.audit.ReadEntries(
        audit_pb2.ReadEntriesRequest(), metadata=gw.md("auditor-1"), timeout=60
    )
    next(call)
    wait_for(lambda: gw.app.auth.open_calls == 1, 10, "the stream to be held")
    (opened,) = tuple(gw.app.auth._open)
    idle = [0]

    def blocked_writing() -> bool:  # outside the method for 25 polls in a row
        idle[0] = 0 if opened.waiting else idle[0] + 1
        return idle[0] >= 25

    wait_for(blocked_writing, 20, "the gateway to be blocked on flow control")
    put_in_force(gw, without(test_principals(), "auditor-1"))
    after = 0
    with pytest.raises(grpc.RpcError) as ended:
        for _ in call:
            after += 1
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert 1 + after < 3000
    wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the stream to be let go")


def revoke_after(gw: RunningGateway, principals: tuple[Principal, ...], delay: float) -> None:
    """Puts `principals` in force `delay` seconds from now, on the gateway's loop: a
    revocation landing at a random point of a call (the delay paces, it decides nothing)."""

    async def later() -> None:
        await asyncio.sleep(delay)
        gw.app.auth.replace(principals)

    gw.run(later())


def test_busy_audit_streams_revoked_at_random_points_end_refused(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """ReadEntries and Query over 3,000 entries, the auditor revoked at a random
    moment (at a yield, or inside a Redis read), 40 times: every stream ends OK
    (finished first) or UNAUTHENTICATED with the message, nothing stays registered,
    no error is logged, and the Redis connections the cancels interrupted still
    answer right (a full export is the whole log)."""
    gw.run(gw.app.audit.commit([note_draft(n) for n in range(3000)]), timeout=60)
    head = gw.audit_head()
    everyone, rng = test_principals(), random.Random(7)
    seen: list[tuple[str, str]] = []
    for round_ in range(40):
        if round_ % 2:
            call = gw.audit.ReadEntries(
                audit_pb2.ReadEntriesRequest(), metadata=gw.md("auditor-1"), timeout=30
            )
        else:
            call = gw.audit.Query(
                audit_pb2.QueryRequest(event_type="note"),
                metadata=gw.md("auditor-1"),
                timeout=30,
            )
        reader = StreamReader(call)
        revoke_after(gw, without(everyone, "auditor-1"), rng.uniform(0, 0.05))
        assert reader.ended.wait(30), "the stream never ended"
        assert reader.code is not None
        if reader.code != grpc.StatusCode.OK:
            assert (reader.code, reader.details) == (
                grpc.StatusCode.UNAUTHENTICATED,
                f"unknown token {CHANGED}",
            )
        seen.append((reader.code.name, str(len(reader.messages))))
        wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the stream to be let go")
        put_in_force(gw, everyone)
    assert any(code == "UNAUTHENTICATED" for code, _ in seen), seen
    # The ends are no security events: nothing was audited for them.
    seqs = [json.loads(line)["seq"] for line in gw.export_lines()]
    assert seqs == list(range(1, head + 1))
    assert not errors(gateway_logs)


def test_a_log_follow_revoked_at_random_points_ends_refused(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """Logs.Query with follow, the admin revoked at a random moment, 15 times."""
    everyone, rng = test_principals(), random.Random(11)
    stub = logs_pb2_grpc.LogsStub(gw.channel)
    for _ in range(15):
        reader = StreamReader(
            stub.Query(logs_pb2.LogQuery(follow=True), metadata=gw.md("admin-1"), timeout=30)
        )
        wait_for(lambda: gw.app.auth.open_calls == 1, 10, "the follow to be held")
        revoke_after(gw, without(everyone, "admin-1"), rng.uniform(0, 0.05))
        assert reader.ended.wait(10), "the follow never ended"
        assert (reader.code, reader.details) == (
            grpc.StatusCode.UNAUTHENTICATED,
            f"unknown token {CHANGED}",
        )
        put_in_force(gw, everyone)
    nothing_held(gw)
    assert not errors(gateway_logs)


def test_streams_revoked_at_every_early_loop_turn_end_refused(
    make_gateway: MakeGateway, gateway_logs: GatewayLogs
) -> None:
    """WatchHolds, ReadEntries and an Await, each revoked 0..11 loop turns after it
    was registered (inside the method's first step, wherever that is): each ends
    refused, nothing stays registered, no error is logged."""
    approvers = tuple(probe(f"probe-approver-{k}", Role.APPROVER) for k in range(12))
    auditors = tuple(probe(f"probe-auditor-{k}", Role.AUDITOR) for k in range(12))
    agents = tuple(probe(f"probe-agent-{k}", Role.AGENT) for k in range(12))
    everyone = (*test_principals(), *approvers, *auditors, *agents)
    gw = make_gateway(principals=everyone)
    gw.run(gw.app.audit.commit([note_draft(n) for n in range(600)]), timeout=60)
    revoked: list[str] = []
    bad: list[tuple[str, int, str, str]] = []

    def one(kind: str, k: int, name: str, open_: Callable[[], Any]) -> None:
        revoked.append(name)
        landing = revoke_on_loop(
            gw, without(everyone, *revoked), ready=lambda: gw.app.auth.open_calls > 0, turns=k
        )
        started = open_()
        landing.result(10)
        if isinstance(started, StreamReader):
            ended = started.ended.wait(10)
            code = started.code.name if started.code else "OPEN"
            details = started.details
            if not ended:
                started.close()
        else:
            code, details = outcome(started, 10)
        if code != "UNAUTHENTICATED" or not details.endswith(CHANGED):
            bad.append((kind, k, code, details))
        wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the call to be let go")

    approvals = approvals_pb2_grpc.ApprovalsStub(gw.channel)

    def watch_holds(name: str) -> StreamReader:
        request = approvals_pb2.WatchHoldsRequest()
        return StreamReader(approvals.WatchHolds(request, metadata=probe_md(name), timeout=20))

    def read_entries(name: str) -> StreamReader:
        request = audit_pb2.ReadEntriesRequest()
        return StreamReader(gw.audit.ReadEntries(request, metadata=probe_md(name), timeout=20))

    for k in range(12):
        name = approvers[k].name
        one("WatchHolds", k, name, functools.partial(watch_holds, name))
        name = auditors[k].name
        one("ReadEntries", k, name, functools.partial(read_entries, name))
        name = agents[k].name
        hold_id = held_by(gw, name)
        one("Await", k, name, functools.partial(await_future, gw, hold_id, probe_md(name), 20))
    assert not bad, bad
    nothing_held(gw)
    assert not errors(gateway_logs)


def test_a_client_cancel_racing_a_revocation_leaves_nothing_behind(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """The client cancels its WatchHolds (or Await) at the very moment its principal
    is revoked, 40 times: it ends CANCELLED or refused, nothing stays registered, the
    hub has no watcher left, no error is logged, and the gateway still serves."""
    everyone = test_principals()
    approvals = approvals_pb2_grpc.ApprovalsStub(gw.channel)
    hold_id = gw.agent("agent-1").submit("delete_file").hold_id
    for round_ in range(40):
        if round_ % 2:
            watch = StreamReader(
                approvals.WatchHolds(
                    approvals_pb2.WatchHoldsRequest(), metadata=gw.md("approver-1"), timeout=20
                )
            )
            synced = functools.partial(_synced, watch)
            wait_for(synced, 10, "synced")
            cancel, name = watch.call.cancel, "approver-1"
        else:
            future = await_future(gw, hold_id, gw.md("agent-1"), 20)
            wait_for(lambda: gw.app.auth.open_calls == 1, 10, "the Await to be held")
            cancel, name = future.cancel, "agent-1"
        both = threading.Barrier(2)

        def cancel_now(cancel: Callable[[], Any] = cancel, both: threading.Barrier = both) -> None:
            both.wait(5)
            cancel()

        canceller = threading.Thread(target=cancel_now)
        canceller.start()
        both.wait(5)
        put_in_force(gw, without(everyone, name))
        canceller.join(10)
        wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the call to be let go")
        put_in_force(gw, everyone)
    nothing_held(gw)
    healthy(gw)
    assert not errors(gateway_logs)


def test_other_principals_calls_survive_a_storm_of_revocations(gw: RunningGateway) -> None:
    """agent-2's Awaits and approver-2's watch stay open through 200 revocations and
    restorations of agent-1, approver-1 and auditor-1; then each gets its answer."""
    everyone = test_principals()
    hold_ids = [gw.agent("agent-2").submit("delete_file").hold_id for _ in range(10)]
    futures = [await_future(gw, h, gw.md("agent-2"), 60) for h in hold_ids]
    watch = StreamReader(
        approvals_pb2_grpc.ApprovalsStub(gw.channel).WatchHolds(
            approvals_pb2.WatchHoldsRequest(), metadata=gw.md("approver-2"), timeout=60
        )
    )
    wait_for(lambda: gw.app.auth.open_calls == 11, 10, "every call to be held")
    victims = ("agent-1", "approver-1", "auditor-1")
    for i in range(200):
        put_in_force(gw, without(everyone, victims[i % 3]))
        gw.run(asyncio.sleep(0))
        put_in_force(gw, everyone)
        if i % 50 == 0:
            gw.run(_wake_all(gw))
    assert gw.app.auth.open_calls == 11 and not any(f.done() for f in futures)
    assert not watch.ended.is_set()
    for h in hold_ids:
        approve(gw, h)
    assert all(f.result(timeout=10).verdict == gateway_pb2.VERDICT_ALLOW for f in futures)
    resolved = approvals_pb2.HoldEvent.Kind.KIND_RESOLVED
    wait_for(
        lambda: {e.hold.hold_id for e in watch.messages if e.kind == resolved} >= set(hold_ids),
        10,
        "approver-2 to see every resolution",
    )
    watch.close()


def _synced(watch: StreamReader) -> bool:
    return any(e.kind == approvals_pb2.HoldEvent.Kind.KIND_SYNCED for e in watch.messages)


async def _wake_all(gw: RunningGateway) -> None:
    gw.app.listener.wake_all()


def test_thousands_of_short_open_calls_leave_nothing_registered(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """2,400 short calls held open and ended every way: finished (a short export, an
    Await of a decided hold), cancelled by the client, past their deadline, refused
    by a revocation. Nothing stays registered, no waiter or watcher is left."""
    everyone = test_principals()
    gw.run(gw.app.audit.commit([note_draft(n) for n in range(3)]), timeout=30)
    decided = gw.agent("agent-1").submit("delete_file").hold_id
    approve(gw, decided)
    pending = gw.agent("agent-1").submit("delete_file").hold_id
    approvals = approvals_pb2_grpc.ApprovalsStub(gw.channel)
    codes: dict[str, int] = {}

    def count(code: str) -> None:
        codes[code] = codes.get(code, 0) + 1

    def short_stream(i: int) -> None:
        if i % 3 == 0:
            stream = gw.audit.ReadEntries(
                audit_pb2.ReadEntriesRequest(), metadata=gw.md("auditor-1"), timeout=10
            )
        elif i % 3 == 1:
            stream = approvals.WatchHolds(
                approvals_pb2.WatchHoldsRequest(), metadata=gw.md("approver-2"), timeout=0.05
            )
        else:
            stream = approvals.WatchHolds(
                approvals_pb2.WatchHoldsRequest(), metadata=gw.md("approver-2"), timeout=10
            )
        try:
            for n, _ in enumerate(stream):
                if i % 3 == 2 and n == 0:
                    stream.cancel()
            count("OK")
        except grpc.RpcError as e:
            count(e.code().name)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(short_stream, range(900)))
        awaits = [
            await_future(gw, decided if i % 2 else pending, gw.md("agent-1"), 0.05 + i % 3)
            for i in range(1200)
        ]
        for f in awaits[::3]:
            f.cancel()
        # Revocations while most of the Awaits of the pending hold are open.
        for _ in range(20):
            put_in_force(gw, without(everyone, "agent-1"))
            put_in_force(gw, everyone)
        watches = [
            StreamReader(
                approvals.WatchHolds(
                    approvals_pb2.WatchHoldsRequest(), metadata=gw.md("approver-1"), timeout=10
                )
            )
            for _ in range(300)
        ]
        wait_for(lambda: gw.app.auth.open_calls >= 300, 20, "the watches to be held")
        put_in_force(gw, without(everyone, "approver-1"))
        for w in watches:
            assert w.ended.wait(10)
            assert w.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK), w.code
        put_in_force(gw, everyone)
    for f in awaits:
        count(outcome(f, 15)[0])
    assert "OPEN" not in codes and "INTERNAL" not in codes and "UNKNOWN" not in codes, codes
    nothing_held(gw)
    healthy(gw)
    assert not errors(gateway_logs)


def test_submits_are_untouched_by_revocations_in_flight(
    gw: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """300 Submits of agent-1 and agent-2 while agent-1 is revoked and restored over
    and over: agent-2's all succeed; agent-1's succeed or are refused at the start
    (UNAUTHENTICATED), never cancelled or failed; a Submit is never held open."""
    everyone = test_principals()
    stop = threading.Event()
    most = [0]

    def churn() -> None:
        while not stop.is_set():
            put_in_force(gw, without(everyone, "agent-1"))
            most[0] = max(most[0], gw.app.auth.open_calls)
            put_in_force(gw, everyone)

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    stub = gateway_pb2_grpc.GatewayStub(gw.channel)
    try:
        futures = [
            (
                agent,
                stub.Submit.future(
                    gateway_pb2.ActionRequest(
                        action_id=f"a-{i}", session_id=f"s-{i}", action_type="search"
                    ),
                    metadata=gw.md(agent),
                    timeout=30,
                ),
            )
            for i in range(150)
            for agent in ("agent-1", "agent-2")
        ]
        ended = [(agent, outcome(f, 30)[0]) for agent, f in futures]
    finally:
        stop.set()
        churner.join(10)
    put_in_force(gw, everyone)
    assert {c for a, c in ended if a == "agent-2"} == {"OK"}
    assert {c for a, c in ended if a == "agent-1"} <= {"OK", "UNAUTHENTICATED"}
    assert most[0] == 0
    assert not errors(gateway_logs)


@pytest.mark.parametrize("revocation_first", [False, True])
def test_an_await_decided_as_its_agent_is_revoked_gets_one_answer(
    make_gateway: MakeGateway, revocation_first: bool
) -> None:
    """The hold is approved and the agent revoked within the same few loop turns, at
    every interleaving up to 8 turns apart: each Await ends with the decision or the
    refusal (never hangs), and every approval is in the audit log."""
    agents = tuple(probe(f"probe-agent-{k}", Role.AGENT) for k in range(9))
    everyone = (*test_principals(), *agents)
    gw = make_gateway(principals=everyone)
    approver = next(p for p in everyone if p.name == "approver-1")
    revoked: list[str] = []
    results: list[tuple[str, str]] = []
    hold_ids: list[str] = []
    for k, agent in enumerate(agents):
        hold_id = held_by(gw, agent.name)
        hold_ids.append(hold_id)
        future = await_future(gw, hold_id, probe_md(agent.name), 30)
        wait_for(lambda: gw.app.auth.open_calls == 1, 10, "the Await to be held")
        revoked.append(agent.name)
        chosen = without(everyone, *revoked)

        async def race(
            hold_id: str = hold_id, k: int = k, chosen: tuple[Principal, ...] = chosen
        ) -> None:
            if revocation_first:
                gw.app.auth.replace(chosen)
            decided = asyncio.ensure_future(gw.app.desk.approve(approver, hold_id, "fine"))
            for _ in range(k):
                await asyncio.sleep(0)
            if not revocation_first:
                gw.app.auth.replace(chosen)
            await decided

        gw.run(race())
        code, details = outcome(future, 15)
        assert code in ("OK", "UNAUTHENTICATED"), (k, code, details)
        results.append((code, details))
        wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the Await to be let go")
    lines = [json.loads(line) for line in gw.export_lines()]
    approved = [e for e in lines if e["event_type"] == "hold_approved"]
    for hold_id in hold_ids:
        assert any(hold_id in json.dumps(e) for e in approved), hold_id

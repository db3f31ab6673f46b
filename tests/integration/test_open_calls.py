"""Calls that stay open (streams, Await) are checked again whenever the principals
change: one whose principal is revoked, demoted or changed ends at once with
UNAUTHENTICATED or PERMISSION_DENIED; any other change leaves it alone; and a call
that ends, however it ends, is no longer held (gateway/api/auth.py `OpenCall`)."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentgw.v1 import approvals_pb2, approvals_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from gateway.domain.principals import Principal, Role, token_digest
from tests.harness import RunningGateway, StreamReader, test_principals, wait_for

Kind = approvals_pb2.HoldEvent.Kind
CHANGED = "(the config changed while this call was open)"


def put_in_force(gw: RunningGateway, principals: Iterable[Principal]) -> None:
    """What a reload of the config does, on the gateway's loop."""
    chosen = tuple(principals)

    async def swap() -> None:
        gw.app.auth.replace(chosen)

    gw.run(swap())


def without(name: str) -> tuple[Principal, ...]:
    return tuple(p for p in test_principals() if p.name != name)


def changed(name: str, **fields: Any) -> tuple[Principal, ...]:
    return tuple(replace(p, **fields) if p.name == name else p for p in test_principals())


def awaiting(gw: RunningGateway, agent: str = "agent-1") -> tuple[str, grpc.Future]:
    held = gw.agent(agent).submit("delete_file")
    assert held.hold_id
    stub = gateway_pb2_grpc.GatewayStub(gw.channel)
    future = stub.Await.future(
        gateway_pb2.AwaitRequest(hold_id=held.hold_id), metadata=gw.md(agent), timeout=60
    )
    wait_for(lambda: gw.app.auth.open_calls == 1, 10, "the Await to be held open")
    return held.hold_id, future


def refusal(future: grpc.Future) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ended:
        future.result(timeout=30)
    return ended.value.code(), ended.value.details() or ""


def test_an_await_ends_when_its_agent_is_revoked(gw: RunningGateway) -> None:
    _, future = awaiting(gw)
    put_in_force(gw, without("agent-1"))
    assert refusal(future) == (grpc.StatusCode.UNAUTHENTICATED, f"unknown token {CHANGED}")
    wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the call to be let go")


def test_an_await_ends_when_its_token_is_rotated(gw: RunningGateway) -> None:
    _, future = awaiting(gw)
    put_in_force(gw, changed("agent-1", token_sha256=token_digest("a new token")))
    assert refusal(future)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_an_await_ends_when_its_principal_is_demoted(gw: RunningGateway) -> None:
    _, future = awaiting(gw)
    put_in_force(gw, changed("agent-1", role=Role.APPROVER))
    code, details = refusal(future)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == f"principal 'agent-1' has role approver; this call needs agent {CHANGED}"


def test_an_await_ends_when_its_principal_changes_otherwise(gw: RunningGateway) -> None:
    """What the principal may do is read once, at the start: a change to it (here
    `owns`) is not taken up by a call in progress, which ends instead."""
    _, future = awaiting(gw)
    put_in_force(gw, changed("agent-1", owns=frozenset({"agent-2"})))
    assert refusal(future) == (
        grpc.StatusCode.UNAUTHENTICATED,
        f"principal 'agent-1' has changed; call again {CHANGED}",
    )


def test_other_changes_leave_an_await_alone(gw: RunningGateway) -> None:
    hold_id, future = awaiting(gw)
    newcomer = Principal("newcomer", Role.AGENT, token_digest("newcomer's token"))
    put_in_force(gw, (*without("agent-2"), newcomer))
    assert not future.done()
    approvals_pb2_grpc.ApprovalsStub(gw.channel).Approve(
        approvals_pb2.ApproveRequest(hold_id=hold_id, reason="fine"),
        metadata=gw.md("approver-1"),
    )
    assert future.result(timeout=30).verdict == gateway_pb2.VERDICT_ALLOW
    assert gw.app.auth.open_calls == 0


def watching(gw: RunningGateway, approver: str = "approver-1") -> StreamReader:
    """An approver's WatchHolds, read in a thread, once it has synced."""
    stub = approvals_pb2_grpc.ApprovalsStub(gw.channel)
    watch = StreamReader(
        stub.WatchHolds(approvals_pb2.WatchHoldsRequest(), metadata=gw.md(approver), timeout=60)
    )
    synced = lambda: any(e.kind == Kind.KIND_SYNCED for e in watch.messages)  # noqa: E731
    wait_for(synced, 10, "synced")
    return watch


def test_a_stream_ends_when_its_principal_is_revoked_and_is_let_go(gw: RunningGateway) -> None:
    watch = watching(gw)
    try:
        assert gw.app.auth.open_calls == 1
        put_in_force(gw, without("approver-1"))
        wait_for(lambda: watch.code is not None, 10, "the stream to end")
        assert (watch.code, watch.details) == (
            grpc.StatusCode.UNAUTHENTICATED,
            f"unknown token {CHANGED}",
        )
        wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the stream to be let go")
    finally:
        watch.close()


def test_an_operators_revocation_is_no_security_event(gw: RunningGateway) -> None:
    """The calls it ends are logged, not audited and alerted as refused credentials:
    the revoked principal did not try anything. A caller with an unknown token is."""
    watch = watching(gw)
    try:
        put_in_force(gw, without("approver-1"))
        wait_for(lambda: watch.code is not None, 10, "the stream to end")
    finally:
        watch.close()
    stranger = approvals_pb2_grpc.ApprovalsStub(gw.channel)
    with pytest.raises(grpc.RpcError):
        stranger.ListHolds(
            approvals_pb2.ListHoldsRequest(), metadata=(("authorization", "Bearer nope"),)
        )

    def refusals() -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in gw.export_lines()]
        return [e for e in entries if e["event_type"] == "security_authentication_failed"]

    found = wait_for(refusals, 10, "the stranger's refusal to be audited")
    assert [e["actor"] for e in found] == ["gateway"]  # the stranger; not approver-1


def test_a_stream_the_client_cancels_is_let_go(gw: RunningGateway) -> None:
    watch = watching(gw)
    watch.close()
    assert watch.code == grpc.StatusCode.CANCELLED
    wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the stream to be let go")
    # And the next change finds nothing of it to end.
    put_in_force(gw, without("approver-1"))


def test_of_two_streams_only_the_revoked_principals_ends(gw: RunningGateway) -> None:
    first, second = watching(gw, "approver-1"), watching(gw, "approver-2")
    try:
        put_in_force(gw, without("approver-1"))
        wait_for(lambda: first.code is not None, 10, "the first stream to end")
        held = gw.agent("agent-1").submit("delete_file")
        wait_for(lambda: any(e.hold.hold_id == held.hold_id for e in second.messages), 10, "held")
        assert first.code == grpc.StatusCode.UNAUTHENTICATED and second.code is None
        assert not any(e.hold.hold_id == held.hold_id for e in first.messages)
    finally:
        first.close()
        second.close()


def test_a_reflection_stream_ends_when_its_principal_is_revoked(gw: RunningGateway) -> None:
    requests: queue.Queue[reflection_pb2.ServerReflectionRequest | None] = queue.Queue()

    def sent() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        while (request := requests.get()) is not None:
            yield request

    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    answers = stub.ServerReflectionInfo(sent(), metadata=gw.md("agent-1"), timeout=30)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        requests.put(ask)
        assert next(answers).list_services_response.service
        wait_for(lambda: gw.app.auth.open_calls == 1, 10, "the stream to be held open")
        put_in_force(gw, without("agent-1"))
        with pytest.raises(grpc.RpcError) as ended:
            next(answers)  # ended while it waited for the next request
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (ended.value.details() or "").endswith(CHANGED)
        wait_for(lambda: gw.app.auth.open_calls == 0, 10, "the stream to be let go")
    finally:
        requests.put(None)
        answers.cancel()

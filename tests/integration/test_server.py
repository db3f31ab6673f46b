"""Server surface: health checking, reflection behind a token, policy hot reload."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentgw.v1 import gateway_pb2
from tests.harness import GatewayLogs, RunningGateway, wait_for

ALLOW_ALL = "version: 1\ndefault_verdict: allow\nrules: []\n"
DENY_SEARCH = """version: 1
default_verdict: allow
rules:
  - name: no-search
    verdict: deny
    match:
      action_type: search
"""


def test_health_check_serves_without_a_token(gw: RunningGateway) -> None:
    stub = health_pb2_grpc.HealthStub(gw.channel)
    for service in ("", "agentgw.v1.Gateway", "agentgw.v1.Audit"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def list_services(gw: RunningGateway, metadata: tuple[tuple[str, str], ...] | None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=metadata,
        timeout=5,
    )
    return [s.name for r in replies for s in r.list_services_response.service]


def test_reflection_lists_the_services_for_an_authenticated_caller(gw: RunningGateway) -> None:
    names = list_services(gw, gw.md("auditor-1"))
    assert {
        "agentgw.v1.Gateway",
        "agentgw.v1.Approvals",
        "agentgw.v1.Audit",
        "agentgw.v1.Alerts",
    } <= set(names)


def test_reflection_needs_a_token(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        list_services(gw, None)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_policy_file_change_is_picked_up(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_ALL)
    gw = make_gateway(policy_file=policy)
    agent = gw.agent()
    assert agent.submit("search", session_id="s1").verdict == gateway_pb2.VERDICT_ALLOW
    policy.write_text(DENY_SEARCH)
    wait_for(lambda: gw.app.policy.current.rules, what="the watcher to load the new policy")
    denied = agent.submit("search", session_id="s2")
    assert denied.verdict == gateway_pb2.VERDICT_DENY
    assert list(denied.matched_rules) == ["no-search"]


def test_invalid_policy_keeps_the_old_one(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text(DENY_SEARCH)
    gw = make_gateway(policy_file=policy)
    policy.write_text("version: 1\ndefault_verdict: maybe\nrules: []\n")
    assert gw.run(_reload(gw)) is False
    assert gw.agent().submit("search", session_id="s").verdict == gateway_pb2.VERDICT_DENY


async def _reload(gw: RunningGateway) -> bool:
    return gw.app.reload_policy()


def test_invalid_policy_at_start_is_refused(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gateway.errors import ConfigError

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\ndefault_verdict: allow\nrules:\n  - name: x\n    verdict: nope\n"
    )
    with pytest.raises(ConfigError, match=r"policy.yaml:5: rules\[0\].verdict"):
        make_gateway(policy_file=policy)


def test_a_gateway_stopped_right_after_it_starts_stops(gateway_config) -> None:  # type: ignore[no-untyped-def]
    # Stopping cancels the periodic tasks while they may be inside a Redis call, where
    # a cancellation used to be absorbed and the task slept on: stop() then hung.
    from tests.harness import ManualClock

    for _ in range(20):
        gw = RunningGateway(gateway_config, ManualClock())
        gw.stop()  # fails (times out) if a background task outlives stop()
        assert all(task.done() for task in gw.app._tasks) and not gw.app._tasks


def test_stop_completes_when_a_background_task_fails_as_it_is_cancelled(
    make_gateway: Callable[..., RunningGateway], gateway_logs: GatewayLogs
) -> None:
    # As redis-py can leak a transport AttributeError out of a reconnect that a
    # cancellation interrupts: the task ends with that error instead of cancelled.
    gw = make_gateway()

    async def failing_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise AttributeError("'NoneType' object has no attribute 'writelines'") from None

    async def spawn() -> None:
        gw.app._spawn(failing_on_cancel(), "a task that fails as it is cancelled")

    gw.run(spawn())
    gw.stop()  # would raise the AttributeError
    ended = [r for r in gateway_logs.records if r.getMessage() == "background task ended"]
    assert [r.task for r in ended] == ["a task that fails as it is cancelled"]

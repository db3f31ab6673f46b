"""Refusals never echo the caller's secrets: status messages are redacted like
everything else (a secret in a label key, a parameter key, an agent_id or an
action_id does not come back in INVALID_ARGUMENT / PERMISSION_DENIED /
ALREADY_EXISTS / NOT_FOUND details, which clients, proxies and tracing log).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import struct_pb2

from agentgw.v1 import gateway_pb2
from tests.harness import RunningGateway

AWS_KEY_ID = "AKIAPLANTEDKEY7EXAMP"
GITHUB_TOKEN = "ghp_R3dact10nPl4nt3dT0k3nAbCdEfGhIjKlMnO"
PASSWORD = "hunter2planted"
SECRETS = [AWS_KEY_ID, GITHUB_TOKEN, PASSWORD]


def base(**fields: str) -> dict[str, str]:
    return {
        "action_id": "a1",
        "agent_id": "agent-1",
        "session_id": "s1",
        "action_type": "search",
        **fields,
    }


def nan_under(key: str) -> struct_pb2.Struct:
    parameters = struct_pb2.Struct()
    parameters.fields[key].number_value = math.nan
    return parameters


def label_key(gw: RunningGateway) -> None:
    request = gateway_pb2.ActionRequest(**base(), labels={f"password={PASSWORD}": "v"})
    gw.gateway.Submit(request, metadata=gw.md("agent-1"))


def parameter_key(gw: RunningGateway) -> None:
    request = gateway_pb2.ActionRequest(**base(), parameters=nan_under(GITHUB_TOKEN))
    gw.gateway.Submit(request, metadata=gw.md("agent-1"))


def agent_id(gw: RunningGateway) -> None:
    gw.gateway.Submit(
        gateway_pb2.ActionRequest(**base(agent_id=AWS_KEY_ID)), metadata=gw.md("agent-1")
    )


def reused_action_id(gw: RunningGateway) -> None:
    md = gw.md("agent-1")
    gw.gateway.Submit(gateway_pb2.ActionRequest(**base(action_id=AWS_KEY_ID)), metadata=md)
    gw.gateway.Submit(
        gateway_pb2.ActionRequest(**base(action_id=AWS_KEY_ID), resource="other"), metadata=md
    )


def awaited_action_id(gw: RunningGateway) -> None:
    gw.gateway.Await(gateway_pb2.AwaitRequest(action_id=GITHUB_TOKEN), metadata=gw.md("agent-1"))


@pytest.mark.parametrize(
    "call",
    [label_key, parameter_key, agent_id, reused_action_id, awaited_action_id],
    ids=lambda c: c.__name__,
)
def test_refusals_do_not_echo_secrets(
    gw: RunningGateway, call: Callable[[RunningGateway], None]
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        call(gw)
    details = refused.value.details() or ""
    leaked = [s for s in SECRETS if s in details]
    assert not leaked, f"{refused.value.code()}: {details}"

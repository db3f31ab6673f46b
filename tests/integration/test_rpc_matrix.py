"""Every RPC x every caller: who may call what (docs/configuration.md, "Roles").

The methods come from the service descriptors, so an RPC added to the protos
without a row in ROLES fails here. Each cell is one real call over gRPC: no token
and an unknown token are UNAUTHENTICATED, a wrong role is PERMISSION_DENIED, an
allowed role gets an answer (UNIMPLEMENTED only for RPCs not built yet, and only
once the caller is authorized).
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentgw.v1 import alerts_pb2, approvals_pb2, audit_pb2, gateway_pb2, logs_pb2
from gateway.api.decoding import message_class
from tests.harness import RunningGateway, token_for

SERVICES = (
    gateway_pb2.DESCRIPTOR.services_by_name["Gateway"],
    approvals_pb2.DESCRIPTOR.services_by_name["Approvals"],
    audit_pb2.DESCRIPTOR.services_by_name["Audit"],
    alerts_pb2.DESCRIPTOR.services_by_name["Alerts"],
    logs_pb2.DESCRIPTOR.services_by_name["Logs"],
)

# The Roles table of docs/configuration.md.
ROLES: dict[str, set[str]] = {
    "Gateway.Submit": {"agent"},
    "Gateway.Await": {"agent"},
    "Gateway.ReportOutcome": {"agent"},
    "Gateway.Log": {"agent"},
    "Approvals.ListHolds": {"approver"},
    "Approvals.WatchHolds": {"approver"},
    "Approvals.ListSessions": {"approver", "admin"},
    "Approvals.QuarantineAgent": {"admin"},
    "Approvals.ReleaseAgent": {"admin"},
    "Approvals.Approve": {"approver"},
    "Approvals.Reject": {"approver"},
    "Approvals.ResumeSession": {"approver", "admin"},
    "Audit.GetCheckpoint": {"auditor"},
    "Audit.ReadEntries": {"auditor"},
    "Audit.Query": {"auditor"},
    "Audit.Report": {"auditor"},
    "Audit.GetPublicKeys": {"auditor"},
    "Audit.GetInclusionProof": {"auditor"},
    "Audit.GetConsistencyProof": {"auditor"},
    "Audit.RotateKey": {"admin"},
    "Audit.VerifyLog": {"auditor"},
    "Alerts.List": {"admin"},
    "Alerts.Watch": {"admin"},
    "Alerts.Acknowledge": {"admin"},
    "Logs.Query": {"admin", "auditor"},
}
NOT_BUILT_YET: set[str] = set()
# caller -> (role, token); None: no authorization metadata at all.
CALLERS: dict[str, tuple[str, str] | None] = {
    "no token": None,
    "unknown token": ("", "tok-nobody"),
    "agent": ("agent", token_for("agent-1")),
    "approver": ("approver", token_for("approver-1")),
    "auditor": ("auditor", token_for("auditor-1")),
    "admin": ("admin", token_for("admin-1")),
}
ANSWERED = "answered"  # any status but the ones refusing the caller


def methods() -> dict[str, MethodDescriptor]:
    return {f"{s.name}.{m.name}": m for s in SERVICES for m in s.methods}


def metadata(caller: str) -> tuple[tuple[str, str], ...]:
    entry = CALLERS[caller]
    return () if entry is None else (("authorization", f"Bearer {entry[1]}"),)


def minimal_request(name: str, method: MethodDescriptor) -> Any:
    if name == "Gateway.Submit":  # as agent-1 itself, or the agent gets PERMISSION_DENIED
        return gateway_pb2.ActionRequest(
            action_id=uuid.uuid4().hex, agent_id="agent-1", session_id="s1", action_type="search"
        )
    if name == "Audit.RotateKey":
        return audit_pb2.RotateKeyRequest(reason="role matrix")
    return message_class(method.input_type)()


def call(gw: RunningGateway, name: str, method: MethodDescriptor, caller: str) -> str:
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = minimal_request(name, method)
    try:
        if method.server_streaming:
            stream = gw.channel.unary_stream(
                path, request_serializer=type(request).SerializeToString
            )(request, metadata=metadata(caller), timeout=10)
            try:
                # A stream that answers sends its headers (a watch may then wait for
                # events); one refused ends with its status at once.
                stream.initial_metadata()
                if stream.done():
                    next(iter(stream), None)  # the first message, or the end, or the error
            finally:
                stream.cancel()
        else:
            gw.channel.unary_unary(path, request_serializer=type(request).SerializeToString)(
                request, metadata=metadata(caller), timeout=10
            )
    except grpc.RpcError as e:
        code = e.code()
        if code in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNIMPLEMENTED,
        ):
            return str(code.name)
    return ANSWERED


def expected(name: str, caller: str) -> str:
    entry = CALLERS[caller]
    if entry is None or not entry[0]:
        return "UNAUTHENTICATED"
    if entry[0] not in ROLES[name]:
        return "PERMISSION_DENIED"
    return "UNIMPLEMENTED" if name in NOT_BUILT_YET else ANSWERED


def test_the_roles_table_covers_every_rpc_of_the_contract() -> None:
    assert set(ROLES) == set(methods())
    assert set(ROLES) >= NOT_BUILT_YET


def test_every_rpc_authenticates_and_authorizes_every_caller(gw: RunningGateway) -> None:
    table = methods()
    actual = {
        (name, caller): call(gw, name, table[name], caller) for name in ROLES for caller in CALLERS
    }
    want = {(name, caller): expected(name, caller) for name in ROLES for caller in CALLERS}
    wrong = {cell: (got, want[cell]) for cell, got in actual.items() if got != want[cell]}
    assert not wrong, f"(rpc, caller): (got, expected): {wrong}"


@pytest.mark.parametrize(
    "path",
    [
        "/agentgw.v1.Gateway/Nope",
        # Under the open health service's prefix, but not one of its methods.
        "/grpc.health.v1.Health/../../agentgw.v1.Gateway/Submit",
        "/grpc.health.v1.Health/Nope",
    ],
)
def test_a_method_the_server_does_not_have_needs_a_token_too(gw: RunningGateway, path: str) -> None:
    probe = gw.channel.unary_unary(path, request_serializer=None)
    for caller in CALLERS:
        try:
            probe(b"", metadata=metadata(caller), timeout=10)
            raise AssertionError("an unknown method answered")
        except grpc.RpcError as e:
            code = e.code()
        assert code == (
            grpc.StatusCode.UNAUTHENTICATED
            if expected("Gateway.Submit", caller) == "UNAUTHENTICATED"
            else grpc.StatusCode.UNIMPLEMENTED
        ), caller


def test_reflection_needs_a_token_of_any_role(gw: RunningGateway) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    for caller, entry in CALLERS.items():
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata(caller),
            timeout=10,
        )
        try:
            names = {s.name for r in replies for s in r.list_services_response.service}
        except grpc.RpcError as e:
            assert entry is None or not entry[0], caller
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, caller
        else:
            assert entry is not None and entry[0], caller
            assert {s.full_name for s in SERVICES} <= names


def test_health_is_open_to_every_caller(gw: RunningGateway) -> None:
    stub = health_pb2_grpc.HealthStub(gw.channel)
    for caller in CALLERS:
        for service in ("", *(s.full_name for s in SERVICES)):
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                metadata=metadata(caller),
                timeout=10,
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, (caller, service)


def test_an_admin_cannot_submit_as_itself_nor_approve(gw: RunningGateway) -> None:
    # The probe of issue 7: an admin submitted as agent_id=admin and approved its own hold.
    submit = gateway_pb2.ActionRequest(
        action_id="a1", agent_id="admin-1", session_id="s1", action_type="send_email"
    )
    try:
        gw.gateway.Submit(submit, metadata=gw.md("admin-1"), timeout=10)
        raise AssertionError("an admin submitted an action")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    held = gw.agent().submit("send_email", session_id="s1", parameters={"to": "x@y.z"})
    try:
        gw.approvals.Approve(
            approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="mine"),
            metadata=gw.md("admin-1"),
            timeout=10,
        )
        raise AssertionError("an admin approved a hold")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    assert gw.audit_head() == held.audit_seq  # nothing written after the hold

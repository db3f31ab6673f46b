"""Requests that are not what they claim to be: bytes that do not decode, a servicer
failing unexpectedly, inputs far beyond the limits.

Raw bytes go through a generic channel call, past any protobuf encoder. The answer
must be a plain INVALID_ARGUMENT (or INTERNAL with a ref), never UNKNOWN with the
parser's exception; the call must be logged with the same ref the client gets in
the `agentgw-ref` trailer; and nothing may be written.
"""

from __future__ import annotations

import json
import logging
import re
import time

import grpc
import pytest
import redis

from agentgw.v1 import approvals_pb2, audit_pb2, gateway_pb2
from gateway.store.keys import KeySpace
from tests.harness import GatewayLogs, RunningGateway
from tests.wire import LEN, VARINT, field, nested_struct, tag, varint

LEAKS = re.compile(
    r"Error|Exception|Traceback|google|upb|protobuf|DecodeError|agentgw\.|gateway\.|\.py\b"
)
IDENTITY = field(1, b"a1") + field(3, b"s1") + field(4, b"search")


def corrupted(number: int) -> dict[str, bytes]:
    """Ways to break string field `number`."""
    return {
        "invalid UTF-8": field(number, b"ok\xff\xfe"),
        "truncated": tag(number, LEN) + varint(50) + b"only a few bytes",
        "wrong wire type": tag(number, VARINT) + varint(1),
        "invalid tag": b"\x00\x01",
    }


# (rpc, caller, streaming, the string field to break, what else makes it valid-ish)
TARGETS = [
    ("/agentgw.v1.Gateway/Submit", "agent-1", False, 2, IDENTITY),
    ("/agentgw.v1.Gateway/Await", "agent-1", False, 1, b""),
    ("/agentgw.v1.Gateway/Log", "agent-1", False, 1, b""),
    ("/agentgw.v1.Approvals/Approve", "approver-1", False, 1, field(2, b"ok")),
    ("/agentgw.v1.Approvals/ListHolds", "approver-1", False, 1, b""),
    ("/agentgw.v1.Audit/Query", "auditor-1", True, 3, b""),
    ("/agentgw.v1.Audit/RotateKey", "admin-1", False, 1, b""),
    ("/agentgw.v1.Alerts/Acknowledge", "admin-1", False, 1, b""),
]
CASES = [
    pytest.param(rpc, caller, streaming, data, id=f"{rpc.rsplit('/', 1)[1]}-{how}")
    for rpc, caller, streaming, number, rest in TARGETS
    for how, broken in corrupted(number).items()
    for data in [rest + broken]
] + [
    # 200 Structs deep is 600 messages deep: far beyond protobuf's limit of 100.
    pytest.param(
        "/agentgw.v1.Gateway/Submit",
        "agent-1",
        False,
        field(2, b"agent-1") + IDENTITY + field(6, nested_struct(200)),
        id="Submit-nested-200-deep",
    ),
    pytest.param(
        "/agentgw.v1.Gateway/Log",
        "agent-1",
        False,
        field(1, b"agent-1") + field(5, nested_struct(200)),
        id="Log-nested-200-deep",
    ),
]


def raw_call(
    gw: RunningGateway, rpc: str, caller: str, streaming: bool, data: bytes
) -> grpc.RpcError:
    metadata = gw.md(caller)
    try:
        if streaming:
            stream = gw.channel.unary_stream(rpc, request_serializer=None)(
                data, metadata=metadata, timeout=10
            )
            list(stream)
        else:
            gw.channel.unary_unary(rpc, request_serializer=None)(
                data, metadata=metadata, timeout=10
            )
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"{rpc} accepted {data!r}")


def ref_of(error: grpc.RpcError) -> str:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    ref = trailers.get("agentgw-ref")
    assert isinstance(ref, str) and re.fullmatch(r"[0-9a-f]{12}", ref), trailers
    return ref


@pytest.mark.parametrize(("rpc", "caller", "streaming", "data"), CASES)
def test_undecodable_request_is_a_plain_invalid_argument_logged_and_not_recorded(
    gw: RunningGateway,
    gateway_logs: GatewayLogs,
    rpc: str,
    caller: str,
    streaming: bool,
    data: bytes,
) -> None:
    head = gw.audit_head()
    error = raw_call(gw, rpc, caller, streaming, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith("request could not be decoded: "), details
    assert not LEAKS.search(details), details
    [record] = gateway_logs.with_ref(ref_of(error))
    assert record.category == "security"  # type: ignore[attr-defined]
    assert record.rpc == rpc  # type: ignore[attr-defined]
    assert record.code == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert gw.audit_head() == head


def test_the_reasons_say_what_is_wrong(gw: RunningGateway) -> None:
    def reason(data: bytes) -> str:
        error = raw_call(gw, "/agentgw.v1.Gateway/Submit", "agent-1", False, data)
        return (error.details() or "").removeprefix("request could not be decoded: ")

    assert reason(IDENTITY + field(2, b"\xff")) == "agent_id: invalid UTF-8 in a string field"
    assert reason(IDENTITY + tag(2, VARINT) + varint(1)) == (
        "agent_id: wrong wire type (varint where length-delimited is expected)"
    )
    assert reason(IDENTITY + tag(2, LEN) + varint(9) + b"ab") == "agent_id: truncated"
    assert reason(IDENTITY + field(6, nested_struct(200))) == (
        "parameters: messages nested deeper than the limit of 100 levels"
    )


def test_an_unauthenticated_caller_learns_nothing_about_its_bytes(gw: RunningGateway) -> None:
    probe = gw.channel.unary_unary("/agentgw.v1.Gateway/Submit", request_serializer=None)
    with pytest.raises(grpc.RpcError) as e:
        probe(field(2, b"\xff"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_fields_from_a_newer_client_are_accepted(gw: RunningGateway) -> None:
    request = gateway_pb2.ActionRequest(
        action_id="a1", agent_id="agent-1", session_id="s1", action_type="search"
    )
    data = request.SerializeToString() + field(99, b"from the future") + tag(98, VARINT) + b"\x01"
    reply = gw.channel.unary_unary(
        "/agentgw.v1.Gateway/Submit",
        request_serializer=None,
        response_deserializer=gateway_pb2.Decision.FromString,
    )(data, metadata=gw.md("agent-1"), timeout=10)
    assert reply.verdict == gateway_pb2.VERDICT_ALLOW


def test_an_oversized_request_is_resource_exhausted(gw: RunningGateway) -> None:
    limit = gw.config.limits.max_request_bytes
    data = IDENTITY + field(2, b"agent-1") + field(7, b"r" * (limit + 1))
    error = raw_call(gw, "/agentgw.v1.Gateway/Submit", "agent-1", False, data)
    # gRPC refuses it before any of our code sees the bytes (so it cannot be logged
    # by the gateway, only counted by gRPC's own tracing).
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert gw.audit_head() == 0


# -- an unexpected failure inside a servicer -----------------------------------------


def plant_corrupt_hold(redis_url: str, key_prefix: str, hold_id: str) -> None:
    """A hold record that is not JSON, where the store keeps holds."""
    keys = KeySpace(key_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(keys.hold(hold_id), "json", "{this is not json")
        # Expiring in an hour: the sweeper leaves it alone meanwhile.
        client.zadd(keys.pending_holds, {hold_id: time.time() + 3600})
    finally:
        client.close()


def test_an_unexpected_failure_is_internal_with_a_ref_found_in_the_log(
    gw: RunningGateway, gateway_logs: GatewayLogs, redis_url: str, key_prefix: str
) -> None:
    plant_corrupt_hold(redis_url, key_prefix, "hold_corrupt")
    head = gw.audit_head()
    calls = {
        "ListHolds": lambda: gw.approvals.ListHolds(
            approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1"), timeout=10
        ),
        "Approve": lambda: gw.approvals.Approve(
            approvals_pb2.ApproveRequest(hold_id="hold_corrupt", reason="ok"),
            metadata=gw.md("approver-1"),
            timeout=10,
        ),
        "Await": lambda: gw.gateway.Await(
            gateway_pb2.AwaitRequest(hold_id="hold_corrupt"),
            metadata=gw.md("agent-1"),
            timeout=10,
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INTERNAL, name
        ref = ref_of(e.value)
        assert e.value.details() == f"internal error (ref {ref})"
        [record] = gateway_logs.with_ref(ref)
        assert record.levelno == logging.ERROR
        service = "Gateway" if name == "Await" else "Approvals"
        assert record.rpc == f"/agentgw.v1.{service}/{name}"  # type: ignore[attr-defined]
        assert "JSONDecodeError" in record.traceback  # type: ignore[attr-defined]
        assert "Traceback" in record.traceback  # type: ignore[attr-defined]
    assert gw.audit_head() == head


def test_a_server_stream_failing_unexpectedly_is_internal_too(
    gw: RunningGateway, gateway_logs: GatewayLogs, redis_url: str, key_prefix: str
) -> None:
    gw.agent().submit("search", session_id="s1")
    keys = KeySpace(key_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        client.lset(keys.audit_entries, 0, "{not an entry")
    finally:
        client.close()
    with pytest.raises(grpc.RpcError) as e:
        list(
            gw.audit.ReadEntries(
                audit_pb2.ReadEntriesRequest(), metadata=gw.md("auditor-1"), timeout=10
            )
        )
    assert e.value.code() == grpc.StatusCode.INTERNAL
    ref = ref_of(e.value)
    assert e.value.details() == f"internal error (ref {ref})"
    assert gateway_logs.with_ref(ref)


# -- inputs far beyond the limits --------------------------------------------------


@pytest.mark.parametrize("name", ["agent_id", "action_id", "session_id"])
def test_a_100_kb_identifier_gets_a_short_answer_and_a_short_log_line(
    gw: RunningGateway, gateway_logs: GatewayLogs, name: str
) -> None:
    values = {"action_id": "a1", "agent_id": "agent-1", "session_id": "s1"}
    values[name] = "x" * 100_000
    request = gateway_pb2.ActionRequest(action_type="search", **values)
    with pytest.raises(grpc.RpcError) as e:
        gw.gateway.Submit(request, metadata=gw.md("agent-1"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = e.value.details() or ""
    assert details.startswith(name)
    assert len(details.encode()) < 1024
    ref = ref_of(e.value)
    lines = gateway_logs.lines
    assert any(ref in line for line in lines)
    assert all(len(line) < 2048 for line in lines), max(lines, key=len)[:300]
    refused = [json.loads(line) for line in lines if ref in line]
    assert refused and all("error" in r["data"] for r in refused)
    assert all("x" * 200 not in r["data"]["error"] for r in refused)

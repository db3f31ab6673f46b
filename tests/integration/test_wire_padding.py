"""A known field with the wrong wire type is INVALID_ARGUMENT even behind 10,000
unknown fields: the wire check refuses what it cannot examine instead of
accepting the parser's guess (nothing is recorded)."""

from __future__ import annotations

import grpc
import pytest

from agentgw.v1 import gateway_pb2
from tests.harness import RunningGateway
from tests.wire import VARINT, field, tag, varint

IDENTITY = field(1, b"a1") + field(2, b"agent-1") + field(3, b"s1") + field(4, b"search")
RESOURCE_AS_VARINT = tag(5, VARINT) + varint(1)  # resource is a string field
PADDING = (tag(99, VARINT) + varint(0)) * 10_001  # unknown field 99, 3 bytes each


def test_a_wrong_wire_type_behind_padding_is_still_invalid_argument(gw: RunningGateway) -> None:
    data = IDENTITY + PADDING + RESOURCE_AS_VARINT
    assert len(data) < gw.config.limits.max_request_bytes
    head = gw.audit_head()
    call = gw.channel.unary_unary(
        "/agentgw.v1.Gateway/Submit",
        request_serializer=None,
        response_deserializer=gateway_pb2.Decision.FromString,
    )
    with pytest.raises(grpc.RpcError) as refused:
        call(data, metadata=gw.md("agent-1"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gw.audit_head() == head

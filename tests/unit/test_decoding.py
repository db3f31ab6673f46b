"""Request decoding: plain reasons for bytes that are not the RPC's message, and
`preview`, which bounds what a message quotes from the input."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from agentgw.v1 import approvals_pb2, gateway_pb2
from gateway.api.decoding import (
    MALFORMED,
    MAX_NESTING,
    Received,
    open_request,
    request_deserializer,
    wire_problem,
)
from gateway.errors import UndecodableRequest, preview
from tests.wire import EGROUP, I32, I64, LEN, SGROUP, VARINT, field, nested_struct, tag, varint

ACTION = gateway_pb2.ActionRequest.DESCRIPTOR
decode_action = request_deserializer(gateway_pb2.ActionRequest)


def refusal(data: bytes) -> str:
    with pytest.raises(UndecodableRequest) as caught:
        open_request(decode_action(data), ACTION)
    message = str(caught.value)
    assert message.startswith("request could not be decoded: ")
    return message.removeprefix("request could not be decoded: ")


def test_a_valid_request_opens() -> None:
    request = gateway_pb2.ActionRequest(action_id="a1", agent_id="agent-1", action_type="search")
    request.parameters.update({"q": "x", "n": [1, 2, {"k": None}]})
    request.labels["team"] = "blue"
    data = request.SerializeToString()
    assert wire_problem(ACTION, data) is None
    assert open_request(decode_action(data), ACTION) == request


def test_the_deserializer_never_raises() -> None:
    received = decode_action(b"\xff\xff\xff")
    assert received == Received(b"\xff\xff\xff", None, received.parser_error)
    assert received.parser_error  # kept for the log


def test_invalid_utf8_names_the_field() -> None:
    assert refusal(field(2, b"\xff\xfe")) == "agent_id: invalid UTF-8 in a string field"


def test_invalid_utf8_in_a_label_names_the_map() -> None:
    entry = field(1, b"team") + field(2, b"\xc3\x28")
    assert refusal(field(8, entry)) == "labels: invalid UTF-8 in a string field"


def test_a_surrogate_is_invalid_utf8() -> None:
    assert refusal(field(1, b"\xed\xa0\x80")) == "action_id: invalid UTF-8 in a string field"


@pytest.mark.parametrize(
    "data",
    [
        tag(2, LEN) + varint(16) + b"ab",  # length beyond the end
        tag(2, LEN),  # no length
        b"\x80",  # varint cut off
        tag(50, I64) + b"\x00\x00",  # an unknown field, cut off
        tag(50, I32) + b"\x00",
    ],
)
def test_truncated_requests_say_so(data: bytes) -> None:
    assert "truncated" in refusal(data)


@pytest.mark.parametrize("data", [b"\x00\x01", tag(3, 7) + b"\x01", tag(3, EGROUP)])
def test_an_invalid_tag_is_reported(data: bytes) -> None:
    assert "invalid field tag" in refusal(data)


def test_a_known_field_with_the_wrong_wire_type_is_refused() -> None:
    # protobuf itself would keep this as an unknown field and leave agent_id empty
    assert gateway_pb2.ActionRequest.FromString(tag(2, VARINT) + varint(5)).agent_id == ""
    assert refusal(tag(2, VARINT) + varint(5)) == (
        "agent_id: wrong wire type (varint where length-delimited is expected)"
    )
    assert refusal(tag(6, I32) + b"\x00" * 4) == (
        "parameters: wrong wire type (32-bit where length-delimited is expected)"
    )


def test_a_group_for_a_string_field_is_refused() -> None:
    assert "wrong wire type (group start" in refusal(tag(2, SGROUP) + tag(2, EGROUP))


def test_wrong_wire_type_inside_the_parameters_is_refused() -> None:
    value = tag(3, I64) + b"\x00" * 8  # Value.string_value as a double
    struct = field(1, field(1, b"k") + field(2, value))
    assert refusal(field(6, struct)) == (
        "parameters: wrong wire type (64-bit where length-delimited is expected)"
    )


def test_unknown_fields_are_accepted_and_dropped() -> None:
    known = gateway_pb2.ActionRequest(action_id="a1").SerializeToString()
    data = known + tag(99, VARINT) + varint(7) + field(100, b"\xff") + tag(101, I32) + b"abcd"
    assert open_request(decode_action(data), ACTION) == gateway_pb2.ActionRequest(action_id="a1")


def test_an_unknown_group_is_skipped() -> None:
    data = tag(50, SGROUP) + tag(1, VARINT) + varint(1) + tag(50, EGROUP) + field(1, b"a1")
    assert open_request(decode_action(data), ACTION).action_id == "a1"


def test_nesting_beyond_the_limit_is_refused() -> None:
    message = refusal(field(6, nested_struct(200)))
    assert message == f"parameters: messages nested deeper than the limit of {MAX_NESTING} levels"


def test_nesting_the_parser_refuses_is_never_called_malformed() -> None:
    for depth in range(30, 40):
        data = field(6, nested_struct(depth))
        try:
            gateway_pb2.ActionRequest.FromString(data)
        except Exception:  # the parser's own limit
            assert "nested deeper" in refusal(data)


def test_other_messages_are_read_against_their_own_descriptor() -> None:
    descriptor = approvals_pb2.ApproveRequest.DESCRIPTOR
    assert wire_problem(descriptor, field(2, b"\x80")) == (
        "reason: invalid UTF-8 in a string field"
    )
    assert wire_problem(descriptor, field(1, b"hold_1") + field(2, b"ok")) is None


def test_an_unexplained_failure_gets_the_generic_reason() -> None:
    with pytest.raises(UndecodableRequest) as caught:
        open_request(Received(b"", None, "something odd"), ACTION)
    assert caught.value.why == MALFORMED


@given(st.binary(max_size=64))
def test_the_walk_agrees_with_the_parser_on_what_parses(data: bytes) -> None:
    received = decode_action(data)
    if received.message is None:
        with pytest.raises(UndecodableRequest):
            open_request(received, ACTION)
    else:
        try:
            open_request(received, ACTION)
        except UndecodableRequest as e:  # only for known fields of the wrong wire type
            assert "wrong wire type" in e.why


def test_struct_values_of_every_kind_pass() -> None:
    value = struct_pb2.Value()
    value.struct_value.update({"a": 1.5, "b": True, "c": None, "d": ["x", {"e": "f"}]})
    request = gateway_pb2.ActionRequest(parameters=value.struct_value)
    assert wire_problem(ACTION, request.SerializeToString()) is None


# -- preview --------------------------------------------------------------------------------


def test_preview_keeps_short_values() -> None:
    assert preview("agent-1") == "agent-1"
    assert preview("x" * 64) == "x" * 64


def test_preview_cuts_long_values_and_says_how_long_they_were() -> None:
    assert preview("x" * 100_000) == "x" * 64 + "... (100000 chars)"
    assert preview("abcdef", limit=3) == "abc... (6 chars)"


def test_preview_escapes_control_characters() -> None:
    assert preview("a\nb\x1b[31m\x7f") == "a\\x0ab\\x1b[31m\\x7f"


@given(st.text(), st.integers(min_value=1, max_value=600))
def test_preview_is_bounded(value: str, limit: int) -> None:
    assert len(preview(value, limit)) <= 4 * limit + len("... () chars") + 20

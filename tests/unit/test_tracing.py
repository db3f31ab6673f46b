"""The trace id of a call (W3C traceparent) and the caller's address of a refusal."""

from __future__ import annotations

import pytest

from gateway.api.tracing import trace_id_of
from gateway.services.security_events import peer_address

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE}-00f067aa0ba902b7-01",
        f"00-{TRACE}-00f067aa0ba902b7-00",
        f" 00-{TRACE}-00f067aa0ba902b7-01 ",
        f"01-{TRACE}-00f067aa0ba902b7-01-future",  # a later version may add fields
        f"00-{TRACE}-00f067aa0ba902b7-01".encode(),
    ],
)
def test_a_valid_traceparent_gives_its_trace_id(value: str | bytes) -> None:
    assert trace_id_of([("authorization", "Bearer x"), ("traceparent", value)]) == TRACE


@pytest.mark.parametrize(
    "value",
    [
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id: invalid
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff: invalid
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has no more fields
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper case: invalid
        f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",
        "garbage",
        "",
    ],
)
def test_an_invalid_traceparent_gets_a_new_trace_id(value: str) -> None:
    got = trace_id_of([("traceparent", value)])
    assert len(got) == 32 and got != TRACE and got != "0" * 32
    assert all(c in "0123456789abcdef" for c in got)


def test_no_traceparent_gets_a_new_trace_id_each_call() -> None:
    assert trace_id_of(None) != trace_id_of([])


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.1:5555", "ipv4:10.0.0.1"),
        ("ipv6:[::1]:5555", "ipv6:[::1]"),
        ("unix:/tmp/agentgw.sock", "unix:/tmp/agentgw.sock"),
        ("", ""),
    ],
)
def test_a_refusals_source_is_the_address_without_its_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address

"""An audit entry must fit a sealed tile's entry bundle (C of at most 65535 bytes).

A request too large to audit is refused before anything is written; any other entry
that would be too large fails its own commit with INVALID_ARGUMENT and spares the
commits batched with it."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.domain.audit.entry import MAX_ENTRY_BYTES, EntryDraft
from gateway.errors import InvalidRequest
from gateway.services.decisions import AUDITED_REQUEST_BYTES
from tests.harness import RunningGateway


def test_a_request_too_large_to_audit_is_refused_and_writes_nothing(gw: RunningGateway) -> None:
    agent = gw.agent()
    agent.submit("search", session_id="s", action_id="before")
    head = gw.audit_head()
    # Under the parameters limit (64 KiB) but over what its audit entry can hold.
    big = {"text": "x" * (AUDITED_REQUEST_BYTES + 100)}
    assert len(big["text"]) < gw.config.limits.max_parameters_bytes
    with pytest.raises(grpc.RpcError) as refused:
        agent.submit("search", session_id="s", action_id="big-1", parameters=big)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {AUDITED_REQUEST_BYTES} fit its audit entry" in (refused.value.details() or "")
    assert gw.audit_head() == head
    # Nothing claimed the action_id: the same id with a smaller request is decided.
    decision = agent.submit("search", session_id="s", action_id="big-1", parameters={"q": 1})
    assert decision.audit_seq == head + 1


def draft(size: int) -> EntryDraft:
    return EntryDraft.of_no_action(0, "note", "admin-1", "user", {"text": "y" * size}, "")


def test_an_entry_too_large_fails_its_own_commit_and_spares_the_batch(gw: RunningGateway) -> None:
    head = gw.audit_head()

    async def three_at_once() -> list[object]:
        audit = gw.app.audit
        return await asyncio.gather(
            audit.commit([draft(10)]),
            audit.commit([draft(MAX_ENTRY_BYTES)]),
            audit.commit([draft(20)]),
            return_exceptions=True,
        )

    small, large, other = gw.run(three_at_once())
    assert isinstance(large, InvalidRequest)
    assert f"more than the {MAX_ENTRY_BYTES}" in str(large)
    assert [e.seq for e in small] + [e.seq for e in other] == [head + 1, head + 2]  # type: ignore[union-attr]
    assert gw.audit_head() == head + 2
    lines = gw.export_lines()
    assert max(len(line) for line in lines) < MAX_ENTRY_BYTES

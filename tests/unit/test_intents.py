"""Commit intents as commit.lua gets them: every key in the `{audit}` slot on a
cluster (the claim marker follows as a projection), values carrying the seq of
the entry they are committed with. Keys are checked with Redis Cluster's own slot
function, so a key that would make the cluster refuse the script fails here."""

from __future__ import annotations

from dataclasses import replace

import pytest
from redis.crc import key_slot

from gateway.domain.actions import ActionRequest, Decision, Resolution, ResolutionStatus, Verdict
from gateway.domain.audit.chain import Head, Segment, extend
from gateway.domain.audit.entry import AuditEntry, EntryDraft
from gateway.domain.audit.keys import Signer
from gateway.domain.holds import Hold, HoldStatus, Quarantine
from gateway.store.intents import (
    Claim,
    DecidedRecord,
    Intent,
    IntentWriter,
    KeyIndex,
    Lifetimes,
    LiftPause,
    QuarantineAgent,
    RecordDecision,
    RecordOutcome,
    ReleaseAgent,
    ResolveHold,
    RotateKey,
    Values,
)
from gateway.store.keys import KeySpace

KEYS = KeySpace("agw")
SIGNER = Signer.from_seed(bytes(range(32)))
REQUEST = ActionRequest("act:1", "agent:7", "s:1", "read_file")
CLAIM = Claim("ab" * 32, "0123456789abcdef")
HOLD = Hold(
    hold_id="h-1",
    request=REQUEST,
    findings=(),
    matched_rules=("loop",),
    reason="loop",
    created_at=1000.0,
    expires_at=1900.0,
    paused_session=True,
)
DECISION = Decision("act:1", "s:1", Verdict.HOLD, "loop", hold_id="h-1", expires_at=1900.0)
RESOLVED = replace(
    HOLD,
    status=HoldStatus.APPROVED,
    resolution=Resolution(ResolutionStatus.APPROVED, "approver-1", "ok", 1100.0, 0),
)
INTENTS: list[Intent] = [
    RecordDecision(REQUEST, CLAIM, DECISION, HOLD),
    RecordDecision(REQUEST, CLAIM, replace(DECISION, verdict=Verdict.ALLOW, hold_id="")),
    ResolveHold(RESOLVED),
    LiftPause("agent:7", "s:1"),
    RecordOutcome("agent:7", "act:1"),
    QuarantineAgent(Quarantine("agent:7", "leaked key", "admin", 1000.0)),
    ReleaseAgent("agent:7"),
    RotateKey(SIGNER),
    None,
]


def entries_at(seq: int) -> list[AuditEntry]:
    draft = EntryDraft("2026-12-01T12:00:00.000000Z", "x", "a", "agent", "", "", "", {}, "ok")
    head = Head.empty()
    if seq > 1:
        head = extend(head, [Segment([draft] * (seq - 1))], SIGNER).head
    return list(extend(head, [Segment([draft])], SIGNER).entries[0])


def render(intent: Intent, single_node: bool, seq: int = 42) -> tuple[dict, list, list[str]]:
    """The item with its values put back in place of their indexes (commit.lua reads
    each value from its argument: ARGV after the entry lines)."""
    writer = IntentWriter(KEYS, Lifetimes(), single_node=single_node)
    index, values = KeyIndex(KEYS), Values()
    item, projections = writer.render(intent, entries_at(seq), index, values)
    nested = [item[k] for k in ("hold", "pause") if isinstance(item.get(k), dict)]
    for part in (item, *nested):
        for name in ("value", "json"):
            if name in part:
                assert isinstance(part[name], int)  # never the text itself
                part[name] = values.list[part[name] - 1]
    return item, projections, index.keys


@pytest.mark.parametrize("intent", INTENTS, ids=lambda i: type(i).__name__)
def test_on_a_cluster_every_key_a_commit_touches_is_in_the_audit_slot(intent: Intent) -> None:
    _, projections, keys = render(intent, single_node=False)
    audit_slot = key_slot(KEYS.audit_head.encode())
    assert {key_slot(k.encode()) for k in keys} == {audit_slot}
    for projection in projections:
        assert key_slot(projection.key.encode()) == key_slot(b"a:agent:7")


def test_a_decision_is_recorded_once_with_its_seq_and_marks_its_claim() -> None:
    item, projections, keys = render(INTENTS[0], single_node=False)
    assert item["kind"] == "decide"
    assert keys[item["record"] - 1] == KEYS.decided("agent:7", "act:1")
    record = DecidedRecord.decode(item["value"])
    assert record.digest == CLAIM.digest
    assert record.decision == replace(DECISION, audit_seq=42)
    assert '"audit_seq":42' in item["hold"]["json"]
    assert keys[item["pause"]["key"] - 1] == KEYS.session_pause("agent:7", "s:1")
    # The marker: a projection on a cluster, written by the script on one node.
    assert [(p.key, p.value) for p in projections] == [
        (KEYS.claim("agent:7", "act:1"), f"d|{CLAIM.digest}|")
    ]
    single, none, single_keys = render(INTENTS[0], single_node=True)
    assert none == []
    assert single_keys[single["marker"] - 1] == KEYS.claim("agent:7", "act:1")
    assert single["marker_value"] == CLAIM.marker


def test_an_allowed_decision_writes_no_hold_and_no_pause() -> None:
    item, _, _ = render(INTENTS[1], single_node=True)
    assert "hold" not in item and "pause" not in item


def test_a_resolution_carries_its_own_seq_and_the_channel_to_publish() -> None:
    item, projections, keys = render(ResolveHold(RESOLVED), single_node=False, seq=7)
    assert (item["kind"], item["status"], item["hold_id"]) == ("resolve", "approved", "h-1")
    assert '"audit_seq":7' in item["json"]
    assert keys[item["pending"] - 1] == KEYS.pending_holds
    assert item["channel"] == KEYS.hold_resolved_channel
    assert projections == []


def test_identifiers_with_colons_do_not_collide_in_audit_slot_keys() -> None:
    # "a:b" + "c" and "a" + "b:c" are different actions and sessions.
    assert KEYS.decided("a:b", "c") != KEYS.decided("a", "b:c")
    assert KEYS.session_pause("a:b", "c") != KEYS.session_pause("a", "b:c")

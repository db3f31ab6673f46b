"""The audit chain grown without Redis: extend, rotate, sign a head, proof ranges."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.audit.chain import (
    Head,
    KeyIntroduced,
    KeyRetired,
    Segment,
    consistency_range,
    extend,
    inclusion_range,
    rotation_draft,
    sign_head,
)
from gateway.domain.audit.checkpoint import open_checkpoint
from gateway.domain.audit.entry import GENESIS_HASH, EntryDraft
from gateway.domain.audit.keys import KeySet, Signer
from gateway.domain.audit.merkle import CompactRange
from gateway.domain.audit.verify import verify_export
from gateway.errors import InvalidRequest

ORIGIN = "agentgw.test/chain"
FIRST = Signer.from_seed(bytes(range(32)))
SECOND = Signer.from_seed(bytes(range(1, 33)))


def draft(n: int) -> EntryDraft:
    return EntryDraft(
        timestamp="2026-12-01T12:00:00.000000Z",
        event_type="action_decided",
        actor="agent-1",
        actor_type="agent",
        action_id=f"a{n}",
        action_type="search",
        resource="",
        details={"n": n},
        outcome="allow",
    )


def test_extending_the_empty_head_links_entries_to_genesis_and_introduces_the_key() -> None:
    start = Head.empty()
    grown = extend(start, [Segment([draft(1), draft(2), draft(3)])], FIRST)
    (entries,) = grown.entries
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in entries[1:]] == [e.entry_hash for e in entries[:-1]]
    assert (grown.head.seq, grown.head.hash, grown.head.key_id) == (
        3,
        entries[-1].entry_hash,
        FIRST.key_id,
    )
    assert len(grown.nodes) == 2 * 3 - (3).bit_count()
    assert grown.key_changes == (KeyIntroduced(FIRST, 1),)
    assert start.seq == 0 and start.tree.size == 0  # the start head is not changed


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=6))
def test_how_a_batch_is_split_into_commits_changes_nothing(sizes: list[int]) -> None:
    drafts = [draft(n) for n in range(sum(sizes))]
    whole = extend(Head.empty(), [Segment(drafts)], FIRST)
    segments, at = [], 0
    for size in sizes:
        segments.append(Segment(drafts[at : at + size]))
        at += size
    split = extend(Head.empty(), segments, FIRST)
    assert [e for part in split.entries for e in part] == list(whole.entries[0])
    assert [len(part) for part in split.entries] == sizes
    assert split.head.tree.root() == whole.head.tree.root()
    assert split.nodes == whole.nodes


def test_extending_in_two_batches_equals_one() -> None:
    once = extend(Head.empty(), [Segment([draft(1), draft(2), draft(3)])], FIRST)
    first = extend(Head.empty(), [Segment([draft(1)])], FIRST)
    then = extend(first.head, [Segment([draft(2), draft(3)])], FIRST)
    assert then.entries[0] == once.entries[0][1:]
    assert then.head.hash == once.head.hash
    assert then.head.tree.to_hex_list() == once.head.tree.to_hex_list()
    assert then.key_changes == ()  # the key was introduced by the first batch


def test_a_rotation_hands_the_next_entries_to_the_new_key() -> None:
    rotation = rotation_draft("admin-1", SECOND, ORIGIN, "scheduled", 1_764_590_400.0)
    grown = extend(
        Head.empty(), [Segment([draft(1), rotation], rotate_to=SECOND), Segment([draft(3)])], FIRST
    )
    old, new = grown.entries
    assert [e.key_id for e in old] == [FIRST.key_id, FIRST.key_id]
    assert [e.key_id for e in new] == [SECOND.key_id]
    assert grown.head.key_id == SECOND.key_id
    assert grown.key_changes == (
        KeyIntroduced(FIRST, 1),
        KeyRetired(FIRST.key_id, 2),
        KeyIntroduced(SECOND, 3),
    )
    # An auditor who trusts only the first key verifies it: the chain introduced the second.
    lines = [e.to_json_line() for part in grown.entries for e in part]
    assert verify_export(lines, KeySet.for_signer(ORIGIN, FIRST)).ok


def test_a_signed_head_opens_under_the_heads_key() -> None:
    grown = extend(Head.empty(), [Segment([draft(1), draft(2)])], FIRST)
    checkpoint, note = sign_head(grown.head, ORIGIN, "2026-12-01T12:00:01.000000Z", FIRST)
    assert (checkpoint.size, checkpoint.head_hash) == (2, grown.head.hash)
    assert checkpoint.root_hash == grown.head.tree.root()
    assert open_checkpoint(note, KeySet.for_signer(ORIGIN, FIRST)) == checkpoint


def test_an_empty_head_has_the_empty_tree() -> None:
    head = Head.empty()
    assert head.tree.root() == CompactRange().root()


@pytest.mark.parametrize(
    ("seq", "tree_size", "head_size", "field"),
    [(0, 0, 5, "seq"), (1, 6, 5, "tree_size"), (4, 3, 5, "seq"), (6, 0, 5, "seq")],
)
def test_impossible_inclusion_requests_name_their_field(
    seq: int, tree_size: int, head_size: int, field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        inclusion_range(seq, tree_size, head_size)
    assert refused.value.field == field


def test_inclusion_and_consistency_default_to_the_head() -> None:
    assert inclusion_range(3, 0, 5) == 5
    assert inclusion_range(3, 4, 5) == 4
    assert consistency_range(2, 0, 5) == 5
    with pytest.raises(InvalidRequest) as refused:
        consistency_range(6, 0, 5)
    assert refused.value.field == "old_size"
    with pytest.raises(InvalidRequest) as refused:
        consistency_range(1, 7, 5)
    assert refused.value.field == "new_size"

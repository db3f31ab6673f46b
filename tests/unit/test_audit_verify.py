"""Offline verification: one test per failure kind, tampering properties, parallel parity."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.canonical import canonical_json
from gateway.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.audit.entry import (
    GENESIS_HASH,
    AuditEntry,
    EntryDraft,
    build_entry,
    leaf_hash,
)
from gateway.audit.keys import KeySet, Signer, TrustedKey
from gateway.audit.merkle import root_of
from gateway.audit.verify import FailureKind, VerifyFailure, VerifyReport, verify_export

SIGNER = Signer.from_seed(b"\x01" * 32)
OTHER = Signer.from_seed(b"\x02" * 32)
ORIGIN = "agentgw.example/audit"
KEYS = KeySet.for_signer(ORIGIN, SIGNER)
COUNT = 20


def draft(seq: int) -> EntryDraft:
    return EntryDraft(
        timestamp=f"2026-11-25T05:{seq // 60:02d}:{seq % 60:02d}.{seq:06d}Z",
        event_type="decision",
        actor=f"agent-{seq % 3}",
        actor_type=("agent", "user", "system")[seq % 3],
        action_id=f"act-{seq:04d}",
        action_type="payments.transfer",
        resource=f"account:{seq}",
        details={"amount": seq * 1.25, "note": "caf\u00e9 \u2615", "nested": {"n": [seq, None]}},
        outcome="allow" if seq % 2 else "deny",
    )


def chain(count: int = COUNT, signer_for: Any = lambda seq: SIGNER) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        entries.append(build_entry(draft(seq), seq, prev, signer_for(seq)))
        prev = entries[-1].entry_hash
    return entries


def lines_of(entries: list[AuditEntry]) -> list[str]:
    return [entry.to_json_line() + "\n" for entry in entries]


def resign(entry: AuditEntry, **changes: Any) -> AuditEntry:
    """A validly signed entry with some fields changed: what an insider with the key makes."""
    fields = {**entry.__dict__, **changes}
    new_draft = EntryDraft(**{k: fields[k] for k in EntryDraft.__dataclass_fields__})
    return build_entry(new_draft, fields["seq"], fields["prev_hash"], SIGNER)


ENTRIES = chain()
LINES = lines_of(ENTRIES)
ROOT = root_of([leaf_hash(e) for e in ENTRIES])


def note(size: int = COUNT, root: bytes | None = None, head: str | None = None) -> str:
    if root is None:
        root = root_of([leaf_hash(e) for e in ENTRIES[:size]])
    if head is None:
        head = ENTRIES[size - 1].entry_hash if size else GENESIS_HASH
    checkpoint = Checkpoint(ORIGIN, size, root, head, "2026-11-25T06:00:00.000000Z")
    return sign_checkpoint(checkpoint, SIGNER)


def failure_of(lines: list[str], keys: KeySet = KEYS, **kwargs: Any) -> VerifyFailure:
    report = verify_export(lines, keys, **kwargs)
    assert not report.ok
    assert report.failure is not None
    return report.failure


def test_an_untouched_export_verifies_with_and_without_a_checkpoint() -> None:
    expected = VerifyReport(COUNT, ROOT.hex(), ENTRIES[-1].entry_hash, None)
    assert verify_export(LINES, KEYS) == expected
    assert verify_export(LINES, KEYS, checkpoint=note()) == expected
    assert verify_export(LINES, KEYS).ok


def test_lines_without_newlines_verify_too() -> None:
    assert verify_export([line.rstrip("\n") for line in LINES], KEYS).ok


def test_an_export_longer_than_the_checkpoint_verifies_up_to_it_and_beyond() -> None:
    report = verify_export(LINES, KEYS, checkpoint=note(size=12))
    assert report.ok and report.count == COUNT


def test_an_empty_export_matches_an_empty_checkpoint() -> None:
    report = verify_export([], KEYS, checkpoint=note(size=0))
    assert report == VerifyReport(0, root_of([]).hex(), GENESIS_HASH, None)


def test_an_opened_checkpoint_value_is_accepted() -> None:
    checkpoint = Checkpoint(
        ORIGIN, COUNT, ROOT, ENTRIES[-1].entry_hash, "2026-11-25T06:00:00.000000Z"
    )
    assert verify_export(LINES, KEYS, checkpoint=checkpoint).ok


# --- one test per failure kind ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not json\n", "line 7: not a JSON value"),
        ("[1, 2]\n", "line 7: an entry is a JSON object"),
        ("\n", "line 7: not a JSON value"),
        (LINES[6].replace('"seq":7,', ""), "line 7: seq: missing"),
        (LINES[6].replace('"seq":7', '"seq":"7"'), "line 7: seq: must be an integer"),
        (LINES[6].replace(",", ", ", 1), "seq 7: line is not the RFC 8785 form"),
        (LINES[6].replace("\n", "\r\n"), "seq 7: line is not the RFC 8785 form"),
        (LINES[6][:-2] + ',"seq":7}\n', "seq 7: line is not the RFC 8785 form"),
        (LINES[6].replace('"outcome"', '"extra":1,"outcome"'), "seq 7: extra: unexpected key"),
        (LINES[6].replace('"amount":8.75', '"amount":NaN'), "line 7: not a JSON value"),
    ],
)
def test_malformed_line(line: str, why: str) -> None:
    lines = [*LINES]
    lines[6] = line
    failure = failure_of(lines)
    assert failure.kind is FailureKind.MALFORMED
    assert failure.line_number == 7
    assert failure.message.startswith(why)
    assert failure.message.endswith("(malformed)")


def test_edited_entry() -> None:
    lines = [*LINES]
    lines[6] = lines[6].replace('"outcome":"allow"', '"outcome":"deny"')
    assert '"outcome":"deny"' in lines[6]
    failure = failure_of(lines)
    assert failure == VerifyFailure(
        FailureKind.EDITED, 7, 7, "seq 7: entry_hash does not match its contents (edited)"
    )


def test_bad_signature_when_the_hash_is_recomputed_after_an_edit() -> None:
    forged = resign(ENTRIES[6], outcome="deny")
    lines = [*LINES]
    lines[6] = replace(forged, signature=ENTRIES[6].signature).to_json_line() + "\n"
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.BAD_SIGNATURE, 7, 7)
    assert "signature does not verify" in failure.message


def test_unknown_key() -> None:
    lines = lines_of(chain(signer_for=lambda seq: SIGNER if seq < 11 else OTHER))
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.UNKNOWN_KEY, 11, 11)
    assert OTHER.key_id in failure.message


def test_key_out_of_range_after_rotation() -> None:
    rotated = KeySet(
        ORIGIN,
        (
            TrustedKey(SIGNER.key_id, SIGNER.public_key_raw, 1, 10),
            TrustedKey(OTHER.key_id, OTHER.public_key_raw, 11, None),
        ),
    )
    assert verify_export(
        lines_of(chain(signer_for=lambda s: SIGNER if s <= 10 else OTHER)), rotated
    ).ok
    failure = failure_of(LINES, keys=rotated)
    assert (failure.kind, failure.seq) == (FailureKind.KEY_OUT_OF_RANGE, 11)
    assert "may only sign seq 1..10" in failure.message


def test_broken_link() -> None:
    lines = [*LINES]
    lines[6] = resign(ENTRIES[6], prev_hash="00" * 32).to_json_line() + "\n"
    failure = failure_of(lines)
    assert failure == VerifyFailure(
        FailureKind.BROKEN_LINK,
        7,
        7,
        "seq 7: prev_hash does not match the entry_hash of seq 6 (broken_link)",
    )


def test_first_entry_must_link_to_genesis() -> None:
    lines = [*LINES]
    lines[0] = resign(ENTRIES[0], prev_hash="11" * 32).to_json_line() + "\n"
    failure = failure_of(lines)
    assert (failure.kind, failure.seq) == (FailureKind.BROKEN_LINK, 1)
    assert "genesis" in failure.message


def test_deleted_entry() -> None:
    failure = failure_of(LINES[:6] + LINES[7:])
    assert failure == VerifyFailure(
        FailureKind.DELETED, 8, 7, "seq 8: follows seq 6; seq 7 missing (deleted)"
    )


def test_deleted_first_entries() -> None:
    failure = failure_of(LINES[3:])
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.DELETED, 4, 1)
    assert "seq 1..3 missing" in failure.message


def test_duplicate_seq_exact_repeat() -> None:
    failure = failure_of(LINES[:7] + LINES[6:])
    assert failure == VerifyFailure(
        FailureKind.DUPLICATE_SEQ, 7, 8, "seq 7: repeats the entry at seq 7 (duplicate_seq)"
    )


def test_duplicate_seq_two_different_entries_at_the_end() -> None:
    twin = resign(ENTRIES[-1], outcome="other")
    failure = failure_of([*LINES, twin.to_json_line() + "\n"])
    assert (failure.kind, failure.seq, failure.line_number) == (
        FailureKind.DUPLICATE_SEQ,
        COUNT,
        COUNT + 1,
    )
    assert "a second, different entry" in failure.message


def test_reordered_adjacent_swap() -> None:
    lines = [*LINES]
    lines[6], lines[7] = lines[7], lines[6]
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.REORDERED, 8, 7)
    assert "swapped with seq 7" in failure.message


def test_reordered_entry_moved_later() -> None:
    lines = LINES[:4] + LINES[5:10] + [LINES[4]] + LINES[10:]
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.REORDERED, 6, 5)
    assert "seq 5, which appears later" in failure.message


def test_reordered_entry_moved_earlier() -> None:
    lines = [*LINES[:4], LINES[9], *LINES[4:9], *LINES[10:]]
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.REORDERED, 10, 5)


def test_reordered_seq_goes_backwards() -> None:
    # Entry 3 appears again after 10 while 11 does not follow it: seq goes backwards.
    lines = [*LINES[:10], LINES[2]]
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.REORDERED, 3, 11)


def test_inserted_copy_of_a_later_entry() -> None:
    lines = [*LINES[:4], LINES[14], *LINES[4:]]
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.INSERTED, 15, 5)


def test_inserted_copy_of_an_earlier_entry() -> None:
    lines = [*LINES[:10], LINES[2], *LINES[10:]]
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.INSERTED, 3, 11)


def test_inserted_forged_entry_claiming_the_next_seq() -> None:
    forged = resign(ENTRIES[4], prev_hash="22" * 32, outcome="deny")
    lines = [*LINES[:4], forged.to_json_line() + "\n", *LINES[4:]]
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.INSERTED, 5, 5)


def test_inserted_fork_entry_after_its_twin() -> None:
    fork = resign(ENTRIES[6], outcome="deny")
    lines = [*LINES[:7], fork.to_json_line() + "\n", *LINES[7:]]
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.INSERTED, 7, 8)


def test_truncated() -> None:
    failure = failure_of(LINES[:17], checkpoint=note())
    assert failure == VerifyFailure(
        FailureKind.TRUNCATED,
        18,
        None,
        "seq 18: export ends after 17 entries but the checkpoint covers 20 (truncated)",
    )


def test_checkpoint_signature_is_checked_before_any_line() -> None:
    def exploding() -> Any:
        raise AssertionError("lines were read")
        yield ""

    tampered = note().replace("\n20\n", "\n21\n")
    report = verify_export(exploding(), KEYS, checkpoint=tampered)
    assert report.failure is not None
    assert report.failure.kind is FailureKind.CHECKPOINT_SIGNATURE
    assert report.count == 0
    foreign = sign_checkpoint(
        Checkpoint(ORIGIN, 1, ROOT, GENESIS_HASH, "2026-11-25T06:00:00.000000Z"), OTHER
    )
    assert failure_of(LINES, checkpoint=foreign).kind is FailureKind.CHECKPOINT_SIGNATURE


def test_checkpoint_for_another_origin_is_refused() -> None:
    other = Checkpoint(
        "other.example", COUNT, ROOT, ENTRIES[-1].entry_hash, "2026-11-25T06:00:00.000000Z"
    )
    assert failure_of(LINES, checkpoint=other).kind is FailureKind.CHECKPOINT_SIGNATURE


def test_root_mismatch() -> None:
    failure = failure_of(LINES, checkpoint=note(size=12, root=bytes(32)))
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.ROOT_MISMATCH, 12, 12)
    assert "Merkle root of entries 1..12" in failure.message


def test_head_mismatch() -> None:
    failure = failure_of(LINES, checkpoint=note(size=12, head=ENTRIES[10].entry_hash))
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.HEAD_MISMATCH, 12, 12)


def test_an_empty_checkpoint_with_a_wrong_head_fails_before_any_entry() -> None:
    failure = failure_of(LINES, checkpoint=note(size=0, head="ab" * 32))
    assert (failure.kind, failure.seq, failure.line_number) == (
        FailureKind.HEAD_MISMATCH,
        None,
        None,
    )


def test_the_report_covers_the_entries_before_the_failure() -> None:
    report = verify_export(LINES[:6] + LINES[7:], KEYS)
    assert report.count == 6
    assert report.head_hash == ENTRIES[5].entry_hash
    assert report.root_hash == root_of([leaf_hash(e) for e in ENTRIES[:6]]).hex()


# --- properties and parity ---------------------------------------------------------------

EXPORT = "".join(LINES).encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(EXPORT) - 1), st.integers(1, 255))
def test_flipping_any_single_byte_makes_verification_fail(position: int, mask: int) -> None:
    data = bytearray(EXPORT)
    data[position] ^= mask
    text = bytes(data).decode("utf-8", errors="replace")
    report = verify_export(io.StringIO(text, newline="\n"), KEYS)
    assert not report.ok


def test_flipping_every_byte_of_one_line_makes_verification_fail() -> None:
    # Exhaustive over one whole line (every field) with one mask, to back the random search.
    start = len("".join(LINES[:3]).encode())
    for position in range(start, start + len(LINES[3].encode())):
        data = bytearray(EXPORT)
        data[position] ^= 0x20
        text = bytes(data).decode("utf-8", errors="replace")
        assert not verify_export(io.StringIO(text, newline="\n"), KEYS).ok, position


CASES = {
    "ok": (LINES, note()),
    "edited": ([*LINES[:5], LINES[5].replace('"deny"', '"allow"'), *LINES[6:]], None),
    "deleted": (LINES[:6] + LINES[7:], None),
    "inserted": ([*LINES[:4], LINES[14], *LINES[4:]], None),
    "reordered": (LINES[:4] + LINES[5:10] + [LINES[4]] + LINES[10:], None),
    "truncated": (LINES[:17], note()),
    "root": (LINES, note(size=12, root=bytes(32))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_workers_give_the_same_report_as_one(case: str) -> None:
    lines, checkpoint = CASES[case]
    serial = verify_export(lines, KEYS, checkpoint=checkpoint)
    parallel = verify_export(lines, KEYS, checkpoint=checkpoint, workers=2, chunk_size=3)
    assert parallel == serial


def test_entries_round_trip_through_canonical_json() -> None:
    assert [json.loads(line) for line in LINES] == [
        json.loads(canonical_json(e.to_json_dict())) for e in ENTRIES
    ]

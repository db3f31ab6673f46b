"""Offline verification: one test per failure kind, tampering properties, parallel parity."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.audit import entry as entry_module
from gateway.domain.audit import inspection
from gateway.domain.audit import verify as verify_module
from gateway.domain.audit.canonical import canonical_json
from gateway.domain.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.domain.audit.entry import (
    GENESIS_HASH,
    AuditEntry,
    EntryDraft,
    build_entry,
    leaf_hash,
)
from gateway.domain.audit.inspection import Inspected, inspect_strings, items_of, numbered_strings
from gateway.domain.audit.keys import (
    KeySet,
    Signer,
    TrustAnchor,
    TrustedKey,
    next_signer_details,
)
from gateway.domain.audit.merkle import CompactRange, root_of
from gateway.domain.audit.proofs import export_lines
from gateway.domain.audit.verify import (
    CHUNK_SIZE,
    FailureKind,
    VerifyFailure,
    VerifyReport,
    verify_export,
)

SIGNER = Signer.from_seed(b"\x01" * 32)
OTHER = Signer.from_seed(b"\x02" * 32)
FORGER = Signer.from_seed(b"\x0f" * 32)  # whoever forges a key set signs with this
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


def rotation(seq: int, new: Signer, **changes: Any) -> EntryDraft:
    """The key_rotated entry the gateway writes (gateway/services/key_rotation.py), with changes."""
    fields: dict[str, Any] = {
        "timestamp": draft(seq).timestamp,
        "event_type": "key_rotated",
        "actor": "admin-1",
        "actor_type": "user",
        "action_id": "",
        "action_type": "",
        "resource": f"audit-signer:{new.key_id}",
        "details": {
            "reason": "drill",
            "next_signer": next_signer_details(ORIGIN, new.public_key_raw),
        },
        "outcome": "rotated",
    }
    return EntryDraft(**{**fields, **changes})


def chain(
    count: int = COUNT,
    signer_for: Any = None,
    rotate_at: dict[int, Signer] | None = None,
    rotation_changes: dict[str, Any] | None = None,
) -> list[AuditEntry]:
    """`count` linked entries signed by SIGNER; entry k of `rotate_at` hands over to its key.

    `signer_for(seq, key)` may sign an entry with another key than the chain's `key`;
    `rotation_changes` are made to every rotation entry.
    """
    entries: list[AuditEntry] = []
    prev = GENESIS_HASH
    key = SIGNER
    rotations = rotate_at or {}
    for seq in range(1, count + 1):
        signer = key if signer_for is None else signer_for(seq, key)
        if seq in rotations:
            made = rotation(seq, rotations[seq], **(rotation_changes or {}))
        else:
            made = draft(seq)
        entries.append(build_entry(made, seq, prev, signer))
        prev = entries[-1].entry_hash
        key = rotations.get(seq, key)
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


@pytest.mark.parametrize("workers", [1, 2])
def test_a_signed_entry_longer_than_a_bundle_holds_is_malformed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int
) -> None:
    """A writer that ignored the limit signs an entry of C > 65,535 bytes: hash and
    signature are sound, but no tile could hold it (audit-format.md §8, §9)."""
    entries = [*ENTRIES[:6]]
    with monkeypatch.context() as m:
        m.setattr(entry_module, "MAX_ENTRY_BYTES", 1 << 20)
        big = replace(draft(7), details={"note": "x" * 0xFFFF})
        entries.append(build_entry(big, 7, entries[-1].entry_hash, SIGNER))
    size = len(entries[-1].forms[0])
    export = tmp_path / "export.jsonl"
    export.write_text("".join(lines_of(entries)))
    report = verify_export(export, KEYS, workers=workers)
    assert report.failure == VerifyFailure(
        FailureKind.MALFORMED,
        7,
        7,
        f"seq 7: the entry is {size} bytes; an audit entry is at most 65535 (malformed)",
    )
    assert (report.count, report.head_hash) == (6, entries[5].entry_hash)


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
    lines = lines_of(chain(signer_for=lambda seq, key: SIGNER if seq < 11 else OTHER))
    failure = failure_of(lines)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.UNKNOWN_KEY, 11, 11)
    assert OTHER.key_id in failure.message


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


# --- trust: the anchor, rotations, and key sets checked against the chain ---------------

ROTATED = chain(rotate_at={10: OTHER})  # entry 10 hands over to OTHER: it signs 11..20
ROTATED_LINES = lines_of(ROTATED)
ANCHOR = TrustAnchor.of(SIGNER.public_key_raw)


def key_set(*ranges: tuple[Signer, int, int | None]) -> KeySet:
    return KeySet(ORIGIN, tuple(TrustedKey(k.key_id, k.public_key_raw, a, b) for k, a, b in ranges))


SAVED_AFTER = key_set((SIGNER, 1, 10), (OTHER, 11, None))  # what GetPublicKeys serves now


def rotated_note(size: int, signer: Signer = OTHER) -> str:
    root = root_of([leaf_hash(e) for e in ROTATED[:size]])
    head = ROTATED[size - 1].entry_hash if size else GENESIS_HASH
    return sign_checkpoint(
        Checkpoint(ORIGIN, size, root, head, "2026-11-25T06:00:00.000000Z"), signer
    )


def never_read() -> Any:
    raise AssertionError("lines were read")
    yield ""


def test_the_chain_introduces_the_next_key_whatever_the_key_set_knows() -> None:
    expected = verify_export(ROTATED_LINES, SAVED_AFTER)
    assert expected.ok and expected.count == COUNT
    # Saved before the rotation: OTHER comes from entry 10, signed by SIGNER.
    assert verify_export(ROTATED_LINES, KEYS) == expected
    assert verify_export(ROTATED_LINES, None, anchor=ANCHOR) == expected
    assert verify_export(ROTATED_LINES, SAVED_AFTER, anchor=SIGNER.key_id) == expected
    assert verify_export(ROTATED_LINES, SAVED_AFTER, anchor=ANCHOR) == expected


def test_a_trust_key_alone_is_enough_and_must_be_the_first_signer() -> None:
    verifier = TrustAnchor.parse(SAVED_AFTER.to_json_dict()["keys"][0]["note_verifier_key"])
    assert verifier.origin == ORIGIN
    assert verify_export(ROTATED_LINES, None, checkpoint=rotated_note(15), anchor=verifier).ok
    # A bare public key names no origin: the checkpoint does, under the chain's key.
    assert verify_export(ROTATED_LINES, None, checkpoint=rotated_note(15), anchor=ANCHOR).ok
    failure = failure_of(ROTATED_LINES, keys=None, anchor=TrustAnchor.of(OTHER.public_key_raw))
    assert (failure.kind, failure.seq) == (FailureKind.UNKNOWN_KEY, 1)


def test_key_out_of_range_after_rotation() -> None:
    # Whoever kept the retired key signs seq 11 with it.
    lines = lines_of(chain(rotate_at={10: OTHER}, signer_for=lambda s, k: SIGNER if s == 11 else k))
    for keys in (KEYS, SAVED_AFTER):
        failure = failure_of(lines, keys=keys)
        assert (failure.kind, failure.seq, failure.line_number) == (
            FailureKind.KEY_OUT_OF_RANGE,
            11,
            11,
        )
        assert "may only sign seq 1..10" in failure.message
        assert f"moved the chain to key {OTHER.key_id}" in failure.message


def test_a_forged_key_set_and_a_resigned_export_are_rejected() -> None:
    # From seq 11 on the forger re-signs (and so re-links) the export, and adds its key
    # to the key set as if a rotation had introduced it: no entry did.
    forged_lines = lines_of(chain(signer_for=lambda s, k: FORGER if s > 10 else k))
    forged_keys = key_set((SIGNER, 1, 10), (FORGER, 11, None))
    failure = failure_of(forged_lines, keys=forged_keys)
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.UNTRUSTED_KEY, 11, 11)
    assert f"signed by key {FORGER.key_id}, which no rotation in the chain introduced" in (
        failure.message
    )
    # The whole export re-signed, with a key set of the forger's key only: the anchor
    # the auditor pinned tells it apart.
    all_forged = lines_of(chain(signer_for=lambda s, k: FORGER))
    only_forger = KeySet.for_signer(ORIGIN, FORGER)
    assert verify_export(all_forged, only_forger).ok  # a key set alone is only its word
    failure = failure_of(all_forged, keys=only_forger, anchor=ANCHOR)
    assert (failure.kind, failure.seq) == (FailureKind.UNTRUSTED_KEY, 1)
    assert f"not by the trust anchor {SIGNER.key_id}" in failure.message
    report = verify_export(never_read(), only_forger, anchor=SIGNER.key_id)
    assert report.failure is not None
    assert (report.failure.kind, report.failure.seq) == (FailureKind.KEY_HISTORY_MISMATCH, None)
    assert f"the pinned trust anchor {SIGNER.key_id} is not in it" in report.failure.message


@pytest.mark.parametrize(
    ("ranges", "why"),
    [
        (((SIGNER, 1, 10), (OTHER, 10, None)), "overlap"),
        (((SIGNER, 1, None), (OTHER, 11, None)), "both open-ended or overlap"),
        (((SIGNER, 1, 9), (OTHER, 11, None)), "no key for seq 10..10"),
        (((SIGNER, 2, 10), (OTHER, 11, None)), "no key for seq 1..1"),
        ((), "no keys"),
    ],
)
def test_a_key_set_that_is_not_one_history_is_rejected_before_any_line(
    ranges: tuple[tuple[Signer, int, int | None], ...], why: str
) -> None:
    report = verify_export(never_read(), key_set(*ranges))
    assert report.failure is not None
    assert (report.failure.kind, report.failure.seq, report.failure.line_number) == (
        FailureKind.KEY_HISTORY_MISMATCH,
        None,
        None,
    )
    assert why in report.failure.message


def test_a_key_set_with_a_key_no_rotation_introduced_is_rejected() -> None:
    claims = key_set((SIGNER, 1, 12), (FORGER, 13, None))
    failure = failure_of(LINES, keys=claims)
    assert (failure.kind, failure.seq, failure.line_number) == (
        FailureKind.KEY_HISTORY_MISMATCH,
        13,
        13,
    )
    assert f"key {FORGER.key_id} signs seq 13.., but no rotation introduced it" in failure.message
    # An export that ends right where the key set says a rotation was: entry 12 is not one.
    failure = failure_of(LINES[:12], keys=claims)
    assert (failure.kind, failure.seq, failure.line_number) == (
        FailureKind.KEY_HISTORY_MISMATCH,
        13,
        None,
    )
    # An export saved before the seqs the key set speaks of cannot contradict it.
    assert verify_export(LINES[:11], claims).ok


@pytest.mark.parametrize(
    ("ranges", "seq", "why"),
    [
        (((SIGNER, 1, 9), (OTHER, 10, None)), 10, f"key {OTHER.key_id} signs seq 10.."),
        (
            ((SIGNER, 1, 11), (OTHER, 12, None)),
            11,
            "the chain rotated it out after seq 10",
        ),
        (((SIGNER, 1, 15), (OTHER, 16, None)), 11, "seq 1..15"),
    ],
)
def test_a_key_set_range_that_does_not_match_the_rotation_is_rejected(
    ranges: tuple[tuple[Signer, int, int | None], ...], seq: int, why: str
) -> None:
    failure = failure_of(ROTATED_LINES, keys=key_set(*ranges))
    assert (failure.kind, failure.seq, failure.line_number) == (
        FailureKind.KEY_HISTORY_MISMATCH,
        seq,
        seq,
    )
    assert why in failure.message


def test_a_key_set_saved_after_the_export_verifies_it() -> None:
    for size in (8, 9, 10, 11):
        report = verify_export(ROTATED_LINES[:size], SAVED_AFTER)
        assert report.ok and report.count == size, (size, report.failure)


def test_a_key_set_that_gives_a_key_id_another_public_key_is_rejected() -> None:
    # Key ids are 64 bits of a hash: a set cannot be built with a mismatched pair, but a
    # set whose anchor has the anchor's id and another key is still caught.
    stranger = TrustAnchor(SIGNER.key_id, SIGNER.public_key_raw, "other.example")
    report = verify_export(never_read(), KEYS, anchor=stranger)
    assert report.failure is not None
    assert report.failure.kind is FailureKind.KEY_HISTORY_MISMATCH
    assert "origin" in report.failure.message


def bad_rotation_lines(**changes: Any) -> list[str]:
    entries = chain(count=10)
    made = rotation(10, OTHER, **changes)
    entries[9] = build_entry(made, 10, entries[8].entry_hash, SIGNER)
    tail = build_entry(draft(11), 11, entries[9].entry_hash, OTHER)
    return lines_of([*entries, tail])


def with_signer(**members: Any) -> dict[str, Any]:
    details = next_signer_details(ORIGIN, OTHER.public_key_raw)
    return {"reason": "drill", "next_signer": {**details, **members}}


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"details": {"reason": "drill"}}, "must be an object of id, public and verifier"),
        ({"details": with_signer(extra="x")}, "must be an object of id, public and verifier"),
        ({"details": with_signer(id=SIGNER.key_id)}, "is not the key id of its public key"),
        ({"details": with_signer(public="AAAA")}, "not base64 of a 32-byte public key"),
        ({"details": with_signer(verifier=1)}, "verifier must be a string"),
        (
            {
                "details": with_signer(
                    verifier=next_signer_details("x.example", OTHER.public_key_raw)["verifier"]
                )
            },
            "not the note verifier key of origin",
        ),
        (
            {"resource": "audit-signer:0000000000000000"},
            f"resource must be audit-signer:{OTHER.key_id}",
        ),
    ],
)
def test_a_malformed_rotation_is_bad_rotation(changes: dict[str, Any], why: str) -> None:
    failure = failure_of(bad_rotation_lines(**changes))
    assert (failure.kind, failure.seq, failure.line_number) == (FailureKind.BAD_ROTATION, 10, 10)
    assert why in failure.message


def test_rotating_to_a_key_that_already_signed_is_bad_rotation() -> None:
    lines = lines_of(chain(rotate_at={5: OTHER, 10: SIGNER}))
    failure = failure_of(lines)
    assert (failure.kind, failure.seq) == (FailureKind.BAD_ROTATION, 10)
    assert f"key {SIGNER.key_id} has already signed this log" in failure.message


def test_a_nested_key_rotated_member_is_not_a_rotation() -> None:
    entries = chain(count=3)
    made = replace(draft(3), details={"event_type": "key_rotated", "next_signer": {}})
    entries[2] = build_entry(made, 3, entries[1].entry_hash, SIGNER)
    assert '"event_type":"key_rotated"' in entries[2].to_json_line()
    assert verify_export(lines_of(entries), KEYS).ok


@pytest.mark.parametrize(
    ("size", "signer", "ok"),
    [
        (15, OTHER, True),  # the rotated-in key signs checkpoints once it is introduced
        (10, OTHER, True),  # the rotation is the head: the next entry is OTHER's
        (10, SIGNER, False),
        (15, SIGNER, False),  # the retired key cannot vouch for a tree grown after it
        (5, OTHER, False),  # nor the new key for one before it
        (5, SIGNER, True),
    ],
)
def test_a_checkpoint_must_be_signed_by_the_key_of_the_seq_after_it(
    size: int, signer: Signer, ok: bool
) -> None:
    note = rotated_note(size, signer)
    for keys in (KEYS, SAVED_AFTER):
        report = verify_export(ROTATED_LINES, keys, checkpoint=note)
        if ok:
            assert report.ok, report.failure
            continue
        assert report.failure is not None
        assert (report.failure.kind, report.failure.seq, report.failure.line_number) == (
            FailureKind.CHECKPOINT_SIGNATURE,
            size,
            size,
        )


def test_a_truncated_export_against_a_checkpoint_by_a_key_it_lost() -> None:
    note = rotated_note(15)
    # The key set names OTHER: the checkpoint stands, the export is short.
    failure = failure_of(ROTATED_LINES[:8], keys=SAVED_AFTER, checkpoint=note)
    assert (failure.kind, failure.seq) == (FailureKind.TRUNCATED, 9)
    # Saved before the rotation, and the rotation cut off: nothing vouches for it.
    failure = failure_of(ROTATED_LINES[:8], keys=KEYS, checkpoint=note)
    assert (failure.kind, failure.seq) == (FailureKind.CHECKPOINT_SIGNATURE, None)
    failure = failure_of(ROTATED_LINES[:12], keys=KEYS, checkpoint=note)
    assert (failure.kind, failure.seq) == (FailureKind.TRUNCATED, 13)


def test_a_bad_signature_by_a_key_known_before_the_scan_fails_before_any_line() -> None:
    tampered = rotated_note(15).replace("\n15\n", "\n14\n")
    report = verify_export(never_read(), SAVED_AFTER, checkpoint=tampered)
    assert report.failure is not None
    assert report.failure.kind is FailureKind.CHECKPOINT_SIGNATURE
    assert report.failure.seq is None
    # OTHER is not known before the scan: the same note fails at its size instead.
    failure = failure_of(ROTATED_LINES, keys=KEYS, checkpoint=tampered)
    assert (failure.kind, failure.seq) == (FailureKind.CHECKPOINT_SIGNATURE, 14)


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
# The trust cases: (lines, key set, anchor, checkpoint).
TRUST_CASES: dict[str, tuple[list[str], KeySet | None, Any, str | None]] = {
    "rotated, saved before": (ROTATED_LINES, KEYS, None, rotated_note(15)),
    "rotated, saved after": (ROTATED_LINES, SAVED_AFTER, None, rotated_note(15)),
    "rotated, trust key": (ROTATED_LINES, None, ANCHOR, rotated_note(12)),
    "untrusted_key": (
        lines_of(chain(signer_for=lambda s, k: FORGER if s > 10 else k)),
        key_set((SIGNER, 1, 10), (FORGER, 11, None)),
        None,
        None,
    ),
    "key_out_of_range": (
        lines_of(chain(rotate_at={10: OTHER}, signer_for=lambda s, k: SIGNER if s == 11 else k)),
        KEYS,
        None,
        None,
    ),
    "bad_rotation": (bad_rotation_lines(resource="audit-signer:x"), None, ANCHOR, None),
    "key_history_mismatch": (ROTATED_LINES, key_set((SIGNER, 1, 9), (OTHER, 10, None)), None, None),
    "key_history_mismatch at the end": (
        LINES[:12],
        key_set((SIGNER, 1, 12), (FORGER, 13, None)),
        None,
        None,
    ),
    "checkpoint by the retired key": (ROTATED_LINES, KEYS, None, rotated_note(15, SIGNER)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_workers_give_the_same_report_as_one(case: str) -> None:
    lines, checkpoint = CASES[case]
    serial = verify_export(lines, KEYS, checkpoint=checkpoint)
    parallel = verify_export(lines, KEYS, checkpoint=checkpoint, workers=2, chunk_size=3)
    assert parallel == serial


@pytest.mark.parametrize("case", sorted(TRUST_CASES))
def test_two_workers_give_the_same_trust_report_as_one(case: str) -> None:
    lines, keys, anchor, checkpoint = TRUST_CASES[case]
    serial = verify_export(lines, keys, checkpoint=checkpoint, anchor=anchor)
    parallel = verify_export(
        lines, keys, checkpoint=checkpoint, anchor=anchor, workers=2, chunk_size=3
    )
    assert parallel == serial
    assert serial.ok == case.startswith("rotated"), serial.failure


class _Impostor:
    """Signs with OTHER's key and names SIGNER's key id."""

    key_id = SIGNER.key_id
    public_key_raw = OTHER.public_key_raw

    def sign(self, data: bytes) -> bytes:
        return OTHER.sign(data)


IMPOSTOR: Any = _Impostor()


@pytest.mark.parametrize(
    "guesses",
    [{}, {SIGNER.key_id: OTHER.public_key_raw, OTHER.key_id: FORGER.public_key_raw}],
    ids=["no key known", "wrong keys"],
)
def test_the_walk_does_not_take_the_inspection_s_word_for_a_key(guesses: dict[str, bytes]) -> None:
    # Workers check signatures against the keys the lines before name; whatever they
    # guessed, the walk re-checks each line against the key it trusts for it.
    impostor = lines_of(chain(signer_for=lambda seq, key: IMPOSTOR))
    assert verify_export(impostor, KEYS).failure == VerifyFailure(
        FailureKind.BAD_SIGNATURE,
        1,
        1,
        f"seq 1: signature does not verify under key {SIGNER.key_id} (bad_signature)",
    )
    for lines, keys, anchor in [
        (ROTATED_LINES, KEYS, None),
        (TRUST_CASES["untrusted_key"][0], SAVED_AFTER, None),
        # The guess for SIGNER's key id is the key that signed them; without a key set
        # nothing but the key's own check stops them.
        (impostor, KEYS, None),
        (impostor, None, ANCHOR),
    ]:
        trust = verify_module._Trust.start(keys, anchor)
        inspected = inspect_strings(enumerate(lines, start=1), dict(guesses))
        expected = verify_export(lines, keys, anchor=anchor)
        assert verify_module._walk(inspected, trust, None) == expected


def test_the_pool_knows_the_rotated_key_so_the_walk_checks_no_signature_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[str] = []
    real = verify_module.signature_verifies

    def counting(signature: str, entry_hash: str, public: bytes) -> bool:
        checked.append(entry_hash)  # counts in this process only, not in the workers
        return real(signature, entry_hash, public)

    monkeypatch.setattr(verify_module, "signature_verifies", counting)
    report = verify_export(ROTATED_LINES, KEYS, workers=2, chunk_size=3, start_method="fork")
    assert report.ok and checked == []


SIGNERS = (SIGNER, OTHER, Signer.from_seed(b"\x04" * 32), Signer.from_seed(b"\x05" * 32))


@st.composite
def tampered_rotations(draw: st.DrawFn) -> tuple[list[str], KeySet | None, Any, str | None]:
    """A log with rotations, one thing an insider or a forger might change, and maybe a
    checkpoint by any of the keys."""
    count = draw(st.integers(1, 14), label="count")
    seqs = draw(st.lists(st.integers(1, count), unique=True, max_size=3), label="rotations")
    rotate_at = {seq: SIGNERS[i + 1] for i, seq in enumerate(sorted(seqs))}
    history, first, key = [], 1, SIGNER
    for seq in sorted(rotate_at):
        history.append((key, first, seq))
        first, key = seq + 1, rotate_at[seq]
    history.append((key, first, None))
    wrong = draw(st.sampled_from((*SIGNERS, FORGER)), label="wrong signer")
    at = draw(st.integers(1, count), label="at")
    tamper = draw(
        st.sampled_from(
            ["none", "sign one", "sign from", "shift", "forge", "truncate set", "bad rotation"]
        ),
        label="tamper",
    )
    signer_for = None
    if tamper == "sign one":
        signer_for = lambda s, k: wrong if s == at else k  # noqa: E731
    elif tamper == "sign from":
        signer_for = lambda s, k: wrong if s >= at else k  # noqa: E731
    changes = {"resource": "audit-signer:x"} if tamper == "bad rotation" else None
    entries = chain(count, signer_for=signer_for, rotate_at=rotate_at, rotation_changes=changes)
    lines = lines_of(entries)
    checkpoint = None
    if draw(st.booleans(), label="checkpoint"):
        size = draw(st.integers(0, count + 1), label="checkpoint size")
        root = root_of([leaf_hash(e) for e in entries[:size]]) if size <= count else bytes(32)
        head = entries[size - 1].entry_hash if 0 < size <= count else GENESIS_HASH
        cp = Checkpoint(ORIGIN, size, root, head, "2026-11-25T06:00:00.000000Z")
        checkpoint = sign_checkpoint(cp, draw(st.sampled_from(SIGNERS), label="checkpoint by"))
    ranges: list[tuple[Signer, int, int | None]] = list(history)
    if tamper == "shift" and len(ranges) > 1:
        shift = draw(st.sampled_from([-1, 1]), label="shift")
        (k0, a0, b0), (k1, _, b1) = ranges[0], ranges[1]
        assert b0 is not None
        if a0 <= b0 + shift and (b1 is None or b0 + shift + 1 <= b1):
            ranges[0], ranges[1] = (k0, a0, b0 + shift), (k1, b0 + shift + 1, b1)
    elif tamper == "forge":
        last, a, _ = ranges[-1]
        cut = draw(st.integers(a, count + 1), label="forged from")
        if cut > a:
            ranges[-1:] = [(last, a, cut - 1), (FORGER, cut, None)]
    elif tamper == "truncate set":
        ranges = ranges[: draw(st.integers(1, len(ranges)), label="keys kept")]
        last, a, _ = ranges[-1]
        ranges[-1] = (last, a, None)
    keys = key_set(*ranges)
    trust = draw(st.sampled_from(["set", "anchor", "pinned", "both"]), label="trust")
    if trust == "anchor":
        return lines, None, ANCHOR, checkpoint
    return lines, keys, {"set": None, "pinned": SIGNER.key_id, "both": ANCHOR}[trust], checkpoint


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tampered_rotations(), st.integers(1, 4))
def test_workers_agree_on_every_trust_failure(
    case: tuple[list[str], KeySet | None, Any, str | None], chunk_size: int
) -> None:
    lines, keys, anchor, checkpoint = case
    serial = verify_export(lines, keys, checkpoint, anchor=anchor)
    # fork: this test process runs no other thread, and spawn would take a second a case.
    parallel = verify_export(
        lines,
        keys,
        checkpoint,
        anchor=anchor,
        workers=2,
        chunk_size=chunk_size,
        start_method="fork",
    )
    assert parallel == serial


def test_entries_round_trip_through_canonical_json() -> None:
    assert [json.loads(line) for line in LINES] == [
        json.loads(canonical_json(e.to_json_dict())) for e in ENTRIES
    ]


def test_every_failure_kind_is_documented_in_the_spec() -> None:
    spec = (Path(__file__).resolve().parents[2] / "docs" / "audit-format.md").read_text("utf-8")
    section = spec.split("## 8. Verification", 1)[1].split("## Test vectors", 1)[0]
    assert [kind for kind in FailureKind if f"`{kind}`" not in section] == []


# --- an export file: workers read their own byte ranges -----------------------------------


def write_export(tmp_path: Path, lines: list[str] | bytes) -> Path:
    path = tmp_path / "export.jsonl"
    path.write_bytes(lines if isinstance(lines, bytes) else "".join(lines).encode())
    return path


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(("workers", "chunk_size"), [(1, CHUNK_SIZE), (2, 1), (2, 3), (2, 7)])
def test_a_file_gives_the_report_its_lines_give(
    tmp_path: Path, case: str, workers: int, chunk_size: int
) -> None:
    lines, checkpoint = CASES[case]
    path = write_export(tmp_path, lines)
    expected = verify_export(lines, KEYS, checkpoint=checkpoint)
    assert (
        verify_export(
            path, KEYS, checkpoint, workers=workers, chunk_size=chunk_size, start_method="fork"
        )
        == expected
    )


@pytest.mark.parametrize("case", sorted(TRUST_CASES))
def test_a_file_gives_the_trust_report_its_lines_give(tmp_path: Path, case: str) -> None:
    lines, keys, anchor, checkpoint = TRUST_CASES[case]
    path = write_export(tmp_path, lines)
    expected = verify_export(lines, keys, checkpoint=checkpoint, anchor=anchor)
    for workers, chunk_size in [(1, CHUNK_SIZE), (2, 2), (2, 5)]:
        report = verify_export(
            path,
            keys,
            checkpoint,
            workers=workers,
            chunk_size=chunk_size,
            start_method="fork",
            anchor=anchor,
        )
        assert report == expected, (workers, chunk_size)


def exported(path: Path) -> list[str]:
    """The lines of a file as `agentgw audit verify` has always read them."""
    return list(export_lines(path))


ODD_FILES = {
    "empty": b"",
    "one LF": b"\n",
    "no final LF": EXPORT[:-1],
    "blank line inside": EXPORT.replace(b"\n", b"\n\n", 1),
    "blank lines at the end": EXPORT + b"\n\n",
    "CR LF": EXPORT.replace(b"\n", b"\r\n"),
    "a BOM": b"\xef\xbb\xbf" + EXPORT,
    "bad UTF-8": EXPORT.replace(b"caf\xc3\xa9", b"caf\xe9", 1),
    "a NUL": EXPORT.replace(b'"note"', b'"no\x00te"', 1),
    "a split line": EXPORT.replace(b'"nested"', b'"nes\nted"', 1),
}


@pytest.mark.parametrize("name", sorted(ODD_FILES))
def test_odd_files_give_the_report_export_lines_give(tmp_path: Path, name: str) -> None:
    path = write_export(tmp_path, ODD_FILES[name])
    expected = verify_export(exported(path), KEYS)
    for workers, chunk_size in [(1, CHUNK_SIZE), (2, 1), (2, 4)]:
        report = verify_export(
            path, KEYS, workers=workers, chunk_size=chunk_size, start_method="fork"
        )
        assert report == expected, (workers, chunk_size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(EXPORT)), st.binary(max_size=3), st.integers(0, 3), st.integers(1, 5))
def test_any_edit_of_a_file_gives_the_report_export_lines_give(
    tmp_path_factory: pytest.TempPathFactory, at: int, insert: bytes, cut: int, chunk_size: int
) -> None:
    edited = EXPORT[:at] + insert + EXPORT[at + cut :]
    path = write_export(tmp_path_factory.mktemp("edit"), edited)
    expected = verify_export(exported(path), KEYS, checkpoint=note())
    serial = verify_export(path, KEYS, checkpoint=note())
    parallel = verify_export(
        path, KEYS, note(), workers=2, chunk_size=chunk_size, start_method="fork"
    )
    assert serial == expected
    assert parallel == expected


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tampered_rotations(), st.integers(1, 4))
def test_a_file_agrees_on_every_trust_failure(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[list[str], KeySet | None, Any, str | None],
    chunk_size: int,
) -> None:
    lines, keys, anchor, checkpoint = case
    path = write_export(tmp_path_factory.mktemp("trust"), lines)
    expected = verify_export(lines, keys, checkpoint, anchor=anchor)
    for workers in (1, 2):
        report = verify_export(
            path,
            keys,
            checkpoint,
            anchor=anchor,
            workers=workers,
            chunk_size=chunk_size,
            start_method="fork",
        )
        assert report == expected


# --- runs: sound lines travel packed -------------------------------------------------------


def one_by_one(lines: list[str], candidates: dict[str, bytes]) -> list[Inspected]:
    """Every check of each line on its own, learning keys as the inspection does."""
    items = []
    for number, data in numbered_strings(enumerate(lines, start=1)):
        item = inspection._inspect_line(number, data, None, candidates, "surrogatepass")
        if item.rotation is not None:
            inspection._learn(candidates, item.rotation[1])
        items.append(item)
    return items


def with_a_bad_signature(index: int) -> list[str]:
    signature = ENTRIES[index].signature
    flipped = signature[:-1] + ("1" if signature[-1] == "0" else "0")
    return [*LINES[:index], LINES[index].replace(signature, flipped), *LINES[index + 1 :]]


RUN_CASES = {
    "plain": LINES,
    "rotated": ROTATED_LINES,
    "a bad signature": with_a_bad_signature(5),
    "edited and inserted": [
        *LINES[:4],
        LINES[14],
        *LINES[4:10],
        LINES[11].replace('"deny"', '"allow"'),
        *LINES[12:],
    ],
    "forged": TRUST_CASES["untrusted_key"][0],
    "a wrong seq, linked": [
        *LINES[:6],
        resign(ENTRIES[6], seq=9).to_json_line() + "\n",
        *LINES[7:],
    ],
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
@pytest.mark.parametrize("run_limit", [1, 3, inspection.RUN_LIMIT])
def test_runs_unpack_to_the_lines_they_stand_for(case: str, run_limit: int) -> None:
    lines = RUN_CASES[case]
    known = {key.key_id: key.public_key_raw for key in KEYS.keys}
    pieces = list(
        inspection.inspect_lines(
            numbered_strings(enumerate(lines, start=1)), dict(known), run_limit=run_limit
        )
    )
    assert any(isinstance(piece, inspection.Run) for piece in pieces)
    assert all(piece.size <= run_limit for piece in pieces if isinstance(piece, inspection.Run))
    assert list(items_of(pieces)) == one_by_one(lines, dict(known))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 70), st.lists(st.integers(0, 40), max_size=5))
def test_extending_a_compact_range_by_a_run_is_appending_each_leaf(
    start: int, runs: list[int]
) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(start + sum(runs))]
    one_by_one_range = CompactRange()
    for leaf in leaves:
        one_by_one_range.append(leaf)
    extended = CompactRange()
    for leaf in leaves[:start]:
        extended.append(leaf)
    offset = start
    for size in runs:
        extended = verify_module._extended(extended, b"".join(leaves[offset : offset + size]))
        offset += size
    assert extended.size == one_by_one_range.size
    assert extended.to_hex_list() == one_by_one_range.to_hex_list()
    assert extended.root() == root_of(leaves)


def test_the_pool_over_a_file_knows_the_rotated_key_so_the_walk_checks_no_signature_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real = verify_module.signature_verifies

    def counting(signature: str, entry_hash: str, public: bytes) -> bool:
        checked.append(entry_hash)  # counts in this process only, not in the workers
        return real(signature, entry_hash, public)

    monkeypatch.setattr(verify_module, "signature_verifies", counting)
    path = write_export(tmp_path, ROTATED_LINES)
    report = verify_export(path, KEYS, workers=2, chunk_size=3, start_method="fork")
    assert report.ok and checked == []


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_byte_ranges_cover_the_file_in_whole_lines_and_shrink_at_the_end(
    tmp_path: Path, workers: int
) -> None:
    data = EXPORT * 30 + b"no final LF"
    path = write_export(tmp_path, data)
    ranges = list(inspection._line_ranges(path, 120, workers))
    assert [start for start, _, _, _ in ranges] == [0, *(end for _, end, _, _ in ranges[:-1])]
    assert ranges[-1][1] == len(data)
    for start, end, lines, marked in ranges:
        chunk = data[start:end]
        assert chunk.endswith(b"\n") or end == len(data)
        assert lines == chunk.count(b"\n") + (not chunk.endswith(b"\n")) <= 120
        assert marked == []
    assert sum(lines for _, _, lines, _ in ranges) == len(exported(path))
    assert ranges[-2][2] < 120  # the last ranges are smaller, to keep every worker busy

"""Checking saved checkpoints and proofs (gateway/domain/audit/proofs.py), directly:
what `agentgw audit prove-inclusion|prove-consistency` report, without a server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agentgw.v1 import audit_pb2
from clients.wire import inclusion_proof_from_proto
from gateway.domain.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.domain.audit.entry import (
    GENESIS_HASH,
    AuditEntry,
    EntryDraft,
    build_entry,
    canonical_bytes,
)
from gateway.domain.audit.keys import KeySet, Signer, TrustAnchor, TrustedKey
from gateway.domain.audit.merkle import consistency_proof, inclusion_proof, leaf_hash_of, root_of
from gateway.domain.audit.proofs import (
    ConsistencyProof,
    EntryLineError,
    InclusionProof,
    ProofFailed,
    UnreadableFile,
    anchored_keys,
    check_consistency,
    check_inclusion,
    find_seq_line,
    leaf_hash_of_line,
    line_at,
    load_checkpoint,
    open_saved_checkpoint,
    read_note,
)

SIGNER = Signer.from_seed(b"\x01" * 32)
OTHER = Signer.from_seed(b"\x02" * 32)
ORIGIN = "agentgw.example/audit"
KEYS = KeySet.for_signer(ORIGIN, SIGNER)
COUNT = 7


def entries(count: int = COUNT) -> list[AuditEntry]:
    made: list[AuditEntry] = []
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        draft = EntryDraft(
            timestamp=f"2026-11-25T05:00:{seq:02d}.000000Z",
            event_type="action_decided",
            actor="agent-1",
            actor_type="agent",
            action_id=f"act-{seq}",
            action_type="send_email",
            resource="",
            details={"n": seq},
            outcome="allow",
        )
        made.append(build_entry(draft, seq, prev, SIGNER))
        prev = made[-1].entry_hash
    return made


ENTRIES = entries()
LINES = [entry.to_json_line() + "\n" for entry in ENTRIES]
LEAVES = [leaf_hash_of_line(line, seq, "test") for seq, line in enumerate(LINES, start=1)]


def checkpoint(size: int, signer: Signer = SIGNER) -> str:
    head = ENTRIES[size - 1].entry_hash if size else GENESIS_HASH
    cp = Checkpoint(ORIGIN, size, root_of(LEAVES[:size]), head, "2026-11-25T06:00:00.000000Z")
    return sign_checkpoint(cp, signer)


def opened(size: int) -> Checkpoint:
    return open_saved_checkpoint(checkpoint(size), KEYS, "--checkpoint cp")


def inclusion(seq: int, size: int) -> InclusionProof:
    hashes = tuple(inclusion_proof(LEAVES, seq - 1, size))
    return InclusionProof(seq, size, hashes, root_of(LEAVES[:size]), LEAVES[seq - 1])


def consistency(old: int, new: int, hashes: tuple[bytes, ...]) -> ConsistencyProof:
    return ConsistencyProof(old, new, hashes, root_of(LEAVES[:old]), root_of(LEAVES[:new]))


def test_the_leaf_hash_of_a_line_is_that_of_its_canonical_bytes() -> None:
    assert LEAVES[2] == leaf_hash_of(canonical_bytes(ENTRIES[2]))


def test_a_line_that_is_not_the_entry_is_refused_naming_where() -> None:
    with pytest.raises(EntryLineError, match=r"^x:3: not an audit entry line"):
        leaf_hash_of_line("{not json\n", 3, "x:3")
    with pytest.raises(EntryLineError, match=r"line is not the RFC 8785 form"):
        leaf_hash_of_line(LINES[2].replace('":', '": ', 1), 3, "x:3")
    with pytest.raises(EntryLineError, match=r"^x:3: the entry has seq 3, not --seq 4$"):
        leaf_hash_of_line(LINES[2], 4, "x:3")


def test_an_entry_is_included_in_every_checkpoint_that_covers_it() -> None:
    for size in range(1, COUNT + 1):
        cp = opened(size)
        for seq in range(1, size + 1):
            included = check_inclusion(LEAVES[seq - 1], seq, "e", cp, inclusion(seq, size))
            assert (included.seq, included.checkpoint) == (seq, cp)
            assert included.proof_length == len(inclusion(seq, size).hashes)


def test_another_entry_does_not_prove_inclusion_and_the_log_leaf_is_named() -> None:
    proof = inclusion(3, COUNT)
    with pytest.raises(ProofFailed, match=r"does not lead to the checkpoint's root") as failed:
        check_inclusion(LEAVES[3], 3, "export:4", opened(COUNT), proof)
    assert str(failed.value).startswith("inclusion: the proof for seq 3 (export:4, leaf hash ")
    assert f"the log's leaf 3 is {LEAVES[2].hex()}: not the logged entry" in str(failed.value)


def test_a_tampered_proof_or_an_answer_for_other_sizes_fails() -> None:
    proof = inclusion(3, COUNT)
    bad = dataclasses.replace(proof, hashes=(bytes(32), *proof.hashes[1:]))
    with pytest.raises(ProofFailed, match=r"does not lead"):
        check_inclusion(LEAVES[2], 3, "e", opened(COUNT), bad)
    with pytest.raises(ProofFailed, match=r"the server answered seq 3 in size 6"):
        check_inclusion(LEAVES[2], 3, "e", opened(COUNT), inclusion(3, 6))
    answer = audit_pb2.InclusionProof(seq=3, tree_size=COUNT, hashes=["zz"])
    with pytest.raises(ProofFailed, match=r"proof hash that is not hex"):
        check_inclusion(LEAVES[2], 3, "e", opened(COUNT), inclusion_proof_from_proto(answer))
    with pytest.raises(ValueError, match=r"not in 1\.\.7"):
        check_inclusion(LEAVES[2], 8, "e", opened(COUNT), proof)


def test_a_newer_checkpoint_extends_an_older_one() -> None:
    for old in range(1, COUNT + 1):
        for new in range(old, COUNT + 1):
            hashes = tuple(consistency_proof(LEAVES, old, new))
            proof = None if old == new else consistency(old, new, hashes)
            result = check_consistency(opened(old), opened(new), proof)
            assert result.proof_length == (None if old == new else len(hashes))


def test_a_rewritten_log_is_not_consistent_with_its_past() -> None:
    hashes = tuple(consistency_proof(LEAVES, 3, COUNT))
    forked = dataclasses.replace(opened(COUNT), root_hash=b"\x01" * 32)
    with pytest.raises(ProofFailed, match=r"^consistency: the proof does not show that root"):
        check_consistency(opened(3), forked, consistency(3, COUNT, hashes))
    with pytest.raises(
        ProofFailed, match=r"^consistency: both checkpoints have size 7 but different roots"
    ):
        check_consistency(opened(COUNT), forked, None)
    with pytest.raises(ProofFailed, match=r"asked for sizes 3 to 7, the server answered 2 to 7"):
        check_consistency(opened(3), opened(COUNT), consistency(2, COUNT, hashes))
    with pytest.raises(ValueError, match=r"larger"):
        check_consistency(opened(COUNT), opened(3), None)


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    with pytest.raises(ProofFailed, match=r"^checkpoint_signature: --old cp: "):
        open_saved_checkpoint(checkpoint(3, OTHER), KEYS, "--old cp")
    edited = checkpoint(3).replace("\n3\n", "\n4\n", 1)
    with pytest.raises(ProofFailed, match=r"^checkpoint_signature: "):
        open_saved_checkpoint(edited, KEYS, "--old cp")


def test_a_checkpoint_is_read_as_saved(tmp_path: Path) -> None:
    saved = tmp_path / "cp.note"
    saved.write_bytes(checkpoint(3).encode())
    assert load_checkpoint(saved, KEYS, "--checkpoint cp") == opened(3)
    # A CR where the note has LF is an edit, not a newline to translate.
    saved.write_bytes(checkpoint(3).replace("\n", "\r\n", 1).encode())
    with pytest.raises(ProofFailed, match=r"checkpoint_signature"):
        load_checkpoint(saved, KEYS, "--checkpoint cp")
    saved.write_bytes(b"\xff" + checkpoint(3).encode())
    assert read_note(saved).startswith("\udcff")
    with pytest.raises(ProofFailed, match=r"checkpoint_signature"):
        load_checkpoint(saved, KEYS, "--checkpoint cp")


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for read in (
        lambda: read_note(missing),
        lambda: line_at(missing, 1),
        lambda: find_seq_line(missing, 1),
        lambda: load_checkpoint(missing, KEYS, "cp"),
    ):
        with pytest.raises(UnreadableFile, match=r"No such file or directory"):
            read()


def test_lines_are_found_by_number_or_by_seq(tmp_path: Path) -> None:
    export = tmp_path / "audit.jsonl"
    export.write_text("".join(LINES[2:]), encoding="utf-8")  # starts at seq 3
    assert line_at(export, 2) == LINES[3]
    assert line_at(export, COUNT) is None
    assert find_seq_line(export, 5) == (LINES[4], 3)
    assert find_seq_line(export, 1) is None
    assert find_seq_line(export, 99) is None


def test_the_key_set_must_start_at_the_pinned_or_trusted_key() -> None:
    assert anchored_keys(KEYS, None, "--keys k") is KEYS
    assert anchored_keys(KEYS, SIGNER.key_id, "--keys k") is KEYS
    assert anchored_keys(KEYS, TrustAnchor.of(SIGNER.public_key_raw, ORIGIN), "--keys k") is KEYS
    with pytest.raises(ProofFailed, match=r"^key_history_mismatch: --keys k: .*not in it"):
        anchored_keys(KEYS, OTHER.key_id, "--keys k")
    with pytest.raises(ProofFailed, match=r"its key for seq 1 is not --trust-key"):
        anchored_keys(KEYS, TrustAnchor.of(SIGNER.public_key_raw, "other.example/log"), "k")
    forged = KeySet(ORIGIN, (TrustedKey(OTHER.key_id, OTHER.public_key_raw, 1, None),))
    with pytest.raises(ProofFailed, match=r"^key_history_mismatch: k: key set: the pinned"):
        anchored_keys(forged, TrustAnchor.of(SIGNER.public_key_raw), "k")
    gap = KeySet(ORIGIN, (TrustedKey(SIGNER.key_id, SIGNER.public_key_raw, 2, None),))
    with pytest.raises(ProofFailed, match=r"key_history_mismatch: k: key set: no key for seq 1"):
        anchored_keys(gap, None, "k")

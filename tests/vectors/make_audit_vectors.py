"""Generate tests/vectors/audit-v1.json, the audit format's test vectors.

Everything derives from FIXED TEST KEYS (the seeds below are public: never use them for
a real log) and fixed inputs; Ed25519 is deterministic, so the output is reproducible and
`tests/unit/test_audit_vectors.py` fails if this file or the code drifts. The `rotation`
section continues the four entries with a rotation to a second test key, and lists
verification outcomes for honest and forged key sets (docs/audit-format.md §8, "Trust").
Run: `.venv/bin/python tests/vectors/make_audit_vectors.py` to rewrite the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from gateway.domain.audit.canonical import canonical_json
from gateway.domain.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.domain.audit.entry import (
    GENESIS_HASH,
    EntryDraft,
    build_entry,
    canonical_bytes,
    leaf_hash,
)
from gateway.domain.audit.keys import KeySet, Signer, TrustAnchor, TrustedKey, next_signer_details
from gateway.domain.audit.merkle import consistency_proof, inclusion_proof, root_of
from gateway.domain.audit.note import note_verifier_key
from gateway.domain.audit.verify import verify_export

VECTOR_FILE = Path(__file__).with_name("audit-v1.json")
TEST_SEED = hashlib.sha256(b"agentgw audit v1 TEST KEY - public, never use for a real log").digest()
SECOND_SEED = hashlib.sha256(
    b"agentgw audit v1 SECOND TEST KEY - public, never use for a real log"
).digest()
FORGER_SEED = hashlib.sha256(
    b"agentgw audit v1 FORGER TEST KEY - public, never use for a real log"
).digest()
ORIGIN = "agentgw.example/audit-test"

DRAFTS = (
    EntryDraft(
        timestamp="2026-11-25T05:55:27.123456Z",
        event_type="decision",
        actor="agent-7",
        actor_type="agent",
        action_id="act-0001",
        action_type="payments.transfer",
        resource="account:42",
        details={
            "amount": 12.5,
            "currency": "EUR",
            "password": "[REDACTED]",
            "limits": {"daily": 1e21, "ratio": 0.1, "tiny": 1e-7, "max_int": 9007199254740992},
            "flags": [True, False, None, -0.0, 1.0],
        },
        outcome="allow",
    ),
    EntryDraft(
        timestamp="2026-11-25T05:55:28.000001Z",
        event_type="decision",
        actor="agent-7",
        actor_type="agent",
        action_id="act-0002",
        action_type="email.send",
        resource="mailto:café@example.org",
        details={
            "subject": "Caf\u00e9 \u2615 \U0001d11e \u65e5\u672c",
            "control": 'tab\there "quoted" back\\slash\nnext \u001f \u007f \u2028',
            "\U0001f600": "emoji key sorts by UTF-16 code units, before U+FB33",
            "\ufb33": "hebrew letter dalet with dagesh",
            "\u00f6": "o with diaeresis",
        },
        outcome="hold",
    ),
    EntryDraft(
        timestamp="2026-11-25T05:56:00.500000Z",
        event_type="hold_resolved",
        actor="alice@example.org",
        actor_type="user",
        action_id="act-0002",
        action_type="email.send",
        resource="",
        details={"resolution": "approved", "approvers": ["alice@example.org"], "quorum": 1},
        outcome="approved",
    ),
    EntryDraft(
        timestamp="2026-11-25T06:00:00.000000Z",
        event_type="key_rotation_check",
        actor="agentgw",
        actor_type="system",
        action_id="",
        action_type="",
        resource="",
        details={},
        outcome="",
    ),
)


def decision(timestamp: str, action_id: str, outcome: str) -> EntryDraft:
    return EntryDraft(
        timestamp=timestamp,
        event_type="decision",
        actor="agent-7",
        actor_type="agent",
        action_id=action_id,
        action_type="search",
        resource="index:reports",
        details={"parameters": {"q": "quarterly figures"}},
        outcome=outcome,
    )


def rotation_draft(new: Signer) -> EntryDraft:
    """Entry 5: what gateway/services/key_rotation.py writes when an admin rotates to `new`."""
    return EntryDraft(
        timestamp="2026-11-25T06:00:02.000000Z",
        event_type="key_rotated",
        actor="admin-1",
        actor_type="user",
        action_id="",
        action_type="",
        resource=f"audit-signer:{new.key_id}",
        details={
            "reason": "quarterly rotation",
            "next_signer": next_signer_details(ORIGIN, new.public_key_raw),
        },
        outcome="rotated",
    )


# Entries 6 and 7, signed by the second key; the forger's entries 5..7 in its re-signed export.
AFTER_ROTATION = (
    decision("2026-11-25T06:00:03.000000Z", "act-0003", "allow"),
    decision("2026-11-25T06:00:04.000000Z", "act-0004", "deny"),
)
FORGED_TAIL = (
    decision("2026-11-25T06:00:02.000000Z", "act-0003", "allow"),
    decision("2026-11-25T06:00:03.000000Z", "act-0004", "allow"),
    decision("2026-11-25T06:00:04.000000Z", "act-0005", "allow"),
)
CHECKPOINT_TIMESTAMP = "2026-11-25T06:00:01.000000Z"
ROTATION_CHECKPOINT_TIMESTAMP = "2026-11-25T06:00:10.000000Z"
INCLUSION = (2, 4)  # leaf index (seq 3), tree size
CONSISTENCY = (3, 4)  # from size, to size


def vector_entries(
    drafts: tuple[EntryDraft, ...], signers: list[Signer], first_seq: int, prev_hash: str
) -> list[dict[str, Any]]:
    """Entries first_seq.. of `drafts`, entry i signed by signers[i], as vector items."""
    items: list[dict[str, Any]] = []
    for seq, (draft, signer) in enumerate(zip(drafts, signers, strict=True), start=first_seq):
        entry = build_entry(draft, seq, prev_hash, signer)
        items.append(
            {
                "entry": entry.to_json_dict(),
                "canonical": canonical_bytes(entry).decode("utf-8"),
                "entry_hash": entry.entry_hash,
                "leaf_hash": leaf_hash(entry).hex(),
                "signature": entry.signature,
                "export_line": entry.to_json_line(),
            }
        )
        prev_hash = entry.entry_hash
    return items


def build_vectors() -> dict[str, Any]:
    signer = Signer.from_seed(TEST_SEED)
    entries = vector_entries(DRAFTS, [signer] * len(DRAFTS), 1, GENESIS_HASH)
    leaves = [bytes.fromhex(item["leaf_hash"]) for item in entries]
    prev_hash = entries[-1]["entry_hash"]
    root = root_of(leaves)
    checkpoint = Checkpoint(ORIGIN, len(leaves), root, prev_hash, CHECKPOINT_TIMESTAMP)
    index, size = INCLUSION
    first, second = CONSISTENCY
    return {
        "description": (
            "agentgw audit format v1 test vectors (docs/audit-format.md). "
            "THE PRIVATE KEY SEED BELOW IS A PUBLIC TEST KEY: never use it for a real log."
        ),
        "test_private_key_seed_hex": TEST_SEED.hex(),
        "public_key_hex": signer.public_key_raw.hex(),
        "key_id": signer.key_id,
        "origin": ORIGIN,
        "note_verifier_key": note_verifier_key(ORIGIN, signer.public_key_raw),
        "genesis_hash": GENESIS_HASH,
        "entries": entries,
        "tree_size": len(leaves),
        "root_hash": root.hex(),
        "root_hash_base64": base64.b64encode(root).decode("ascii"),
        "checkpoint_note": sign_checkpoint(checkpoint, signer),
        "inclusion_proof": {
            "leaf_index": index,
            "tree_size": size,
            "leaf_hash": leaves[index].hex(),
            "root_hash": root_of(leaves[:size]).hex(),
            "proof": [h.hex() for h in inclusion_proof(leaves, index, size)],
        },
        "consistency_proof": {
            "first_size": first,
            "second_size": second,
            "first_root": root_of(leaves[:first]).hex(),
            "second_root": root_of(leaves[:second]).hex(),
            "proof": [h.hex() for h in consistency_proof(leaves, first, second)],
        },
        "key_set": KeySet.for_signer(ORIGIN, signer).to_json_dict(),
        "rotation": build_rotation_vectors(signer, entries),
    }


def key_set_of(*ranges: tuple[Signer, int, int | None]) -> dict[str, Any]:
    keys = tuple(TrustedKey(k.key_id, k.public_key_raw, a, b) for k, a, b in ranges)
    return KeySet(ORIGIN, keys).to_json_dict()


def build_rotation_vectors(first: Signer, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Entry 5 rotates to the second key, which signs 6 and 7; the cases verify them."""
    second = Signer.from_seed(SECOND_SEED)
    forger = Signer.from_seed(FORGER_SEED)
    drafts = (rotation_draft(second), *AFTER_ROTATION)
    rotated = vector_entries(drafts, [first, second, second], 5, entries[-1]["entry_hash"])
    forged = vector_entries(FORGED_TAIL, [forger] * 3, 5, entries[-1]["entry_hash"])
    every = [*entries, *rotated]
    leaves = [bytes.fromhex(item["leaf_hash"]) for item in every]
    root = root_of(leaves)
    checkpoint = Checkpoint(
        ORIGIN, len(every), root, every[-1]["entry_hash"], ROTATION_CHECKPOINT_TIMESTAMP
    )
    note = sign_checkpoint(checkpoint, second)
    exports = {
        "genuine": [item["export_line"] for item in every],
        "forged": [item["export_line"] for item in [*entries, *forged]],
    }
    first_key = base64.b64encode(first.public_key_raw).decode("ascii")
    before = KeySet.for_signer(ORIGIN, first).to_json_dict()
    after = key_set_of((first, 1, 5), (second, 6, None))
    cases: list[dict[str, Any]] = [
        case("key set saved before the rotation", "genuine", key_set=before, checkpoint=True),
        case("key set saved after the rotation", "genuine", key_set=after, checkpoint=True),
        case(
            "note verifier key of the first key as trust anchor, no key set",
            "genuine",
            trust_key=note_verifier_key(ORIGIN, first.public_key_raw),
            checkpoint=True,
        ),
        case("raw first public key as trust anchor", "genuine", trust_key=first_key),
        case("first key pinned by key id", "genuine", key_set=after, key_id=first.key_id),
        case(
            "forged key set introducing the forger's key, export re-signed from seq 5",
            "forged",
            key_set=key_set_of((first, 1, 4), (forger, 5, None)),
        ),
        case(
            "key set with overlapping ranges",
            "genuine",
            key_set=key_set_of((first, 1, 5), (second, 5, None)),
        ),
        case(
            "key set with a key no rotation introduced",
            "genuine",
            key_set=key_set_of((first, 1, 3), (forger, 4, None)),
        ),
        case(
            "key set range that does not match the rotation's seq",
            "genuine",
            key_set=key_set_of((first, 1, 4), (second, 5, None)),
        ),
        case(
            "the second key pinned as trust anchor",
            "genuine",
            key_set=after,
            trust_key=base64.b64encode(second.public_key_raw).decode("ascii"),
        ),
        case(
            "forger's key set pinned to the first key's id",
            "forged",
            key_set=KeySet.for_signer(ORIGIN, forger).to_json_dict(),
            key_id=first.key_id,
        ),
    ]
    for item in cases:
        item["expected"] = expected_outcome(item, exports, note)
    return {
        "description": (
            "Entry 5 rotates from the first test key to the second; entries 6 and 7 are "
            "signed by the second key. THE SEEDS ARE PUBLIC TEST KEYS: never use them."
        ),
        "second_private_key_seed_hex": SECOND_SEED.hex(),
        "second_public_key_hex": second.public_key_raw.hex(),
        "second_key_id": second.key_id,
        "second_note_verifier_key": note_verifier_key(ORIGIN, second.public_key_raw),
        "forger_private_key_seed_hex": FORGER_SEED.hex(),
        "forger_key_id": forger.key_id,
        "entries": rotated,
        "forged_entries": forged,
        "tree_size": len(every),
        "root_hash": root.hex(),
        "checkpoint_note": note,
        "key_set": after,
        "exports": exports,
        "cases": cases,
    }


def case(
    name: str,
    export: str,
    *,
    key_set: dict[str, Any] | None = None,
    trust_key: str | None = None,
    key_id: str | None = None,
    checkpoint: bool = False,
) -> dict[str, Any]:
    return {
        "name": name,
        "export": export,
        "key_set": key_set,
        "trust_key": trust_key,
        "key_id": key_id,
        "checkpoint": checkpoint,
    }


def expected_outcome(
    item: dict[str, Any], exports: dict[str, list[str]], note: str
) -> dict[str, Any]:
    """What `agentgw audit verify` answers for the case (test_audit_vectors re-checks it)."""
    keys = None if item["key_set"] is None else KeySet.from_json_dict(item["key_set"])
    anchor: TrustAnchor | str | None = item["key_id"]
    if item["trust_key"] is not None:
        anchor = TrustAnchor.parse(item["trust_key"])
    report = verify_export(
        exports[item["export"]], keys, note if item["checkpoint"] else None, anchor=anchor
    )
    if report.failure is None:
        return {"ok": True, "count": report.count, "root_hash": report.root_hash}
    failure = report.failure
    return {
        "ok": False,
        "kind": str(failure.kind),
        "seq": failure.seq,
        "line": failure.line_number,
    }


def render(vectors: dict[str, Any]) -> str:
    # canonical_json first proves the vectors are JSON-clean; the indented text is
    # for people reading the file.
    canonical_json(vectors)
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    VECTOR_FILE.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTOR_FILE}")

"""Generate tests/vectors/audit-v1.json, the audit format's test vectors.

Everything derives from a FIXED TEST KEY (the seed below is public: never use it for a
real log) and fixed inputs; Ed25519 is deterministic, so the output is reproducible and
`tests/unit/test_audit_vectors.py` fails if this file or the code drifts.
Run: `.venv/bin/python tests/vectors/make_audit_vectors.py` to rewrite the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from gateway.audit.canonical import canonical_json
from gateway.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.audit.entry import (
    GENESIS_HASH,
    EntryDraft,
    build_entry,
    canonical_bytes,
    leaf_hash,
)
from gateway.audit.keys import KeySet, Signer
from gateway.audit.merkle import consistency_proof, inclusion_proof, root_of
from gateway.audit.note import note_verifier_key

VECTOR_FILE = Path(__file__).with_name("audit-v1.json")
TEST_SEED = hashlib.sha256(b"agentgw audit v1 TEST KEY - public, never use for a real log").digest()
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
CHECKPOINT_TIMESTAMP = "2026-11-25T06:00:01.000000Z"
INCLUSION = (2, 4)  # leaf index (seq 3), tree size
CONSISTENCY = (3, 4)  # from size, to size


def build_vectors() -> dict[str, Any]:
    signer = Signer.from_seed(TEST_SEED)
    prev_hash = GENESIS_HASH
    entries: list[dict[str, Any]] = []
    leaves: list[bytes] = []
    for seq, draft in enumerate(DRAFTS, start=1):
        entry = build_entry(draft, seq, prev_hash, signer)
        leaves.append(leaf_hash(entry))
        entries.append(
            {
                "entry": entry.to_json_dict(),
                "canonical": canonical_bytes(entry).decode("utf-8"),
                "entry_hash": entry.entry_hash,
                "leaf_hash": leaves[-1].hex(),
                "signature": entry.signature,
                "export_line": entry.to_json_line(),
            }
        )
        prev_hash = entry.entry_hash
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
    }


def render(vectors: dict[str, Any]) -> str:
    # canonical_json first proves the vectors are JSON-clean; the indented text is
    # for people reading the file.
    canonical_json(vectors)
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    VECTOR_FILE.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTOR_FILE}")

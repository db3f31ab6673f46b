"""The published test vectors: re-derived from the test seed, and checked from first principles."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.domain.audit.checkpoint import open_checkpoint
from gateway.domain.audit.entry import AuditEntry
from gateway.domain.audit.keys import KeySet, TrustAnchor
from gateway.domain.audit.merkle import verify_consistency, verify_inclusion
from gateway.domain.audit.verify import verify_export

ROOT = Path(__file__).resolve().parents[2]
VECTOR_DIR = ROOT / "tests" / "vectors"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_audit_vectors", VECTOR_DIR / "make_audit_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vectors() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTOR_DIR / "audit-v1.json").read_text("utf-8"))
    return loaded


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_vector_file_is_exactly_what_the_code_derives_from_the_seed() -> None:
    module = generator()
    text = (VECTOR_DIR / "audit-v1.json").read_text("utf-8")
    assert module.render(module.build_vectors()) == text, (
        "tests/vectors/audit-v1.json drifted from the code: if the format change is "
        "intended, rerun tests/vectors/make_audit_vectors.py and update the spec"
    )


def node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def test_vectors_hold_from_first_principles() -> None:
    # Only hashlib and the Ed25519 primitive here: what another implementation would do.
    v = vectors()
    public_key = bytes.fromhex(v["public_key_hex"])
    ed25519 = Ed25519PublicKey.from_public_bytes(public_key)
    assert v["genesis_hash"] == sha256(b"agentgw/audit/v1/genesis").hex()
    assert v["key_id"] == sha256(b"agentgw/audit/v1/key-id\x00" + public_key)[:8].hex()
    prev = v["genesis_hash"]
    leaves = []
    for seq, item in enumerate(v["entries"], start=1):
        entry = item["entry"]
        canonical = item["canonical"].encode("utf-8")
        assert entry["seq"] == seq and entry["prev_hash"] == prev
        assert entry["key_id"] == v["key_id"]
        assert item["entry_hash"] == entry["entry_hash"]
        assert item["signature"] == entry["signature"]
        assert sha256(b"agentgw/audit/v1/entry\x00" + canonical).hex() == item["entry_hash"]
        assert sha256(b"\x00" + canonical).hex() == item["leaf_hash"]
        ed25519.verify(
            bytes.fromhex(item["signature"]),
            b"agentgw/audit/v1/signature\x00" + bytes.fromhex(item["entry_hash"]),
        )
        # The canonical bytes are the export line minus its two signed-over fields.
        line = json.loads(item["export_line"])
        del line["entry_hash"], line["signature"]
        assert json.loads(canonical) == line
        prev = item["entry_hash"]
        leaves.append(bytes.fromhex(item["leaf_hash"]))
    root = node(node(leaves[0], leaves[1]), node(leaves[2], leaves[3]))
    assert v["tree_size"] == 4 and v["root_hash"] == root.hex()
    assert base64.b64decode(v["root_hash_base64"]) == root
    body, _, signature_line = v["checkpoint_note"].partition("\n\n")
    body += "\n"
    assert body == (
        f"{v['origin']}\n4\n{v['root_hash_base64']}\nhead {prev}\n"
        "timestamp 2026-11-25T06:00:01.000000Z\n"
    )
    blob = base64.b64decode(signature_line.removeprefix(f"\u2014 {v['origin']} "))
    key_hash = sha256(v["origin"].encode() + b"\n\x01" + public_key)[:4]
    assert blob[:4] == key_hash
    ed25519.verify(blob[4:], body.encode("utf-8"))
    name, hash_hex, key_b64 = v["note_verifier_key"].split("+", 2)
    assert (name, hash_hex, base64.b64decode(key_b64)) == (
        v["origin"],
        key_hash.hex(),
        b"\x01" + public_key,
    )


def test_vector_proofs_verify() -> None:
    v = vectors()
    inc = v["inclusion_proof"]
    assert verify_inclusion(
        bytes.fromhex(inc["leaf_hash"]),
        inc["leaf_index"],
        inc["tree_size"],
        [bytes.fromhex(h) for h in inc["proof"]],
        bytes.fromhex(inc["root_hash"]),
    )
    con = v["consistency_proof"]
    assert verify_consistency(
        con["first_size"],
        con["second_size"],
        bytes.fromhex(con["first_root"]),
        bytes.fromhex(con["second_root"]),
        [bytes.fromhex(h) for h in con["proof"]],
    )


def test_vector_export_verifies_against_the_vector_key_set_and_checkpoint() -> None:
    v = vectors()
    keys = KeySet.from_json_dict(v["key_set"])
    checkpoint = open_checkpoint(v["checkpoint_note"], keys)
    lines = [item["export_line"] for item in v["entries"]]
    report = verify_export(lines, keys, checkpoint=checkpoint)
    assert report.ok and report.root_hash == v["root_hash"]
    for item in v["entries"]:
        assert AuditEntry.from_json_dict(item["entry"]).to_json_line() == item["export_line"]


def test_the_spec_shows_the_vector_checkpoint_note_verbatim() -> None:
    spec = (ROOT / "docs" / "audit-format.md").read_text("utf-8")
    assert vectors()["checkpoint_note"] in spec
    assert vectors()["note_verifier_key"] in spec


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH over leaf hashes, written out."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def test_rotation_vectors_hold_from_first_principles() -> None:
    v = vectors()
    r = v["rotation"]
    first = bytes.fromhex(v["public_key_hex"])
    second = bytes.fromhex(r["second_public_key_hex"])
    assert r["second_key_id"] == sha256(b"agentgw/audit/v1/key-id\x00" + second)[:8].hex()
    rotation, *after = r["entries"]
    entry = rotation["entry"]
    assert (entry["seq"], entry["event_type"], entry["key_id"]) == (5, "key_rotated", v["key_id"])
    assert entry["prev_hash"] == v["entries"][-1]["entry_hash"]
    assert entry["resource"] == f"audit-signer:{r['second_key_id']}"
    assert entry["details"]["next_signer"] == {
        "id": r["second_key_id"],
        "public": base64.b64encode(second).decode(),
        "verifier": r["second_note_verifier_key"],
    }
    # Entry 5 is signed by the first key; 6 and 7 by the key entry 5 names.
    prev = v["entries"][-1]["entry_hash"]
    for item, public, key_id in [
        (rotation, first, v["key_id"]),
        *((item, second, r["second_key_id"]) for item in after),
    ]:
        canonical = item["canonical"].encode("utf-8")
        assert item["entry"]["prev_hash"] == prev and item["entry"]["key_id"] == key_id
        assert sha256(b"agentgw/audit/v1/entry\x00" + canonical).hex() == item["entry_hash"]
        Ed25519PublicKey.from_public_bytes(public).verify(
            bytes.fromhex(item["signature"]),
            b"agentgw/audit/v1/signature\x00" + bytes.fromhex(item["entry_hash"]),
        )
        prev = item["entry_hash"]
    leaves = [bytes.fromhex(item["leaf_hash"]) for item in [*v["entries"], *r["entries"]]]
    assert r["tree_size"] == 7 and mth(leaves).hex() == r["root_hash"]
    assert r["exports"]["genuine"] == [
        item["export_line"] for item in [*v["entries"], *r["entries"]]
    ]
    # The checkpoint of size 7 is signed by the key of seq 8: the second key.
    body, _, signature_line = r["checkpoint_note"].partition("\n\n")
    blob = base64.b64decode(signature_line.removeprefix(f"\u2014 {v['origin']} "))
    assert blob[:4] == sha256(v["origin"].encode() + b"\n\x01" + second)[:4]
    Ed25519PublicKey.from_public_bytes(second).verify(blob[4:], (body + "\n").encode("utf-8"))
    assert body.split("\n")[1:3] == ["7", base64.b64encode(mth(leaves)).decode()]


# What docs/audit-format.md §8 says of each case, written out by hand: the vector file
# records the same, as derived by the code.
ROTATION_OUTCOMES = {
    "key set saved before the rotation": None,
    "key set saved after the rotation": None,
    "note verifier key of the first key as trust anchor, no key set": None,
    "raw first public key as trust anchor": None,
    "first key pinned by key id": None,
    "forged key set introducing the forger's key, export re-signed from seq 5": (
        "untrusted_key",
        5,
        5,
    ),
    "key set with overlapping ranges": ("key_history_mismatch", None, None),
    "key set with a key no rotation introduced": ("key_history_mismatch", 4, 4),
    "key set range that does not match the rotation's seq": ("key_history_mismatch", 5, 5),
    "the second key pinned as trust anchor": ("untrusted_key", 1, 1),
    "forger's key set pinned to the first key's id": ("key_history_mismatch", None, None),
}


def test_rotation_vector_cases_verify_as_recorded() -> None:
    r = vectors()["rotation"]
    assert sorted(c["name"] for c in r["cases"]) == sorted(ROTATION_OUTCOMES)
    for item in r["cases"]:
        keys = None if item["key_set"] is None else KeySet.from_json_dict(item["key_set"])
        anchor: TrustAnchor | str | None = item["key_id"]
        if item["trust_key"] is not None:
            anchor = TrustAnchor.parse(item["trust_key"])
        note = r["checkpoint_note"] if item["checkpoint"] else None
        for workers in (1, 2):
            report = verify_export(
                r["exports"][item["export"]],
                keys,
                note,
                workers=workers,
                chunk_size=2,
                start_method="fork",  # no other thread here; spawn costs a second
                anchor=anchor,
            )
            expected = ROTATION_OUTCOMES[item["name"]]
            if expected is None:
                assert report.ok, (item["name"], report.failure)
                assert item["expected"] == {
                    "ok": True,
                    "count": 7,
                    "root_hash": r["root_hash"],
                }
                assert report.root_hash == r["root_hash"]
                continue
            assert report.failure is not None, item["name"]
            got = (str(report.failure.kind), report.failure.seq, report.failure.line_number)
            assert got == expected, item["name"]
            kind, seq, line = expected
            assert item["expected"] == {"ok": False, "kind": kind, "seq": seq, "line": line}

"""Signing keys and the trusted key set file."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.keys import KeyFileError, KeySet, Signer, TrustedKey, key_id_for

SIGNER = Signer.from_seed(bytes(range(32)))


def test_key_id_is_the_first_8_bytes_of_the_labelled_hash() -> None:
    expected = hashlib.sha256(b"agentgw/audit/v1/key-id\x00" + SIGNER.public_key_raw).digest()
    assert SIGNER.key_id == key_id_for(SIGNER.public_key_raw) == expected[:8].hex()
    assert len(SIGNER.key_id) == 16


def test_repr_does_not_show_the_private_key() -> None:
    assert repr(SIGNER) == f"Signer(key_id={SIGNER.key_id!r})"


def test_load_or_create_writes_a_0600_pkcs8_file_in_new_directories(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys" / "audit.pem"
    created = Signer.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = Signer.load_or_create(path)
    assert loaded.public_key_raw == created.public_key_raw
    assert Signer.load(path).key_id == created.key_id


def test_load_refuses_a_key_that_is_not_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        Signer.load(path)


def test_load_reports_unreadable_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        Signer.load(tmp_path / "absent.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        Signer.load(tmp_path / "junk.pem")


def test_key_set_json_has_the_documented_shape_and_round_trips() -> None:
    old = Signer.from_seed(bytes(32))
    keys = KeySet(
        "example.com/audit",
        (
            TrustedKey(old.key_id, old.public_key_raw, 1, 100),
            TrustedKey(SIGNER.key_id, SIGNER.public_key_raw, 101, None),
        ),
    )
    obj = json.loads(keys.to_json())
    assert obj["origin"] == "example.com/audit"
    assert obj["keys"][1]["last_seq"] == 0
    assert obj["keys"][0]["last_seq"] == 100
    assert obj["keys"][1]["note_verifier_key"].startswith("example.com/audit+")
    assert set(obj["keys"][0]) == {
        "key_id",
        "public_key",
        "note_verifier_key",
        "first_seq",
        "last_seq",
    }
    assert KeySet.from_json(keys.to_json()) == keys
    assert keys.find(old.key_id) == keys.keys[0]
    assert keys.find("0" * 16) is None
    assert keys.keys[0].covers(100) and not keys.keys[0].covers(101)
    assert keys.keys[1].covers(10**9) and not keys.keys[1].covers(100)


def test_key_set_load_reads_a_file(tmp_path: Path) -> None:
    keys = KeySet.for_signer("example.com/audit", SIGNER)
    (tmp_path / "keys.json").write_text(keys.to_json())
    assert KeySet.load(tmp_path / "keys.json") == keys


def mutated(change: str) -> str:
    obj = KeySet.for_signer("example.com/audit", SIGNER).to_json_dict()
    key = obj["keys"][0]
    if change == "key_id":
        key["key_id"] = "0" * 16
    elif change == "verifier":
        key["note_verifier_key"] = "other.example+00000000+AAAA"
    elif change == "first_seq":
        key["first_seq"] = 0
    elif change == "last_before_first":
        key["first_seq"], key["last_seq"] = 10, 5
    elif change == "public_key":
        key["public_key"] = "AAAA"
    elif change == "duplicate":
        obj["keys"].append(dict(key))
    elif change == "origin":
        obj["origin"] = "has space"
    elif change == "bool_seq":
        key["first_seq"] = True
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("key_id", "key_id does not match"),
        ("verifier", "note_verifier_key: does not match"),
        ("first_seq", "first_seq must be >= 1"),
        ("last_before_first", "last_seq is before first_seq"),
        ("public_key", "public_key: not 32 bytes"),
        ("duplicate", "appears twice"),
        ("origin", "origin"),
        ("bool_seq", "first_seq: missing or not a int"),
    ],
)
def test_key_set_refuses_inconsistent_files(change: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        KeySet.from_json(mutated(change))

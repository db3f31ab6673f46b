"""Signing keys and the trusted key set file."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.domain.audit.keys import (
    KeyFileError,
    KeyHistoryError,
    KeySet,
    NextSigner,
    RotationError,
    Signer,
    TrustAnchor,
    TrustedKey,
    key_id_for,
    next_signer_details,
    read_next_signer,
)
from gateway.domain.audit.note import note_verifier_key

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


# --- key histories, the trust anchor and rotation details --------------------------------

OLD = Signer.from_seed(bytes(32))
ORIGIN = "example.com/audit"


def history(*ranges: tuple[Signer, int, int | None]) -> KeySet:
    return KeySet(ORIGIN, tuple(TrustedKey(k.key_id, k.public_key_raw, a, b) for k, a, b in ranges))


def test_a_key_set_from_the_gateway_is_one_history_whose_first_key_is_the_anchor() -> None:
    keys = history((OLD, 1, 100), (SIGNER, 101, None))
    assert keys.history_problem() is None
    # Listed in any order, it is the same history.
    assert history((SIGNER, 101, None), (OLD, 1, 100)).history_problem() is None
    assert keys.anchor() == TrustAnchor(OLD.key_id, OLD.public_key_raw, ORIGIN)
    assert keys.anchor(OLD.key_id) == keys.anchor()
    assert history((OLD, 1, 10)).history_problem() is None  # closed: says no more


@pytest.mark.parametrize(
    ("ranges", "why"),
    [
        (((OLD, 1, 100), (SIGNER, 100, None)), "overlap"),
        (((OLD, 1, 100), (SIGNER, 50, 60)), "overlap"),
        (((OLD, 1, None), (SIGNER, 101, None)), "both open-ended or overlap"),
        (((OLD, 1, 99), (SIGNER, 101, None)), "no key for seq 100..100"),
        (((OLD, 3, None),), "no key for seq 1..2"),
        ((), "no keys"),
    ],
)
def test_key_set_ranges_must_tile_the_seqs_from_1(
    ranges: tuple[tuple[Signer, int, int | None], ...], why: str
) -> None:
    keys = history(*ranges)
    problem = keys.history_problem()
    assert problem is not None and why in problem
    with pytest.raises(KeyHistoryError, match=re.escape(why)):
        keys.anchor()


def test_a_pinned_anchor_must_be_the_key_set_key_for_seq_1() -> None:
    keys = history((OLD, 1, 100), (SIGNER, 101, None))
    with pytest.raises(KeyHistoryError, match=re.escape("signs seq 101.., not from seq 1")):
        keys.anchor(SIGNER.key_id)
    with pytest.raises(KeyHistoryError, match="is not in it"):
        keys.anchor("00" * 8)


def test_a_checkpoint_of_size_n_is_the_key_of_seq_n_plus_1() -> None:
    keys = history((OLD, 1, 100), (SIGNER, 101, None))
    assert keys.key_for_seq(100) == keys.keys[0]
    assert keys.key_for_seq(101) == keys.keys[1]
    assert keys.key_for_seq(0) is None
    verifier = keys.checkpoint_verifier(100)
    assert verifier is not None and verifier.public_key_raw == SIGNER.public_key_raw
    assert verifier.name == ORIGIN
    assert history((OLD, 1, 10)).checkpoint_verifier(10) is None


def test_a_trust_key_is_a_base64_public_key_or_a_note_verifier_key() -> None:
    public = base64.b64encode(SIGNER.public_key_raw).decode()
    assert TrustAnchor.parse(public) == TrustAnchor(SIGNER.key_id, SIGNER.public_key_raw)
    verifier = note_verifier_key(ORIGIN, SIGNER.public_key_raw)
    assert TrustAnchor.parse(verifier) == TrustAnchor.of(SIGNER.public_key_raw, ORIGIN)
    # Raw keys whose base64 has a '+' are still raw keys.
    plus = next(
        raw
        for raw in (Signer.from_seed(bytes([i]) * 32).public_key_raw for i in range(64))
        if "+" in base64.b64encode(raw).decode()
    )
    assert TrustAnchor.parse(base64.b64encode(plus).decode()).public_key_raw == plus


@pytest.mark.parametrize(
    "text",
    ["", "AAAA", base64.b64encode(bytes(33)).decode(), "x+00000000+AAAA", "not a key"],
)
def test_a_trust_key_that_is_neither_is_refused(text: str) -> None:
    with pytest.raises(KeyFileError, match="trust key"):
        TrustAnchor.parse(text)


def test_next_signer_details_read_back_as_the_key_they_name() -> None:
    details = next_signer_details(ORIGIN, SIGNER.public_key_raw)
    assert set(details) == {"id", "public", "verifier"}
    assert not any("key" in name for name in details)  # the gateway would redact them
    expected = NextSigner(SIGNER.key_id, SIGNER.public_key_raw)
    resource = f"audit-signer:{SIGNER.key_id}"
    assert read_next_signer(resource, details, ORIGIN) == expected
    # Without an origin, the verifier key is checked for its key only.
    assert read_next_signer(resource, details, None) == expected
    other = next_signer_details("other.example", SIGNER.public_key_raw)
    assert read_next_signer(resource, other, None) == expected
    with pytest.raises(RotationError, match="not the note verifier key of origin"):
        read_next_signer(resource, other, ORIGIN)
    mixed = {**details, "verifier": note_verifier_key(ORIGIN, OLD.public_key_raw)}
    with pytest.raises(RotationError, match="names another public key"):
        read_next_signer(resource, mixed, None)
    padded = {**details, "public": details["public"].rstrip("=")}
    with pytest.raises(RotationError, match="not base64"):
        read_next_signer(resource, padded, ORIGIN)

"""Checkpoints as C2SP signed notes, checked against Go's sumdb/note published example."""

from __future__ import annotations

import base64

import pytest

from gateway.domain.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    note_key_hash,
    note_verifier_key,
    open_checkpoint,
    parse_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
)
from gateway.domain.audit.entry import GENESIS_HASH
from gateway.domain.audit.keys import KeySet, Signer
from gateway.domain.audit.merkle import EMPTY_ROOT
from gateway.domain.audit.note import (
    NoteError,
    NoteVerifier,
    open_note,
    parse_verifier_key,
    sign_note,
)

# The example in the package documentation of golang.org/x/mod/sumdb/note (note.go):
# a signer key, its verifier key, the text and the note note.Sign produces. Go's
# note.Open accepts GO_NOTE given GO_VERIFIER_KEY, so matching it byte for byte shows our
# envelope, key hash and verifier key string are what Go expects.
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n"
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
# The same note re-signed by a second key, also from the Go documentation and tests.
ENOCH_VERIFIER_KEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_DOUBLE_NOTE = (
    GO_NOTE + "\u2014 EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)


def go_signer() -> Signer:
    # The base64 key material may contain '+', so split off only the first four fields.
    encoded = GO_SIGNER_KEY.split("+", 4)[4]
    raw = base64.b64decode(encoded)
    assert raw[0] == 0x01
    return Signer.from_seed(raw[1:])


def test_go_verifier_key_parses_and_matches_the_go_signer() -> None:
    verifier = parse_verifier_key(GO_VERIFIER_KEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_hash.hex() == "c74f20a3"
    assert verifier.public_key_raw == go_signer().public_key_raw
    assert note_verifier_key("PeterNeumann", go_signer().public_key_raw) == GO_VERIFIER_KEY


def test_signing_reproduces_the_go_note_byte_for_byte() -> None:
    assert sign_note(GO_TEXT, "PeterNeumann", go_signer()) == GO_NOTE


def test_the_go_note_opens_with_its_published_verifier_key() -> None:
    opened = open_note(GO_NOTE, [parse_verifier_key(GO_VERIFIER_KEY)])
    assert opened.text == GO_TEXT
    assert [v.name for v in opened.signed_by] == ["PeterNeumann"]


def test_a_doubly_signed_go_note_opens_with_either_or_both_keys() -> None:
    peter, enoch = parse_verifier_key(GO_VERIFIER_KEY), parse_verifier_key(ENOCH_VERIFIER_KEY)
    assert open_note(GO_DOUBLE_NOTE, [peter]).signed_by == (peter,)
    assert open_note(GO_DOUBLE_NOTE, [enoch]).signed_by == (enoch,)
    assert open_note(GO_DOUBLE_NOTE, [enoch, peter]).signed_by == (peter, enoch)


def test_a_tampered_go_note_is_rejected() -> None:
    verifier = parse_verifier_key(GO_VERIFIER_KEY)
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), [verifier])


@pytest.mark.parametrize(
    "bad",
    [
        GO_VERIFIER_KEY.replace("c74f20a3", "c74f20a4"),
        GO_VERIFIER_KEY.replace("+ARpc", "+AhpC"),
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        GO_VERIFIER_KEY[:-4],
    ],
)
def test_mangled_verifier_keys_are_rejected(bad: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(bad)


SIGNER = Signer.from_seed(bytes(range(32)))
ORIGIN = "agentgw.example/audit"
KEYS = KeySet.for_signer(ORIGIN, SIGNER)
ROOT = bytes(range(32))
CHECKPOINT = Checkpoint(ORIGIN, 17, ROOT, "ab" * 32, "2026-11-25T05:55:27.123456Z")


def test_checkpoint_body_is_the_tlog_checkpoint_layout_with_two_extension_lines() -> None:
    assert CHECKPOINT.body() == (
        f"{ORIGIN}\n17\n{base64.b64encode(ROOT).decode()}\n"
        f"head {'ab' * 32}\ntimestamp 2026-11-25T05:55:27.123456Z\n"
    )


def test_signed_checkpoint_has_one_signature_line_named_by_the_origin() -> None:
    note = sign_checkpoint(CHECKPOINT, SIGNER)
    body, _, signature_line = note.partition("\n\n")
    assert body + "\n" == CHECKPOINT.body()
    assert signature_line.startswith(f"\u2014 {ORIGIN} ")
    assert signature_line.endswith("\n") and signature_line.count("\n") == 1
    blob = base64.b64decode(signature_line.split(" ")[2])
    assert len(blob) == 68
    assert blob[:4] == note_key_hash(ORIGIN, SIGNER.public_key_raw)
    verifier = NoteVerifier(ORIGIN, SIGNER.public_key_raw)
    assert parse_verifier_key(verifier.verifier_key) == verifier


def test_checkpoint_opens_with_the_key_set_or_a_list_of_keys() -> None:
    note = sign_checkpoint(CHECKPOINT, SIGNER)
    assert open_checkpoint(note, KEYS) == CHECKPOINT
    assert open_checkpoint(note, [(ORIGIN, SIGNER.public_key_raw)]) == CHECKPOINT
    assert parse_checkpoint(note) == CHECKPOINT


def test_an_empty_log_checkpoint_names_the_genesis_hash_as_head() -> None:
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT, GENESIS_HASH, "2026-11-25T05:55:27.123456Z")
    assert open_checkpoint(sign_checkpoint(empty, SIGNER), KEYS) == empty
    assert "\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n" in empty.body()


def test_a_cosignature_by_an_unknown_key_is_ignored() -> None:
    note = sign_checkpoint(CHECKPOINT, SIGNER)
    witness = Signer.from_seed(bytes(32))
    cosigned = note + sign_note(CHECKPOINT.body(), "witness.example", witness).split("\n\n")[1]
    assert open_checkpoint(cosigned, KEYS) == CHECKPOINT


def test_a_tampered_checkpoint_is_rejected() -> None:
    note = sign_checkpoint(CHECKPOINT, SIGNER).replace("\n17\n", "\n18\n")
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_checkpoint(note, KEYS)


def test_a_signature_spelled_another_way_in_base64_is_rejected() -> None:
    """68 bytes end in a base64 group with 2 unused bits: setting them, or dropping the
    padding, spells the same signature another way. One spelling per note."""
    note = sign_checkpoint(CHECKPOINT, SIGNER)
    assert open_checkpoint(note, KEYS) == CHECKPOINT
    body, _, line = note[:-1].rpartition("\n")
    b64 = line.rsplit(" ", 1)[1]
    assert b64.endswith("=") and not b64.endswith("==")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".index(b64[-2])
    assert last % 4 == 0  # canonical: the unused bits are zero
    for other in (
        b64[:-2]
        + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[last + 1]
        + "=",
        b64[:-1],
    ):
        with pytest.raises(CheckpointError, match=r"not (canonical|valid) base64"):
            open_checkpoint(f"{body}\n{line.rsplit(' ', 1)[0]} {other}\n", KEYS)


def test_a_checkpoint_signed_by_an_untrusted_key_is_rejected() -> None:
    note = sign_checkpoint(CHECKPOINT, Signer.from_seed(bytes(32)))
    with pytest.raises(CheckpointError, match="no signature by a trusted key"):
        open_checkpoint(note, KEYS)


def test_a_checkpoint_whose_origin_differs_from_the_signing_name_is_rejected() -> None:
    other = Checkpoint("other.example", 17, ROOT, "ab" * 32, CHECKPOINT.timestamp)
    note = sign_note(other.body(), ORIGIN, SIGNER)
    with pytest.raises(CheckpointError, match="not signed by a key of that name"):
        open_checkpoint(note, KEYS)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (CHECKPOINT.body().replace("\n17\n", "\n017\n"), "leading zeros"),
        (CHECKPOINT.body().replace("\n17\n", "\n-1\n"), "leading zeros"),
        (CHECKPOINT.body().replace("head ", "Head "), "line 4"),
        (CHECKPOINT.body().replace("head " + "ab" * 32, "head " + "AB" * 32), "lowercase hex"),
        (CHECKPOINT.body().replace("timestamp ", "time "), "line 5"),
        (CHECKPOINT.body().replace(".123456Z", "Z"), "timestamp"),
        (CHECKPOINT.body() + "extra\n", "6 lines"),
        ("\n".join(CHECKPOINT.body().split("\n")[:3]) + "\n", "3 lines"),
        (CHECKPOINT.body().replace("=\n", "\n"), "base64"),
        (CHECKPOINT.body()[:-1], "end with a newline"),
        (CHECKPOINT.body().replace("head ab", "head  ab"), "hex"),
    ],
)
def test_malformed_bodies_are_rejected(body: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_checkpoint_body(body)


@pytest.mark.parametrize(
    "note",
    [
        CHECKPOINT.body(),
        CHECKPOINT.body() + "\n",
        CHECKPOINT.body() + "\n- " + ORIGIN + " AAAA\n",
        CHECKPOINT.body() + "\n\u2014 " + ORIGIN + " !!!!\n",
        CHECKPOINT.body().replace("17", "1\x007") + "\n\u2014 " + ORIGIN + " AAAAAAAA\n",
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    with pytest.raises(CheckpointError):
        open_checkpoint(note, KEYS)


def test_a_checkpoint_value_cannot_be_built_malformed() -> None:
    with pytest.raises(CheckpointError, match="origin"):
        Checkpoint("has space", 1, ROOT, "ab" * 32, CHECKPOINT.timestamp)
    with pytest.raises(CheckpointError, match="root_hash"):
        Checkpoint(ORIGIN, 1, ROOT[:31], "ab" * 32, CHECKPOINT.timestamp)

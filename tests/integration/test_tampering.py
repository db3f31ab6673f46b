"""Tampering with a real export: every failure kind through `agentgw audit verify`.

A gateway (real Redis, real gRPC) decides a mix of actions, with one hold approved
and one rejected; the CLI exports its log and saves the key set and a checkpoint.
A second gateway shares the signing key but writes its own log: a fork, signed by
the real key, that an attacker could splice from. Each test mutates copies of those
files the way an attacker would and runs the real CLI verify, checking the exit code
(docs/audit-format.md §8) and that the first failure is named by kind and seq.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentgw.v1 import approvals_pb2, gateway_pb2
from clients.cli import EXIT_FAILED, EXIT_OK, main
from gateway.config import Config, RedisSettings
from gateway.domain.audit.checkpoint import parse_checkpoint
from gateway.domain.audit.entry import (
    AuditEntry,
    EntryDraft,
    build_entry,
    canonical_forms,
    entry_hash_of,
)
from gateway.domain.audit.keys import Signer
from gateway.domain.audit.note import note_verifier_key
from gateway.store.embedded import EmbeddedRedis
from tests.harness import ManualClock, RunningGateway, test_principals, token_for

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RealLog:
    """Files saved through the CLI from a running gateway, and from its fork."""

    lines: list[str] = field(repr=False)  # the export, each line with its LF
    keys: Path
    checkpoint: Path  # signed head covering every line of the export
    fork_lines: list[str] = field(repr=False)  # another log: same signing key and origin
    fork_checkpoint: Path
    work: Path  # scratch space for mutated copies

    @property
    def size(self) -> int:
        return len(self.lines)

    def seq_of(self, event_type: str) -> int:
        """The seq of the first entry of this event type."""
        for line in self.lines:
            obj = json.loads(line)
            if obj["event_type"] == event_type:
                seq: int = obj["seq"]
                return seq
        raise AssertionError(f"no {event_type} entry in the export")


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    return code, out.getvalue()


def save(gw: RunningGateway, work: Path, name: str) -> tuple[list[str], Path, Path]:
    """Export, key set and checkpoint of `gw`, each through `agentgw audit ...`."""
    flags = ["--server", gw.target, "--token", token_for("auditor-1")]
    paths = {what: work / f"{name}-{what}" for what in ("export.jsonl", "keys.json", "cp.note")}
    assert cli("audit", "export", *flags, "--out", str(paths["export.jsonl"]))[0] == EXIT_OK
    assert cli("audit", "keys", *flags, "--out", str(paths["keys.json"]))[0] == EXIT_OK
    assert cli("audit", "checkpoint", *flags, "--out", str(paths["cp.note"]))[0] == EXIT_OK
    with paths["export.jsonl"].open(encoding="utf-8", newline="\n") as f:
        lines = list(f)
    return lines, paths["keys.json"], paths["cp.note"]


def decide_a_mix(gw: RunningGateway, tag: str) -> None:
    """Allowed searches and reads, one held e-mail approved and one rejected."""
    one, two = gw.agent("agent-1"), gw.agent("agent-2")
    for i in range(3):
        decision = one.submit("search", session_id=f"{tag}-a", parameters={"q": f"{tag} {i}"})
        assert decision.verdict == gateway_pb2.VERDICT_ALLOW
    mail = one.submit("send_email", session_id=f"{tag}-a", parameters={"to": "cfo@corp.example"})
    assert mail.verdict == gateway_pb2.VERDICT_HOLD
    gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=mail.hold_id, reason="expected report"),
        metadata=gw.md("approver-1"),
    )
    two.submit("read_file", session_id=f"{tag}-b", resource="/srv/notes.md")
    mail = two.submit("send_email", session_id=f"{tag}-b", parameters={"to": "x@elsewhere.example"})
    assert mail.verdict == gateway_pb2.VERDICT_HOLD
    gw.approvals.Reject(
        approvals_pb2.RejectRequest(hold_id=mail.hold_id, reason="external recipient"),
        metadata=gw.md("approver-2"),
    )
    for i in range(3):
        two.submit("search", session_id=f"{tag}-b", parameters={"q": f"{tag} {i}", "page": i})


@pytest.fixture(scope="module")
def real_log(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[RealLog]:
    # Module scope: the gateways run once; every test below only reads these files.
    work = tmp_path_factory.mktemp("tampering")
    config = Config(
        listen="127.0.0.1:0",
        data_dir=work / "data",
        principals=test_principals(),
        redis=RedisSettings(url=redis_server.url, key_prefix=f"t{uuid.uuid4().hex}"),
    )
    # Same data dir, so the same signing key; another key prefix, so another log.
    fork_config = replace(
        config, redis=RedisSettings(url=redis_server.url, key_prefix=f"t{uuid.uuid4().hex}")
    )
    started: list[RunningGateway] = []
    try:
        gw = RunningGateway(config, ManualClock())
        started.append(gw)
        fork = RunningGateway(fork_config, ManualClock())
        started.append(fork)
        decide_a_mix(gw, "real")
        decide_a_mix(fork, "fork")
        lines, keys, checkpoint = save(gw, work, "real")
        fork_lines, _, fork_checkpoint = save(fork, work, "fork")
    finally:
        for running in reversed(started):
            running.stop()
    assert len(lines) == len(fork_lines) == 11
    assert parse_checkpoint(checkpoint.read_text(encoding="utf-8")).size == len(lines)
    scratch = work / "scratch"
    scratch.mkdir()
    yield RealLog(lines, keys, checkpoint, fork_lines, fork_checkpoint, scratch)


# --- running the verifier -----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    text: str  # the human-readable line
    report: dict[str, Any]  # the same verification with --json


def verify(
    log: RealLog,
    lines: Sequence[str] | None = None,
    *,
    keys: Path | None = None,
    checkpoint: Path | None = None,
    workers: int = 1,
    anchor: Sequence[str] = (),
) -> Outcome:
    """`agentgw audit verify` on `lines` (default: the untouched export), in-process.

    `anchor` are extra flags (--trust-key KEY, --key-id ID); with --trust-key and no
    `keys`, no key set is given at all.
    """
    export = log.work / f"export-{uuid.uuid4().hex}.jsonl"
    export.write_bytes("".join(log.lines if lines is None else lines).encode("utf-8"))
    argv = ["audit", "verify", str(export)]
    if keys is not None or "--trust-key" not in anchor:
        argv += ["--keys", str(keys or log.keys)]
    argv += [*anchor, "--workers", str(workers)]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint)]
    code, text = cli(*argv)
    json_code, as_json = cli(*argv, "--json")
    assert json_code == code
    return Outcome(code, text.strip(), json.loads(as_json))


def assert_failed(outcome: Outcome, kind: str, seq: int | None, line: int | None = None) -> None:
    assert outcome.code == EXIT_FAILED, outcome
    assert outcome.text.startswith(f"FAILED {kind}"), outcome.text
    assert outcome.report["ok"] is False
    assert outcome.report["kind"] == kind
    assert (outcome.report["seq"], outcome.report["line"]) == (seq, line)
    if seq is not None:
        assert outcome.text.endswith(f"({kind})"), outcome.text
        assert f"seq {seq}:" in outcome.text, outcome.text


# --- what an attacker can make ------------------------------------------------------


def entry_at(lines: Sequence[str], seq: int) -> AuditEntry:
    return AuditEntry.from_json_dict(json.loads(lines[seq - 1]))


def line_of(entry: AuditEntry) -> str:
    return entry.to_json_line() + "\n"


def rehashed(entry: AuditEntry, **changes: Any) -> AuditEntry:
    """The entry with fields changed and entry_hash recomputed: all one can do without a key."""
    changed = replace(entry, **changes)
    return replace(changed, entry_hash=entry_hash_of(canonical_forms(changed)[0]))


def signed_by(entry: AuditEntry, signer: Signer) -> AuditEntry:
    """The same event at the same place, validly signed by another key."""
    fields = {name: getattr(entry, name) for name in EntryDraft.__dataclass_fields__}
    return build_entry(EntryDraft(**fields), entry.seq, entry.prev_hash, signer)


def resigned_from(lines: Sequence[str], seq: int, signer: Signer) -> list[str]:
    """The export with entries seq.. re-signed by `signer` and re-linked: a rewrite by
    someone who has only their own key."""
    out = list(lines[: seq - 1])
    prev = entry_at(lines, seq - 1).entry_hash if seq > 1 else None
    for number in range(seq, len(lines) + 1):
        entry = entry_at(lines, number)
        if prev is not None:
            entry = replace(entry, prev_hash=prev)
        forged = signed_by(entry, signer)
        out.append(line_of(forged))
        prev = forged.entry_hash
    return out


def key_set_file(log: RealLog, name: str, keys: Sequence[dict[str, Any]]) -> Path:
    """A copy of the saved key set with other keys: what a forger hands the auditor."""
    document = json.loads(log.keys.read_text(encoding="utf-8"))
    document["keys"] = list(keys)
    path = log.work / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def key_record(origin: str, signer: Signer, first_seq: int, last_seq: int) -> dict[str, Any]:
    return {
        "key_id": signer.key_id,
        "public_key": base64.b64encode(signer.public_key_raw).decode("ascii"),
        "note_verifier_key": note_verifier_key(origin, signer.public_key_raw),
        "first_seq": first_seq,
        "last_seq": last_seq,
    }


# --- one test per failure kind ------------------------------------------------------


def test_the_untouched_export_verifies_with_its_count_and_root(real_log: RealLog) -> None:
    signed = parse_checkpoint(real_log.checkpoint.read_text(encoding="utf-8"))
    root = signed.root_hash.hex()
    for checkpoint in (None, real_log.checkpoint):
        outcome = verify(real_log, checkpoint=checkpoint)
        assert outcome.code == EXIT_OK
        assert outcome.text == f"OK: {real_log.size} entries verified; root {root}"
        assert outcome.report == {
            "ok": True,
            "count": real_log.size,
            "root_hash": root,
            "head_hash": signed.head_hash,
        }


def test_edited_entry(real_log: RealLog) -> None:
    # Who approved the e-mail is rewritten; the line stays in canonical form.
    seq = real_log.seq_of("hold_approved")
    lines = [*real_log.lines]
    assert '"actor":"approver-1"' in lines[seq - 1]
    lines[seq - 1] = lines[seq - 1].replace('"actor":"approver-1"', '"actor":"approver-2"')
    outcome = verify(real_log, lines, checkpoint=real_log.checkpoint)
    assert_failed(outcome, "edited", seq, seq)
    assert "entry_hash does not match its contents" in outcome.text


def test_bad_signature(real_log: RealLog) -> None:
    # A rejection turned into an approval, with a recomputed hash but the old signature.
    seq = real_log.seq_of("hold_rejected")
    lines = [*real_log.lines]
    forged = rehashed(entry_at(lines, seq), event_type="hold_approved", outcome="approved")
    lines[seq - 1] = line_of(forged)
    outcome = verify(real_log, lines)
    assert_failed(outcome, "bad_signature", seq, seq)


def test_bad_signature_copied_from_another_entry(real_log: RealLog) -> None:
    lines = [*real_log.lines]
    lines[4] = line_of(replace(entry_at(lines, 5), signature=entry_at(lines, 4).signature))
    assert_failed(verify(real_log, lines), "bad_signature", 5, 5)


def test_unknown_key(real_log: RealLog) -> None:
    lines = [*real_log.lines]
    lines[7] = line_of(signed_by(entry_at(lines, 8), Signer.generate()))
    outcome = verify(real_log, lines)
    assert_failed(outcome, "unknown_key", 8, 8)
    assert f"key_id {entry_at(lines, 8).key_id} is not a trusted key" in outcome.text


def test_a_key_set_that_retires_the_key_early_disagrees_with_the_chain(
    real_log: RealLog,
) -> None:
    # The key set says the key was retired after seq 9; no entry rotated it out, so
    # entry 10 is still its: the key set is wrong, not the entry.
    document = json.loads(real_log.keys.read_text(encoding="utf-8"))
    [key] = document["keys"]
    assert (key["first_seq"], key["last_seq"]) == (1, 0)
    retired = key_set_file(real_log, "keys-retired.json", [{**key, "last_seq": 9}])
    outcome = verify(real_log, keys=retired, checkpoint=real_log.checkpoint)
    assert_failed(outcome, "key_history_mismatch", 10, 10)
    assert "the key set names no key for seq 10" in outcome.text


# --- trust: the anchor, and key sets that disagree with the chain -------------------


def real_key(log: RealLog) -> dict[str, Any]:
    [key] = json.loads(log.keys.read_text(encoding="utf-8"))["keys"]
    return dict(key)


def origin_of(log: RealLog) -> str:
    origin: str = json.loads(log.keys.read_text(encoding="utf-8"))["origin"]
    return origin


def test_a_forged_key_set_with_a_resigned_export_is_rejected(real_log: RealLog) -> None:
    # The forger rewrites the export from seq 6 with its own key and hands over a key
    # set in which its key follows the real one, as if a rotation had introduced it.
    forger = Signer.from_seed(b"\x0f" * 32)
    lines = resigned_from(real_log.lines, 6, forger)
    forged = key_set_file(
        real_log,
        "keys-forged.json",
        [{**real_key(real_log), "last_seq": 5}, key_record(origin_of(real_log), forger, 6, 0)],
    )
    outcome = verify(real_log, lines, keys=forged)
    assert_failed(outcome, "untrusted_key", 6, 6)
    assert f"signed by key {forger.key_id}, which no rotation in the chain introduced" in (
        outcome.text
    )
    assert verify(real_log, lines, keys=forged, workers=2).report == outcome.report


def test_a_wholly_forged_key_set_is_caught_by_the_pinned_anchor(real_log: RealLog) -> None:
    forger = Signer.from_seed(b"\x0f" * 32)
    lines = resigned_from(real_log.lines, 1, forger)
    only_forger = key_set_file(
        real_log, "keys-only-forger.json", [key_record(origin_of(real_log), forger, 1, 0)]
    )
    # A key set alone is only as good as where it came from ...
    assert verify(real_log, lines, keys=only_forger).code == EXIT_OK
    # ... which is why the auditor pins the first key, by id or by the key itself.
    real = real_key(real_log)
    pinned = verify(real_log, lines, keys=only_forger, anchor=["--key-id", real["key_id"]])
    assert_failed(pinned, "key_history_mismatch", None)
    assert f"the pinned trust anchor {real['key_id']} is not in it" in pinned.text
    for trust_key in (real["public_key"], real["note_verifier_key"]):
        anchored = verify(real_log, lines, keys=only_forger, anchor=["--trust-key", trust_key])
        assert_failed(anchored, "untrusted_key", 1, 1)
        assert f"not by the trust anchor {real['key_id']}" in anchored.text


def test_a_key_set_with_overlapping_ranges_is_rejected(real_log: RealLog) -> None:
    other = Signer.from_seed(b"\x0e" * 32)
    overlapping = key_set_file(
        real_log,
        "keys-overlapping.json",
        [{**real_key(real_log), "last_seq": 11}, key_record(origin_of(real_log), other, 5, 0)],
    )
    outcome = verify(real_log, keys=overlapping, checkpoint=real_log.checkpoint)
    assert_failed(outcome, "key_history_mismatch", None)
    assert "overlap" in outcome.text


def test_a_key_set_with_a_key_no_rotation_introduced_is_rejected(real_log: RealLog) -> None:
    # The export is genuine; the key set claims a second key from seq 6 on.
    other = Signer.from_seed(b"\x0e" * 32)
    claims = key_set_file(
        real_log,
        "keys-unintroduced.json",
        [{**real_key(real_log), "last_seq": 5}, key_record(origin_of(real_log), other, 6, 0)],
    )
    outcome = verify(real_log, keys=claims, checkpoint=real_log.checkpoint)
    assert_failed(outcome, "key_history_mismatch", 6, 6)
    assert f"key {other.key_id} signs seq 6.., but no rotation introduced it" in outcome.text
    assert verify(real_log, keys=claims, workers=2).report == verify(real_log, keys=claims).report
    # An export saved before seq 6 cannot contradict it.
    assert verify(real_log, real_log.lines[:4], keys=claims).code == EXIT_OK


def test_a_trust_key_alone_verifies_the_export_and_the_checkpoint(real_log: RealLog) -> None:
    real = real_key(real_log)
    for trust_key in (real["public_key"], real["note_verifier_key"]):
        outcome = verify(
            real_log, checkpoint=real_log.checkpoint, anchor=["--trust-key", trust_key]
        )
        assert outcome.code == EXIT_OK, outcome
        assert outcome.report["count"] == real_log.size
    export = real_log.work / "untouched-anchor.jsonl"
    export.write_text("".join(real_log.lines), encoding="utf-8")
    assert cli("audit", "verify", str(export))[0] == 2  # no anchor at all
    assert cli("audit", "verify", str(export), "--trust-key", "AAAA")[0] == 2
    assert cli("audit", "verify", str(export), "--key-id", real["key_id"])[0] == 2


def test_broken_link(real_log: RealLog) -> None:
    # Entry 6 swapped for its twin in the fork: validly signed, links to the fork's 5.
    lines = [*real_log.lines]
    lines[5] = real_log.fork_lines[5]
    outcome = verify(real_log, lines)
    assert_failed(outcome, "broken_link", 6, 6)
    assert "prev_hash does not match the entry_hash of seq 5" in outcome.text


def test_deleted_entry(real_log: RealLog) -> None:
    seq = real_log.seq_of("hold_rejected")
    lines = [*real_log.lines]
    del lines[seq - 1]
    outcome = verify(real_log, lines, checkpoint=real_log.checkpoint)
    assert_failed(outcome, "deleted", seq + 1, seq)
    assert f"seq {seq} missing" in outcome.text


@pytest.mark.parametrize("source", ["fork", "later copy"])
def test_inserted_entry(real_log: RealLog, source: str) -> None:
    lines = [*real_log.lines]
    if source == "fork":
        # The fork's entry 4, validly signed, claims the next seq before the real 4.
        lines.insert(3, real_log.fork_lines[3])
        expected_seq = 4
    else:
        # A copy of entry 10 spliced in after entry 3.
        lines.insert(3, real_log.lines[9])
        expected_seq = 10
    assert_failed(verify(real_log, lines), "inserted", expected_seq, 4)


def test_reordered_entries(real_log: RealLog) -> None:
    lines = [*real_log.lines]
    lines[2], lines[3] = lines[3], lines[2]
    outcome = verify(real_log, lines)
    assert_failed(outcome, "reordered", 4, 3)
    assert "swapped with seq 3" in outcome.text


def test_duplicate_seq(real_log: RealLog) -> None:
    lines = [*real_log.lines]
    lines.insert(7, lines[6])
    outcome = verify(real_log, lines)
    assert_failed(outcome, "duplicate_seq", 7, 8)
    assert "repeats the entry at seq 7" in outcome.text


def test_truncated_tail_against_the_checkpoint(real_log: RealLog) -> None:
    lines = real_log.lines[:-2]
    assert verify(real_log, lines).code == EXIT_OK  # undetectable without a checkpoint
    outcome = verify(real_log, lines, checkpoint=real_log.checkpoint)
    size = real_log.size
    assert_failed(outcome, "truncated", size - 1, None)
    assert f"export ends after {size - 2} entries but the checkpoint covers {size}" in outcome.text


def test_checkpoint_signature(real_log: RealLog) -> None:
    # A checkpoint edited to cover fewer entries, so that truncation would pass.
    note = real_log.checkpoint.read_text(encoding="utf-8")
    size = real_log.size
    edited = real_log.work / "cp-edited.note"
    edited.write_text(note.replace(f"\n{size}\n", f"\n{size - 2}\n", 1), encoding="utf-8")
    outcome = verify(real_log, real_log.lines[:-2], checkpoint=edited)
    assert_failed(outcome, "checkpoint_signature", None)
    assert "invalid signature" in outcome.text


@pytest.mark.parametrize(
    ("old", "new"),
    [(b"\n", b"\r"), (b"\n", b"\r\n"), (b"agentgw", b"\xe1gentgw")],
    ids=["CR for LF", "CRLF for LF", "not UTF-8"],
)
def test_checkpoint_bytes_are_opened_as_saved(real_log: RealLog, old: bytes, new: bytes) -> None:
    # Newline translation would accept the first two; bad UTF-8 once crashed the CLI.
    note = real_log.checkpoint.read_bytes()
    changed = real_log.work / "cp-bytes.note"
    changed.write_bytes(note.replace(old, new, 1))
    assert_failed(verify(real_log, checkpoint=changed), "checkpoint_signature", None)


def test_root_mismatch(real_log: RealLog) -> None:
    # The fork's checkpoint is signed by the real key, over another log state: the
    # signature verifies, the Merkle root over the real entries does not match it.
    size = real_log.size
    outcome = verify(real_log, checkpoint=real_log.fork_checkpoint)
    assert_failed(outcome, "root_mismatch", size, size)
    assert f"Merkle root of entries 1..{size}" in outcome.text


def test_the_console_command_with_workers_exits_the_same(real_log: RealLog) -> None:
    # One real process with a worker pool: same exit codes and words as in-process.
    lines = [*real_log.lines]
    del lines[4]
    export = real_log.work / "deleted.jsonl"
    export.write_text("".join(lines), encoding="utf-8")
    command = [sys.executable, "-m", "clients.cli", "audit", "verify", str(export)]
    command += ["--keys", str(real_log.keys), "--checkpoint", str(real_log.checkpoint)]
    done = subprocess.run(
        [*command, "--workers", "2"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_FAILED, done.stderr
    assert done.stdout.strip() == verify(real_log, lines, checkpoint=real_log.checkpoint).text


# --- any single byte ----------------------------------------------------------------


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_flipping_any_byte_of_the_export_fails_verification(
    real_log: RealLog, data: st.DataObject
) -> None:
    export = bytearray("".join(real_log.lines).encode("utf-8"))
    position = data.draw(st.integers(0, len(export) - 1), label="position")
    export[position] ^= data.draw(st.integers(1, 255), label="mask")
    path = real_log.work / "flipped.jsonl"
    path.write_bytes(export)
    argv = ["audit", "verify", str(path), "--keys", str(real_log.keys), "--workers", "1"]
    code, text = cli(*argv, "--checkpoint", str(real_log.checkpoint))
    assert code == EXIT_FAILED, text


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_flipping_any_byte_of_the_checkpoint_fails_verification(
    real_log: RealLog, data: st.DataObject
) -> None:
    note = bytearray(real_log.checkpoint.read_bytes())
    position = data.draw(st.integers(0, len(note) - 1), label="position")
    note[position] ^= data.draw(st.integers(1, 255), label="mask")
    path = real_log.work / "flipped.note"
    path.write_bytes(note)
    export = real_log.work / "untouched.jsonl"
    export.write_text("".join(real_log.lines), encoding="utf-8")
    argv = ["audit", "verify", str(export), "--keys", str(real_log.keys), "--workers", "1"]
    code, text = cli(*argv, "--checkpoint", str(path))
    assert code == EXIT_FAILED, text
    assert text.startswith("FAILED checkpoint_signature"), text

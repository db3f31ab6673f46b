"""Key rotation and published checkpoints, through gRPC and the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentgw.v1 import audit_pb2
from clients.cli import main as cli_main
from gateway.config import AuditSettings
from gateway.domain.audit.checkpoint import open_checkpoint
from gateway.domain.audit.entry import AuditEntry, EntryDraft, build_entry
from gateway.domain.audit.keys import Signer
from gateway.domain.audit.verify import verify_export
from tests.harness import RunningGateway, token_for, wait_for

MakeGateway = Callable[..., RunningGateway]


def rotate(gw: RunningGateway, reason: str = "scheduled", key_id: str = "") -> Any:
    return gw.audit.RotateKey(
        audit_pb2.RotateKeyRequest(reason=reason, key_id=key_id), metadata=gw.md("admin-1")
    )


def submit_some(gw: RunningGateway, n: int, session: str = "s") -> list[int]:
    agent = gw.agent()
    return [
        agent.submit("search", session_id=f"{session}{i}", parameters={"i": i}).audit_seq
        for i in range(n)
    ]


def entries(gw: RunningGateway) -> list[AuditEntry]:
    return [AuditEntry.from_json_line(line) for line in gw.export_lines()]


def test_rotation_entry_is_signed_by_the_old_key_and_later_entries_by_the_new(
    gw: RunningGateway,
) -> None:
    submit_some(gw, 3)
    old_id = gw.key_set().keys[0].key_id
    rotation = rotate(gw, "quarterly rotation")
    submit_some(gw, 2, session="after")

    assert rotation.entry.seq == 4
    assert (rotation.old_key.key_id, rotation.old_key.first_seq) == (old_id, 1)
    assert rotation.old_key.last_seq == 4
    assert (rotation.new_key.first_seq, rotation.new_key.last_seq) == (5, 0)
    log = entries(gw)
    assert [e.key_id for e in log] == [old_id] * 4 + [rotation.new_key.key_id] * 2
    rotated = log[3]
    assert (rotated.event_type, rotated.actor, rotated.actor_type) == (
        "key_rotated",
        "admin-1",
        "user",
    )
    assert rotated.details["reason"] == "quarterly rotation"
    assert rotated.details["next_signer"]["id"] == rotation.new_key.key_id
    assert rotated.details["next_signer"]["public"] == rotation.new_key.public_key

    keys = gw.key_set()
    assert [(k.key_id, k.first_seq, k.last_seq) for k in keys.keys] == [
        (old_id, 1, 4),
        (rotation.new_key.key_id, 5, None),
    ]
    report = verify_export(gw.export_lines(), keys)
    assert report.ok, report.failure
    assert report.count == 6


def test_the_verifier_refuses_the_old_key_after_its_range(gw: RunningGateway) -> None:
    submit_some(gw, 2)
    rotate(gw)
    submit_some(gw, 1, session="after")
    lines = gw.export_lines()
    last = entries(gw)[-1]
    # Whoever still holds the old private key re-signs the newest entry with it.
    old = Signer.load(gw.config.signing_key_path)
    draft = EntryDraft(**{f.name: getattr(last, f.name) for f in fields(EntryDraft)})
    forged = build_entry(draft, last.seq, last.prev_hash, old)
    report = verify_export([*lines[:-1], forged.to_json_line()], gw.key_set())
    assert not report.ok
    assert report.failure is not None
    assert (report.failure.kind, report.failure.seq) == ("key_out_of_range", 4)


def test_only_admins_rotate_and_a_reason_is_required(gw: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gw.audit.RotateKey(audit_pb2.RotateKeyRequest(reason="x"), metadata=gw.md("auditor-1"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        rotate(gw, reason="  ")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reason" in (e.value.details() or "")
    # Only the refusal of the auditor is recorded (a security event); no rotation.
    wait_for(lambda: gw.event_types(), what="the security entry")
    assert gw.event_types() == ["security_permission_denied"]
    assert len(gw.key_set().keys) == 1


def test_rotating_to_a_provisioned_key(gw: RunningGateway) -> None:
    submit_some(gw, 1)
    provisioned = Signer.generate()
    provisioned.save(gw.config.key_dir_path / f"{provisioned.key_id}.pem")
    rotation = rotate(gw, key_id=provisioned.key_id)
    assert rotation.new_key.key_id == provisioned.key_id
    assert submit_some(gw, 1, session="after") == [3]
    assert entries(gw)[-1].key_id == provisioned.key_id

    with pytest.raises(grpc.RpcError) as e:
        rotate(gw, key_id=provisioned.key_id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:
        rotate(gw, key_id="00112233445566ff")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "00112233445566ff.pem" in (e.value.details() or "")
    assert gw.audit_head() == 3


def test_a_replica_without_the_new_key_fails_closed_until_it_gets_it(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    one = make_gateway()
    lonely_dir = tmp_path / "replica-keys"
    two = make_gateway(
        audit=AuditSettings(signing_key_file=one.config.signing_key_path, key_dir=lonely_dir)
    )
    submit_some(two, 1)
    rotation = rotate(one)
    with pytest.raises(grpc.RpcError) as e:
        two.agent().submit("search", session_id="x")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rotation.new_key.key_id in (e.value.details() or "")
    assert one.audit_head() == 2  # nothing was written

    lonely_dir.mkdir()
    name = f"{rotation.new_key.key_id}.pem"
    shutil.copy(one.config.key_dir_path / name, lonely_dir / name)
    assert two.agent().submit("search", session_id="y").audit_seq == 3
    report = verify_export(one.export_lines(), one.key_set())
    assert report.ok, report.failure


def test_a_replica_with_another_key_cannot_sign_the_log(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    one = make_gateway()
    submit_some(one, 2)
    stranger = make_gateway(
        audit=AuditSettings(signing_key_file=tmp_path / "other.pem", key_dir=tmp_path / "k")
    )
    with pytest.raises(grpc.RpcError) as e:
        stranger.agent().submit("search", session_id="x")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert one.key_set().keys[0].key_id in (e.value.details() or "")
    assert one.audit_head() == 2


def test_replicas_sharing_the_key_dir_follow_a_rotation(make_gateway: MakeGateway) -> None:
    one, two = make_gateway(), make_gateway()
    submit_some(one, 2)
    submit_some(two, 2, session="two")  # two has cached the head: the rotation moves it
    rotation = rotate(one)
    assert submit_some(two, 1, session="late") == [6]
    assert entries(one)[-1].key_id == rotation.new_key.key_id
    assert verify_export(one.export_lines(), two.key_set()).ok


def test_checkpoints_after_a_rotation_are_signed_by_the_new_key(gw: RunningGateway) -> None:
    submit_some(gw, 2)
    rotation = rotate(gw)
    cp = gw.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=gw.md("auditor-1"))
    assert (cp.size, cp.key_id) == (3, rotation.new_key.key_id)
    assert open_checkpoint(cp.note, gw.key_set()).size == 3


def test_the_published_checkpoint_is_shared_until_a_newer_one(gw: RunningGateway) -> None:
    md = gw.md("auditor-1")
    submit_some(gw, 2)
    fresh = gw.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=md)
    published = audit_pb2.GetCheckpointRequest(published=True)
    first = gw.audit.GetCheckpoint(published, metadata=md)
    assert first.note == fresh.note
    assert gw.audit.GetCheckpoint(published, metadata=md).note == first.note
    submit_some(gw, 1, session="more")
    newer = gw.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=md)
    assert newer.size == 3
    assert gw.audit.GetCheckpoint(published, metadata=md).note == newer.note


def test_the_gateway_publishes_checkpoints_periodically(make_gateway: MakeGateway) -> None:
    gw = make_gateway(
        audit=AuditSettings(checkpoint_interval_seconds=1, signing_key_file=None, key_dir=None)
    )
    submit_some(gw, 3)
    published = audit_pb2.GetCheckpointRequest(published=True)

    def published_size() -> bool:
        cp = gw.audit.GetCheckpoint(published, metadata=gw.md("auditor-1"))
        return cp.size == 3

    wait_for(published_size, timeout=10, what="a published checkpoint of size 3")


def test_keys_rotate_through_the_cli(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    submit_some(gw, 1)
    server = ["--server", gw.target]
    assert (
        cli_main(
            ["keys", "rotate", "--reason", "leak drill", *server, "--token", token_for("admin-1")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "rotated at seq 2" in out
    assert (
        cli_main(["keys", "rotate", "--reason", "x", *server, "--token", token_for("auditor-1")])
        == 1
    )
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert len(gw.key_set().keys) == 2


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli_main(list(argv))
    return code, out.getvalue()


def test_a_key_set_saved_before_a_rotation_verifies_the_later_export(
    gw: RunningGateway, tmp_path: Path
) -> None:
    # The auditor saved the key set once; the gateway rotated since. The new key comes
    # from the chain: the rotation entry, signed by the key the auditor trusts.
    flags = ["--server", gw.target, "--token", token_for("auditor-1")]
    before, after = tmp_path / "keys-before.json", tmp_path / "keys-after.json"
    export, checkpoint = tmp_path / "audit.jsonl", tmp_path / "cp.note"
    submit_some(gw, 3)
    assert cli("audit", "keys", *flags, "--out", str(before))[0] == 0
    rotation = rotate(gw, "quarterly rotation")
    submit_some(gw, 2, session="after")
    assert cli("audit", "keys", *flags, "--out", str(after))[0] == 0
    assert cli("audit", "checkpoint", *flags, "--out", str(checkpoint))[0] == 0
    assert cli("audit", "export", *flags, "--out", str(export))[0] == 0
    [first] = json.loads(before.read_text())["keys"]
    assert (first["first_seq"], first["last_seq"]) == (1, 0)

    verify = ["audit", "verify", str(export), "--checkpoint", str(checkpoint)]
    for anchor in (
        ["--keys", str(before)],
        ["--keys", str(after)],
        ["--keys", str(after), "--key-id", first["key_id"]],
        ["--trust-key", first["note_verifier_key"]],
        ["--trust-key", first["public_key"]],
    ):
        for workers in ("1", "2"):
            code, out = cli(*verify, *anchor, "--workers", workers)
            assert code == 0, (anchor, out)
            assert out.startswith("OK: 6 entries verified"), out

    # The key set saved after the rotation, with the rotation moved one seq later.
    shifted = json.loads(after.read_text())
    shifted["keys"][0]["last_seq"] = rotation.entry.seq + 1
    shifted["keys"][1]["first_seq"] = rotation.entry.seq + 2
    wrong = tmp_path / "keys-shifted.json"
    wrong.write_text(json.dumps(shifted))
    for workers in ("1", "2"):
        code, out = cli(*verify, "--keys", str(wrong), "--workers", workers, "--json")
        assert code == 1
        report = json.loads(out)
        assert (report["kind"], report["seq"]) == ("key_history_mismatch", rotation.entry.seq + 1)
        assert f"the chain rotated it out after seq {rotation.entry.seq}" in report["message"]


def test_proofs_take_the_checkpoint_signer_from_the_key_set(
    gw: RunningGateway, tmp_path: Path
) -> None:
    flags = ["--server", gw.target, "--token", token_for("auditor-1")]
    keys, old, new = tmp_path / "keys.json", tmp_path / "old.note", tmp_path / "new.note"
    submit_some(gw, 2)
    assert cli("audit", "checkpoint", *flags, "--out", str(old))[0] == 0
    rotate(gw)
    submit_some(gw, 2, session="after")
    assert cli("audit", "checkpoint", *flags, "--out", str(new))[0] == 0
    assert cli("audit", "keys", *flags, "--out", str(keys))[0] == 0
    first = json.loads(keys.read_text())["keys"][0]
    consistency = ["audit", "prove-consistency", *flags, "--old", str(old), "--new", str(new)]
    assert cli(*consistency, "--keys", str(keys))[0] == 0
    assert cli(*consistency, "--keys", str(keys), "--key-id", first["key_id"])[0] == 0
    assert cli(*consistency, "--keys", str(keys), "--trust-key", first["public_key"])[0] == 0
    code, out = cli(*consistency, "--keys", str(keys), "--key-id", "00" * 8)
    assert code == 1 and out.startswith("FAILED key_history_mismatch"), out
    # The old checkpoint (size 2) is the old key's, the new one (size 5) the new key's:
    # a key set that says the old key signs on cannot vouch for the new one.
    stale = json.loads(keys.read_text())
    stale["keys"] = [{**stale["keys"][0], "last_seq": 0}]
    stale_path = tmp_path / "keys-stale.json"
    stale_path.write_text(json.dumps(stale))
    code, out = cli(*consistency, "--keys", str(stale_path))
    assert code == 1 and out.startswith("FAILED checkpoint_signature: --new"), out

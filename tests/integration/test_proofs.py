"""Inclusion and consistency proofs through gRPC and the CLI, checked against checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import redis

from agentgw.v1 import audit_pb2
from clients.cli import main
from clients.wire import entry_from_proto
from gateway.domain.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from gateway.domain.audit.entry import canonical_bytes
from gateway.domain.audit.keys import KeySet, Signer
from gateway.domain.audit.merkle import (
    EMPTY_ROOT,
    leaf_hash_of,
    verify_consistency,
    verify_inclusion,
)
from tests.harness import RunningGateway, token_for

AUDITOR = "auditor-1"


def checkpoint(gw: RunningGateway, keys: KeySet) -> Checkpoint:
    note = gw.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=gw.md(AUDITOR)).note
    return open_checkpoint(note, keys)


def leaf_hashes(gw: RunningGateway) -> list[bytes]:
    stream = gw.audit.ReadEntries(audit_pb2.ReadEntriesRequest(), metadata=gw.md(AUDITOR))
    return [leaf_hash_of(canonical_bytes(entry_from_proto(e))) for e in stream]


def submit(gw: RunningGateway, count: int, start: int = 0) -> None:
    agent = gw.agent()
    for i in range(start, start + count):
        agent.submit("search", session_id=f"s{i % 5}", parameters={"i": i})


def inclusion(gw: RunningGateway, seq: int, tree_size: int) -> audit_pb2.InclusionProof:
    return gw.audit.GetInclusionProof(
        audit_pb2.GetInclusionProofRequest(seq=seq, tree_size=tree_size), metadata=gw.md(AUDITOR)
    )


def consistency(gw: RunningGateway, old: int, new: int) -> audit_pb2.ConsistencyProof:
    return gw.audit.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(old_size=old, new_size=new), metadata=gw.md(AUDITOR)
    )


def hashes(proof: audit_pb2.InclusionProof | audit_pb2.ConsistencyProof) -> list[bytes]:
    return [bytes.fromhex(h) for h in proof.hashes]


@pytest.fixture
def log_with_checkpoints(gw: RunningGateway) -> tuple[KeySet, list[Checkpoint], list[bytes]]:
    """A 40-entry log and signed checkpoints taken at sizes 0, 1, 7, 16, 25 and 40."""
    keys = gw.key_set()
    checkpoints = [checkpoint(gw, keys)]
    done = 0
    for size in (1, 7, 16, 25, 40):
        submit(gw, size - done, done)
        done = size
        checkpoints.append(checkpoint(gw, keys))
    assert [cp.size for cp in checkpoints] == [0, 1, 7, 16, 25, 40]
    return keys, checkpoints, leaf_hashes(gw)


def test_every_entry_proves_inclusion_in_every_checkpoint_that_covers_it(
    gw: RunningGateway, log_with_checkpoints: tuple[KeySet, list[Checkpoint], list[bytes]]
) -> None:
    _, checkpoints, leaves = log_with_checkpoints
    for cp in checkpoints[1:]:
        for seq in range(1, cp.size + 1):
            proof = inclusion(gw, seq, cp.size)
            assert (proof.seq, proof.leaf_index, proof.tree_size) == (seq, seq - 1, cp.size)
            assert proof.leaf_hash == leaves[seq - 1].hex()
            assert proof.root_hash == cp.root_hash.hex()
            assert verify_inclusion(
                leaves[seq - 1], seq - 1, cp.size, hashes(proof), cp.root_hash
            ), (seq, cp.size)


def test_tree_size_zero_means_the_current_head(
    gw: RunningGateway, log_with_checkpoints: tuple[KeySet, list[Checkpoint], list[bytes]]
) -> None:
    _, checkpoints, leaves = log_with_checkpoints
    head = checkpoints[-1]
    proof = inclusion(gw, 13, 0)
    assert proof.tree_size == head.size
    assert verify_inclusion(leaves[12], 12, head.size, hashes(proof), head.root_hash)
    latest = consistency(gw, 16, 0)
    assert latest.new_size == head.size and latest.new_root == head.root_hash.hex()


def test_every_pair_of_checkpoints_is_consistent(
    gw: RunningGateway, log_with_checkpoints: tuple[KeySet, list[Checkpoint], list[bytes]]
) -> None:
    _, checkpoints, _ = log_with_checkpoints
    assert checkpoints[0].root_hash == EMPTY_ROOT
    for old in checkpoints:
        for new in checkpoints:
            if old.size > new.size or new.size == 0:  # new_size 0 asks for the head
                continue
            proof = consistency(gw, old.size, new.size)
            assert (proof.old_size, proof.new_size) == (old.size, new.size)
            assert (proof.old_root, proof.new_root) == (old.root_hash.hex(), new.root_hash.hex())
            assert verify_consistency(
                old.size, new.size, old.root_hash, new.root_hash, hashes(proof)
            ), (old.size, new.size)


def test_a_flipped_proof_hash_fails_verification(
    gw: RunningGateway, log_with_checkpoints: tuple[KeySet, list[Checkpoint], list[bytes]]
) -> None:
    _, checkpoints, leaves = log_with_checkpoints
    old, new = checkpoints[3], checkpoints[5]  # sizes 16 and 40
    path = hashes(inclusion(gw, 21, new.size))
    steps = hashes(consistency(gw, 25, new.size))
    assert path and steps
    for i in range(len(path)):
        bad = list(path)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_inclusion(leaves[20], 20, new.size, bad, new.root_hash)
    for i in range(len(steps)):
        bad = list(steps)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_consistency(25, new.size, checkpoints[4].root_hash, new.root_hash, bad)
    # The right proof for another leaf, or against another root, does not verify either.
    assert not verify_inclusion(leaves[19], 20, new.size, path, new.root_hash)
    steps = hashes(consistency(gw, old.size, new.size))
    assert not verify_consistency(old.size, new.size, new.root_hash, new.root_hash, steps)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda gw: inclusion(gw, 0, 0), "seq"),
        (lambda gw: inclusion(gw, 3, 2), "seq"),
        (lambda gw: inclusion(gw, 4, 0), "seq"),
        (lambda gw: inclusion(gw, 1, 4), "tree_size"),
        (lambda gw: consistency(gw, 3, 2), "old_size"),
        (lambda gw: consistency(gw, 4, 0), "old_size"),
        (lambda gw: consistency(gw, 1, 4), "new_size"),
    ],
)
def test_invalid_arguments_name_the_field(gw: RunningGateway, call, field: str) -> None:  # type: ignore[no-untyped-def]
    submit(gw, 3)
    with pytest.raises(grpc.RpcError) as e:
        call(gw)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(f"{field}:"), e.value.details()


def test_only_auditors_get_proofs(gw: RunningGateway) -> None:
    submit(gw, 2)
    for who in ("agent-1", "approver-1"):
        with pytest.raises(grpc.RpcError) as e:
            gw.audit.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(seq=1), metadata=gw.md(who)
            )
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            gw.audit.GetConsistencyProof(
                audit_pb2.GetConsistencyProofRequest(old_size=1), metadata=gw.md(who)
            )
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def tree_key(key_prefix: str) -> str:
    return f"{key_prefix}:{{audit}}:tree"


def test_tree_nodes_land_with_their_entries_and_not_without(
    gw: RunningGateway, redis_url: str, key_prefix: str
) -> None:
    submit(gw, 11)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stored = raw.hgetall(tree_key(key_prefix))
        # Every perfect subtree of an 11-leaf tree: 11 leaves + 5 + 2 + 1 inner nodes.
        assert len(stored) == 2 * 11 - (11).bit_count() == 19
        leaves = leaf_hashes(gw)
        assert [stored[f"0:{i}"] for i in range(11)] == [leaf.hex() for leaf in leaves]
        head_key = f"{key_prefix}:{{audit}}:head"
        saved = raw.hgetall(head_key)
        raw.delete(head_key)
        raw.set(head_key, "not a hash")  # the append script now fails inside Redis
        with pytest.raises(grpc.RpcError) as e:
            gw.agent().submit("search", session_id="s")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raw.hgetall(tree_key(key_prefix)) == stored
        raw.delete(head_key)
        raw.hset(head_key, mapping=saved)
        submit(gw, 1)
        assert raw.hlen(tree_key(key_prefix)) == 2 * 12 - (12).bit_count()
    finally:
        raw.close()


def test_a_missing_tree_node_is_failed_precondition(
    gw: RunningGateway, redis_url: str, key_prefix: str
) -> None:
    submit(gw, 6)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        raw.hdel(tree_key(key_prefix), "1:2")  # leaves 4..5: a sibling of leaves 0..3
    finally:
        raw.close()
    with pytest.raises(grpc.RpcError) as e:
        inclusion(gw, 1, 6)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "1:2" in e.value.details()


def test_proofs_hold_when_two_replicas_append_concurrently(
    make_gateway, redis_url: str, key_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    one, two = make_gateway(), make_gateway()

    def burst(n: int) -> int:
        gw = one if n % 2 else two
        return gw.agent().submit("search", session_id=f"s{n % 3}", parameters={"n": n}).audit_seq

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(burst, range(60))) == list(range(1, 61))
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        # Batches rebuilt after losing a race leave no stray nodes behind.
        assert raw.hlen(tree_key(key_prefix)) == 2 * 60 - (60).bit_count()
    finally:
        raw.close()
    keys = one.key_set()
    cp = checkpoint(two, keys)
    leaves = leaf_hashes(one)
    for seq in range(1, 61):
        proof = hashes(inclusion(one if seq % 2 else two, seq, cp.size))
        assert verify_inclusion(leaves[seq - 1], seq - 1, cp.size, proof, cp.root_hash)


# --- the CLI ----------------------------------------------------------------------------


def cli(gw: RunningGateway, *args: str) -> int:
    return main([*args, "--server", gw.target, "--token", token_for(AUDITOR)])


@pytest.fixture
def saved(gw: RunningGateway, tmp_path: Path) -> dict[str, Path]:
    """Key set, checkpoints at sizes 9 and 23 and an export, saved with the CLI."""
    paths = {name: tmp_path / name for name in ("keys", "cp9", "cp23", "export")}
    assert cli(gw, "audit", "keys", "--out", str(paths["keys"])) == 0
    submit(gw, 9)
    assert cli(gw, "audit", "checkpoint", "--out", str(paths["cp9"])) == 0
    submit(gw, 14, 9)
    assert cli(gw, "audit", "checkpoint", "--out", str(paths["cp23"])) == 0
    submit(gw, 3, 23)  # the log grows past the newest checkpoint
    assert cli(gw, "audit", "export", "--out", str(paths["export"])) == 0
    return paths


def test_cli_proves_inclusion_from_an_export_a_line_or_the_server(
    gw: RunningGateway, saved: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["audit", "prove-inclusion", "--keys", str(saved["keys"])]
    for seq, cp in ((1, "cp9"), (9, "cp9"), (5, "cp23"), (23, "cp23")):
        with_cp = [*base, "--seq", str(seq), "--checkpoint", str(saved[cp])]
        assert cli(gw, *with_cp, "--export", str(saved["export"])) == 0
        assert cli(gw, *with_cp, "--entry-line", f"{saved['export']}:{seq}") == 0
        assert cli(gw, *with_cp) == 0
    out = capsys.readouterr().out
    assert out.count("OK: ") == 12 and "FAILED" not in out
    assert f"seq 23 ({saved['export']}:23) is included in the checkpoint of size 23" in out


def test_cli_inclusion_fails_for_an_edited_entry(
    gw: RunningGateway, saved: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = saved["export"].read_text().splitlines(keepends=True)
    entry = json.loads(lines[6])
    assert entry["outcome"] == "allow"
    # Still a well-formed canonical line, but not the logged entry 7.
    lines[6] = lines[6].replace('"outcome":"allow"', '"outcome":"deny"')
    saved["export"].write_text("".join(lines))
    code = cli(
        gw,
        *("audit", "prove-inclusion", "--seq", "7", "--keys", str(saved["keys"])),
        *("--checkpoint", str(saved["cp23"]), "--export", str(saved["export"])),
    )
    assert code == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED inclusion: the proof for seq 7")
    assert "not the logged entry" in out


def test_cli_inclusion_refuses_bad_input_and_bad_checkpoints(
    gw: RunningGateway, saved: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["audit", "prove-inclusion", "--keys", str(saved["keys"])]
    cp9 = ["--checkpoint", str(saved["cp9"])]
    assert cli(gw, *base, *cp9, "--seq", "10") == 2  # beyond the checkpoint
    assert cli(gw, *base, *cp9, "--seq", "0") == 2
    assert cli(gw, *base, *cp9, "--seq", "3", "--entry-line", f"{saved['export']}:4") == 2
    assert cli(gw, *base, *cp9, "--seq", "3", "--entry-line", str(saved["export"])) == 2
    assert cli(gw, *base, *cp9, "--seq", "3", "--export", str(saved["keys"])) == 2
    with pytest.raises(SystemExit) as e:  # argparse: the two sources exclude each other
        cli(gw, *base, *cp9, "--seq", "3", "--export", "x", "--entry-line", "x:1")
    assert e.value.code == 2
    assert "FAILED" not in capsys.readouterr().out
    forged = saved["cp9"].read_text().replace("\n9\n", "\n8\n", 1)
    saved["cp9"].write_text(forged)
    assert cli(gw, *base, *cp9, "--seq", "3") == 1
    assert capsys.readouterr().out.startswith("FAILED checkpoint_signature: --checkpoint")


def test_cli_proves_consistency_between_saved_checkpoints(
    gw: RunningGateway, saved: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ["--keys", str(saved["keys"])]
    old, new = ["--old", str(saved["cp9"])], ["--new", str(saved["cp23"])]
    assert cli(gw, "audit", "prove-consistency", *old, *new, *keys) == 0
    assert "OK: the checkpoint of size 23" in capsys.readouterr().out
    same = ["--new", str(saved["cp9"])]
    assert cli(gw, "audit", "prove-consistency", *old, *same, *keys) == 0
    swapped = ["--old", str(saved["cp23"]), "--new", str(saved["cp9"])]
    assert cli(gw, "audit", "prove-consistency", *swapped, *keys) == 2


def test_cli_consistency_fails_for_a_forked_checkpoint(
    gw: RunningGateway, saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A validly signed checkpoint of a different history (the signing key leaked, or
    # the log was rewritten): right size, wrong root.
    signer = Signer.load(gw.config.signing_key_path)
    real = open_checkpoint(saved["cp23"].read_text(), KeySet.load(saved["keys"]))
    for size in (23, 17):
        fork = Checkpoint(real.origin, size, b"\x07" * 32, real.head_hash, real.timestamp)
        path = tmp_path / f"fork{size}"
        path.write_text(sign_checkpoint(fork, signer))
        code = cli(
            gw,
            *("audit", "prove-consistency", "--keys", str(saved["keys"])),
            *("--old", str(saved["cp9"]), "--new", str(path)),
        )
        assert code == 1
        out = capsys.readouterr().out
        assert out.startswith("FAILED consistency: ")
        assert ("forked" in out) if size == 23 else ("does not show" in out)


def test_cli_prove_commands_run_as_subprocesses(gw: RunningGateway, saved: dict[str, Path]) -> None:
    env = {**os.environ, "AGENTGW_SERVER": gw.target, "AGENTGW_TOKEN": token_for(AUDITOR)}
    base = [sys.executable, "-m", "clients.cli", "audit"]
    inclusion_run = subprocess.run(
        [
            *(*base, "prove-inclusion", "--seq", "4", "--keys", str(saved["keys"])),
            *("--checkpoint", str(saved["cp9"]), "--export", str(saved["export"])),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert inclusion_run.returncode == 0, inclusion_run.stderr
    assert inclusion_run.stdout.startswith("OK: seq 4")
    consistency_run = subprocess.run(
        [
            *(*base, "prove-consistency", "--keys", str(saved["keys"])),
            *("--old", str(saved["cp9"]), "--new", str(saved["cp23"])),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert consistency_run.returncode == 0, consistency_run.stderr
    assert consistency_run.stdout.startswith("OK: the checkpoint of size 23")

"""`agentgw audit verify` streams: its peak memory does not grow with the export."""

from __future__ import annotations

import contextlib
import io
import tracemalloc
from pathlib import Path

from clients.cli import EXIT_OK, main
from gateway.domain.audit.entry import GENESIS_HASH, EntryDraft, build_entry
from gateway.domain.audit.keys import KeySet, Signer
from gateway.domain.audit.verify import verify_export

SIGNER = Signer.from_seed(b"\x03" * 32)
KEYS = KeySet.for_signer("agentgw.example/audit", SIGNER)


def write_export(path: Path, count: int) -> None:
    prev = GENESIS_HASH
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for seq in range(1, count + 1):
            draft = EntryDraft(
                timestamp=f"2026-11-25T05:00:00.{seq:06d}Z",
                event_type="action_decided",
                actor="agent-1",
                actor_type="agent",
                action_id=f"act-{seq:06d}",
                action_type="search",
                resource=f"doc:{seq}",
                details={"parameters": {"q": "quarterly figures " * 20, "page": seq}},
                outcome="allow",
            )
            entry = build_entry(draft, seq, prev, SIGNER)
            out.write(entry.to_json_line() + "\n")
            prev = entry.entry_hash


def peak_bytes_of_verify(export: Path, keys: Path) -> int:
    argv = ["audit", "verify", str(export), "--keys", str(keys), "--workers", "1"]
    out = io.StringIO()
    tracemalloc.start()
    try:
        with contextlib.redirect_stdout(out):
            code = main(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == EXIT_OK, out.getvalue()
    return peak


def test_verify_memory_does_not_grow_with_the_export(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(KEYS.to_json(), encoding="utf-8")
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_export(small, 200)
    write_export(large, 2000)
    peak_bytes_of_verify(small, keys)  # warm caches and lazy imports first
    small_peak = peak_bytes_of_verify(small, keys)
    large_peak = peak_bytes_of_verify(large, keys)
    # Keeping the lines would cost ~1800 x ~900 bytes more for the large export; what
    # streaming holds is one line at a time and an O(log n) Merkle frontier.
    assert large.stat().st_size - small.stat().st_size > 1_500_000
    assert large_peak < small_peak + 200_000, (small_peak, large_peak)


def peak_bytes_of_verify_export(export: Path) -> int:
    tracemalloc.start()
    try:
        report = verify_export(export, KEYS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok, report.failure
    return peak


def test_verifying_a_file_does_not_hold_more_of_it_as_it_grows(tmp_path: Path) -> None:
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_export(small, 200)
    write_export(large, 2000)
    peak_bytes_of_verify_export(small)  # warm caches and lazy imports first
    small_peak = peak_bytes_of_verify_export(small)
    large_peak = peak_bytes_of_verify_export(large)
    # Lines are read one at a time; a run of sound lines keeps 128 bytes a line, up to
    # RUN_LIMIT lines, and a batch of lines waits for its signature checks.
    assert large_peak < small_peak + 200_000, (small_peak, large_peak)

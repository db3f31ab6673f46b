"""Offline verify speed against raw Ed25519 verify speed, on this machine, in one run.

Generates an export of `--entries` signed entries with realistic decision details
(as the gateway writes them) into a temporary file, measures raw
`Ed25519PublicKey.verify` per core in a tight loop (one process per core at once for
the multi-core figure), then runs `agentgw audit verify` (the CLI's `run_audit_verify`,
in this process) with 1 and N workers. Prints verifies/s and entries/s, and the ratio
the design target (docs/design.md) is about: >= 85 % of raw x cores. It measures; it
never asserts. `measure` is what `bench/bench.py` calls for its `verify` figures. See
docs/benchmark.md, "Verify".

    .venv/bin/python bench/verify_bench.py [--entries 100000] [--workers N] [--repeat K]
                                           [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from clients.cli import main as cli_main  # noqa: E402
from gateway.domain.audit.entry import (  # noqa: E402
    GENESIS_HASH,
    EntryDraft,
    build_entry,
    format_timestamp,
)
from gateway.domain.audit.keys import KeySet, Signer  # noqa: E402

ORIGIN = "bench.agentgw.example/audit"
DEFAULT_SECONDS = 2.0
ACTION_TYPES = ("search", "read_file", "list_directory", "fetch_url", "send_email", "delete_file")


def realistic_draft(index: int) -> EntryDraft:
    """A decision entry shaped like the one `decision_entry` in
    gateway/services/decisions.py builds."""
    action_type = ACTION_TYPES[index % len(ACTION_TYPES)]
    held = action_type in ("send_email", "delete_file")
    details = {
        "session_id": f"session-{index // 20:06d}",
        "parameters": {
            "q": f"quarterly report {index} for the caf\u00e9 team",
            "path": f"/srv/data/projects/{index % 97}/notes-{index}.md",
            "limit": 10 + index % 40,
            "score": round(0.5 + (index % 1000) / 1999, 6),
            "api_token": "[REDACTED]",
        },
        "reasoning": "The user asked for the latest figures; searching the internal index first.",
        "labels": {"team": "finance", "env": "prod"},
        "reason": "held: suspicious_action" if held else "allowed by default",
        "findings": (
            [
                {
                    "type": "suspicious_action",
                    "severity": 0.7,
                    "description": f"{action_type} is a sensitive action type",
                    "recommended_action": "require_approval",
                }
            ]
            if held
            else []
        ),
        "matched_rules": ["default-allow"] if not held else [],
        "hold_id": f"hold_{index:024x}" if held else "",
        "hold_expires_at": format_timestamp(1_790_000_900 + index) if held else "",
        "paused_session": False,
    }
    return EntryDraft(
        timestamp=format_timestamp(1_790_000_000 + index * 0.013),
        event_type="action_decided",
        actor=f"agent-{index % 7}",
        actor_type="agent",
        action_id=f"act-{index:08d}",
        action_type=action_type,
        resource=f"https://intranet.example/docs/{index}",
        details=details,
        outcome="hold" if held else "allow",
    )


def write_export(path: Path, count: int, signer: Signer) -> None:
    prev = GENESIS_HASH
    with path.open("w", encoding="utf-8") as out:
        for seq in range(1, count + 1):
            entry = build_entry(realistic_draft(seq), seq, prev, signer)
            out.write(entry.to_json_line() + "\n")
            prev = entry.entry_hash


def _raw_verify_loop(seconds: float) -> tuple[int, float]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    message = b"agentgw/audit/v1/signature\x00" + os.urandom(32)
    signature = private.sign(message)
    verify = public.verify
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            verify(signature, message)
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count, now - start


def raw_verifies_per_second(processes: int, seconds: float) -> float:
    """Total raw verifies/s with `processes` processes verifying at the same time."""
    if processes == 1:
        count, elapsed = _raw_verify_loop(seconds)
        return count / elapsed
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_raw_verify_loop, [seconds] * processes)
    return sum(count / elapsed for count, elapsed in results)


def cli_verify(export: Path, keys: Path, workers: int) -> tuple[float, dict[str, Any]]:
    output = io.StringIO()
    argv = ["audit", "verify", str(export), "--keys", str(keys), "--workers", str(workers)]
    start = time.perf_counter()
    with contextlib.redirect_stdout(output):
        code = cli_main([*argv, "--json"])
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = json.loads(output.getvalue())
    if code != 0 or not result.get("ok"):
        raise SystemExit(f"verify failed: {result}")
    return elapsed, result


def measure(
    entries: int,
    workers: int,
    *,
    seconds: float = DEFAULT_SECONDS,
    repeat: int = 1,
    export: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Writes (or reuses) an export, measures raw Ed25519 and `audit verify`, returns the
    figures (best of `repeat` for each). `bench/bench.py` calls this too."""
    cores = max(1, workers)
    with tempfile.TemporaryDirectory(prefix="agentgw-verify-bench-") as tmp:
        signer = Signer.from_seed(b"\x07" * 32)
        keys = Path(tmp) / "keys.json"
        keys.write_text(KeySet.for_signer(ORIGIN, signer).to_json(), encoding="utf-8")
        export = export or Path(tmp) / "audit.jsonl"
        if not export.exists():
            progress(f"generating {entries} entries ...")
            write_export(export, entries, signer)
        size = export.stat().st_size
        with export.open("rb") as lines:
            count = sum(1 for _ in lines)

        # Best of `repeat` for every figure alike: on a shared machine the best run is
        # the one least disturbed by other work.
        raw_one = raw_all = 0.0
        one_s = all_s = float("inf")
        for run in range(1, repeat + 1):
            progress(f"run {run}: raw Ed25519 verify ...")
            raw_one = max(raw_one, raw_verifies_per_second(1, seconds))
            if cores > 1:
                raw_all = max(raw_all, raw_verifies_per_second(cores, seconds))
            progress(f"run {run}: agentgw audit verify --workers 1 ...")
            one_s = min(one_s, cli_verify(export, keys, 1)[0])
            if cores > 1:
                progress(f"run {run}: agentgw audit verify --workers {cores} ...")
                all_s = min(all_s, cli_verify(export, keys, cores)[0])
        if cores == 1:
            raw_all, all_s = raw_one, one_s

    one_rate, all_rate = count / one_s, count / all_s
    return {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "entries": count,
        "export_bytes": size,
        "workers": cores,
        "repeat": repeat,
        "raw_verifies_per_s_one_core": round(raw_one),
        "raw_verifies_per_s_times_cores": round(raw_one * cores),
        "raw_verifies_per_s_all_cores_measured": round(raw_all),
        "verify_entries_per_s_1_worker": round(one_rate),
        "verify_entries_per_s_n_workers": round(all_rate),
        "ratio_1_worker_vs_raw_one_core": round(one_rate / raw_one, 3),
        "ratio_n_workers_vs_raw_times_cores": round(all_rate / (raw_one * cores), 3),
        "ratio_n_workers_vs_raw_all_cores_measured": round(all_rate / raw_all, 3),
    }


def format_figures(figures: dict[str, Any]) -> str:
    count, cores = figures["entries"], figures["workers"]
    raw_one = figures["raw_verifies_per_s_one_core"]
    raw_all = figures["raw_verifies_per_s_all_cores_measured"]
    one_rate = figures["verify_entries_per_s_1_worker"]
    all_rate = figures["verify_entries_per_s_n_workers"]
    return "\n".join(
        [
            f"export: {count} entries, {figures['export_bytes'] / count:.0f} bytes/entry",
            f"raw Ed25519 verify, 1 core:           {raw_one:10.0f} /s",
            f"raw Ed25519 verify x {cores} cores:         {raw_one * cores:10.0f} /s",
            f"raw Ed25519 verify, {cores} processes:      {raw_all:10.0f} /s (measured)",
            f"audit verify, 1 worker:               {one_rate:10.0f} entries/s",
            f"audit verify, {cores} workers:              {all_rate:10.0f} entries/s",
            f"1 worker / raw 1 core:                {one_rate / raw_one:10.1%}",
            f"{cores} workers / (raw 1 core x {cores}):       {all_rate / (raw_one * cores):10.1%}",
            f"{cores} workers / raw {cores} processes:        {all_rate / raw_all:10.1%}",
            "target: >= 85 % of raw x cores",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help="raw verify loop length"
    )
    parser.add_argument("--repeat", type=int, default=1, help="report the best of N runs")
    parser.add_argument("--export", type=Path, help="reuse (or keep) this export file")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    figures = measure(
        args.entries,
        args.workers,
        seconds=args.seconds,
        repeat=args.repeat,
        export=args.export,
        progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(format_figures(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

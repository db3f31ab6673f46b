"""Offline verify speed against raw Ed25519 verify speed, on this machine, in one run.

Generates an export of `--entries` signed entries with realistic decision details
(as the gateway writes them) into a temporary file, measures raw
`Ed25519PublicKey.verify` per core in a tight loop (one process per core at once for
the multi-core figure), then runs `agentgw audit verify` (the CLI's `run_audit_verify`,
in this process) with 1 and N workers. Prints verifies/s and entries/s, and the ratio
the design target (docs/design.md) is about: >= 85 % of raw x cores. With `--via file`
it calls verify_export on the export's path instead of the CLI (whose workers then
read their own byte ranges of the file). It measures; it never asserts. `measure` is
what `bench/bench.py` calls for its `verify` figures. See docs/benchmark.md, "Verify".

    .venv/bin/python bench/verify_bench.py [--entries 100000] [--workers N] [--repeat K]
                                           [--via cli|file] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
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
from gateway.domain.audit.verify import verify_export  # noqa: E402

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


def _raw_verify_loop(seconds: float) -> tuple[int, float, float]:
    """(verifies, wall seconds, CPU seconds) of a tight loop of `seconds`."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    message = b"agentgw/audit/v1/signature\x00" + os.urandom(32)
    signature = private.sign(message)
    verify = public.verify
    count = 0
    start, cpu = time.perf_counter(), time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(200):
            verify(signature, message)
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count, now - start, time.process_time() - cpu


def raw_verifies_per_second(processes: int, seconds: float) -> tuple[float, float]:
    """Total raw verifies/s with `processes` processes verifying at the same time, and
    the CPU microseconds one verify takes."""
    if processes == 1:
        results = [_raw_verify_loop(seconds)]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_raw_verify_loop, [seconds] * processes)
    rate = sum(count / elapsed for count, elapsed, _ in results)
    cpu = sum(cpu for _, _, cpu in results) / sum(count for count, _, _ in results)
    return rate, cpu * 1e6


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (pool workers)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cli_verify(export: Path, keys: Path, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (workers included) of `agentgw audit verify EXPORT --keys
    KEYS --workers N --json`, run in this process."""
    output = io.StringIO()
    argv = ["audit", "verify", str(export), "--keys", str(keys), "--workers", str(workers)]
    start, cpu = time.perf_counter(), _cpu_seconds()
    with contextlib.redirect_stdout(output):
        code = cli_main([*argv, "--json"])
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    result: dict[str, Any] = json.loads(output.getvalue())
    if code != 0 or not result.get("ok"):
        raise SystemExit(f"verify failed: {result}")
    return elapsed, cpu


def file_verify(export: Path, keys: Path, workers: int) -> tuple[float, float]:
    """The same for `verify_export` called as the CLI calls it, but on the export's path
    instead of its lines: the workers read their own byte ranges."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    key_set = KeySet.load(keys)
    forkable = sys.platform == "linux" and threading.active_count() == 1
    report = verify_export(
        export, key_set, None, workers=workers, start_method="fork" if forkable else "spawn"
    )
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if not report.ok:
        raise SystemExit(f"verify failed: {report.failure}")
    return elapsed, cpu


VERIFIERS: dict[str, Callable[[Path, Path, int], tuple[float, float]]] = {
    "cli": cli_verify,
    "file": file_verify,
}


def measure(
    entries: int,
    workers: int,
    *,
    seconds: float = DEFAULT_SECONDS,
    repeat: int = 1,
    export: Path | None = None,
    via: str = "cli",
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Writes (or reuses) an export, measures raw Ed25519 and `audit verify`, returns the
    figures. `bench/bench.py` calls this too.

    Each of the `repeat` runs measures raw Ed25519 just before each verify, and its
    ratios compare those: on a shared machine figures taken seconds apart move less
    together than figures taken minutes apart. Every figure is the median of the runs;
    `*_range` gives their lowest and highest ratio, `runs` every run.
    """
    cores = max(1, workers)
    verify = VERIFIERS[via]
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

        runs = []
        for run in range(1, repeat + 1):
            progress(f"run {run}: raw Ed25519 verify, then audit verify --workers 1 ...")
            raw_one, raw_cpu = raw_verifies_per_second(1, seconds)
            one_s, one_cpu = verify(export, keys, 1)
            raw_all, all_s, all_cpu = raw_one, one_s, one_cpu
            if cores > 1:
                progress(f"run {run}: raw Ed25519 x {cores}, then audit verify --workers {cores}")
                raw_all = raw_verifies_per_second(cores, seconds)[0]
                all_s, all_cpu = verify(export, keys, cores)
            one_rate, all_rate = count / one_s, count / all_s
            runs.append(
                {
                    "raw_one_core": round(raw_one),
                    "raw_all_cores": round(raw_all),
                    "verify_1_worker": round(one_rate),
                    "verify_n_workers": round(all_rate),
                    "ratio_1_worker": round(one_rate / raw_one, 3),
                    "ratio_n_workers": round(all_rate / (raw_one * cores), 3),
                    "ratio_n_workers_measured": round(all_rate / raw_all, 3),
                    # CPU per entry against CPU per raw verify: what the ratios would
                    # be on idle cores, were the workers never idle.
                    "raw_cpu_us": round(raw_cpu, 1),
                    "cpu_us_1_worker": round(one_cpu / count * 1e6, 1),
                    "cpu_us_n_workers": round(all_cpu / count * 1e6, 1),
                    "cpu_ratio_1_worker": round(raw_cpu * count / (one_cpu * 1e6), 3),
                    "cpu_ratio_n_workers": round(raw_cpu * count / (all_cpu * 1e6), 3),
                }
            )

    def median(key: str) -> float:
        return float(statistics.median(run[key] for run in runs))

    def spread(key: str) -> list[float]:
        return [min(run[key] for run in runs), max(run[key] for run in runs)]

    raw_one = median("raw_one_core")
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
        "via": via,
        "raw_verifies_per_s_one_core": round(raw_one),
        "raw_verifies_per_s_times_cores": round(raw_one * cores),
        "raw_verifies_per_s_all_cores_measured": round(median("raw_all_cores")),
        "verify_entries_per_s_1_worker": round(median("verify_1_worker")),
        "verify_entries_per_s_n_workers": round(median("verify_n_workers")),
        "ratio_1_worker_vs_raw_one_core": median("ratio_1_worker"),
        "ratio_n_workers_vs_raw_times_cores": median("ratio_n_workers"),
        "ratio_n_workers_vs_raw_all_cores_measured": median("ratio_n_workers_measured"),
        "ratio_1_worker_range": spread("ratio_1_worker"),
        "ratio_n_workers_range": spread("ratio_n_workers"),
        "ratio_n_workers_measured_range": spread("ratio_n_workers_measured"),
        "raw_cpu_us_per_verify": median("raw_cpu_us"),
        "cpu_us_per_entry_1_worker": median("cpu_us_1_worker"),
        "cpu_us_per_entry_n_workers": median("cpu_us_n_workers"),
        "cpu_ratio_1_worker": median("cpu_ratio_1_worker"),
        "cpu_ratio_n_workers": median("cpu_ratio_n_workers"),
        "cpu_ratio_1_worker_range": spread("cpu_ratio_1_worker"),
        "cpu_ratio_n_workers_range": spread("cpu_ratio_n_workers"),
        "runs": runs,
    }


def format_figures(figures: dict[str, Any]) -> str:
    count, cores = figures["entries"], figures["workers"]
    raw_one = figures["raw_verifies_per_s_one_core"]
    raw_all = figures["raw_verifies_per_s_all_cores_measured"]
    one_rate = figures["verify_entries_per_s_1_worker"]
    all_rate = figures["verify_entries_per_s_n_workers"]
    runs = figures["repeat"]

    def ratio(key: str) -> str:
        low, high = figures[f"{key}_range"]
        spread = f" (range {low:.1%}-{high:.1%})" if runs > 1 else ""
        return f"{figures[_RATIO_KEYS[key]]:10.1%}{spread}"

    how = "the CLI, given lines" if figures["via"] == "cli" else "verify_export, given the file"
    median = f", median of {runs} runs" if runs > 1 else ""
    return "\n".join(
        [
            f"export: {count} entries, {figures['export_bytes'] / count:.0f} bytes/entry; "
            f"verify through {how}{median}",
            f"raw Ed25519 verify, 1 core:           {raw_one:10.0f} /s",
            f"raw Ed25519 verify x {cores} cores:         {raw_one * cores:10.0f} /s",
            f"raw Ed25519 verify, {cores} processes:      {raw_all:10.0f} /s (measured)",
            f"audit verify, 1 worker:               {one_rate:10.0f} entries/s",
            f"audit verify, {cores} workers:              {all_rate:10.0f} entries/s",
            f"1 worker / raw 1 core:                {ratio('ratio_1_worker')}",
            f"{cores} workers / (raw 1 core x {cores}):       {ratio('ratio_n_workers')}",
            f"{cores} workers / raw {cores} processes:        {ratio('ratio_n_workers_measured')}",
            f"CPU us: raw verify {figures['raw_cpu_us_per_verify']:.1f}; audit verify per entry "
            f"{figures['cpu_us_per_entry_1_worker']:.1f} (1 worker), "
            f"{figures['cpu_us_per_entry_n_workers']:.1f} ({cores} workers, all processes)",
            f"raw CPU / audit verify CPU, 1 worker:  {ratio('cpu_ratio_1_worker')}",
            f"raw CPU / audit verify CPU, {cores} workers: {ratio('cpu_ratio_n_workers')}",
            "target: >= 85 % of raw x cores",
        ]
    )


_RATIO_KEYS = {
    "ratio_1_worker": "ratio_1_worker_vs_raw_one_core",
    "ratio_n_workers": "ratio_n_workers_vs_raw_times_cores",
    "ratio_n_workers_measured": "ratio_n_workers_vs_raw_all_cores_measured",
    "cpu_ratio_1_worker": "cpu_ratio_1_worker",
    "cpu_ratio_n_workers": "cpu_ratio_n_workers",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help="raw verify loop length"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run K times; report medians and ranges"
    )
    parser.add_argument(
        "--via",
        choices=sorted(VERIFIERS),
        default="cli",
        help="cli: `agentgw audit verify` (its lines); file: verify_export on the path",
    )
    parser.add_argument("--export", type=Path, help="reuse (or keep) this export file")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    figures = measure(
        args.entries,
        args.workers,
        seconds=args.seconds,
        repeat=args.repeat,
        export=args.export,
        via=args.via,
        progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(format_figures(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""The benchmark runs end to end: both servers start, both are measured, both stop.

No timing assertions: performance is measured by `make bench`, never by tests.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"
CPU_KEYS = {"gateway", "redis", "echo", "load"}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agentgw_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_benchmark_alternates_echo_and_gateway_rounds(bench: ModuleType) -> None:
    settings = bench.Settings(concurrencies=(1, 4), requests=20, warmup=5, rounds=2)
    report = asyncio.run(bench.run_benchmark(settings))

    # A B A B within each concurrency, in the order measured.
    order = [(r.concurrency, r.round, r.target) for r in report.results]
    assert order == [(c, n, t) for c in (1, 4) for n in (1, 2) for t in ("echo", "gateway")]
    for result in report.results:
        assert result.requests == 20
        assert result.errors == {}
        assert sum(result.verdicts.values()) == 20
        assert result.decisions_per_s > 0
        assert 0 < result.p50_ms <= result.p99_ms
        if sys.platform == "linux":
            assert set(result.cpu_seconds) == CPU_KEYS
            assert all(v is not None and v >= 0 for v in result.cpu_seconds.values())
    # The default policy holds the suspicious part of the mix; echo allows everything.
    gateway_c1 = [r for r in report.results if r.target == "gateway" and r.concurrency == 1]
    assert all(r.verdicts.get("HOLD", 0) > 0 for r in gateway_c1)
    assert all(r.verdicts == {"ALLOW": 20} for r in report.results if r.target == "echo")

    assert [s.concurrency for s in report.summaries] == [1, 4]
    for summary in report.summaries:
        assert summary.rounds == 2 and len(summary.ratios) == 2
        assert summary.ratio_min <= summary.ratio <= summary.ratio_max
        assert min(summary.ratios) == summary.ratio_min
        assert set(summary.cpu_us_per_request) >= CPU_KEYS

    text = bench.format_report(report)
    assert "echo" in text and "gateway" in text and "median of 2" in text


@pytest.mark.timeout(90)
def test_benchmark_json_flag_ends_stdout_with_the_summary(tmp_path: Path) -> None:
    full = tmp_path / "bench.json"
    command = [sys.executable, str(BENCH), "--requests", "10", "--warmup", "2"]
    command += ["--rounds", "3", "--concurrency", "1", "2", "--json", "--json-file", str(full)]
    command += ["--verify-entries", "200", "--verify-seconds", "0.05"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr

    summary = json.loads(done.stdout.splitlines()[-1])
    assert set(summary) == {"c1", "c2", "verify"}
    for key in ("c1", "c2"):
        figures = summary[key]
        for name in ("echo_rps", "gateway_rps", "ratio", "added_p50_ms", "added_p99_ms"):
            assert isinstance(figures[name], float), name
        assert figures["rounds"] == 3 and len(figures["ratios"]) == 3
        assert figures["ratio_min"] <= figures["ratio"] <= figures["ratio_max"]
        assert set(figures["cpu_us_per_request"]) >= CPU_KEYS
    assert set(summary["verify"]) >= {"raw_per_core", "workers_1_ratio", "workers_n_ratio"}
    assert summary["verify"]["entries"] == 200
    assert json.loads(full.read_text())["summary"] == summary


@pytest.mark.timeout(60)
def test_benchmark_without_verify_nulls_its_key(bench: ModuleType) -> None:
    options = bench.parse_args(["--json", "--no-verify", "--rounds", "1"])
    assert options.json_line and not options.verify
    assert options.settings.rounds == 1
    report = bench.Report(machine={}, settings={}, mix={}, results=[])
    assert bench.summary_line(report) == {"verify": None}


@pytest.mark.timeout(60)
def test_verify_benchmark_verifies_the_export_it_writes(tmp_path: Path) -> None:
    results = tmp_path / "verify.json"
    command = [sys.executable, str(BENCH.parent / "verify_bench.py"), "--entries", "300"]
    command += ["--seconds", "0.05", "--workers", "2", "--json", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    figures = json.loads(results.read_text(encoding="utf-8"))
    assert figures["entries"] == 300 and figures["workers"] == 2
    assert figures["verify_entries_per_s_1_worker"] > 0
    assert figures["verify_entries_per_s_n_workers"] > 0
    assert figures["raw_verifies_per_s_one_core"] > 0

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


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agentgw_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_benchmark_measures_both_targets_at_each_concurrency(bench: ModuleType) -> None:
    settings = bench.Settings(concurrencies=(1, 4), requests=20, warmup=5)
    report = asyncio.run(bench.run_benchmark(settings))

    measured = {(r.target, r.concurrency): r for r in report.results}
    assert set(measured) == {(t, c) for t in ("echo", "gateway") for c in (1, 4)}
    for result in report.results:
        assert result.requests == 20
        assert result.errors == {}
        assert sum(result.verdicts.values()) == 20
        assert result.decisions_per_s > 0
        assert 0 < result.p50_ms <= result.p99_ms
    # The default policy holds the suspicious part of the mix; echo allows everything.
    assert measured[("gateway", 1)].verdicts.get("HOLD", 0) > 0
    assert measured[("echo", 1)].verdicts == {"ALLOW": 20}
    assert [c.concurrency for c in report.comparisons] == [1, 4]

    table = bench.format_report(report)
    assert "echo" in table and "gateway" in table


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

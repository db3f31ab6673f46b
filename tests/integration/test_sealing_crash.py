"""kill -9 of the sealer at every step of sealing a tile, and inside each file's write:
the next sealer (a new owner, once the dead one's lease has ended) seals exactly that
tile, every file is the reference's bytes, a crashed write's temporary file is never
read as a tile, no entry is lost or doubled, and Redis is trimmed exactly once.

The sealer runs in tests/seal_driver.py, a subprocess that SIGKILLs itself at the
step (no cleanup of any kind runs). The log is built without a gateway (so no other
sealer runs): 600 entries with tile 0 sealed, so the crash is in sealing tile 1 and
its previous entry is read from the store; the first level-1 tile is crashed on a log
that stands in for its first 65,024 entries (see test_sealing.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from gateway.store.keys import KeySpace
from tests.harness import wait_for
from tests.integration.test_sealing import (
    TILE,
    BareLog,
    assert_level_1_sealed,
    assert_sealed_state,
    expected_files,
    sealed_fields,
    stand_in_for_sealed_tiles,
    stored_files,
)

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 0.5  # the dead sealer's lease: the next one waits it out
TILE_1 = ["tile/entries/001", "lines/001", "tile/0/001"]  # in the order they are written
STEPS = ["lease", *(f"wrote {path}" for path in TILE_1), "recorded"]
INSIDE = [f"inside {path}" for path in TILE_1]


@pytest.fixture
def bare(redis_url: str, key_prefix: str, tmp_path: Path) -> BareLog:
    keys = KeySpace(key_prefix)
    return BareLog(redis_url, keys, tmp_path / "signing-key.pem", tmp_path / "tiles")


def kill_sealer_at(bare: BareLog, step: str) -> list[str]:
    """Runs the driver until it kills itself at `step`; the steps it reported."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.seal_driver",
            "--redis-url",
            bare.url,
            "--prefix",
            bare.keys.prefix,
            "--tiles",
            str(bare.tiles),
            "--kill-at",
            step,
            "--lease-seconds",
            str(LEASE_SECONDS),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, f"the driver was not killed at {step}:\n{done}"
    return done.stdout.splitlines()


def wait_out_the_dead_lease(bare: BareLog, raw: redis.Redis) -> None:
    lease = bare.keys.audit_seal_lease
    wait_for(lambda: raw.get(lease) is None, timeout=10, what="the dead sealer's lease to end")


def temporary_files(root: Path) -> list[str]:
    return stored_files(root)[1]


@pytest.mark.parametrize("step", STEPS + INSIDE)
def test_a_sealer_killed_at_any_step_leaves_a_state_the_next_one_seals_from(
    bare: BareLog, raw: redis.Redis, step: str
) -> None:
    bare.grow(600)
    assert bare.run(bare.sealer(owner="before"), "seal_once") is True
    before = bare.verify(600)
    raw.delete(bare.keys.audit_seal_lease)  # the first sealer is gone

    reported = kill_sealer_at(bare, step)
    if step.startswith("inside "):
        path = step.removeprefix("inside ")
        assert reported[-1] == STEPS[TILE_1.index(path)]  # the step before its write
        # Died between its temporary file and the link: the file is not there.
        assert not (bare.tiles / path).exists()
        (leftover,) = temporary_files(bare.tiles)
        assert Path(leftover).parent == Path(path).parent
    else:
        assert reported[-1] == step
    # What it wrote before dying is the whole of each file, the reference's bytes.
    written, _ = stored_files(bare.tiles)
    final = expected_files(before, 2 * TILE)
    assert {path: final[path] for path in written} == written
    assert len(written) == 3 + sum(line.startswith("wrote ") for line in reported)
    recorded = step == "recorded"
    state = sealed_fields(raw, bare.keys)
    assert int(state["size"]) == (2 if recorded else 1) * TILE
    assert raw.llen(bare.keys.audit_entries) == 600 - int(state["trimmed"])
    assert int(state["trimmed"]) == int(state["size"])  # trimmed with the record, or not

    wait_out_the_dead_lease(bare, raw)
    assert bare.run(bare.sealer(owner="after"), "seal_all") == (0 if recorded else 1)
    after = bare.verify(600)
    assert after == before
    assert_sealed_state(raw, bare.keys, bare.tiles, after, 2 * TILE)
    assert len(temporary_files(bare.tiles)) == (1 if step.startswith("inside ") else 0)


@pytest.mark.parametrize("step", ["wrote tile/0/255", "wrote tile/1/000", "inside tile/1/000"])
def test_a_sealer_killed_while_completing_the_first_level_1_tile_leaves_a_state_to_seal_from(
    bare: BareLog, raw: redis.Redis, step: str
) -> None:
    stand_in = stand_in_for_sealed_tiles(bare, raw)
    reported = kill_sealer_at(bare, step)
    assert reported[-1] == ("wrote tile/0/255" if step == "inside tile/1/000" else step)
    assert sealed_fields(raw, bare.keys)["size"] == str(255 * TILE)
    assert raw.llen(bare.keys.audit_entries) == TILE
    assert (bare.tiles / "tile/1/000").exists() == (step == "wrote tile/1/000")
    wait_out_the_dead_lease(bare, raw)
    assert bare.run(bare.sealer(owner="after"), "seal_all") == 1
    assert_level_1_sealed(bare, raw, stand_in)
    assert len(temporary_files(bare.tiles)) == (1 if step.startswith("inside ") else 0)

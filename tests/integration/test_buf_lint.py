"""The gRPC contract passes `buf lint` under the committed buf.yaml, and has no
breaking change since the last release tag (`buf breaking`, from the first tag on).

buf comes from npm (@bufbuild/buf, the version pinned below: a newer buf may add
lint rules). It is installed once into the test environment (`<venv>/buf-npm/`,
i.e. the repo's .venv under `make test`) and reused by later runs; outside a
virtual environment, into this run's temporary directory. The install needs the
npm registry; only a machine without npm skips these tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUF_VERSION = "1.75.0"
RELEASE_TAG = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


@pytest.fixture(scope="module")
def buf(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that runs the pinned buf, installing it first if it is not cached."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: buf is installed from npm (@bufbuild/buf)")
    in_venv = sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK)
    root = Path(sys.prefix) / "buf-npm" if in_venv else tmp_path_factory.mktemp("buf-npm")
    home = root / BUF_VERSION
    binary = home / "node_modules" / ".bin" / "buf"
    if not binary.exists():
        install_buf(npm, home)
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert version == BUF_VERSION, f"{binary} is buf {version}, expected {BUF_VERSION}"
    return [str(binary)]


def install_buf(npm: str, home: Path) -> None:
    """npm-installs @bufbuild/buf into `home`: into a fresh folder, then renamed into
    place, so that an interrupted install is never taken for a finished one."""
    staging = home.with_name(f".{home.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    done = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(staging),
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            f"@bufbuild/buf@{BUF_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"npm install @bufbuild/buf failed:\n{done.stderr}"
    try:
        staging.rename(home)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(staging)


def run_buf(buf: list[str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUF_CACHE_DIR": str(Path(buf[0]).parents[2] / "cache")}
    return subprocess.run(
        [*buf, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def violations(output: str) -> list[str]:
    """The rule ids of buf's --error-format=json output, one JSON object per line."""
    return [json.loads(line)["type"] for line in output.splitlines() if line.strip()]


def test_buf_sees_every_proto_file(buf: list[str]) -> None:
    listed = run_buf(buf, "ls-files")
    assert listed.returncode == 0, listed.stderr
    expected = {str(p.relative_to(REPO)) for p in (REPO / "protos").rglob("*.proto")}
    assert expected, "no .proto files under protos/"
    assert set(listed.stdout.split()) == expected


def test_contract_passes_buf_lint(buf: list[str]) -> None:
    linted = run_buf(buf, "lint")
    assert linted.returncode == 0, f"buf lint:\n{linted.stdout}{linted.stderr}"


def test_buf_breaking_catches_a_renumbered_field(buf: list[str], tmp_path: Path) -> None:
    """The breaking check of buf.yaml is alive: a field moved to another number (a
    different field on the wire) is reported against the committed contract."""
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    gateway = tmp_path / "protos" / "agentgw" / "v1" / "gateway.proto"
    text = gateway.read_text()
    assert "  string action_id = 1;\n" in text
    gateway.write_text(text.replace("  string action_id = 1;\n", "  string action_id = 99;\n", 1))
    checked = run_buf(buf, "breaking", str(tmp_path), "--against", str(REPO))
    assert checked.returncode != 0, "buf breaking missed a renumbered field"
    checked = run_buf(buf, "breaking", str(tmp_path), "--against", str(REPO), "--error-format=json")
    assert "FIELD_NO_DELETE" in violations(checked.stdout), checked.stdout


def release_tags() -> list[str]:
    """The repository's vMAJOR.MINOR.PATCH tags, newest version last."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no release tags to check `buf breaking` against")
    listed = subprocess.run(
        [git, "tag", "--list"], cwd=REPO, capture_output=True, text=True, check=True
    )
    tags = [tag for tag in listed.stdout.split() if RELEASE_TAG.fullmatch(tag)]
    return sorted(tags, key=lambda tag: tuple(int(n) for n in tag[1:].split(".")))


def test_contract_has_no_breaking_change_since_the_last_release(buf: list[str]) -> None:
    tags = release_tags()
    if not tags:
        pytest.skip(
            "no release tag yet (`git tag` lists no vX.Y.Z): `buf breaking` runs against "
            "the last one once it exists"
        )
    # subdir=protos: the tagged tree as a module rooted where buf.yaml's module is,
    # whether or not that tree already had a buf.yaml.
    against = f".git#tag={tags[-1]},subdir=protos"
    checked = run_buf(buf, "breaking", "--against", against)
    assert checked.returncode == 0, (
        f"breaking changes since {tags[-1]}:\n{checked.stdout}{checked.stderr}"
    )

"""`agentgw serve --check`: reports each part a start would load, exits 1 naming the
first that would fail, and writes nothing (no config, no key, no Redis data)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from gateway.domain.audit.keys import Signer
from gateway.domain.principals import token_digest
from tests.certificates import Authority
from tests.processes import AGENTGW


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    return subprocess.run(
        [AGENTGW, "serve", "--check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def config_file(directory: Path, extra: str = "") -> Path:
    path = directory / "agentgw.yaml"
    path.write_text(
        f"data_dir: {directory / 'data'}\n"
        f"principals:\n  - name: a\n    role: agent\n    token_sha256: {token_digest('t')}\n"
        + extra
    )
    return path


def lines_of(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """what -> the status word of each line printed."""
    return {
        line.split(None, 2)[1].rstrip(":"): line.split()[0] for line in done.stdout.splitlines()
    }


def test_a_first_start_setup_checks_clean_and_nothing_is_written(tmp_path: Path) -> None:
    done = check(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "a first start writes agentgw-data/agentgw.yaml" in done.stdout
    assert "none yet, a start creates one" in done.stdout
    assert set(lines_of(done).values()) == {"ok"}
    assert list(tmp_path.iterdir()) == []  # no config, no key, no Redis dir
    assert done.stderr == ""


def test_each_broken_part_is_named_and_the_exit_code_is_1(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefault_verdict: maybe\nrules: []\n")
    path = config_file(tmp_path, f"policy_file: {policy}\n")
    done = check("--config", str(path), cwd=tmp_path)
    assert done.returncode == 1
    assert lines_of(done)["policy"] == "FAILED"
    assert f"{policy}:2: default_verdict" in done.stdout
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("agentgw: policy: ")

    policy.write_text("version: 1\ndefault_verdict: allow\nrules: []\n")
    key = tmp_path / "data" / "audit-signing-key.pem"
    key.parent.mkdir()
    key.write_text("not a key\n")
    done = check("--config", str(path), cwd=tmp_path)
    assert (done.returncode, lines_of(done)["signing"]) == (1, "FAILED"), done.stdout
    assert "not an unencrypted PEM private key" in done.stdout

    key.unlink()
    Signer.generate().save(key)
    rotated = tmp_path / "data" / "audit-keys"
    rotated.mkdir()
    Signer.generate().save(rotated / "0011223344556677.pem")
    done = check("--config", str(path), cwd=tmp_path)
    assert (done.returncode, lines_of(done)["rotated"]) == (1, "FAILED"), done.stdout
    assert "not 0011223344556677" in done.stdout

    (rotated / "0011223344556677.pem").unlink()
    identity = tmp_path / "data" / "tiles" / "agentgw-tile-store.json"
    identity.parent.mkdir()
    identity.write_text("{not json")
    done = check("--config", str(path), cwd=tmp_path)
    assert (done.returncode, lines_of(done)["tile"]) == (1, "FAILED"), done.stdout

    identity.write_text('{"store_id": "5a17"}')
    done = check("--config", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert f"key {Signer.load(key).key_id}" in done.stdout
    assert "store 5a17" in done.stdout


def test_transport_problems_are_found_before_anything_starts(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    done = check("--config", str(path), "--listen", "0.0.0.0:50051", cwd=tmp_path)
    assert (done.returncode, lines_of(done)["transport"]) == (1, "FAILED")
    assert "without TLS" in done.stdout
    server = Authority(tmp_path / "pki").issue("agentgw", server=True)
    tls = ("--tls-cert", str(server.cert_file), "--tls-key", str(server.key_file))
    done = check("--config", str(path), "--listen", "0.0.0.0:50051", *tls, cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert "ok     transport: TLS on 0.0.0.0:50051" in done.stdout
    server.key_file.write_text("broken\n")
    done = check("--config", str(path), *tls, cwd=tmp_path)
    assert (done.returncode, lines_of(done)["transport"]) == (1, "FAILED"), done.stdout


def test_a_config_that_does_not_parse_is_one_line(tmp_path: Path) -> None:
    path = config_file(tmp_path, "bogus: 1\n")
    done = check("--config", str(path), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"agentgw: {path}:6: bogus: unknown key")
    assert done.stderr.count("\n") == 1

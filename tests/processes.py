"""`agentgw serve` as a real subprocess, for the multi-writer and crash tests.

Writes a config with the harness principals, starts the gateway on port 0, waits
(on its stderr, not a sleep) for the "listening" line, and finds the embedded
redis-server of a data dir through /proc, so a test can kill -9 both and clean up.
The auditor side (`export`, `keys`, `checkpoint`, `verify`) runs the real CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.domain.audit.keys import Signer
from gateway.domain.principals import token_digest
from tests.harness import TOKENS, token_for, wait_for

BIN = Path(sys.executable).parent
AGENTGW = str(BIN / "agentgw")

# Runs a command with SIGINT's default disposition: a test run started in the
# background inherits it ignored, and Python then never raises KeyboardInterrupt. Not
# Popen's preexec_fn: forking this process (its gRPC threads) runs gRPC's fork
# handlers in the child, which now and then abort it before it execs.
WITH_SIGINT = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


def server_binary() -> Path | None:
    """The redis-server the suite runs against (AGENTGW_TEST_REDIS_BINARY; see conftest)."""
    explicit = os.environ.get("AGENTGW_TEST_REDIS_BINARY")
    return Path(explicit) if explicit else None


def write_config(
    path: Path,
    *,
    data_dir: Path,
    redis: dict[str, str],
    signing_key: Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A gateway config with the harness principals (and the `extra` sections); an
    embedded server (no redis.url) uses the suite's server binary."""
    binary = server_binary()
    if binary is not None and "url" not in redis:
        redis = {**redis, "server_binary": str(binary)}
    principals = [
        {
            "name": name,
            "role": role,
            "token_sha256": token_digest(token),
        }
        for name, (role, token) in TOKENS.items()
    ]
    document: dict[str, Any] = {
        "data_dir": str(data_dir),
        "log_level": "WARNING",
        "principals": principals,
        "redis": redis,
        # Replicas share one tile store, as they must (docs/operations.md).
        "audit": {
            "signing_key_file": str(signing_key),
            "tiles": {"dir": str(data_dir.parent / "tiles")},
        },
        **(extra or {}),
    }
    # JSON is YAML; no dumper quirks to think about.
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


@contextlib.contextmanager
def gateway_processes(
    root: Path, count: int, redis: dict[str, str], extra: dict[str, Any] | None = None
) -> Iterator[list[GatewayProcess]]:
    """`count` gateway processes sharing `redis` and one signing key (provisioned
    before they start, as a mounted secret would be), each with its own data dir
    under `root`; listening when yielded, stopped afterwards."""
    signing_key = root / "audit-signing-key.pem"
    Signer.generate().save(signing_key)
    started: list[GatewayProcess] = []
    try:
        for n in range(count):
            data_dir = root / f"gw-{n}"
            data_dir.mkdir()
            config = write_config(
                data_dir / "agentgw.yaml",
                data_dir=data_dir,
                redis=redis,
                signing_key=signing_key,
                extra=extra,
            )
            started.append(GatewayProcess(config))
        for gateway in started:
            gateway.wait_listening()
        yield started
    finally:
        for gateway in started:
            gateway.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is not running any more.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class GatewayProcess:
    """One `agentgw serve` subprocess; `stderr` is collected by a reader thread."""

    def __init__(self, config: Path) -> None:
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [AGENTGW, "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            # Logs on stderr, the lines for people (the address) on stdout: read both.
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,))
        self._reader.daemon = True
        self._reader.start()
        self.port = 0

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.output.append(line)

    def text(self) -> str:
        return "".join(self.output)

    def wait_listening(self, timeout: float = 60) -> GatewayProcess:
        def listening() -> re.Match[str] | bool | None:
            match = re.search(r"^agentgw listening on [\d.]+:(\d+)$", self.text(), flags=re.M)
            return match or self.process.poll() is not None

        found = wait_for(listening, timeout=timeout, what="the gateway to listen")
        assert isinstance(found, re.Match), f"gateway exited:\n{self.text()}"
        self.port = int(found.group(1))
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the gateway (not its redis-server, which runs in its own session)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)


def embedded_redis_pids(data_dir: Path) -> list[int]:
    """Pids of running processes whose working directory is `data_dir/redis`.

    The embedded server is spawned there (gateway/store/embedded.py), in its own
    session, so it is found this way even after the gateway that started it is gone.
    """
    redis_dir = str((data_dir / "redis").resolve())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == redis_dir and pid_alive(int(entry)):
            pids.append(int(entry))
    return pids


def reap_embedded_redis(data_dir: Path) -> None:
    """SIGKILL every embedded redis-server of `data_dir` and wait until it is gone."""
    for pid in embedded_redis_pids(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=10, what=f"redis {pid} to exit")


@dataclass(frozen=True)
class VerifyResult:
    returncode: int
    report: dict[str, Any]
    output: str


def auditor(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an `agentgw audit ...` client command against `target` as auditor-1."""
    env = {**os.environ, "AGENTGW_SERVER": target, "AGENTGW_TOKEN": token_for("auditor-1")}
    done = subprocess.run(
        [AGENTGW, "audit", *args], env=env, text=True, capture_output=True, timeout=60
    )
    assert done.returncode == 0, f"agentgw audit {' '.join(args)}: {done.stderr}"
    return done


def export_and_verify(target: str, directory: Path) -> tuple[list[dict[str, Any]], VerifyResult]:
    """Export the whole log, its keys and a checkpoint taken after the export, then
    verify offline with `agentgw audit verify --checkpoint`. Returns the entries."""
    export, keys, checkpoint = (directory / n for n in ("log.jsonl", "keys.json", "cp.note"))
    auditor(target, "export", "--out", str(export))
    auditor(target, "keys", "--out", str(keys))
    auditor(target, "checkpoint", "--out", str(checkpoint))
    verify = verify_offline(export, keys, checkpoint)
    entries = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines()]
    return entries, verify


def verify_offline(export: Path, keys: Path, checkpoint: Path) -> VerifyResult:
    command: Sequence[str] = [
        AGENTGW,
        "audit",
        "verify",
        str(export),
        "--keys",
        str(keys),
        "--checkpoint",
        str(checkpoint),
        "--json",
    ]
    done = subprocess.run(command, text=True, capture_output=True, timeout=120)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {}  # not a report (a usage error, a crash): see `output`
    return VerifyResult(done.returncode, report, done.stdout + done.stderr)

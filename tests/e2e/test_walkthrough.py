"""The README walkthrough, run as a user would: `agentgw serve` and CLI subprocesses.

The commands come from README.md itself, so the walkthrough cannot rot: each
`export`/`agentgw`/`sed` line of its shell blocks runs in order, with the
placeholders (<... token>, <hold id>) filled in from what the gateway printed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def walkthrough_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Five-minute walkthrough", 1)[1].split("\n## ", 1)[0]
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(("export ", "agentgw ", "sed ")):
                lines.append(line)
    return lines


class Server:
    """`agentgw serve` as `make run` starts it: from a working directory, with the
    default (relative) data dir `agentgw-data`; only the port is a free one."""

    def __init__(self, cwd: Path, port: int) -> None:
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [str(BIN / "agentgw"), "serve", "--listen", f"127.0.0.1:{port}"],
            # The logs (stderr) and the lines for people (stdout: the tokens), as one.
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
        )
        assert self.process.stdout is not None
        self.reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.output.append(line)

    def text(self) -> str:
        return "".join(self.output)

    def token(self, name: str) -> str:
        match = re.search(rf"^  {re.escape(name)}\s+(agw_\S+)$", self.text(), flags=re.M)
        assert match, f"no token for {name} in:\n{self.text()}"
        return match.group(1)

    def redis_pid(self) -> int:
        match = re.search(r'"event_type":"redis_started".*?"pid":(\d+)', self.text())
        assert match, self.text()
        return int(match.group(1))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    port = free_port()
    srv = Server(tmp_path, port)
    try:
        wait_for(
            lambda: "export AGENTGW_TOKEN" in srv.text() or srv.process.poll() is not None,
            timeout=60,
            what="the gateway to start",
        )
        assert srv.process.poll() is None, srv.text()
        yield srv, port
    finally:
        if srv.process.poll() is None:
            srv.process.kill()
            srv.process.wait(10)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_readme_walkthrough(server: tuple[Server, int], tmp_path: Path) -> None:
    srv, port = server
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AGENTGW_SERVER": f"127.0.0.1:{port}",
    }
    placeholders = {
        f"<{name} token>": srv.token(name)
        for name in ("demo-agent", "approver", "auditor", "admin")
    }
    waiting: subprocess.Popen[str] | None = None
    results: list[tuple[str, subprocess.CompletedProcess[str]]] = []
    lines = walkthrough_lines()
    assert len(lines) >= 12, lines
    for line in lines:
        for placeholder, value in placeholders.items():
            line = line.replace(placeholder, value)
        assert "<" not in line, f"unfilled placeholder in {line!r}"
        if line.startswith("export "):
            for assignment in shlex.split(line)[1:]:
                key, _, value = assignment.partition("=")
                env[key] = value
            continue
        if "--wait" in line:
            waiting = subprocess.Popen(
                shlex.split(line),
                env=env,
                cwd=tmp_path,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            approver = srv.token("approver")
            wait_for(
                lambda approver=approver: "hold_" in pending_holds(env, tmp_path, approver),
                timeout=30,
                what="the hold",
            )
            continue

        def run(line: str = line) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                shlex.split(line), env=env, cwd=tmp_path, text=True, capture_output=True, timeout=60
            )

        done = run()
        if line.startswith("agentgw alerts list"):  # the alert fires just after the answer

            def listed(run: Callable[[], Any] = run) -> Any:
                found = run()
                return found if "alert_" in found.stdout else None

            done = wait_for(listed, what="the loop alert")
            match = re.search(r"^(alert_[0-9a-f]+)", done.stdout, flags=re.M)
            assert match and "agent_stuck_in_loop" in done.stdout, done.stdout
            placeholders["<alert id>"] = match.group(1)
        results.append((line, done))
        if line.startswith("agentgw holds list"):
            match = re.search(r"^(hold_[0-9a-f]+)", done.stdout, flags=re.M)
            assert match, done.stdout
            placeholders["<hold id>"] = match.group(1)
        if line.startswith("agentgw holds approve"):
            assert waiting is not None
            out, err = waiting.communicate(timeout=30)
            assert waiting.returncode == 0, err
            assert (
                '"VERDICT_HOLD"' in out
                and out.strip().splitlines()[-1].count('"VERDICT_ALLOW"') == 1
            )
            assert '"RESOLUTION_STATUS_APPROVED"' in out

    by_command = [(line.split()[1:3], done) for line, done in results]
    benign = next(d for c, d in by_command if c == ["submit", "search"])
    assert benign.returncode == 0 and '"VERDICT_ALLOW"' in benign.stdout
    verifies = [d for c, d in by_command if c[:2] == ["audit", "verify"]]
    assert len(verifies) == 2
    assert verifies[0].returncode == 0, verifies[0].stdout + verifies[0].stderr
    assert "OK: 3 entries verified" in verifies[0].stdout
    assert verifies[1].returncode == 1
    assert "edited" in verifies[1].stdout and "line 1" in verifies[1].stdout
    loop = [d for c, d in by_command if c == ["submit", "read_file"]]
    assert [d.returncode for d in loop] == [0, 0, 0, 0, 3]  # the fifth is held: a loop
    acked = next(d for c, d in by_command if c == ["alerts", "ack"])
    assert "acknowledged" in acked.stdout and "by admin" in acked.stdout
    logged = next(d for c, d in by_command if c == ["logs", "--category"])
    assert logged.stdout.count("demo-agent") >= 6, logged.stdout  # search, send_email, 5 reads
    for line, done in results:
        if not line.startswith(("agentgw audit verify", "agentgw submit read_file")):
            assert done.returncode == 0, f"{line}: {done.stderr}"


def pending_holds(env: dict[str, str], cwd: Path, approver_token: str) -> str:
    done = subprocess.run(
        ["agentgw", "holds", "list"],
        env={**env, "AGENTGW_TOKEN": approver_token},
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=30,
    )
    return done.stdout


def test_sigterm_ends_waiting_calls_and_stops_redis(
    server: tuple[Server, int], tmp_path: Path
) -> None:
    srv, port = server
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AGENTGW_SERVER": f"127.0.0.1:{port}",
        "AGENTGW_AGENT": "demo-agent",
        "AGENTGW_TOKEN": srv.token("demo-agent"),
    }
    waiting = subprocess.Popen(
        ["agentgw", "submit", "send_email", "--param", "to=x@y.z", "--wait"],
        env=env,
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    approver = srv.token("approver")
    wait_for(lambda: "hold_" in pending_holds(env, tmp_path, approver), timeout=30, what="the hold")
    redis_pid = srv.redis_pid()
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(30) == 0, srv.text()
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1
    assert "UNAVAILABLE" in err and "shutting down" in err
    wait_for(lambda: not pid_alive(redis_pid), timeout=15, what="redis to exit")
    assert "gateway stopped" in srv.text()

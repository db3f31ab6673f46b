"""The first start of `agentgw serve` with no config, as a subprocess: the config is
written only once the server listens (a start that fails leaves no file whose tokens
nobody saw), and the tokens go to stdout, apart from the JSON logs on stderr."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from tests.harness import wait_for
from tests.processes import AGENTGW
from tests.servers import free_port


class Streams:
    """An `agentgw serve` subprocess with stdout and stderr read apart."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [AGENTGW, "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")},
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)

    def stdout(self) -> str:
        return "".join(self.out)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for reader in self._readers:
            reader.join(5)


def submit_code(port: int, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            gateway_pb2_grpc.GatewayStub(channel).Submit(
                gateway_pb2.ActionRequest(
                    action_id=os.urandom(6).hex(), session_id="t", action_type="search"
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def started() -> Iterator[list[Streams]]:
    processes: list[Streams] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


def test_a_start_that_cannot_listen_writes_no_config_and_the_next_start_shows_new_tokens(
    tmp_path: Path, started: list[Streams]
) -> None:
    data = tmp_path / "agentgw-data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = Streams("--data-dir", str(data), "--listen", f"127.0.0.1:{port}")
        started.append(failed)
        assert failed.process.wait(60) == 1
        failed.stop()
    errors = [line for line in failed.err if line.startswith("agentgw: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"agentgw: listen: cannot bind 127.0.0.1:{port}: ")
    assert "First start" not in failed.stdout()
    assert not (data / "agentgw.yaml").exists()  # no config whose tokens nobody saw
    assert stat.S_IMODE(data.stat().st_mode) == 0o700

    port = free_port()
    second = Streams("--data-dir", str(data), "--listen", f"127.0.0.1:{port}")
    started.append(second)
    wait_for(
        lambda: "export AGENTGW_TOKEN" in second.stdout() or second.process.poll() is not None,
        timeout=60,
        what="the first-start banner",
    )
    assert second.process.poll() is None, second.stdout() + "".join(second.err)
    out = second.stdout()
    assert f"agentgw listening on 127.0.0.1:{port}" in out
    tokens = dict(re.findall(r"^  (demo-agent|approver|auditor|admin)\s+(agw_\S+)$", out, re.M))
    assert set(tokens) == {"demo-agent", "approver", "auditor", "admin"}
    path = data / "agentgw.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not any(token in path.read_text() for token in tokens.values())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        decision = gateway_pb2_grpc.GatewayStub(channel).Submit(
            gateway_pb2.ActionRequest(action_id="a-1", session_id="s", action_type="search"),
            metadata=(("authorization", f"Bearer {tokens['demo-agent']}"),),
            timeout=10,
        )
    assert decision.verdict == gateway_pb2.VERDICT_ALLOW
    # The config it wrote after listening is the one it watches: a token issued into
    # it now works without a restart.
    issued = subprocess.run(
        [AGENTGW, "tokens", "issue", "billing-7", "--role", "agent", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.splitlines()[1]
    wait_for(lambda: submit_code(port, token) == grpc.StatusCode.OK, 30, "the issued token")
    second.stop()
    # stderr is the logs and nothing else: every line is a JSON record, and no token
    # is in any of them.
    assert second.err
    for line in second.err:
        record = json.loads(line)
        assert "event_type" in record
        assert not any(token in line for token in tokens.values())

    third = Streams("--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}")
    started.append(third)
    wait_for(
        lambda: "listening on" in third.stdout() or third.process.poll() is not None,
        timeout=60,
        what="the gateway to listen again",
    )
    assert "First start" not in third.stdout()  # the tokens were shown once

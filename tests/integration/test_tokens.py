"""`agentgw tokens issue|rotate|revoke|list` against a running `agentgw serve`: the
config file changes, and the gateway takes the change up while it serves (a new
token works, a rotated or revoked one is refused) without a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.config import parse_config
from gateway.domain.principals import token_digest
from tests.harness import wait_for
from tests.processes import AGENTGW, GatewayProcess, server_binary

CONFIG = """\
# The gateway of the tokens test. This comment and the sections after the list stay.
data_dir: {data}
log_level: INFO
principals:
  - name: agent-1          # the first agent
    role: agent
    token_sha256: {digest}
redis:
  server_binary: {binary}
"""


def tokens(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    return subprocess.run(
        [AGENTGW, "tokens", *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agentgw.yaml"
    binary = server_binary()
    text = CONFIG.format(data=tmp_path / "data", digest=token_digest("tok-1"), binary=binary)
    if binary is None:
        text = text.replace("redis:\n  server_binary: None\n", "")
    path.write_text(text)
    return path


@pytest.fixture
def gateway(config_file: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(config_file).wait_listening()
    try:
        yield process
    finally:
        process.stop()


def submit_code(gateway: GatewayProcess, token: str, agent: str = "") -> grpc.StatusCode:
    with grpc.insecure_channel(gateway.target) as channel:
        try:
            gateway_pb2_grpc.GatewayStub(channel).Submit(
                gateway_pb2.ActionRequest(
                    action_id=f"a-{os.urandom(6).hex()}",
                    agent_id=agent,
                    session_id="s",
                    action_type="search",
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_an_issued_token_works_a_rotated_one_stops_and_a_revoked_one_is_refused(
    gateway: GatewayProcess, config_file: Path
) -> None:
    before = config_file.read_text()
    issued = tokens("issue", "billing-7", "--role", "agent", "--config", str(config_file))
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.splitlines()[1]
    assert token.startswith("agw_") and token not in config_file.read_text()
    # Only the new principal's lines were added: the rest is byte for byte the same.
    added = config_file.read_text().replace(
        f"  - name: billing-7\n    role: agent\n    token_sha256: {token_digest(token)}\n", ""
    )
    assert added == before
    wait_for(lambda: submit_code(gateway, token) == grpc.StatusCode.OK, 30, "the new token")
    # An agent acts only as itself, also with a token issued while serving.
    assert submit_code(gateway, token, agent="agent-1") == grpc.StatusCode.PERMISSION_DENIED

    rotated = tokens("rotate", "billing-7", "--config", str(config_file), "--json")
    assert rotated.returncode == 0, rotated.stderr
    new_token = json.loads(rotated.stdout)["token"]
    assert new_token != token
    gateway.process.send_signal(signal.SIGHUP)  # at once, not at the next poll
    wait_for(
        lambda: submit_code(gateway, token) == grpc.StatusCode.UNAUTHENTICATED,
        30,
        "the rotated token to be refused",
    )
    assert submit_code(gateway, new_token) == grpc.StatusCode.OK

    revoked = tokens("revoke", "billing-7", "--config", str(config_file))
    assert revoked.returncode == 0, revoked.stderr
    wait_for(
        lambda: submit_code(gateway, new_token) == grpc.StatusCode.UNAUTHENTICATED,
        30,
        "the revoked token to be refused",
    )
    assert config_file.read_text() == before
    assert submit_code(gateway, "tok-1") == grpc.StatusCode.OK
    assert '"event_type":"principals_reloaded"' in gateway.text()
    assert token not in gateway.text() and new_token not in gateway.text()


def test_a_broken_edit_keeps_the_principals_in_force(
    gateway: GatewayProcess, config_file: Path
) -> None:
    issued = tokens("issue", "billing-8", "--role", "agent", "--config", str(config_file))
    token = issued.stdout.splitlines()[1]
    wait_for(lambda: submit_code(gateway, token) == grpc.StatusCode.OK, 30, "the new token")
    config_file.write_text(config_file.read_text() + "bogus: 1\n")
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "principals_reload_failed" in gateway.text(), 30, "the refused reload")
    assert submit_code(gateway, token) == grpc.StatusCode.OK
    assert submit_code(gateway, "tok-1") == grpc.StatusCode.OK
    # The tokens commands refuse to edit a file the gateway would not load.
    refused = tokens("issue", "billing-9", "--role", "agent", "--config", str(config_file))
    assert refused.returncode == 2
    assert "bogus: unknown key" in refused.stderr


def test_edits_at_the_same_time_lose_none(config_file: Path) -> None:
    names = [f"agent-{n}" for n in range(2, 10)]
    with ThreadPoolExecutor(len(names)) as pool:
        done = list(
            pool.map(
                lambda name: tokens("issue", name, "--role", "agent", "--config", str(config_file)),
                names,
            )
        )
    assert [d.returncode for d in done] == [0] * len(names), [d.stderr for d in done]
    config = parse_config(config_file.read_text(), str(config_file), config_file.parent)
    by_name = {p.name: p for p in config.principals}
    assert set(by_name) == {"agent-1", *names}
    for name, result in zip(names, done, strict=True):
        assert by_name[name].token_sha256 == token_digest(result.stdout.splitlines()[1])
    assert not [p for p in config_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_wrong_edits_are_refused_and_change_nothing(config_file: Path) -> None:
    before = config_file.read_text()
    cases = [
        (("issue", "agent-1", "--role", "agent"), "'agent-1' exists already"),
        (("rotate", "nobody"), "no principal named 'nobody'"),
        (("revoke", "agent-1"), "'agent-1' is the only principal"),
        (("issue", "bad name", "--role", "agent"), "expected 1-128 of"),
    ]
    for args, message in cases:
        done = tokens(*args, "--config", str(config_file))
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert done.stdout == ""  # no token printed for an edit that was not made
    assert config_file.read_text() == before
    missing = tokens("list", "--data-dir", str(config_file.parent / "nowhere"))
    assert missing.returncode == 2 and "cannot read the config" in missing.stderr


def test_list_names_the_principals_and_never_a_digest(config_file: Path) -> None:
    tokens("issue", "ana", "--role", "approver", "--config", str(config_file))
    listed = tokens("list", "--config", str(config_file), "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["token"]) for r in rows] == [
        ("agent-1", "agent", True),
        ("ana", "approver", True),
    ]
    assert token_digest("tok-1") not in listed.stdout

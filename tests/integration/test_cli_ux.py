"""The CLI as a script sees it, run as real processes against a real gateway: exit
codes (docs/cli.md: submit and `holds await` say what became of the action), one-line
errors that say what to do (no gateway, a wrong token, TLS, a wait that ran out), a
closed pipe and Ctrl-C without a traceback, `--version`, group commands printing their
own help, `-o json` documents, and the shell completion scripts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from agentgw.v1 import approvals_pb2, audit_pb2
from clients.cli.common import (
    EXIT_DENIED,
    EXIT_EXPIRED,
    EXIT_FAILED,
    EXIT_HELD,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
)
from gateway.config import TlsSettings
from tests.certificates import Authority, Issued
from tests.harness import ManualClock, RunningGateway, token_for, wait_for
from tests.processes import AGENTGW, WITH_SIGINT

MakeGateway = Callable[..., RunningGateway]
DENY_POLICY = """\
version: 1
default_verdict: allow
rules:
  - name: no-refunds
    verdict: deny
    reason: refunds are not allowed
    match:
      action_type: refund
  - name: email-needs-approval
    verdict: hold
    reason: email leaves the company
    match:
      action_type: send_email
"""


def run(
    *args: str, who: str | None = None, server: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`agentgw ARGS` as a process, with `who`'s token and `server` in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    if who:
        env["AGENTGW_TOKEN"] = token_for(who)
    if server:
        env["AGENTGW_SERVER"] = server
    return subprocess.run(
        [sys.executable, "-m", "clients.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit(gw: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return run("submit", *args, "--agent", "agent-1", who="agent-1", server=gw.target)


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki")


@pytest.fixture
def server_cert(ca: Authority) -> Issued:
    return ca.issue("gateway", server=True)


@pytest.fixture
def policy_gw(make_gateway: MakeGateway, tmp_path: Path) -> RunningGateway:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DENY_POLICY)
    return make_gateway(policy_file=policy)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- exit codes ------------------------------------------------------------------------


def test_submit_exits_with_what_became_of_the_action(policy_gw: RunningGateway) -> None:
    allowed = submit(policy_gw, "search", "--param", "q=weather")
    assert (allowed.returncode, allowed.stderr) == (EXIT_OK, "")
    assert json.loads(allowed.stdout)["verdict"] == "VERDICT_ALLOW"
    held = submit(policy_gw, "send_email", "--param", "to=bob@example.com")
    assert (held.returncode, held.stderr) == (EXIT_HELD, "")
    assert json.loads(held.stdout)["verdict"] == "VERDICT_HOLD"
    denied = submit(policy_gw, "refund", "-o", "table")
    assert (denied.returncode, denied.stderr) == (EXIT_DENIED, "")
    assert denied.stdout.startswith("deny ") and "refunds are not allowed" in denied.stdout


def test_submit_wait_exits_5_when_an_approver_rejects(policy_gw: RunningGateway) -> None:
    env = {**os.environ, "AGENTGW_SERVER": policy_gw.target, "AGENTGW_TOKEN": token_for("agent-1")}
    waiting = subprocess.Popen(
        [AGENTGW, "submit", "send_email", "--agent", "agent-1", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        hold = wait_for(lambda: pending(policy_gw), timeout=30, what="the hold")[0]
        policy_gw.approvals.Reject(
            approvals_pb2.RejectRequest(hold_id=hold.hold_id, reason="not today"),
            metadata=policy_gw.md("approver-1"),
        )
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == EXIT_REJECTED, err
    final = json.loads(out.splitlines()[-1])
    assert final["resolution"]["status"] == "RESOLUTION_STATUS_REJECTED"


def pending(gw: RunningGateway) -> Sequence[approvals_pb2.Hold]:
    request = approvals_pb2.ListHoldsRequest()
    return gw.approvals.ListHolds(request, metadata=gw.md("approver-1")).holds


def test_holds_await_exits_with_the_resolution(policy_gw: RunningGateway) -> None:
    approved = policy_gw.agent().submit("send_email", session_id="s")
    policy_gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=approved.hold_id, reason="fine"),
        metadata=policy_gw.md("approver-1"),
    )
    done = run("holds", "await", approved.hold_id, who="agent-1", server=policy_gw.target)
    assert (done.returncode, done.stderr) == (EXIT_OK, "")
    assert json.loads(done.stdout)["verdict"] == "VERDICT_ALLOW"

    still = policy_gw.agent().submit("send_email", session_id="s")
    args = ("holds", "await", still.hold_id, "--wait-timeout", "0.2")
    waited = run(*args, who="agent-1", server=policy_gw.target)
    assert (waited.returncode, waited.stdout) == (EXIT_HELD, "")
    assert waited.stderr == (
        f"agentgw: {still.hold_id} is still pending; run `agentgw holds await {still.hold_id}`\n"
    )
    # Await is the agent's own: another agent's hold is not found; an approver may not.
    other = run("holds", "await", still.hold_id, who="agent-2", server=policy_gw.target)
    assert other.returncode == EXIT_FAILED and other.stderr.count("\n") == 1
    approver = run("holds", "await", still.hold_id, who="approver-1", server=policy_gw.target)
    assert approver.returncode == EXIT_FAILED
    assert approver.stderr == (
        "agentgw: principal 'approver-1' has role approver; this call needs agent\n"
    )


def test_an_approver_awaits_a_hold_by_watching(policy_gw: RunningGateway) -> None:
    held = policy_gw.agent().submit("send_email", session_id="s")
    env = {
        **os.environ,
        "AGENTGW_SERVER": policy_gw.target,
        "AGENTGW_TOKEN": token_for("approver-1"),
    }
    waiting = subprocess.Popen(
        [AGENTGW, "holds", "await", held.hold_id, "--watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        assert waiting.stderr.readline() == f"agentgw: waiting on {held.hold_id}...\n"
        policy_gw.approvals.Reject(
            approvals_pb2.RejectRequest(hold_id=held.hold_id, reason="no"),
            metadata=policy_gw.md("approver-2"),
        )
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert (waiting.returncode, err) == (EXIT_REJECTED, "")
    assert json.loads(out)["status"] == "HOLD_STATUS_REJECTED"
    # Decided before the watch began: not pending, which the watch cannot tell apart
    # from no such hold.
    args = ("holds", "await", held.hold_id, "--watch")
    late = run(*args, who="approver-1", server=policy_gw.target)
    assert (late.returncode, late.stdout) == (EXIT_FAILED, "")
    assert late.stderr.startswith(f"agentgw: {held.hold_id} is not pending: ")
    still = policy_gw.agent().submit("send_email", session_id="s")
    args = ("holds", "await", still.hold_id, "--watch", "--wait-timeout", "0.5")
    timed_out = run(*args, who="approver-1", server=policy_gw.target)
    assert timed_out.returncode == EXIT_HELD
    expected = f"still pending; run `agentgw holds await {still.hold_id} --watch`\n"
    assert timed_out.stderr.endswith(expected)


def test_holds_await_exits_6_for_an_expired_hold(make_gateway: MakeGateway) -> None:
    clock = ManualClock()
    gw = make_gateway(clock=clock, hold_ttl_seconds=60)
    held = gw.agent().submit("send_email", session_id="s")
    clock.advance(61)
    done = run("holds", "await", held.hold_id, "-o", "table", who="agent-1", server=gw.target)
    assert (done.returncode, done.stderr) == (EXIT_EXPIRED, "")
    assert done.stdout.startswith("deny (expired) ")


# --- one-line errors that say what to do ---------------------------------------------------


def test_no_gateway_says_how_to_reach_one() -> None:
    server = f"127.0.0.1:{closed_port()}"
    done = run("holds", "list", who="approver-1", server=server)
    assert (done.returncode, done.stdout) == (EXIT_FAILED, "")
    assert done.stderr == (
        f"agentgw: cannot reach the gateway at {server}: is `agentgw serve` running? "
        "(set --server or AGENTGW_SERVER; with TLS, --tls-ca)\n"
    )
    # The same from a command without its own error handling, and from submit.
    for args in (
        ["audit", "export"],
        ["submit", "search", "--agent", "agent-1"],
        ["holds", "list", "-o", "json"],  # not half an array
    ):
        done = run(*args, who="agent-1", server=server)
        assert (done.returncode, done.stdout) == (EXIT_FAILED, "")
        assert done.stderr.startswith("agentgw: cannot reach the gateway at ")
        assert done.stderr.count("\n") == 1


def test_a_wrong_token_and_a_wrong_role_are_one_line(gw: RunningGateway) -> None:
    env_token = {**os.environ, "AGENTGW_SERVER": gw.target, "AGENTGW_TOKEN": "not-a-token"}
    for args in (["holds", "list"], ["audit", "query"], ["submit", "x", "--agent", "a"]):
        done = subprocess.run(
            [sys.executable, "-m", "clients.cli", *args],
            env=env_token,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == EXIT_FAILED
        assert done.stderr.startswith(
            "agentgw: the gateway does not know this token: check --token / AGENTGW_TOKEN"
        ), done.stderr
        assert done.stderr.count("\n") == 1
    denied = run("holds", "list", who="agent-1", server=gw.target)
    assert (denied.returncode, denied.stderr) == (
        EXIT_FAILED,
        "agentgw: principal 'agent-1' has role agent; this call needs approver\n",
    )
    missing = run("holds", "list", server=gw.target)
    assert (missing.returncode, missing.stderr) == (
        EXIT_USAGE,
        "agentgw: no token: pass --token or set AGENTGW_TOKEN\n",
    )


def test_a_failed_tls_handshake_says_what_to_check(
    make_gateway: MakeGateway, ca: Authority, server_cert: Issued, tmp_path: Path
) -> None:
    gw = make_gateway(tls=TlsSettings(server_cert.cert_file, server_cert.key_file))
    stranger = Authority(tmp_path / "other-ca", name="another CA")
    done = run(
        "holds", "list", "--tls-ca", str(stranger.ca_file), who="approver-1", server=gw.target
    )
    assert done.returncode == EXIT_FAILED
    assert done.stderr.startswith(f"agentgw: TLS handshake with the gateway at {gw.target}")
    assert "--tls-ca" in done.stderr and done.stderr.count("\n") == 1
    plain = run("holds", "list", who="approver-1", server=gw.target)
    assert plain.returncode == EXIT_FAILED and plain.stderr.count("\n") == 1
    assert "--tls-ca" in plain.stderr and "Traceback" not in plain.stderr


# --- pipes and Ctrl-C ----------------------------------------------------------------------


def piped_to_head(gw: RunningGateway, who: str, *args: str) -> tuple[int, str, str]:
    """`agentgw ARGS | head -1` through a real pipe: (agentgw's exit code, what head
    printed, agentgw's stderr)."""
    env = {**os.environ, "AGENTGW_SERVER": gw.target, "AGENTGW_TOKEN": token_for(who)}
    producer = subprocess.Popen(
        [AGENTGW, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert producer.stdout is not None
    head = subprocess.Popen(["head", "-1"], stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # head alone holds the read end now
    first, _ = head.communicate(timeout=60)
    _, err = producer.communicate(timeout=60)
    return producer.returncode, first.decode(), err.decode()


@pytest.fixture
def long_log(gw: RunningGateway) -> RunningGateway:
    """A log whose export is longer than a pipe holds (64 KiB), so that the writer
    meets the closed pipe."""
    agent = gw.agent()
    for n in range(250):
        agent.submit("search", session_id=f"s{n}", parameters={"q": "x" * 200, "n": n})
    return gw


def test_a_closed_pipe_ends_export_and_lists_quietly(long_log: RunningGateway) -> None:
    for who, args in (
        ("auditor-1", ["audit", "export"]),
        ("auditor-1", ["audit", "query", "--json"]),
        ("auditor-1", ["audit", "query"]),
        ("auditor-1", ["logs", "--limit", "10000", "-o", "json"]),
    ):
        code, first, err = piped_to_head(long_log, who, *args)
        assert (code, err) == (EXIT_OK, ""), args
        assert first.endswith("\n") and first.strip(), args


def test_ctrl_c_exits_130_without_a_traceback(policy_gw: RunningGateway) -> None:
    env = {**os.environ, "AGENTGW_SERVER": policy_gw.target, "AGENTGW_TOKEN": token_for("agent-1")}
    waiting = subprocess.Popen(
        [*WITH_SIGINT, AGENTGW, "submit", "send_email", "--agent", "agent-1", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        said = waiting.stderr.readline()
        assert "waiting for an approver" in said
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == EXIT_INTERRUPTED
    assert err == "" and json.loads(out)["verdict"] == "VERDICT_HOLD"


# --- --version, help -------------------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    done = run("--version")
    assert (done.returncode, done.stdout, done.stderr) == (
        EXIT_OK,
        f"agentgw {metadata.version('agentgw')}\n",
        "",
    )


@pytest.mark.parametrize("group", ["holds", "sessions", "agents", "keys", "audit", "alerts"])
def test_a_group_alone_prints_its_own_help(group: str) -> None:
    done = run(group)
    assert (done.returncode, done.stdout) == (EXIT_USAGE, "")
    assert done.stderr.startswith(f"usage: agentgw {group} ")
    assert "serve" not in done.stderr  # not the top-level help


# --- -o json ----------------------------------------------------------------------------------


def test_o_json_prints_one_document(policy_gw: RunningGateway) -> None:
    target = policy_gw.target
    empty = run("holds", "list", "-o", "json", who="approver-1", server=target)
    assert (empty.returncode, json.loads(empty.stdout)) == (EXIT_OK, [])
    held = [policy_gw.agent().submit("send_email", session_id=f"s{n}") for n in range(2)]
    listed = run("holds", "list", "-o", "json", who="approver-1", server=target)
    assert [h["hold_id"] for h in json.loads(listed.stdout)] == [h.hold_id for h in held]
    lines = run("holds", "list", "-o", "jsonl", who="approver-1", server=target)
    assert [json.loads(line)["hold_id"] for line in lines.stdout.splitlines()] == [
        h.hold_id for h in held
    ]
    sessions = run("sessions", "list", "-o", "json", who="approver-1", server=target)
    assert json.loads(sessions.stdout) == []
    alerts = run("alerts", "list", "-o", "json", who="admin-1", server=target)
    assert json.loads(alerts.stdout) == []
    entries = run("audit", "query", "-o", "json", who="auditor-1", server=target)
    documents: list[dict[str, Any]] = json.loads(entries.stdout)
    assert [e["seq"] for e in documents] == list(range(1, len(documents) + 1))
    report = run("audit", "report", "-o", "json", who="auditor-1", server=target)
    assert json.loads(report.stdout)["total"] == len(documents)
    logs = run("logs", "--category", "decision", "-o", "json", who="auditor-1", server=target)
    assert isinstance(json.loads(logs.stdout), list)
    approved = run(
        "holds", "approve", held[0].hold_id, "--reason", "ok", "-o", "json",
        who="approver-1", server=target,
    )  # fmt: skip
    assert json.loads(approved.stdout)["status"] == "HOLD_STATUS_APPROVED"


# --- shell completion ------------------------------------------------------------------------


def complete(script: str, *words: str) -> list[str]:
    """What bash completes after `words` (the last is the word being typed)."""
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _agentgw\n"
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completion_is_valid_and_completes_commands(tmp_path: Path) -> None:
    done = run("completion", "bash")
    assert done.returncode == EXIT_OK
    script = tmp_path / "agentgw.bash"
    script.write_text(done.stdout)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert complete(done.stdout, "agentgw", "ho") == ["holds"]
    assert {"serve", "submit", "audit", "completion"} <= set(complete(done.stdout, "agentgw", ""))
    assert complete(done.stdout, "agentgw", "holds", "aw") == ["await"]
    assert "--page-size" in complete(done.stdout, "agentgw", "holds", "list", "--")
    assert complete(done.stdout, "agentgw", "audit", "verify-") == ["verify-in-place"]


# What each shell offers after `agentgw holds ` and after `agentgw holds list --pa`: zsh
# runs the bash function (its own completion then filters by the prefix); fish asks
# its completions.
OFFERED = {
    "zsh": (
        "autoload -U compinit && compinit -u; source {script}; _agentgw_offers() "
        '{{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _agentgw; '
        'print -l -- "${{COMPREPLY[@]}}"; }}; '
        "_agentgw_offers agentgw holds ''; echo ---; _agentgw_offers agentgw holds list --pa"
    ),
    "fish": (
        "source {script}; complete -C 'agentgw holds '; echo ---; "
        "complete -C 'agentgw holds list --pa'"
    ),
}


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_complete_commands(shell: str, tmp_path: Path) -> None:
    done = run("completion", shell)
    assert done.returncode == EXIT_OK and "holds" in done.stdout
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"no {shell} here to check the script with")
    script = tmp_path / f"agentgw.{shell}"
    script.write_text(done.stdout)
    checked = subprocess.run([binary, "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    program = OFFERED[shell].format(script=script)
    offered = subprocess.run(
        [binary, "-c", program], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert offered.returncode == 0, offered.stderr
    subcommands, options = (part.split() for part in offered.stdout.split("---"))
    assert {"list", "watch", "await", "approve", "reject"} <= set(subcommands)
    assert "--page-size" in options


def test_the_agent_defaults_to_the_tokens_principal(gw: RunningGateway) -> None:
    """No --agent: the gateway takes the caller's principal as the agent; naming
    another agent is still refused (agents act only as themselves)."""
    mine = run("submit", "search", who="agent-2", server=gw.target)
    assert (mine.returncode, mine.stderr) == (EXIT_OK, ""), mine.stderr
    decision = json.loads(mine.stdout)
    entry = gw.audit.ReadEntries(
        audit_pb2.ReadEntriesRequest(
            start_seq=int(decision["audit_seq"]), end_seq=int(decision["audit_seq"])
        ),
        metadata=gw.md("auditor-1"),
    )
    assert [e.actor for e in entry] == ["agent-2"]
    outcome = run("outcome", decision["action_id"], "--success", who="agent-2", server=gw.target)
    assert outcome.returncode == EXIT_OK, outcome.stderr
    other = run("submit", "search", "--agent", "agent-1", who="agent-2", server=gw.target)
    assert other.returncode == EXIT_FAILED and "agent-2" in other.stderr

"""The credential lifecycle probed as a hostile insider or a careless operator would:
a real `agentgw serve` subprocess on loopback, the suite's Redis, the real `agentgw
tokens` CLI, and gRPC/HTTP clients. A revoked, rotated or demoted principal keeps
nothing it opened before; invalid or unsafe config edits keep the principals in
force; edits never lose one another, never loosen the file, and never leak a token.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentgw.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    approvals_pb2,
    approvals_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
)
from clients.wire import python_to_struct
from gateway.config import parse_config
from gateway.domain.principals import token_digest
from tests.harness import TOKENS, StreamReader, token_for, wait_for
from tests.processes import AGENTGW, GatewayProcess

Kind = approvals_pb2.HoldEvent.Kind
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
RELOADED = '"event_type":"principals_reloaded"'
RELOAD_FAILED = '"event_type":"principals_reload_failed"'


# ---------------------------------------------------------------------------
# The gateway under test: a block-YAML config (the tokens CLI edits only that),
# the harness principals, metrics and tiles on free ports.
# ---------------------------------------------------------------------------


def principal_lines(principals: dict[str, tuple[str, str]]) -> str:
    return "".join(
        f"  - name: {name}\n    role: {role}\n    token_sha256: {token_digest(token)}\n"
        for name, (role, token) in principals.items()
    )


def config_text(
    tmp: Path, redis_url: str, prefix: str, principals: str | None = None, head: str = ""
) -> str:
    return (
        f"# credential probes\n{head}"
        f"data_dir: {json.dumps(str(tmp / 'data'))}\n"
        "log_level: INFO\n"
        "principals:\n"
        f"{principal_lines(TOKENS) if principals is None else principals}"
        "redis:\n"
        f"  url: {json.dumps(redis_url)}\n"
        f"  key_prefix: {prefix[:24]}\n"
        "metrics:\n"
        "  listen: 127.0.0.1:0\n"
        "tiles:\n"
        "  listen: 127.0.0.1:0\n"
    )


def tokens(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    return subprocess.run(
        [AGENTGW, "tokens", *args], capture_output=True, text=True, timeout=60, env=env
    )


@dataclass
class Served:
    process: GatewayProcess
    config: Path
    channel: grpc.Channel
    marked: dict[str, int] | None = None

    @property
    def target(self) -> str:
        return self.process.target

    def text(self) -> str:
        return self.process.text()

    def logged_port(self, message: str) -> int:
        def port() -> int | None:
            for line in self.text().splitlines():
                if f'"message":"{message}"' in line:
                    record = json.loads(line)
                    return int(record.get("data", record)["port"])
            return None

        found = wait_for(port, 30, message)
        assert found is not None
        return found

    def mark(self) -> None:
        """Before an edit: reload() then waits for a log line after this point (the
        file watcher may take the edit up before the SIGHUP does)."""
        self.marked = {e: self.text().count(e) for e in (RELOADED, RELOAD_FAILED)}

    def write(self, text: str) -> None:
        self.mark()
        self.config.write_text(text, encoding="utf-8")

    def reload(self, event: str = RELOADED) -> None:
        """SIGHUP, and wait until the gateway logged one more `event` than at the
        last mark (or now)."""
        seen = self.text().count(event) if self.marked is None else self.marked[event]
        self.marked = None
        self.process.process.send_signal(signal.SIGHUP)
        wait_for(lambda: self.text().count(event) > seen, 30, event)

    def tokens(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.mark()
        done = tokens(*args, "--config", str(self.config))
        assert done.returncode == 0, done.stderr
        return done

    def code(self, token: str, call: str = "submit") -> grpc.StatusCode:
        return code_of(lambda: self.unary(call, (("authorization", f"Bearer {token}"),)))

    def unary(self, call: str, metadata: tuple[tuple[str, str], ...]) -> Any:
        if call == "submit":
            return gateway_pb2_grpc.GatewayStub(self.channel).Submit(
                gateway_pb2.ActionRequest(
                    action_id=os.urandom(6).hex(), session_id="s", action_type="search"
                ),
                metadata=metadata,
                timeout=10,
            )
        if call == "holds":
            return approvals_pb2_grpc.ApprovalsStub(self.channel).ListHolds(
                approvals_pb2.ListHoldsRequest(), metadata=metadata, timeout=10
            )
        if call == "alerts":
            return alerts_pb2_grpc.AlertsStub(self.channel).List(
                alerts_pb2.ListAlertsRequest(), metadata=metadata, timeout=10
            )
        if call == "keys":
            return audit_pb2_grpc.AuditStub(self.channel).GetPublicKeys(
                audit_pb2.GetPublicKeysRequest(), metadata=metadata, timeout=10
            )
        raise AssertionError(call)

    def submit(self, agent: str, action_type: str, **fields: Any) -> gateway_pb2.Decision:
        decision: gateway_pb2.Decision = gateway_pb2_grpc.GatewayStub(self.channel).Submit(
            gateway_pb2.ActionRequest(
                action_id=os.urandom(8).hex(),
                agent_id=agent,
                session_id=fields.pop("session_id", "s"),
                action_type=action_type,
                **fields,
            ),
            metadata=md(agent),
            timeout=10,
        )
        return decision

    def export(self) -> str:
        stream = audit_pb2_grpc.AuditStub(self.channel).ReadEntries(
            audit_pb2.ReadEntriesRequest(), metadata=md("auditor-1"), timeout=30
        )
        return "\n".join(str(entry) for entry in stream)


def md(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token_for(name)}"),)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


@contextlib.contextmanager
def start(config: Path) -> Iterator[Served]:
    process = GatewayProcess(config)
    channel: grpc.Channel | None = None
    try:
        process.wait_listening()
        channel = grpc.insecure_channel(process.target)
        yield Served(process, config, channel)
    finally:
        if channel is not None:
            channel.close()
        process.stop()


@pytest.fixture
def config_file(tmp_path: Path, redis_url: str, key_prefix: str) -> Path:
    path = tmp_path / "agentgw.yaml"
    path.write_text(config_text(tmp_path, redis_url, key_prefix), encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def served(config_file: Path) -> Iterator[Served]:
    with start(config_file) as gateway:
        yield gateway


def end_or_item(reader: StreamReader, wanted: Callable[[Any], bool], what: str) -> None:
    wait_for(lambda: reader.code is not None or any(map(wanted, reader.messages)), 30, what)


# ---------------------------------------------------------------------------
# Revocation and demotion vs. calls that are already open.
# ---------------------------------------------------------------------------


def test_a_revoked_approvers_open_watch_holds_stream_is_ended(served: Served) -> None:
    """An open WatchHolds of an approver whose token is revoked ends with
    UNAUTHENTICATED and never gets another hold (gateway/api/status.py
    `stream_rpc`, gateway/api/auth.py `OpenCall`)."""
    watch = approvals_pb2_grpc.ApprovalsStub(served.channel).WatchHolds(
        approvals_pb2.WatchHoldsRequest(), metadata=md("approver-1"), timeout=120
    )
    reader = StreamReader(watch)
    try:
        wait_for(lambda: any(e.kind == Kind.KIND_SYNCED for e in reader.messages), 30, "synced")
        first = served.submit("agent-1", "delete_file")
        assert first.hold_id
        wait_for(lambda: any(e.hold.hold_id == first.hold_id for e in reader.messages), 30, "held")

        served.tokens("revoke", "approver-1")
        served.reload()
        assert served.code(token_for("approver-1"), "holds") == UNAUTHENTICATED

        second = served.submit("agent-1", "delete_file", resource="/etc/shadow")
        end_or_item(reader, lambda e: e.hold.hold_id == second.hold_id, "the stream to end or leak")
        leaked = [e for e in reader.messages if e.hold.hold_id == second.hold_id]
        assert not leaked, "a revoked approver's open watch still receives new holds"
        assert reader.code == UNAUTHENTICATED
    finally:
        reader.close()


def test_a_demoted_admins_open_alerts_watch_is_ended(served: Served, config_file: Path) -> None:
    """An admin demoted to agent by hand in the config loses its open Alerts.Watch
    (PERMISSION_DENIED): no alert after the demotion reaches it."""
    watch = alerts_pb2_grpc.AlertsStub(served.channel).Watch(
        alerts_pb2.WatchAlertsRequest(min_severity=alerts_pb2.SEVERITY_LOW),
        metadata=md("admin-1"),
        timeout=120,
    )
    watch.initial_metadata()  # subscribed
    reader = StreamReader(watch)
    try:
        for i in range(5):  # a loop: the agent_stuck_in_loop alert
            served.submit("agent-1", "read_file", session_id="loop-1", resource=f"/r/{i}")
        wait_for(lambda: any(a.subject == "agent-1" for a in reader.messages), 30, "an alert")

        text = config_file.read_text(encoding="utf-8")
        admin = "  - name: admin-1\n    role: admin\n"
        assert admin in text
        served.write(text.replace(admin, "  - name: admin-1\n    role: agent\n"))
        served.reload()
        assert served.code(token_for("admin-1"), "alerts") == grpc.StatusCode.PERMISSION_DENIED

        for i in range(5):
            served.submit("agent-2", "read_file", session_id="loop-2", resource=f"/r/{i}")
        end_or_item(reader, lambda a: a.subject == "agent-2", "the stream to end or leak")
        assert not [a for a in reader.messages if a.subject == "agent-2"], (
            "a demoted admin's open alerts watch still receives new alerts"
        )
        assert reader.code in (grpc.StatusCode.PERMISSION_DENIED, UNAUTHENTICATED)
    finally:
        reader.close()


def test_a_revoked_auditors_logs_follow_stream_is_ended(served: Served) -> None:
    """A revoked auditor's `logs --follow` (Logs.Query, follow) ends with
    UNAUTHENTICATED and gets no record logged after the revocation."""
    follow = logs_pb2_grpc.LogsStub(served.channel).Query(
        logs_pb2.LogQuery(categories=["user"], follow=True, limit=1),
        metadata=md("auditor-1"),
        timeout=120,
    )
    reader = StreamReader(follow)
    gateway = gateway_pb2_grpc.GatewayStub(served.channel)

    def log(message: str) -> None:
        gateway.Log(
            gateway_pb2.LogEvent(agent_id="agent-1", category="user", message=message),
            metadata=md("agent-1"),
            timeout=10,
        )

    try:
        # Until the follow is under way, a record may come before it: log until one shows.
        def seen_before() -> bool:
            log("before")
            return any(r.message == "before" for r in reader.messages)

        wait_for(seen_before, 30, "the follow to stream")

        served.tokens("revoke", "auditor-1")
        served.reload()
        assert served.code(token_for("auditor-1"), "keys") == UNAUTHENTICATED

        log("after the revocation")
        end_or_item(
            reader, lambda r: r.message == "after the revocation", "the stream to end or leak"
        )
        assert not [r for r in reader.messages if r.message == "after the revocation"], (
            "a revoked auditor's open log follow still receives new records"
        )
        assert reader.code == UNAUTHENTICATED
    finally:
        reader.close()


def synced_watch(served: Served, approver: str) -> StreamReader:
    watch = approvals_pb2_grpc.ApprovalsStub(served.channel).WatchHolds(
        approvals_pb2.WatchHoldsRequest(), metadata=md(approver), timeout=120
    )
    reader = StreamReader(watch)
    wait_for(lambda: any(e.kind == Kind.KIND_SYNCED for e in reader.messages), 30, "synced")
    return reader


def test_a_quiet_stream_ends_as_soon_as_its_principal_is_revoked(served: Served) -> None:
    """No further message is needed: the revocation itself ends the stream."""
    reader = synced_watch(served, "approver-1")
    try:
        served.tokens("revoke", "approver-1")
        served.reload()
        wait_for(lambda: reader.code is not None, 30, "the stream to end")
        assert reader.code == UNAUTHENTICATED
        assert reader.details == "unknown token (the config changed while this call was open)"
        assert "refused_call" in served.text() or "UNAUTHENTICATED" in served.text()
    finally:
        reader.close()


def test_a_change_to_other_principals_leaves_open_streams_alone(served: Served) -> None:
    reader = synced_watch(served, "approver-1")
    try:
        served.tokens("issue", "newcomer", "--role", "agent")
        served.reload()
        served.tokens("revoke", "approver-2")
        served.reload()
        held = served.submit("agent-1", "delete_file")
        wait_for(lambda: any(e.hold.hold_id == held.hold_id for e in reader.messages), 30, "held")
        assert reader.code is None
    finally:
        reader.close()


# ---------------------------------------------------------------------------
# Revocation and rotation on unary calls and the HTTP endpoints: hold.
# ---------------------------------------------------------------------------


def http_get(connection: http.client.HTTPConnection, path: str, token: str) -> int:
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    body = response.read()
    assert token.encode() not in body
    return response.status


def test_rotated_and_revoked_tokens_stop_on_grpc_metrics_and_tiles(served: Served) -> None:
    """Holds: after rotate or revoke and the reload, the old token is refused on new
    gRPC calls, on /metrics and on the tile server, also on an HTTP connection that
    was kept alive from before the change (every request is authenticated)."""
    metrics = http.client.HTTPConnection("127.0.0.1", served.logged_port("metrics listening"))
    tiles = http.client.HTTPConnection("127.0.0.1", served.logged_port("tile server listening"))
    try:
        old = token_for("auditor-1")
        assert http_get(metrics, "/metrics", old) == 200
        assert http_get(tiles, "/checkpoint", old) == 200
        assert served.code(old, "keys") == grpc.StatusCode.OK

        rotated = json.loads(served.tokens("rotate", "auditor-1", "--json").stdout)["token"]
        served.reload()
        assert served.code(old, "keys") == UNAUTHENTICATED
        assert http_get(metrics, "/metrics", old) == 401  # same kept-alive connection
        assert http_get(tiles, "/checkpoint", old) == 401
        assert http_get(metrics, "/metrics", rotated) == 200
        assert http_get(tiles, "/checkpoint", rotated) == 200

        served.tokens("revoke", "auditor-1")
        served.reload()
        assert served.code(rotated, "keys") == UNAUTHENTICATED
        assert http_get(metrics, "/metrics", rotated) == 401
        assert http_get(tiles, "/checkpoint", rotated) == 401
        # A role that may not scrape is 403, an agent's token included.
        assert http_get(metrics, "/metrics", token_for("agent-1")) == 403
    finally:
        metrics.close()
        tiles.close()
    assert rotated not in served.text()


def test_a_demotion_by_hand_applies_to_the_next_unary_call(
    served: Served, config_file: Path
) -> None:
    """Holds: `role: admin` changed to `role: agent` in the file demotes the principal
    at the reload: admin calls are PERMISSION_DENIED, it may submit as itself."""
    assert served.code(token_for("admin-1"), "alerts") == grpc.StatusCode.OK
    text = config_file.read_text(encoding="utf-8")
    served.write(
        text.replace("  - name: admin-1\n    role: admin\n", "  - name: admin-1\n    role: agent\n")
    )
    served.reload()
    assert '"changed":["admin-1"]' in served.text()
    assert served.code(token_for("admin-1"), "alerts") == grpc.StatusCode.PERMISSION_DENIED
    assert served.code(token_for("admin-1"), "submit") == grpc.StatusCode.OK


def test_the_last_admin_can_be_revoked_and_a_new_one_issued_while_serving(
    served: Served,
) -> None:
    """Not refused today: `tokens revoke` of the only admin succeeds (only the last
    principal of all is refused). Recovery needs no admin: the CLI issues a new one and
    the running gateway takes it up."""
    served.tokens("revoke", "admin-1")
    served.reload()
    assert served.code(token_for("admin-1"), "alerts") == UNAUTHENTICATED
    token = json.loads(served.tokens("issue", "admin-2", "--role", "admin", "--json").stdout)[
        "token"
    ]
    served.reload()
    assert served.code(token, "alerts") == grpc.StatusCode.OK


# ---------------------------------------------------------------------------
# Invalid edits while serving: hold.
# ---------------------------------------------------------------------------


def test_invalid_edits_keep_the_last_good_principals_and_say_so(
    served: Served, config_file: Path, tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """Holds: an edit that does not parse (bad YAML, a duplicate name, a role typo, a
    token shared by two principals, no principals, the raw token pasted where its
    digest goes, the file gone) is logged as principals_reload_failed naming the
    problem; every principal in force keeps working, nothing of the bad edit applies,
    and the raw token pasted by mistake is not echoed in the log."""
    good = config_file.read_text(encoding="utf-8")
    newcomer = "tok-newcomer"
    pasted = "agw_" + "Q" * 43
    extra = principal_lines({"newcomer": ("admin", newcomer)})

    def with_principals(lines: str) -> str:
        return config_text(tmp_path, redis_url, key_prefix, principal_lines(TOKENS) + lines)

    dup_token = (
        f"  - name: twin\n    role: admin\n    token_sha256: {token_digest('tok-admin-1')}\n"
    )
    cases = {
        "bad yaml": good + extra + "  - name: [unclosed\n",
        "duplicate name": with_principals(extra + principal_lines({"agent-1": ("admin", "x")})),
        "role typo": with_principals(extra.replace("role: admin", "role: Admin")),
        "shared token": with_principals(extra + dup_token),
        "no principals": config_text(tmp_path, redis_url, key_prefix, ""),
        "raw token": with_principals(
            extra + f"  - name: pasted\n    role: admin\n    token_sha256: {pasted}\n"
        ),
        "unknown key": with_principals(extra.replace("role: admin", "role: admin\n    rol: x")),
    }
    for case, text in cases.items():
        served.write(text)
        served.reload(RELOAD_FAILED)
        failed = [row for row in served.text().splitlines() if RELOAD_FAILED in row][-1]
        assert str(config_file) in failed, (case, failed)
        for name in TOKENS:
            role = TOKENS[name][0]
            call = {"agent": "submit", "approver": "holds", "auditor": "keys", "admin": "alerts"}
            assert served.code(token_for(name), call[role]) == grpc.StatusCode.OK, (case, name)
        assert served.code(newcomer, "alerts") == UNAUTHENTICATED, case
        assert served.code(pasted, "alerts") == UNAUTHENTICATED, case
    served.mark()
    config_file.unlink()
    served.reload(RELOAD_FAILED)
    assert served.code(token_for("admin-1"), "alerts") == grpc.StatusCode.OK
    config_file.write_text(good, encoding="utf-8")
    assert pasted not in served.text()
    assert RELOADED not in served.text()  # no reload ever applied a bad file


# ---------------------------------------------------------------------------
# The tokens CLI: concurrency, permissions, symlinks.
# ---------------------------------------------------------------------------


def test_the_same_name_issued_twice_at_once_has_exactly_one_winner(config_file: Path) -> None:
    """Holds: two `tokens issue ana` at once: one prints a token and lands, the other
    exits 2 ("exists already") and prints none; the file holds the winner's digest."""
    with ThreadPoolExecutor(2) as pool:
        done = list(
            pool.map(
                lambda _: tokens(
                    "issue", "ana", "--role", "approver", "--config", str(config_file)
                ),
                range(2),
            )
        )
    codes = sorted(d.returncode for d in done)
    assert codes == [0, 2], [d.stderr for d in done]
    winner = next(d for d in done if d.returncode == 0)
    loser = next(d for d in done if d.returncode == 2)
    assert "'ana' exists already" in loser.stderr and loser.stdout == ""
    config = parse_config(config_file.read_text(), str(config_file), config_file.parent)
    (ana,) = [p for p in config.principals if p.name == "ana"]
    assert ana.token_sha256 == token_digest(winner.stdout.splitlines()[1])
    assert len(config.principals) == len(TOKENS) + 1


def test_edits_never_make_the_config_more_permissive(config_file: Path) -> None:
    """Holds: issue, rotate and revoke keep a 0600 config 0600 (and the lock 0600),
    and leave no temporary file behind."""
    for args in (
        ("issue", "ana", "--role", "approver"),
        ("rotate", "ana"),
        ("revoke", "ana"),
    ):
        done = tokens(*args, "--config", str(config_file))
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600, args
    lock = config_file.with_name(config_file.name + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) & 0o077 == 0
    assert not [p for p in config_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_revocation_through_a_symlinked_config_reaches_the_gateway(
    config_file: Path, tmp_path: Path
) -> None:
    """`tokens revoke --config LINK`, LINK a symlink to the file the gateway serves
    (as /etc/agentgw/agentgw.yaml to the real file), edits and locks the file it
    names, not the link: the gateway takes the revocation up."""
    link = tmp_path / "etc" / "agentgw.yaml"
    link.parent.mkdir()
    link.symlink_to(config_file)
    with start(config_file) as served:
        assert served.code(token_for("agent-2")) == grpc.StatusCode.OK
        served.mark()  # the file watcher may take the edit up before the SIGHUP does
        revoked = tokens("revoke", "agent-2", "--config", str(link))
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked agent-2" in revoked.stdout
        # What the gateway reads: the revocation must be there, else it never applies.
        assert "name: agent-2\n" not in config_file.read_text(encoding="utf-8"), (
            "the CLI reported the revocation, but the file the gateway serves still "
            f"lists agent-2 (the symlink became a regular file: {not link.is_symlink()})"
        )
        served.reload()
        assert served.code(token_for("agent-2")) == UNAUTHENTICATED


def test_a_world_writable_config_is_refused_on_reload(served: Served, config_file: Path) -> None:
    """The config is the credential store: whoever may write it may add an admin. A
    file every user may write is refused on reload (the principals in force stay,
    the reason is logged), so a principal appended to it is never taken."""
    config_file.chmod(0o666)
    intruder = principal_lines({"intruder": ("admin", "tok-intruder")})
    served.write(config_file.read_text(encoding="utf-8").replace("redis:\n", intruder + "redis:\n"))
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o666
    served.reload(RELOAD_FAILED)
    assert '"added":["intruder"]' not in served.text()
    assert "the config is writable by every user (mode 0666)" in served.text()
    assert served.code("tok-intruder", "alerts") == UNAUTHENTICATED
    assert served.code(token_for("admin-1"), "alerts") == grpc.StatusCode.OK
    served.mark()  # a chmod changes the ctime the watcher stamps: it may reload first
    config_file.chmod(0o600)  # put right, the file is read again
    served.reload()
    assert '"added":["intruder"]' in served.text()


def test_an_edit_keeps_the_configs_mode_whatever_the_umask(config_file: Path) -> None:
    """An edit keeps the file's mode whatever the caller's umask: `tokens revoke`
    under umask 077 leaves a 0640 config (read by the gateway through its group)
    0640, not 0600, which the gateway could no longer read."""
    config_file.chmod(0o640)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    revoke = ("tokens", "revoke", "agent-2", "--config", str(config_file))
    done = subprocess.run(
        ("sh", "-c", 'umask 077 && exec "$0" "$@"', AGENTGW, *revoke),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "agent-2" not in config_file.read_text(encoding="utf-8")
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o640


# ---------------------------------------------------------------------------
# Malformed credentials on the wire.
# ---------------------------------------------------------------------------


def holds_call(served: Served, header: str) -> tuple[grpc.StatusCode, str]:
    return refusal(lambda: served.unary("holds", (("authorization", header),)))


def test_malformed_authorization_headers_are_unauthenticated_never_another_principal(
    served: Served,
) -> None:
    """Holds: each odd header is UNAUTHENTICATED with a message that does not echo it,
    or (a lowercase scheme, extra spaces) authenticates as the token's own principal
    (shown by its PERMISSION_DENIED on an approver call naming it), never another."""
    agent = token_for("agent-1")
    admin_digest = token_digest(token_for("admin-1"))
    long_token = "x" * 6000
    refused = {
        "": "authorization metadata must be 'Bearer <token>'",
        "Bearer": "authorization metadata must be 'Bearer <token>'",
        agent: "authorization metadata must be 'Bearer <token>'",
        f"Basic {agent}": "authorization metadata must be 'Bearer <token>'",
        f"Bearer {admin_digest}": "unknown token",
        f"Bearer {agent}x": "unknown token",
        f"Bearer {agent} {token_for('admin-1')}": "unknown token",
        f"Bearer {long_token}": "unknown token",
        f"Bearer {hashlib.sha256(b'').hexdigest()}": "unknown token",
    }
    for header, message in refused.items():
        code, details = holds_call(served, header)
        assert (code, details) == (UNAUTHENTICATED, message), header[:80]
    for header in (f"bearer {agent}", f"BEARER {agent}", f"Bearer   {agent}"):
        code, details = holds_call(served, header)
        assert code == grpc.StatusCode.PERMISSION_DENIED, header
        assert details.startswith("principal 'agent-1' has role agent"), details
    assert long_token not in served.text() and admin_digest not in served.text()


def test_two_authorization_headers_are_refused(served: Served) -> None:
    """Two `authorization` headers are refused (UNAUTHENTICATED): behind a proxy
    or sidecar that adds its own, which principal a call ran as would depend on
    the headers' order."""
    both = (
        ("authorization", f"Bearer {token_for('agent-1')}"),
        ("authorization", f"Bearer {token_for('admin-1')}"),
    )
    code, details = refusal(lambda: served.unary("alerts", both))
    assert code == UNAUTHENTICATED, (code, details)


# ---------------------------------------------------------------------------
# Tokens in logs and the audit chain.
# ---------------------------------------------------------------------------


def test_an_issued_token_never_reaches_the_logs_or_the_audit_chain(served: Served) -> None:
    """Holds: a token issued while serving, used, refused for its role and mistyped,
    appears neither in the gateway's output (stderr logs) nor in the audit log."""
    token = served.tokens("issue", "billing-7", "--role", "agent").stdout.splitlines()[1]
    served.reload()
    assert served.code(token, "submit") == grpc.StatusCode.OK
    assert served.code(token, "holds") == grpc.StatusCode.PERMISSION_DENIED
    assert served.code(token[:-1], "submit") == UNAUTHENTICATED
    wait_for(lambda: "security_permission_denied" in served.export(), 30, "the refusal entry")
    assert token not in served.text() and token[:-1] not in served.text()
    exported = served.export()
    assert token not in exported and token[:-1] not in exported
    assert token_digest(token) not in served.text()


def test_an_agentgw_token_in_an_actions_text_is_redacted(served: Served) -> None:
    """An agentgw token (`agw_` and 43 URL-safe characters) in an action's free text
    is redacted before it reaches the append-only audit chain."""
    token = served.tokens("issue", "ops-approver", "--role", "approver").stdout.splitlines()[1]
    served.submit(
        "agent-1",
        "run_command",
        parameters=python_to_struct({"command": f"agentgw holds list # using {token}"}),
        reasoning=f"the approver shared {token} with me",
    )
    exported = served.export()
    assert "run_command" in exported
    assert token not in exported, "an agentgw token is stored in clear in the audit chain"

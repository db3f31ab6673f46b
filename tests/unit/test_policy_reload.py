"""Reloading: a valid change swaps the policy, an invalid one keeps the old and says why."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.domain.actions import Verdict
from gateway.domain.policy import default_policy
from gateway.errors import ConfigError
from gateway.services.policy_reload import PolicyReloader

VALID_ALLOW = "version: 1\ndefault_verdict: allow\nrules: []\n"
VALID_DENY = (
    "version: 1\ndefault_verdict: deny\nrules:\n  - name: hold-reads\n    verdict: hold\n"
    "    match: {action_type: 'read*'}\n"
)
INVALID = "version: 1\ndefault_verdict: allow\nrules:\n  - name: x\n    verdict: maybe\n"


def write(path: Path, text: str) -> None:
    """Write and move mtime forward, so the change shows even on coarse-mtime filesystems."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    write(path, VALID_ALLOW)
    return path


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def test_without_path_serves_default_policy_and_never_reloads() -> None:
    reloader = PolicyReloader(None)
    assert reloader.current is default_policy()
    assert reloader.reload() is False
    assert reloader.current is default_policy()


def test_loads_file_at_construction(policy_file: Path) -> None:
    reloader = PolicyReloader(policy_file)
    assert reloader.current.default_verdict is Verdict.ALLOW
    assert reloader.current.source == str(policy_file)


def test_invalid_file_at_construction_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(INVALID, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"policy.yaml:5: rules\[0\].verdict"):
        PolicyReloader(path)


def test_missing_file_at_construction_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy"):
        PolicyReloader(tmp_path / "absent.yaml")


def test_reload_swaps_in_a_valid_change_and_logs_its_digest(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = PolicyReloader(policy_file)
    write(policy_file, VALID_DENY)
    with caplog.at_level(logging.INFO, logger="agentgw.policy"):
        assert reloader.reload() is True
    assert reloader.current.default_verdict is Verdict.DENY
    assert [rule.name for rule in reloader.current.rules] == ["hold-reads"]
    [record] = records(caplog, "policy_reloaded")
    assert record.levelno == logging.INFO
    assert record.name == "agentgw.policy"
    assert getattr(record, "digest", None) == reloader.current.digest


def test_reload_of_unchanged_file_returns_false(policy_file: Path) -> None:
    reloader = PolicyReloader(policy_file)
    before = reloader.current
    write(policy_file, VALID_ALLOW)  # touched, same content
    assert reloader.reload() is False
    assert reloader.current is before


def test_reload_keeps_old_policy_on_invalid_file_and_logs_error(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = PolicyReloader(policy_file)
    before = reloader.current
    write(policy_file, INVALID)
    with caplog.at_level(logging.INFO, logger="agentgw.policy"):
        assert reloader.reload() is False
    assert reloader.current is before
    [record] = records(caplog, "policy_reload_failed")
    assert record.levelno == logging.ERROR
    error = getattr(record, "error", "")
    assert error.startswith(f"{policy_file}:5: rules[0].verdict: unknown verdict 'maybe'")
    assert records(caplog, "policy_reloaded") == []


def test_reload_keeps_old_policy_when_file_disappears(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = PolicyReloader(policy_file)
    before = reloader.current
    policy_file.unlink()
    with caplog.at_level(logging.INFO, logger="agentgw.policy"):
        assert reloader.reload() is False
    assert reloader.current is before
    assert len(records(caplog, "policy_reload_failed")) == 1


def test_reload_recovers_after_an_invalid_edit_is_fixed(policy_file: Path) -> None:
    reloader = PolicyReloader(policy_file)
    write(policy_file, INVALID)
    assert reloader.reload() is False
    write(policy_file, VALID_DENY)
    assert reloader.reload() is True
    assert reloader.current.default_verdict is Verdict.DENY


# -- watch() -------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


def test_watch_reloads_on_change_and_survives_invalid_edits(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = PolicyReloader(policy_file)
    first = reloader.current

    async def scenario() -> None:
        task = asyncio.create_task(reloader.watch(interval=0.01))
        try:
            write(policy_file, INVALID)
            await wait_until(lambda: bool(records(caplog, "policy_reload_failed")))
            assert reloader.current is first

            write(policy_file, VALID_DENY)
            await wait_until(lambda: reloader.current.default_verdict is Verdict.DENY)
            assert task.done() is False
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="agentgw.policy"):
        asyncio.run(scenario())
    # The invalid file was reported once, not on every poll while it stayed broken.
    assert len(records(caplog, "policy_reload_failed")) == 1
    assert len(records(caplog, "policy_reloaded")) == 1


def test_watch_notices_a_deleted_and_recreated_file(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = PolicyReloader(policy_file)

    async def scenario() -> None:
        task = asyncio.create_task(reloader.watch(interval=0.01))
        try:
            policy_file.unlink()
            await wait_until(lambda: bool(records(caplog, "policy_reload_failed")))
            assert reloader.current.default_verdict is Verdict.ALLOW
            write(policy_file, VALID_DENY)
            await wait_until(lambda: reloader.current.default_verdict is Verdict.DENY)
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="agentgw.policy"):
        asyncio.run(scenario())


def test_watch_without_path_waits_until_cancelled() -> None:
    reloader = PolicyReloader(None)

    async def scenario() -> None:
        task = asyncio.create_task(reloader.watch(interval=0.01))
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert reloader.current is default_policy()


def test_watch_notices_a_file_renamed_into_place_with_the_same_size_and_mtime(
    policy_file: Path,
) -> None:
    """What `cp -p` then `mv` does: only the inode tells the new file from the old."""
    reloader = PolicyReloader(policy_file)
    replacement = policy_file.with_name("policy.yaml.new")
    replacement.write_text(VALID_ALLOW.replace("allow", "deny "), encoding="utf-8")
    old = policy_file.stat()
    assert replacement.stat().st_size == old.st_size
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))

    async def scenario() -> None:
        task = asyncio.create_task(reloader.watch(interval=0.01))
        try:
            os.replace(replacement, policy_file)
            await wait_until(lambda: reloader.current.default_verdict is Verdict.DENY)
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())

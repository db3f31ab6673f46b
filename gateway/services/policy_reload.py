"""Hold the current policy and replace it when its file changes, keeping the old one on error.

Owns the policy's lifecycle after start-up: `reload()` re-reads the file (the app
calls it on SIGHUP) and `watch()` polls the file's modification time and size and
reloads on change. A new policy replaces the old only if it loads cleanly; a broken
edit is logged and the gateway keeps deciding with the last good policy. Only a
broken file at start-up is fatal. It never evaluates rules.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.domain.policy.loader import default_policy, load_policy_file
from gateway.domain.policy.model import Policy
from gateway.errors import ConfigError

logger = logging.getLogger("agentgw.policy")

_FileStamp = tuple[int, int] | None


class PolicyReloader:
    """The policy in force; with `path=None` it serves the default policy forever."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp = self._file_stamp()
        # A ConfigError here propagates: the gateway refuses to start on a bad policy.
        self._current = default_policy() if path is None else load_policy_file(path)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def current(self) -> Policy:
        return self._current

    def reload(self) -> bool:
        """Re-read the file; True if a new, valid, different policy is now in force."""
        if self._path is None:
            return False
        # Stamp before reading, so a write that lands during the read is seen as a
        # further change by watch() rather than lost.
        self._stamp = self._file_stamp()
        try:
            policy = load_policy_file(self._path)
        except ConfigError as exc:
            logger.error(
                "policy reload failed, keeping policy %s: %s",
                self._current.digest[:12],
                exc,
                extra={"event": "policy_reload_failed", "error": str(exc)},
            )
            return False
        if policy.digest == self._current.digest:
            return False
        self._current = policy
        logger.info(
            "policy reloaded from %s: %d rules, digest %s",
            policy.source,
            len(policy.rules),
            policy.digest,
            extra={"event": "policy_reloaded", "digest": policy.digest},
        )
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever the file's (mtime_ns, size) changes; runs until cancelled."""
        if self._path is None:
            # Nothing to watch, but the owner still gets a task it can cancel.
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(interval)
            # A stat, and on change a parse of a small file, is cheaper than a thread
            # hop, and keeping reload() on the loop thread means it never races the
            # SIGHUP handler, which also runs there.
            if self._file_stamp() != self._stamp:
                self.reload()

    def _file_stamp(self) -> _FileStamp:
        if self._path is None:
            return None
        try:
            stat = self._path.stat()
        except OSError:
            # A missing file is a state like any other: reload() reports it once.
            return None
        return (stat.st_mtime_ns, stat.st_size)

"""Hold the current policy and replace it when its file changes, keeping the old one on error.

Owns the policy's lifecycle after start-up: `reload()` re-reads the file (the app
calls it on SIGHUP) and `watch()` polls the file's modification time and size and
reloads on change. A new policy replaces the old only if it loads cleanly; a broken
edit is logged and the gateway keeps deciding with the last good policy. Only a
broken file at start-up is fatal. It never evaluates rules.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.domain.policy.loader import default_policy, load_policy_file
from gateway.domain.policy.model import Policy
from gateway.errors import ConfigError
from gateway.services.file_watch import WatchedFile

logger = logging.getLogger("agentgw.policy")


class PolicyReloader(WatchedFile):
    """The policy in force; with `path=None` it serves the default policy forever."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(path)
        # A ConfigError here propagates: the gateway refuses to start on a bad policy.
        self._current = default_policy() if path is None else load_policy_file(path)

    @property
    def current(self) -> Policy:
        return self._current

    def reload(self) -> bool:
        """Re-read the file; True if a new, valid, different policy is now in force."""
        if self._path is None:
            return False
        self._read_stamp()
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

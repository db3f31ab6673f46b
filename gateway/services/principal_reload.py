"""Take up the config file's principals while serving: issued, rotated and revoked tokens.

`agentgw tokens issue|rotate|revoke` (or an edit by hand) changes the principals in
the config file; `reload()` (on SIGHUP, and from `watch()` when the file changes)
reads them and, if the whole file is valid, puts them in force: a revoked or rotated
token is refused from then on. A broken file is logged and the principals in force
stay. Only the principals are taken up; any other change waits for a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gateway.domain.principals import Principal
from gateway.errors import ConfigError
from gateway.services.file_watch import WatchedFile

logger = logging.getLogger("agentgw.principals")

Principals = tuple[Principal, ...]


class PrincipalReloader(WatchedFile):
    def __init__(
        self,
        path: Path | None,
        current: Principals,
        read: Callable[[], Principals],
        apply: Callable[[Principals], None],
    ) -> None:
        super().__init__(path)
        self._current = current
        self._read = read
        self._apply = apply

    @property
    def current(self) -> Principals:
        return self._current

    def reload(self) -> bool:
        """True if the file's principals differ from those in force and now apply."""
        if self.path is None:
            return False
        self._read_stamp()
        try:
            principals = self._read()
        except ConfigError as exc:
            logger.error(
                "principals not reloaded, keeping the %d in force: %s",
                len(self._current),
                exc,
                extra={"event": "principals_reload_failed", "error": str(exc)},
            )
            return False
        if principals == self._current:
            return False
        before = {p.name: p for p in self._current}
        after = {p.name: p for p in principals}
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(n for n in after.keys() & before.keys() if after[n] != before[n])
        self._apply(principals)
        self._current = principals
        logger.info(
            "principals reloaded: %d in force",
            len(principals),
            extra={
                "event": "principals_reloaded",
                "added": added,
                "removed": removed,
                "changed": changed,
            },
        )
        return True

"""Watching a file the gateway reads while it runs (the policy, the config's principals).

`WatchedFile` keeps the file's stamp (inode, mtime, ctime, size); `watch()` polls it
and calls `reload()` when it changes: a file renamed into place with the same size and
an mtime kept from its copy is a change too (another inode). A subclass says what
reloading means, and keeps what is in force when the new content is bad. `reload()`
also runs on SIGHUP: both run on the event loop's thread, so they never race each
other.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

_FileStamp = tuple[int, int, int, int, int] | None


class WatchedFile:
    """A file, and the stamp it had when it was last read."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp = self._file_stamp()

    @property
    def path(self) -> Path | None:
        return self._path

    def reload(self) -> bool:
        raise NotImplementedError

    def _read_stamp(self) -> None:
        """Call before reading the file, so that a write that lands during the read
        is seen as a further change by watch() rather than lost."""
        self._stamp = self._file_stamp()

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever the file's stamp changes; runs until cancelled."""
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
        return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)

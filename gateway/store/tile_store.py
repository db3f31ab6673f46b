"""Where the sealed audit log lives: immutable files by tlog-tiles path.

`TileStore` is the one interface the log uses (read, write, identity), so an object
store can be added beside `DirectoryTileStore` without touching the log. Files are
written once and never changed: `write` of a path that exists succeeds only if the
bytes are the same (a sealer that crashed after writing is simply run again), and
refuses otherwise (TileConflict: the store and Redis disagree, which must never be
papered over). A directory store writes a temporary file, fsyncs it, links it into
place and fsyncs the folder (and each folder it creates, into its parent), so a
reader sees a whole file or none, also across a crash. Replicas on different hosts
must share one store (one directory on a shared file system, or one bucket); its
identity file (`agentgw-tile-store.json`) lets a replica tell that the store it has
is the one the log was sealed into.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

from gateway.domain.audit.tiles import parse_tile_path

IDENTITY_FILE = "agentgw-tile-store.json"


class TileStoreError(Exception):
    """The tile store cannot be read or written (full, unwritable, gone)."""


class TileConflict(TileStoreError):
    """A file exists with other bytes than the ones being written."""


class TileStore:
    """Immutable files by tlog-tiles path (`tile/0/000`, `tile/entries/x001/234`, ...)."""

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None if it does not exist; TileStoreError on failure."""
        raise NotImplementedError

    def write(self, path: str, data: bytes) -> None:
        """Creates the file durably; the same bytes again succeed, others conflict."""
        raise NotImplementedError

    def identity(self, create: bool) -> str | None:
        """The store's id (None when it has none and `create` is False)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class DirectoryTileStore(TileStore):
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _file(self, path: str) -> Path:
        parse_tile_path(path)  # only tile paths: nothing outside the root
        return self.root / path

    def read(self, path: str) -> bytes | None:
        try:
            return self._file(path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TileStoreError(f"tile store {self.root}: reading {path}: {e.strerror}") from e

    def write(self, path: str, data: bytes) -> None:
        target = self._file(path)
        try:
            existing = target.read_bytes()
        except FileNotFoundError:
            existing = None
        except OSError as e:
            raise TileStoreError(f"tile store {self.root}: reading {path}: {e.strerror}") from e
        if existing is not None:
            if existing != data:
                raise TileConflict(
                    f"tile store {self.root}: {path} exists with other bytes than the log's"
                )
            # Written by a sealer that may have died before it fsynced the folder: the
            # caller is about to record it as sealed, so make its name durable now.
            try:
                _fsync_folder(target.parent)
            except OSError as e:
                raise TileStoreError(f"tile store {self.root}: syncing {path}: {e.strerror}") from e
            return
        try:
            _write_durably(target, data)
        except FileExistsError:
            # Another sealer renamed its copy in first: it must be the same bytes.
            if target.read_bytes() != data:
                raise TileConflict(
                    f"tile store {self.root}: {path} exists with other bytes than the log's"
                ) from None
        except OSError as e:
            raise TileStoreError(f"tile store {self.root}: writing {path}: {e.strerror}") from e

    def identity(self, create: bool) -> str | None:
        marker = self.root / IDENTITY_FILE
        try:
            return str(json.loads(marker.read_text(encoding="utf-8"))["store_id"])
        except FileNotFoundError:
            if not create:
                return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TileStoreError(f"tile store {self.root}: {IDENTITY_FILE}: {e}") from e
        document = json.dumps({"store_id": secrets.token_hex(16)}).encode()
        try:
            _write_durably(marker, document)
        except FileExistsError:
            pass  # another replica made it first: theirs stands
        except OSError as e:
            raise TileStoreError(f"tile store {self.root}: {IDENTITY_FILE}: {e.strerror}") from e
        return self.identity(create=False)


def _write_durably(target: Path, data: bytes) -> None:
    """A temporary file beside `target`, fsynced, linked into place (FileExistsError
    if `target` exists), the folder fsynced: a whole file or none, after a crash too."""
    _make_folders(target.parent)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _fsync_folder(target.parent)


def _make_folders(folder: Path) -> None:
    """`folder` and its missing parents, each fsynced into its parent: a file fsynced
    into a folder whose own name a crash loses is lost with it."""
    if folder.is_dir():
        return
    _make_folders(folder.parent)
    with contextlib.suppress(FileExistsError):  # made meanwhile; a file there fails later
        folder.mkdir()
    _fsync_folder(folder.parent)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

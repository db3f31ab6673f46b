"""The audit log as tlog-tiles files (https://c2sp.org/tlog-tiles), for the tile server.

`TileFiles.read` answers a path with its bytes for the log as it is now: `checkpoint`
is the latest published checkpoint note; a full tile, entry bundle or `lines` file is
read from the tile store once it is sealed, and built from Redis before (a full tile
whose 256 entries exist but wait to be sealed too); a partial one (`.p/W`) is the
first W hashes, entries or lines of its tile, from Redis or from the sealed full file.
Nodes and entries never change once written, so a partial file of width W is the
prefix of whatever its tile holds now: it is served whenever the log has the entries
it needs, and agrees with every checkpoint of a size that has them. Anything beyond
the head is absent (None). Nothing is cached: a sealed file is one read of the store.
It reads, never writes, and knows nothing of HTTP (gateway/api/tile_server.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.audit.tiles import (
    TILE_WIDTH,
    TileError,
    TilePath,
    check_full_file,
    encode_bundle,
    encode_lines,
    encode_tile,
    entry_data,
    file_prefix,
    full_file,
    leaves_needed,
    parse_tile_path,
    tile_nodes,
)
from gateway.errors import InvalidRequest, StoreUnavailable
from gateway.store.audit_log import AuditLog
from gateway.store.sealed_log import SealedLog, Sealer

CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class TileFile:
    """A file's bytes; `immutable` for a full tile or bundle (the same bytes forever),
    `note` for the checkpoint (text)."""

    data: bytes
    immutable: bool
    note: bool = False


class TileFiles:
    def __init__(self, audit: AuditLog, sealer: Sealer) -> None:
        self.audit = audit
        self.sealer = sealer  # its state: the head and the sealed size; its store
        self._store = SealedLog(sealer.store)

    async def read(self, path: str) -> TileFile | None:
        """The file at `path`, or None if the log has no such file (yet).

        InvalidRequest for a path under tile/ or lines/ that is not a tile path written
        the one way; StoreUnavailable when Redis or the tile store fails, or what they
        hold is not a log."""
        if path == CHECKPOINT:
            note = (await self.audit.published_checkpoint()).note
            return TileFile(note.encode("utf-8"), immutable=False, note=True)
        if not path.startswith(("tile/", "lines/")):
            return None
        try:
            tile = parse_tile_path(path)
        except TileError as e:
            raise InvalidRequest("path", str(e)) from None
        state = await self.sealer.state()
        if leaves_needed(tile) > state.head:
            return None
        try:
            if leaves_needed(full_file(tile)) <= state.size:
                data = await self._store.file(str(full_file(tile)))
                if tile.partial:
                    data = file_prefix(tile, data)
                else:
                    check_full_file(tile, data)
            else:
                data = await self._built(tile)
        except TileError as e:
            raise StoreUnavailable(f"{tile}: the stored log is not sound: {e}") from e
        return TileFile(data, immutable=not tile.partial)

    async def _built(self, tile: TilePath) -> bytes:
        """The file from Redis (AuditLog's reads, which fall back to the tile store
        for what sealing has trimmed)."""
        if tile.kind == "tile":
            wanted = tile_nodes(tile.level, tile.index, tile.width)
            nodes = await self.audit.read_nodes(wanted)
            return encode_tile([nodes[node] for node in wanted])
        first = tile.index * TILE_WIDTH + 1
        lines = await self.audit.read_lines(first, first + tile.width - 1)
        if len(lines) != tile.width:
            last = first + tile.width - 1
            raise StoreUnavailable(
                f"{tile}: the audit log has {len(lines)} of entries {first}..{last}"
            )
        if tile.kind == "lines":
            return encode_lines(lines)
        return encode_bundle([entry_data(line) for line in lines])

"""Sealing the audit log into the tile store, and reading what Redis no longer holds.

`Sealer.seal_once` seals the next 256 entries when the log has them, in this order:

1. take the seal lease (`audit_seal_lease`, SET NX with a TTL): one replica seals at
   a time; the others wait for the lease or for the next tile. A replica checks its
   store's identity before (so one on another store never takes it), reads the
   sealed size again under it, and gives it up when sealing fails;
2. read the 256 entries and their leaf hashes from Redis and check them against
   each other (each line's C hashes to its stored leaf; each entry's prev_hash is
   the entry hash before it): tiles are immutable, so nothing unsound goes in;
3. write, each durably (tile_store.py): the entry bundle `tile/entries/<N>`, the
   export lines `lines/<N>`, the hash tile `tile/0/<N>`, and each higher-level tile
   this one completes (`tile/1/<M>` every 65,536 entries, ...);
4. run seal.lua: if the caller still holds the lease and the sealed size is still
   the one it started from, record the new sealed size and trim from Redis the
   entries (beyond the margin) and tree nodes the tiles now hold.

A crash anywhere leaves a state the next sealer continues from: before step 4 the
sealed size is unchanged and the files it finds are the same bytes it would write
(written again as a no-op; other bytes are a TileConflict, never overwritten);
after step 4 the next tile is next. The lease only spares duplicate work: the
compare-and-set of step 4 is what makes each tile sealed exactly once.

`SealedLog` reads entries and tree nodes of the sealed part from the store (export
lines by bundle, nodes from their hash tiles), with a small cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from gateway.domain.audit.entry import GENESIS_HASH, read_export_object, read_signed_line
from gateway.domain.audit.merkle import NodeId, leaf_hash_of
from gateway.domain.audit.tiles import (
    TILE_WIDTH,
    TileError,
    decode_lines,
    decode_tile,
    encode_bundle,
    encode_lines,
    encode_tile,
    entries_path,
    lines_path,
    node_from_tile,
    nodes_below_tile,
    tile_nodes,
    tile_of,
    tile_path,
    tiles_completed,
)
from gateway.errors import StoreUnavailable
from gateway.store.connection import load_script, unavailable_on_error
from gateway.store.keys import KeySpace
from gateway.store.tile_store import TileStore, TileStoreError

log = logging.getLogger("agentgw.audit.tiles")

LEASE_SECONDS = 30.0
CACHED_BUNDLES = 8
CACHED_TILES = 64


class SealedReads(Protocol):
    """What the audit log reads from the sealed part (AuditLog.sealed)."""

    async def lines(self, start_seq: int, end_seq: int) -> list[str]: ...

    async def nodes(self, ids: Sequence[NodeId]) -> dict[NodeId, bytes]: ...


class SealError(Exception):
    """Sealing cannot go on (the entries disagree with their hashes, another store)."""


class WrongTileStore(SealError):
    """This replica's tile store is not the one the log is sealed into."""


@dataclass(frozen=True)
class SealedState:
    size: int  # entries in the tile store
    trimmed: int  # entries gone from the front of the Redis list
    store_id: str | None
    head: int  # entries in the log

    @property
    def unsealed(self) -> int:
        return self.head - self.size


def node_field(node: NodeId) -> str:
    return f"{node[0]}:{node[1]}"


class SealedLog:
    """Reads of the sealed part of the log from the tile store."""

    def __init__(self, store: TileStore) -> None:
        self.store = store
        self._bundles: OrderedDict[int, list[str]] = OrderedDict()
        self._tiles: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()

    async def lines(self, start_seq: int, end_seq: int) -> list[str]:
        """Export lines start_seq..end_seq, all sealed."""
        out: list[str] = []
        for bundle in range((start_seq - 1) // TILE_WIDTH, (end_seq - 1) // TILE_WIDTH + 1):
            lines = await self._bundle(bundle)
            first = bundle * TILE_WIDTH + 1
            out += lines[max(start_seq, first) - first : end_seq - first + 1]
        return out

    async def nodes(self, ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
        found = {}
        for node in ids:
            level, index, _, _ = tile_of(node)
            found[node] = node_from_tile(node, await self._tile(level, index))
        return found

    async def _bundle(self, index: int) -> list[str]:
        if index in self._bundles:
            self._bundles.move_to_end(index)
            return self._bundles[index]
        data = await self.file(lines_path(index))
        try:
            lines = decode_lines(data)
        except (TileError, UnicodeDecodeError) as e:
            raise StoreUnavailable(f"tile store: {lines_path(index)} is malformed: {e}") from e
        if len(lines) != TILE_WIDTH:
            raise StoreUnavailable(f"tile store: {lines_path(index)} holds {len(lines)} lines")
        _remember(self._bundles, index, lines, CACHED_BUNDLES)
        return lines

    async def _tile(self, level: int, index: int) -> list[bytes]:
        key = (level, index)
        if key in self._tiles:
            self._tiles.move_to_end(key)
            return self._tiles[key]
        path = tile_path(level, index)
        try:
            hashes = decode_tile(await self.file(path))
        except TileError as e:
            raise StoreUnavailable(f"tile store: {path} is malformed: {e}") from e
        _remember(self._tiles, key, hashes, CACHED_TILES)
        return hashes

    async def file(self, path: str) -> bytes:
        """A sealed file's bytes; StoreUnavailable if the store fails or lacks it."""
        try:
            data = await asyncio.to_thread(self.store.read, path)
        except TileStoreError as e:
            raise StoreUnavailable(str(e)) from e
        if data is None:
            raise StoreUnavailable(
                f"tile store {self.store.describe()} has no {path}, which the log was sealed "
                "into: is it the store the replicas share (audit.tiles.dir)?"
            )
        return data


def _remember(cache: OrderedDict, key: object, value: object, size: int) -> None:  # type: ignore[type-arg]
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


class Sealer:
    """Seals the log 256 entries at a time (see the module's docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySpace,
        store: TileStore,
        margin_entries: int = 0,
        lease_seconds: float = LEASE_SECONDS,
        owner: str | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.store = store
        self.margin = margin_entries
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self.owner = owner or secrets.token_hex(8)
        self._seal = load_script(client, "seal")
        self._lease = load_script(client, "seal_lease")
        self.sealed = 0  # tiles this sealer sealed (for tests and logs)
        self.last_state = SealedState(0, 0, None, 0)  # as `state` last read it
        # Called between the steps (for tests that stop a sealer there).
        self.on_step: Callable[[str], None] = lambda step: None

    async def state(self) -> SealedState:
        """The sealed log and the head, in one round trip (both in the {audit} slot);
        kept as `last_state`."""
        with unavailable_on_error("reading the sealed log"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(self.keys.audit_sealed, ["size", "trimmed", "store_id"])
                pipe.hget(self.keys.audit_head, "seq")
                (size, trimmed, store_id), head = await pipe.execute()
        self.last_state = SealedState(
            int(str(size or 0)),
            int(str(trimmed or 0)),
            None if store_id is None else str(store_id),
            int(str(head or 0)),
        )
        return self.last_state

    async def seal_all(self) -> int:
        """Seals tiles while the log has 256 unsealed entries; returns how many."""
        done = 0
        while await self.seal_once():
            done += 1
        return done

    async def seal_once(self) -> bool:
        """Seals the next tile if 256 entries wait and this sealer gets the lease.
        True if it sealed one; SealError / StoreUnavailable when it cannot."""
        state = await self.state()
        if state.store_id is not None:
            # Every round, whether or not a tile waits: a replica on another store says
            # so (readiness) before it serves reads, and never takes the others' lease.
            await self._store_id(state.store_id)
        if state.unsealed < TILE_WIDTH or not await self._take_lease():
            return False
        try:
            return await self._seal_next()
        except (SealError, TileStoreError, TileError):
            # A lease kept by a sealer that fails would be renewed by it every round,
            # and no replica whose store works could seal: give it up.
            with contextlib.suppress(StoreUnavailable):
                await self.release()
            raise

    async def _seal_next(self) -> bool:
        """Steps 2 to 4, under the lease."""
        self.on_step("lease")
        # Read again under the lease: another sealer may have sealed (and trimmed)
        # since the first read, before its lease ended.
        state = await self.state()
        if state.unsealed < TILE_WIDTH:
            return False
        store_id = await self._store_id(state.store_id)
        start = state.size
        lines, leaves = await self._read_tile_inputs(state)
        canonical = _check_entries(lines, leaves, start, await self._previous_hash(state))
        new_size = start + TILE_WIDTH
        files = [
            (entries_path(start // TILE_WIDTH), encode_bundle(canonical)),
            (lines_path(start // TILE_WIDTH), encode_lines(lines)),
            (tile_path(0, start // TILE_WIDTH), encode_tile(leaves)),
        ]
        completed = tiles_completed(new_size)
        for level, index in completed[1:]:
            files.append((tile_path(level, index), encode_tile(await self._hashes(level, index))))
        for path, data in files:
            await self._write(path, data)
            self.on_step(f"wrote {path}")
        trimmed_nodes = [node_field(n) for tile in completed for n in nodes_below_tile(*tile)]
        with unavailable_on_error("recording the sealed size"):
            reply = await self._seal(
                keys=[
                    self.keys.audit_sealed,
                    self.keys.audit_seal_lease,
                    self.keys.audit_entries,
                    self.keys.audit_tree,
                ],
                args=[self.owner, start, new_size, store_id, self.margin, *trimmed_nodes],
            )
        self.on_step("recorded")
        status = str(reply[0])
        if status == "store":
            raise WrongTileStore(
                f"the audit log is sealed into tile store {reply[1]}, not this replica's "
                f"{self.store.describe()} ({store_id}): mount the shared store"
            )
        if status != "ok":
            return status == "moved"  # another sealer was first: look again
        self.sealed += 1
        log.info(
            "sealed audit entries %d..%d into tiles",
            start + 1,
            new_size,
            extra={"sealed_size": new_size, "trimmed": int(reply[1]), "tiles": len(files)},
        )
        return True

    async def _take_lease(self) -> bool:
        with unavailable_on_error("taking the seal lease"):
            held = await self._lease(
                keys=[self.keys.audit_seal_lease], args=["take", self.owner, self.lease_ms]
            )
        return bool(int(held))

    async def release(self) -> None:
        """Gives the lease up (at stop, or when sealing failed), if this sealer holds it."""
        with unavailable_on_error("releasing the seal lease"):
            await self._lease(keys=[self.keys.audit_seal_lease], args=["release", self.owner])

    async def _store_id(self, sealed_into: str | None) -> str:
        own = await asyncio.to_thread(self.store.identity, sealed_into is None)
        if own is None or (sealed_into is not None and own != sealed_into):
            raise WrongTileStore(
                f"the audit log is sealed into tile store {sealed_into}; this replica's "
                f"{self.store.describe()} is {own or 'a store without an identity'}: mount "
                "the store the replicas share (audit.tiles.dir)"
            )
        return own

    async def _read_tile_inputs(self, state: SealedState) -> tuple[list[str], list[bytes]]:
        """The next 256 export lines and their stored leaf hashes."""
        start = state.size
        first = start - state.trimmed  # the list's index of entry start + 1
        leaves = tile_nodes(0, start // TILE_WIDTH)
        with unavailable_on_error("reading entries to seal"):
            lines = await self.client.lrange(self.keys.audit_entries, first, first + TILE_WIDTH - 1)
            values = await self.client.hmget(self.keys.audit_tree, [node_field(n) for n in leaves])
        if len(lines) != TILE_WIDTH or any(v is None for v in values):
            raise SealError(f"entries {start + 1}..{start + TILE_WIDTH} are not all in Redis")
        hashes = _node_hashes(values, tile_path(0, start // TILE_WIDTH))
        return [str(line) for line in lines], hashes

    async def _previous_hash(self, state: SealedState) -> str:
        """The entry hash of the entry before the tile (the genesis hash for the first)."""
        if state.size == 0:
            return GENESIS_HASH
        if state.size > state.trimmed:
            with unavailable_on_error("reading entries to seal"):
                line = await self.client.lindex(
                    self.keys.audit_entries, state.size - 1 - state.trimmed
                )
        else:
            try:
                (line,) = await SealedLog(self.store).lines(state.size, state.size)
            except StoreUnavailable as e:
                # The tile store failed, not Redis: sealing fails loudly (services/sealing.py).
                raise TileStoreError(str(e)) from e
        try:
            return str(json.loads(str(line))["entry_hash"])
        except (ValueError, KeyError, TypeError) as e:
            raise SealError(f"entry {state.size} is not a sound export line: {e}") from e

    async def _hashes(self, level: int, index: int) -> list[bytes]:
        """The 256 hashes of a higher-level tile, from the tree nodes in Redis."""
        nodes = tile_nodes(level, index)
        with unavailable_on_error("reading tree nodes to seal"):
            values = await self.client.hmget(self.keys.audit_tree, [node_field(n) for n in nodes])
        if any(v is None for v in values):
            raise SealError(f"the nodes of {tile_path(level, index)} are not all in Redis")
        return _node_hashes(values, tile_path(level, index))

    async def _write(self, path: str, data: bytes) -> None:
        await asyncio.to_thread(self.store.write, path, data)  # TileStoreError: the store


def _node_hashes(values: Sequence[object], tile: str) -> list[bytes]:
    """Stored tree nodes as bytes; SealError (loud, not a crash of the sealer's loop)
    if one is not hex. A wrong length is encode_tile's TileError."""
    try:
        return [bytes.fromhex(str(v)) for v in values]
    except ValueError as e:
        raise SealError(f"a tree node of {tile} in Redis is malformed: {e}") from e


def _check_entries(
    lines: Sequence[str], leaves: Sequence[bytes], start: int, previous: str
) -> list[bytes]:
    """Each line's canonical bytes C, after checking that C hashes to the stored leaf
    and that the entries chain (seq and prev_hash): a tile is never written from
    entries that disagree with the tree, or with each other."""
    out = []
    for offset, (line, leaf) in enumerate(zip(lines, leaves, strict=True)):
        seq = start + offset + 1
        signed = read_signed_line(line)
        if signed is not None:
            entry_seq, prev, entry_hash, canonical = (
                signed.seq,
                signed.prev_hash,
                signed.entry_hash,
                signed.canonical,
            )
        else:
            try:
                entry, canonical = read_export_object(json.loads(line), line)
            except ValueError as e:
                raise SealError(f"entry {seq} is not a sound export line: {e}") from e
            entry_seq, prev, entry_hash = entry.seq, entry.prev_hash, entry.entry_hash
        if entry_seq != seq or prev != previous:
            raise SealError(f"entry {seq} does not follow entry {seq - 1} in the chain")
        if leaf_hash_of(canonical) != leaf:
            raise SealError(f"entry {seq} does not hash to its stored Merkle leaf")
        out.append(canonical)
        previous = entry_hash
    return out


__all__ = ["SealError", "SealedLog", "SealedReads", "SealedState", "Sealer", "WrongTileStore"]

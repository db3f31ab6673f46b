"""The audit log in Redis: group-committed, compare-and-append, many writers.

One writer task per gateway process takes every queued commit, chains and signs
the entries on top of the head it last saw, and appends them with their state
changes in one `commit.lua` call. If another replica appended first, the script
answers with the new head and the batch is rebuilt on it, so replicas never fork
the chain or leave gaps. A commit resolves only after Redis has applied it.

The same call stores every Merkle tree node the entries complete (the roots of
perfect subtrees, in the hash `audit_tree`), so inclusion and consistency proofs
are served from O(log n) stored hashes in one read, never by rehashing entries.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gateway.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.audit.entry import (
    GENESIS_HASH,
    AuditEntry,
    EntryDraft,
    build_entry,
    format_timestamp,
    leaf_hash,
)
from gateway.audit.keys import Signer
from gateway.audit.merkle import (
    HASH_SIZE,
    CompactRange,
    NodeId,
    consistency_plan,
    fold_subtrees,
    inclusion_plan,
    root_nodes,
)
from gateway.errors import Conflict, InvalidRequest, StoreUnavailable
from gateway.store.connection import load_script, unavailable_on_error
from gateway.store.keys import KeySpace
from gateway.store.state import Mutation

log = logging.getLogger("agentgw.audit")

MAX_BATCH = 256
MAX_ATTEMPTS = 20

TreeNode = tuple[int, int, bytes]  # (level, index, hash), as CompactRange.append returns


def node_field(node: NodeId) -> str:
    """The field of a tree node in the `audit_tree` hash: "<level>:<index>"."""
    return f"{node[0]}:{node[1]}"


@dataclass(frozen=True)
class InclusionProof:
    """RFC 6962 PATH for entry `seq` (leaf `seq - 1`) in the tree of `tree_size` entries."""

    seq: int
    tree_size: int
    hashes: tuple[bytes, ...]
    root_hash: bytes
    leaf_hash: bytes

    @property
    def leaf_index(self) -> int:
        return self.seq - 1


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 6962 PROOF that the tree of `new_size` entries extends the one of `old_size`."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]
    old_root: bytes
    new_root: bytes


@dataclass
class Head:
    seq: int
    hash: str
    tree: CompactRange

    def copy(self) -> Head:
        return Head(
            self.seq, self.hash, CompactRange.from_hex_list(self.tree.size, self.tree.to_hex_list())
        )


@dataclass
class _Pending:
    drafts: list[EntryDraft]
    mutation: Mutation
    conflict: str
    future: asyncio.Future[list[AuditEntry]] = field(repr=False)


class AuditLog:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySpace,
        signer: Signer,
        origin: str,
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.keys = keys
        self.signer = signer
        self.origin = origin
        self.clock = clock
        self._script = load_script(client, "commit")
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._head: Head | None = None
        self.batches = 0  # counted for the benchmark and tests of group commit

    async def commit(
        self, drafts: list[EntryDraft], mutation: Mutation, conflict: str = "state changed"
    ) -> list[AuditEntry]:
        """Appends entries and applies `mutation` atomically; returns the stored entries.

        Raises Conflict(conflict) when a check of the mutation does not hold, and
        StoreUnavailable when Redis cannot take the write.
        """
        future: asyncio.Future[list[AuditEntry]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(drafts, mutation, conflict, future))
        self._wakeup.set()
        return await asyncio.shield(future)

    async def run(self) -> None:
        """The writer task (owned by the app). Cancel it after the queue is drained."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._write(batch)
                except Exception as e:  # the writer must survive anything; callers fail closed
                    log.exception("audit writer failed", extra={"event": "audit_write_failed"})
                    self._head = None
                    _fail(batch, StoreUnavailable(f"audit log write failed: {e}"))

    async def _read_head(self) -> Head:
        with unavailable_on_error("reading the audit head"):
            seq, hash_, frontier = await self.client.hmget(
                self.keys.audit_head, ["seq", "hash", "frontier"]
            )
        return _head_from(seq, hash_, frontier)

    async def _write(self, batch: list[_Pending]) -> None:
        for _ in range(MAX_ATTEMPTS):
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                return
            if self._head is None:
                try:
                    self._head = await self._read_head()
                except StoreUnavailable as e:
                    _fail(batch, e)
                    return
            start = self._head
            head, built, nodes = self._chain(start, batch)
            keys, payload = _script_arguments(self.keys, head, batch, built, nodes)
            try:
                with unavailable_on_error("appending to the audit log"):
                    reply = await self._script(keys=keys, args=[start.seq, payload])
            except StoreUnavailable as e:
                # The write may or may not have landed; re-read the head next time.
                self._head = None
                _fail(batch, e)
                return
            status = reply[0]
            if status == "ok":
                self._head = head
                self.batches += 1
                for pending, entries in zip(batch, built, strict=True):
                    pending.future.set_result(entries)
                return
            if status == "moved":
                self._head = _head_from(reply[1], reply[2], reply[3])
                continue
            position = int(reply[1]) - 1
            culprit = batch.pop(position)
            if status == "failed":
                culprit.future.set_exception(Conflict(culprit.conflict))
            else:  # "retry": it depends on a write earlier in this batch
                self._queue.insert(0, culprit)
                self._wakeup.set()
        _fail(batch, StoreUnavailable("audit log append kept conflicting with other writers"))

    def _chain(
        self, start: Head, batch: list[_Pending]
    ) -> tuple[Head, list[list[AuditEntry]], list[TreeNode]]:
        """Signs and links the batch's entries on top of `start`.

        Returns the new head, the entries per pending commit, and the Merkle tree
        nodes (level, index, hash) the entries complete, stored with them.
        """
        head = start.copy()
        built: list[list[AuditEntry]] = []
        nodes: list[TreeNode] = []
        for pending in batch:
            entries = []
            for draft in pending.drafts:
                entry = build_entry(draft, head.seq + 1, head.hash, self.signer)
                nodes += head.tree.append(leaf_hash(entry))
                head.seq, head.hash = entry.seq, entry.entry_hash
                entries.append(entry)
            built.append(entries)
        return head, built, nodes

    async def head(self) -> Head:
        """The current head as stored in Redis (not this process's cached view)."""
        return await self._read_head()

    async def checkpoint(self) -> tuple[Checkpoint, str]:
        head = await self._read_head()
        cp = Checkpoint(
            origin=self.origin,
            size=head.seq,
            root_hash=head.tree.root(),
            head_hash=head.hash,
            timestamp=format_timestamp(self.clock()),
        )
        return cp, sign_checkpoint(cp, self.signer)

    async def read_lines(self, start_seq: int, end_seq: int) -> list[str]:
        """Entries start_seq..end_seq inclusive, as stored (JSON lines)."""
        with unavailable_on_error("reading audit entries"):
            lines = await self.client.lrange(self.keys.audit_entries, start_seq - 1, end_seq - 1)
        return [str(line) for line in lines]

    async def inclusion_proof(self, seq: int, tree_size: int) -> InclusionProof:
        """Proof that entry `seq` is in the tree of `tree_size` entries (0: the head).

        Two reads: the head's size, then one HMGET of the O(log n) stored nodes that
        make up the proof, the leaf and the root. Nodes never change once written.
        """
        if seq < 1:
            raise InvalidRequest("seq", "must be >= 1")
        head_size = await self._head_size()
        if tree_size > head_size:
            raise InvalidRequest("tree_size", f"{tree_size} is beyond the log's size {head_size}")
        size = tree_size or head_size
        if seq > size:
            raise InvalidRequest("seq", f"{seq} is beyond tree size {size}")
        plan, leaf, root = inclusion_plan(seq - 1, size), (0, seq - 1), root_nodes(size)
        nodes = await self._read_nodes([leaf, *plan.node_ids, *root])
        return InclusionProof(
            seq=seq,
            tree_size=size,
            hashes=tuple(plan.assemble(nodes)),
            root_hash=fold_subtrees([nodes[node] for node in root]),
            leaf_hash=nodes[leaf],
        )

    async def consistency_proof(self, old_size: int, new_size: int) -> ConsistencyProof:
        """Proof that the tree of `new_size` entries (0: the head) extends `old_size`'s."""
        head_size = await self._head_size()
        if new_size > head_size:
            raise InvalidRequest("new_size", f"{new_size} is beyond the log's size {head_size}")
        size = new_size or head_size
        if old_size > size:
            raise InvalidRequest("old_size", f"{old_size} is larger than new_size {size}")
        plan = consistency_plan(old_size, size)
        old_root, new_root = root_nodes(old_size), root_nodes(size)
        nodes = await self._read_nodes([*plan.node_ids, *old_root, *new_root])
        return ConsistencyProof(
            old_size=old_size,
            new_size=size,
            hashes=tuple(plan.assemble(nodes)),
            old_root=fold_subtrees([nodes[node] for node in old_root]),
            new_root=fold_subtrees([nodes[node] for node in new_root]),
        )

    async def _head_size(self) -> int:
        with unavailable_on_error("reading the audit head"):
            seq = await self.client.hget(self.keys.audit_head, "seq")
        return int(str(seq or 0))

    async def _read_nodes(self, wanted: list[NodeId]) -> dict[NodeId, bytes]:
        """The stored tree nodes `wanted`, with one HMGET; Conflict if one is missing."""
        ids = list(dict.fromkeys(wanted))
        if not ids:
            return {}
        with unavailable_on_error("reading audit tree nodes"):
            values = await self.client.hmget(self.keys.audit_tree, [node_field(n) for n in ids])
        nodes: dict[NodeId, bytes] = {}
        for node, value in zip(ids, values, strict=True):
            try:
                nodes[node] = bytes.fromhex(str(value)) if value is not None else b""
            except ValueError:
                nodes[node] = b""
            if len(nodes[node]) != HASH_SIZE:
                # Entries appended before tree nodes were stored have none.
                raise Conflict(f"audit tree node {node_field(node)} is missing or malformed")
        return nodes


def _script_arguments(
    keyspace: KeySpace,
    head: Head,
    batch: list[_Pending],
    built: list[list[AuditEntry]],
    nodes: list[TreeNode],
) -> tuple[list[str], str]:
    """KEYS and the JSON argument of commit.lua; ops name their keys by KEYS index."""
    key_index: dict[str, int] = {
        keyspace.audit_head: 1,
        keyspace.audit_entries: 2,
        keyspace.audit_tree: 3,
    }

    def index(key: str) -> int:
        return key_index.setdefault(key, len(key_index) + 1)

    items = []
    for pending, entries in zip(batch, built, strict=True):
        checks = [[index(c[0]), *c[1:]] for c in pending.mutation.checks]
        ops = [
            [op[0], op[1] if op[0] == "publish" else index(op[1])]
            + [v(entries) if callable(v) else v for v in op[2:]]
            for op in pending.mutation.ops
        ]
        items.append({"entries": [e.to_json_line() for e in entries], "checks": checks, "ops": ops})
    payload = {
        "head": {"seq": head.seq, "hash": head.hash, "frontier": head.tree.to_hex_list()},
        "nodes": [v for level, i, h in nodes for v in (node_field((level, i)), h.hex())],
        "items": items,
    }
    return list(key_index), json.dumps(payload, ensure_ascii=False)


def _head_from(seq: object, hash_: object, frontier: object) -> Head:
    size = int(str(seq or 0))
    hashes = json.loads(str(frontier)) if frontier else []
    return Head(size, str(hash_ or GENESIS_HASH), CompactRange.from_hex_list(size, hashes))


def _fail(batch: list[_Pending], error: Exception) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)

"""The audit log in Redis: group-committed, compare-and-append, many writers.

One writer task per gateway process takes every queued commit, has the audit
domain chain and sign the entries on top of the head it last saw
(`gateway.domain.audit.chain.extend`), and appends them with their state changes
in one `commit.lua` call. If another replica appended first, the script
answers with the new head and the batch is rebuilt on it, so replicas never fork
the chain or leave gaps. A commit resolves only after Redis has applied it.

The same call stores every Merkle tree node the entries complete (the roots of
perfect subtrees, in the hash `audit_tree`), so inclusion and consistency proofs
are served from O(log n) stored hashes in one read, never by rehashing entries.

The head names the key that signs the next entry. A key rotation is an entry signed
by the old key that moves the head to the new key, and the key history (each key
with its first and last seq) is written in the same call, so every replica signs
with the key the head names or not at all.

With `ReplicaAcks` (`redis.min_replicas_acked` > 0), an append resolves only once
WAIT says that many replicas have it; fewer within the timeout fail the batch with
`OutcomeUnknown`, since the entry is on the master and may or may not survive a
failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gateway.domain.audit.chain import (
    Extension,
    Head,
    KeyIntroduced,
    KeyRetired,
    Segment,
    SignedCheckpoint,
    consistency_range,
    extend,
    inclusion_range,
    sign_head,
)
from gateway.domain.audit.checkpoint import CheckpointError, parse_checkpoint
from gateway.domain.audit.entry import (
    GENESIS_HASH,
    MAX_ENTRY_BYTES,
    AuditEntry,
    EntryDraft,
    EntryTooLarge,
    format_timestamp,
)
from gateway.domain.audit.keys import KeyFileError, Signer, SigningKeys, TrustedKey
from gateway.domain.audit.merkle import (
    HASH_SIZE,
    CompactRange,
    NodeId,
    consistency_plan,
    fold_subtrees,
    inclusion_plan,
    root_nodes,
)
from gateway.domain.audit.proofs import ConsistencyProof, InclusionProof
from gateway.domain.audit.tiles import inside_sealed
from gateway.errors import Conflict, InvalidRequest, OutcomeUnknown, StoreUnavailable
from gateway.store.connection import (
    REDIS_FAILURES,
    SingleConnection,
    load_script,
    unavailable_on_error,
)
from gateway.store.intents import Intent, IntentWriter, KeyIndex, Projection, RotateKey, Values
from gateway.store.sealed_log import SealedReads

log = logging.getLogger("agentgw.audit")

MAX_BATCH = 256
# Group commit: while commits are being prepared (a decision between its claim and
# its enqueue), the writer waits for them this long at most before it appends, so
# that one script call appends many entries. Never at concurrency 1: a lone commit
# has nothing in preparation beside it and is appended at once.
GATHER_SECONDS = 0.002
# A batch of at least this many entries is chained and signed in a thread: Ed25519
# signing releases the GIL, so the event loop goes on serving calls meanwhile; for
# fewer, the hand-off costs more than it frees.
OFF_LOOP_ENTRIES = 8
# Losing the race to another replica means that replica appended: the log as a whole
# progresses, so a batch keeps retrying (for at most this long) rather than giving
# up after a fixed number of lost races, which busy replicas can exceed.
APPEND_RETRY_SECONDS = 10.0


def node_field(node: NodeId) -> str:
    """The field of a tree node in the `audit_tree` hash: "<level>:<index>"."""
    return f"{node[0]}:{node[1]}"


@dataclass
class _Pending:
    drafts: list[EntryDraft]
    intent: Intent
    conflict: str
    future: asyncio.Future[list[AuditEntry]] = field(repr=False)

    @property
    def segment(self) -> Segment:
        rotate_to = self.intent.signer if isinstance(self.intent, RotateKey) else None
        return Segment(self.drafts, rotate_to)


@dataclass(frozen=True)
class ReplicaAcks:
    """WAIT for `min_replicas` replicas after each append, at most `timeout_seconds`.

    `connection`'s client must not resend commands (retries 0): WAIT counts the
    writes of the connection it runs on, so it has to run on the connection that ran
    the script, and a resent script that found its batch already appended writes
    nothing. On a cluster it is a connection to the `{audit}` slot's master.
    """

    connection: SingleConnection
    min_replicas: int
    timeout_seconds: float


class AuditLog:
    def __init__(
        self,
        client: aioredis.Redis,
        intents: IntentWriter,
        signing_keys: SigningKeys,
        origin: str,
        clock: Callable[[], float],
        replica_acks: ReplicaAcks | None = None,
        *,
        projection_client: aioredis.Redis | None = None,
    ) -> None:
        self.client = client
        # Where the claim markers of a commit are written (see App.start): `client`
        # unless the app gives them a client of their own.
        self.projection_client = projection_client or client
        self.replica_acks = replica_acks
        self.intents = intents
        self.keys = intents.keys
        self.signing_keys = signing_keys
        self.origin = origin
        self.clock = clock
        self._script = load_script(client, "commit")
        self._publish = load_script(client, "publish_checkpoint")
        self._read_entries = load_script(client, "read_entries")
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._head: Head | None = None
        self._projecting: set[asyncio.Task[None]] = set()
        self._preparing = 0  # commits in preparation (see `preparing`)
        self._awaited = 0  # of those, how many the writer still waits for
        self._gathered: asyncio.Future[None] | None = None  # set while it waits
        self.batches = 0  # counted for the benchmark and tests of group commit
        self.gathers = 0  # times the writer waited for commits in preparation
        # Called with the error whenever a batch could not be appended (the app raises
        # an alert); the batch's callers fail closed either way.
        self.on_failure: Callable[[str], None] = lambda error: None
        # Called with the entries of each appended batch and the new head's seq.
        self.on_append: Callable[[int, int], None] = lambda entries, seq: None
        # Appends are refused once this many entries are not sealed into tiles (0:
        # never); the sealed log (tiles) serves what Redis no longer holds.
        self.backlog_limit = 0
        self.sealed: SealedReads | None = None

    async def commit(
        self, drafts: list[EntryDraft], intent: Intent = None, conflict: str = "state changed"
    ) -> list[AuditEntry]:
        """Appends entries and applies `intent` atomically; returns the stored entries.

        Raises Conflict(conflict) when the intent's precondition does not hold, and
        StoreUnavailable when Redis cannot take the write or this gateway lacks the
        key the log's head names.
        """
        return await asyncio.shield(self.enqueue(drafts, intent, conflict))

    def enqueue(
        self, drafts: list[EntryDraft], intent: Intent = None, conflict: str = "state changed"
    ) -> asyncio.Future[list[AuditEntry]]:
        """Queues a commit and returns its future, which the writer resolves whether or
        not anyone still awaits it: a caller that is cancelled can still learn (from a
        done-callback) whether its entries landed. Its errors are those of `commit`;
        `OutcomeUnknown` means the append may have been applied."""
        future: asyncio.Future[list[AuditEntry]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(drafts, intent, conflict, future))
        self._wakeup.set()
        if len(self._queue) >= MAX_BATCH:
            self._end_gathering()
        return future

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Around the work that ends in `enqueue` (or in nothing to commit): while it
        runs, the writer may wait for it (GATHER_SECONDS at most) to join a batch."""
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1
            self._awaited -= 1
            if self._awaited <= 0:
                self._end_gathering()

    async def _gather(self) -> None:
        """Waits until as many commits as were in preparation have come (or given up),
        the batch is full, or GATHER_SECONDS have passed."""
        if not self._preparing or len(self._queue) >= MAX_BATCH:
            return
        loop = asyncio.get_running_loop()
        self.gathers += 1
        self._awaited = self._preparing
        self._gathered = loop.create_future()
        timer = loop.call_later(GATHER_SECONDS, self._end_gathering)
        try:
            await self._gathered
        finally:
            timer.cancel()
            self._gathered = None

    @property
    def gathering(self) -> bool:
        """The writer is waiting for commits in preparation."""
        return self._gathered is not None and not self._gathered.done()

    def _end_gathering(self) -> None:
        if self._gathered is not None and not self._gathered.done():
            self._gathered.set_result(None)

    async def run(self) -> None:
        """The writer task (owned by the app). Cancel it after the queue is drained."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._gather()
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._write(batch)
                except Exception as e:  # the writer must survive anything; callers fail closed
                    log.exception("audit writer failed", extra={"event": "audit_write_failed"})
                    self._head = None
                    self._failed(batch, OutcomeUnknown(f"audit log write failed: {e}"))

    async def _read_head(self) -> Head:
        with unavailable_on_error("reading the audit head"):
            seq, hash_, frontier, key_id = await self.client.hmget(
                self.keys.audit_head, ["seq", "hash", "frontier", "key_id"]
            )
        return _head_from(seq, hash_, frontier, key_id)

    def signer_for(self, head: Head) -> Signer:
        """The key that signs after `head`; StoreUnavailable if this gateway lacks it."""
        return self.signer_named(head.key_id)

    def signer_named(self, key_id: str) -> Signer:
        """The key a head naming `key_id` signs with; StoreUnavailable if this gateway
        lacks it (readiness asks this too)."""
        # A log written before heads named their key was signed by the first key.
        key_id = key_id or self.signing_keys.first.key_id
        try:
            signer = self.signing_keys.get(key_id)
        except KeyFileError as e:
            raise StoreUnavailable(f"audit signing key {key_id}: {e}") from e
        if signer is None:
            raise StoreUnavailable(
                f"the audit log is signed with key {key_id}, which this gateway does not "
                f"have: put {key_id}.pem in {self.signing_keys.directory}"
            )
        return signer

    async def _write(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + APPEND_RETRY_SECONDS
        while loop.time() < deadline:
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                return
            if self._head is None:
                try:
                    self._head = await self._read_head()
                except StoreUnavailable as e:
                    self._failed(batch, e)
                    return
            start = self._head
            try:
                signer = self.signer_for(start)
            except StoreUnavailable as e:
                self._failed(batch, e)
                return
            segments = [p.segment for p in batch]
            try:
                if sum(len(s.drafts) for s in segments) >= OFF_LOOP_ENTRIES:
                    grown = await asyncio.to_thread(extend, start, segments, signer)
                else:
                    grown = extend(start, segments, signer)
            except EntryTooLarge:
                batch = _refuse_too_large(batch, start, signer)
                continue
            head, built = grown.head, grown.entries
            keys, payload, values, projections = self._script_arguments(batch, grown)
            args: list[str | int] = [start.seq, payload, start.key_id, head.seq, head.hash]
            args += _entry_lines(built)
            args += values
            try:
                with unavailable_on_error("appending to the audit log"):
                    reply, acked = await self._append(keys, args)
            except StoreUnavailable as e:
                # OutcomeUnknown when the reply was lost (the append may have landed);
                # a refusal by Redis wrote nothing (commit.lua checks before it writes).
                self._head = None  # re-read the head next time
                self._failed(batch, e)
                return
            status = reply[0]
            if status == "ok" and self.replica_acks and acked < self.replica_acks.min_replicas:
                self._head = None  # the entries may be lost in a failover: re-read
                self._failed(batch, self._too_few_replicas(acked))
                return
            if status == "ok":
                self._head = head
                self.batches += 1
                self.on_append(head.seq - start.seq, head.seq)
                self._project(projections)
                for pending, entries in zip(batch, built, strict=True):
                    pending.future.set_result(list(entries))
                return
            if status == "moved":
                self._head = _head_from(reply[1], reply[2], reply[3], reply[4])
                # Rebuilding signs every entry again, and other replicas keep appending
                # meanwhile; a writer that retried its whole batch could lose every race.
                # Retry with half of it (the rest goes back to the front of the queue),
                # so the window in which another append can land shrinks each time.
                keep = (len(batch) + 1) // 2
                self._queue[:0], batch = batch[keep:], batch[:keep]
                continue
            if status == "backlog":
                self._failed(batch, self._backlog_full(int(reply[1])))
                return
            position = int(reply[1]) - 1
            culprit = batch.pop(position)
            if status == "failed":
                culprit.future.set_exception(Conflict(culprit.conflict))
            else:  # "retry": it depends on a write earlier in this batch
                self._queue.insert(0, culprit)
                self._wakeup.set()
        self._failed(
            batch, StoreUnavailable("audit log append kept conflicting with other writers")
        )

    def _backlog_full(self, unsealed: int) -> StoreUnavailable:
        return StoreUnavailable(
            f"the audit log holds {unsealed} entries not sealed into the tile store, "
            f"the most it may (audit.tiles.max_unsealed_entries {self.backlog_limit}): "
            "sealing is failing; see the gateway's health and alerts"
        )

    def _failed(self, batch: list[_Pending], error: Exception) -> None:
        _fail(batch, error)
        self.on_failure(str(error))

    def _script_arguments(
        self, batch: list[_Pending], grown: Extension
    ) -> tuple[list[str], str, list[str], list[Projection]]:
        """KEYS, the JSON argument and the values of commit.lua, and the writes that
        follow it (the entry lines go as arguments of their own: see `_entry_lines`)."""
        index, values = KeyIndex(self.keys), Values()
        items, projections = [], []
        for pending, entries in zip(batch, grown.entries, strict=True):
            item, after = self.intents.render(pending.intent, entries, index, values)
            items.append(item)
            projections += after
        head = grown.head
        payload = {
            "head": {
                "seq": head.seq,
                "hash": head.hash,
                "frontier": head.tree.to_hex_list(),
                "key_id": head.key_id,
            },
            "nodes": [v for level, i, h in grown.nodes for v in (node_field((level, i)), h.hex())],
            "keys": [v for change in grown.key_changes for v in key_history_fields(change)],
            "items": items,
            "lines": sum(len(entries) for entries in grown.entries),
            "backlog": self.backlog_limit,
        }
        return index.keys, json.dumps(payload, ensure_ascii=False), values.list, projections

    def _project(self, projections: list[Projection]) -> None:
        """Writes the projections of a commit (on a cluster: the claim markers) in a
        task of their own: answers do not wait for them, nothing depends on them."""
        if not projections:
            return
        task = asyncio.get_running_loop().create_task(self._write_projections(projections))
        self._projecting.add(task)
        task.add_done_callback(self._projecting.discard)

    async def _write_projections(self, projections: list[Projection]) -> None:
        try:
            with unavailable_on_error("marking actions decided"):
                async with self.projection_client.pipeline(transaction=False) as pipe:
                    for p in projections:
                        pipe.set(p.key, p.value, px=p.px)
                    await pipe.execute()
        except StoreUnavailable as e:
            # A resubmission then finds the claim pending and reads the decided record.
            log.warning(
                "could not mark actions decided",
                extra={"event": "projection_failed", "category": "error", "error": str(e)},
            )

    async def drain(self) -> None:
        """Waits for projections in progress (the app calls this when stopping)."""
        while self._projecting:
            await asyncio.gather(*self._projecting, return_exceptions=True)

    async def _append(self, keys: list[str], args: list[str | int]) -> tuple[list[str], int]:
        """Runs commit.lua; with replica acks, then WAIT on the same connection after an
        'ok'. Returns the script's reply and the replicas that acknowledged."""
        acks = self.replica_acks
        if acks is None:
            return await self._script(keys=keys, args=args), 0
        async with acks.connection() as connection:
            reply = await self._script(keys=keys, args=args, client=connection)
            if reply[0] != "ok":
                return reply, 0
            timeout_ms = max(1, round(acks.timeout_seconds * 1000))
            try:
                acked = await connection.wait(acks.min_replicas, timeout_ms)
            except REDIS_FAILURES as e:
                # Not "nothing was appended" (a ResponseError from the script): it was.
                raise OutcomeUnknown(
                    "appending to the audit log: waiting for replicas failed",
                    detail=f"{type(e).__name__}: {e}",
                ) from None
        return reply, int(acked)

    async def replicated(self) -> None:
        """Returns once everything written so far is on `min_replicas_acked` replicas
        (at once without replica acks), else StoreUnavailable. For answers read back
        rather than appended (a retried action's stored decision): a small write and
        WAIT on one connection, as replicas apply the stream in order, cover every
        write before it."""
        acks = self.replica_acks
        if acks is None:
            return
        timeout_ms = max(1, round(acks.timeout_seconds * 1000))
        with unavailable_on_error("waiting for replicas"):
            async with acks.connection() as connection:
                await connection.set(
                    self.keys.audit_barrier, format_timestamp(self.clock()), px=60_000
                )
                acked = int(await connection.wait(acks.min_replicas, timeout_ms))
        if acked < acks.min_replicas:
            raise StoreUnavailable(
                "the stored decision is on fewer replicas than redis.min_replicas_acked",
                detail=f"WAIT: {acked} of {acks.min_replicas} replicas "
                f"within {acks.timeout_seconds} s",
            )

    def _too_few_replicas(self, acked: int) -> OutcomeUnknown:
        acks = self.replica_acks
        assert acks is not None
        return OutcomeUnknown(
            "appending to the audit log: the entry is on fewer replicas than "
            "redis.min_replicas_acked",
            detail=f"WAIT: {acked} of {acks.min_replicas} replicas within {acks.timeout_seconds} s",
        )

    async def key_history(self) -> tuple[TrustedKey, ...]:
        """Every key that has signed or signs the log, by first seq; the current key
        has last_seq None. Before the first append: the key that will sign it."""
        with unavailable_on_error("reading the audit key history"):
            fields = await self.client.hgetall(self.keys.audit_keys)
        if not fields:
            signer = self.signer_for(await self._read_head())
            return (TrustedKey(signer.key_id, signer.public_key_raw, 1, None),)
        return parse_key_history({str(k): str(v) for k, v in fields.items()})

    async def head_key_id(self, client: aioredis.Redis | None = None) -> str:
        """The key id the head names ("" for an empty log or an old head), read on
        `client` (the health connection) or the log's own."""
        key_id = await (client or self.client).hget(self.keys.audit_head, "key_id")
        return str(key_id or "")

    async def head(self) -> Head:
        """The current head as stored in Redis (not this process's cached view)."""
        return await self._read_head()

    async def checkpoint(self) -> SignedCheckpoint:
        """Signs a checkpoint of the current head (with the head's key) and publishes
        it: it becomes the latest published checkpoint unless a larger one is."""
        head = await self._read_head()
        signer = self.signer_for(head)
        cp, note = sign_head(head, self.origin, format_timestamp(self.clock()), signer)
        signed = SignedCheckpoint(cp, note, signer.key_id)
        with unavailable_on_error("publishing a checkpoint"):
            await self._publish(
                keys=[self.keys.audit_checkpoint], args=[cp.size, signed.note, signed.key_id]
            )
        return signed

    async def published_checkpoint(self) -> SignedCheckpoint:
        """The latest published checkpoint (a new one if none is published yet)."""
        with unavailable_on_error("reading the published checkpoint"):
            note, key_id = await self.client.hmget(self.keys.audit_checkpoint, ["note", "key_id"])
        if note is None or key_id is None:
            return await self.checkpoint()
        try:
            return SignedCheckpoint(parse_checkpoint(str(note)), str(note), str(key_id))
        except CheckpointError as e:
            raise StoreUnavailable(f"the published checkpoint is malformed: {e}") from e

    async def read_lines(self, start_seq: int, end_seq: int) -> list[str]:
        """Entries start_seq..end_seq inclusive, as stored (JSON lines): from Redis,
        and from the tile store for those sealed and trimmed from Redis."""
        if end_seq < start_seq:
            return []
        with unavailable_on_error("reading audit entries"):
            reply = await self._read_entries(
                keys=[self.keys.audit_entries, self.keys.audit_sealed], args=[start_seq, end_seq]
            )
        trimmed, lines = int(reply[0]), [str(line) for line in reply[1:]]
        if start_seq > trimmed:
            return lines
        older = await self._sealed().lines(start_seq, min(end_seq, trimmed))
        return older + lines

    async def read_lines_at(self, seqs: Sequence[int]) -> list[str | None]:
        """The entries at `seqs` as stored (None where there is none), in one script
        call (and tile reads for the sealed ones). For probing a few entries."""
        if not seqs:
            return []
        with unavailable_on_error("reading audit entries"):
            reply = await self._read_entries(
                keys=[self.keys.audit_entries, self.keys.audit_sealed], args=["at", *seqs]
            )
        trimmed = int(reply[0])
        found: list[str | None] = [None if line is None else str(line) for line in reply[1:]]
        for i, seq in enumerate(seqs):
            if 1 <= seq <= trimmed:
                found[i] = (await self._sealed().lines(seq, seq))[0]
        return found

    def _sealed(self) -> SealedReads:
        if self.sealed is None:
            raise StoreUnavailable("the audit log is sealed into tiles, and no tile store is set")
        return self.sealed

    async def inclusion_proof(self, seq: int, tree_size: int) -> InclusionProof:
        """Proof that entry `seq` is in the tree of `tree_size` entries (0: the head).

        Two reads: the head's size, then one HMGET of the O(log n) stored nodes that
        make up the proof, the leaf and the root. Nodes never change once written.
        """
        if seq < 1:  # before any read
            inclusion_range(seq, tree_size, 0)
        size = inclusion_range(seq, tree_size, await self._head_size())
        plan, leaf, root = inclusion_plan(seq - 1, size), (0, seq - 1), root_nodes(size)
        nodes = await self.read_nodes([leaf, *plan.node_ids, *root])
        return InclusionProof(
            seq=seq,
            tree_size=size,
            hashes=tuple(plan.assemble(nodes)),
            root_hash=fold_subtrees([nodes[node] for node in root]),
            leaf_hash=nodes[leaf],
        )

    async def consistency_proof(self, old_size: int, new_size: int) -> ConsistencyProof:
        """Proof that the tree of `new_size` entries (0: the head) extends `old_size`'s."""
        size = consistency_range(old_size, new_size, await self._head_size())
        plan = consistency_plan(old_size, size)
        old_root, new_root = root_nodes(old_size), root_nodes(size)
        nodes = await self.read_nodes([*plan.node_ids, *old_root, *new_root])
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

    async def read_nodes(self, wanted: list[NodeId]) -> dict[NodeId, bytes]:
        """The stored tree nodes `wanted`, with one HMGET; Conflict if one is missing."""
        ids = list(dict.fromkeys(wanted))
        if not ids:
            return {}
        with unavailable_on_error("reading audit tree nodes"):
            values = await self.client.hmget(self.keys.audit_tree, [node_field(n) for n in ids])
        nodes: dict[NodeId, bytes] = {}
        missing = []
        for node, value in zip(ids, values, strict=True):
            try:
                nodes[node] = bytes.fromhex(str(value)) if value is not None else b""
            except ValueError:
                nodes[node] = b""
            if value is None:
                missing.append(node)
            elif len(nodes[node]) != HASH_SIZE:
                raise Conflict(f"audit tree node {node_field(node)} is malformed")
        if missing:
            # Read after the nodes: a node trimmed meanwhile is in a sealed tile by now.
            sealed = await self._sealed_size()
            for node in missing:
                if not inside_sealed(node, sealed):
                    # Entries appended before tree nodes were stored have none.
                    raise Conflict(f"audit tree node {node_field(node)} is missing")
            nodes.update(await self._sealed().nodes(missing))
        return nodes

    async def _sealed_size(self) -> int:
        with unavailable_on_error("reading the sealed size"):
            size = await self.client.hget(self.keys.audit_sealed, "size")
        return int(str(size or 0))


def _head_from(seq: object, hash_: object, frontier: object, key_id: object) -> Head:
    size = int(str(seq or 0))
    hashes = json.loads(str(frontier)) if frontier else []
    tree = CompactRange.from_hex_list(size, hashes)
    return Head(size, str(hash_ or GENESIS_HASH), tree, str(key_id or ""))


def key_history_fields(change: KeyIntroduced | KeyRetired) -> list[str]:
    """The `audit_keys` fields a key history change writes: "<key_id>" -> JSON
    {"public_key", "first_seq"} for a new key, "<key_id>:last_seq" when retired."""
    if isinstance(change, KeyRetired):
        return [f"{change.key_id}:last_seq", str(change.last_seq)]
    record = {"public_key": change.signer.public_key_raw.hex(), "first_seq": change.first_seq}
    return [change.signer.key_id, json.dumps(record)]


def parse_key_history(fields: dict[str, str]) -> tuple[TrustedKey, ...]:
    """The key history from the `audit_keys` hash: "<key_id>" -> {"public_key",
    "first_seq"} and, once a key is rotated out, "<key_id>:last_seq" -> seq."""
    keys = []
    for key_id, value in fields.items():
        if ":" in key_id:
            continue
        try:
            record = json.loads(value)
            last = fields.get(f"{key_id}:last_seq")
            keys.append(
                TrustedKey(
                    key_id,
                    bytes.fromhex(record["public_key"]),
                    int(record["first_seq"]),
                    int(last) if last is not None else None,
                )
            )
        except (ValueError, KeyError, TypeError, KeyFileError) as e:
            raise StoreUnavailable(f"audit key history: key {key_id} is malformed: {e}") from e
    return tuple(sorted(keys, key=lambda key: key.first_seq))


def _entry_lines(built: Sequence[Sequence[AuditEntry]]) -> list[str | int]:
    """The batch's entry lines in order: commit.lua's ARGV[6..]. Each line is the
    export form that was hashed and signed, passed as it is (never re-encoded)."""
    return [entry.to_json_line() for entries in built for entry in entries]


def _refuse_too_large(batch: list[_Pending], start: Head, signer: Signer) -> list[_Pending]:
    """Fails the commits with an entry too large for a tile (InvalidRequest: nothing
    is written for them) and returns the others. Rare: each is built once more alone."""
    kept = []
    for pending in batch:
        try:
            extend(start, [pending.segment], signer)
        except EntryTooLarge as e:
            pending.future.set_exception(
                InvalidRequest(
                    "audit entry",
                    f"would be {e.size} bytes, more than the {MAX_ENTRY_BYTES} an audit entry "
                    "may have: send smaller parameters, reasoning or text",
                )
            )
        else:
            kept.append(pending)
    return kept


def _fail(batch: list[_Pending], error: Exception) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)

"""The audit chain's head and how it grows, without storage.

Owns the head (seq, entry hash, Merkle frontier, the key that signs next) and the
pure steps the audit writer takes with it: `extend` chains and signs a batch of
drafts on top of a head (returning the new head, the entries, the Merkle tree nodes
they complete and the key history they change), `rotation_draft` is the entry that
hands the chain to a new key, `sign_head` makes the signed
checkpoint of a head, and `inclusion_range` / `consistency_range` check what a proof
request asks for against the head's size. The store reads the head and
compare-and-appends what `extend` returns; it never chains or signs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.domain.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.domain.audit.entry import (
    GENESIS_HASH,
    AuditEntry,
    EntryDraft,
    build_entry,
    format_timestamp,
    leaf_hash,
)
from gateway.domain.audit.events import ActorType
from gateway.domain.audit.keys import (
    ROTATION_EVENT,
    SIGNER_RESOURCE_PREFIX,
    Signer,
    next_signer_details,
)
from gateway.domain.audit.merkle import CompactRange
from gateway.errors import InvalidRequest

TreeNode = tuple[int, int, bytes]  # (level, index, hash), as CompactRange.append returns


@dataclass
class Head:
    """The end of the chain: the last entry's seq and hash, the Merkle frontier over
    entries 1..seq, and the id of the key that signs the next entry ("" before the
    first append, when the first key does)."""

    seq: int
    hash: str
    tree: CompactRange
    key_id: str

    @classmethod
    def empty(cls) -> Head:
        return cls(0, GENESIS_HASH, CompactRange(), "")

    def copy(self) -> Head:
        tree = CompactRange.from_hex_list(self.tree.size, self.tree.to_hex_list())
        return Head(self.seq, self.hash, tree, self.key_id)


@dataclass(frozen=True)
class Segment:
    """One commit's entries in a batch; with `rotate_to`, every entry after them is
    signed by that key (a key rotation: the segment's entries are the old key's last)."""

    drafts: Sequence[EntryDraft]
    rotate_to: Signer | None = None


@dataclass(frozen=True)
class KeyIntroduced:
    """`signer` signs the chain from `first_seq` on."""

    signer: Signer
    first_seq: int


@dataclass(frozen=True)
class KeyRetired:
    """Key `key_id` signed its last entry at `last_seq`."""

    key_id: str
    last_seq: int


@dataclass(frozen=True)
class Extension:
    """What extending a head by a batch produced, all of it stored together."""

    head: Head
    entries: tuple[tuple[AuditEntry, ...], ...]  # one tuple per segment, in order
    nodes: tuple[TreeNode, ...]  # every perfect subtree the entries complete
    key_changes: tuple[KeyIntroduced | KeyRetired, ...]


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: str  # the C2SP signed note, byte for byte
    key_id: str  # the audit key that signed it


def extend(start: Head, segments: Sequence[Segment], signer: Signer) -> Extension:
    """Chains and signs `segments` on top of `start`, with `signer` (the key the head
    names) and then each rotation's new key. `start` is not changed."""
    head = start.copy()
    changes: list[KeyIntroduced | KeyRetired] = []
    if not start.key_id:
        changes.append(KeyIntroduced(signer, 1))
    built: list[tuple[AuditEntry, ...]] = []
    nodes: list[TreeNode] = []
    for segment in segments:
        entries = []
        for draft in segment.drafts:
            entry = build_entry(draft, head.seq + 1, head.hash, signer)
            nodes += head.tree.append(leaf_hash(entry))
            head.seq, head.hash = entry.seq, entry.entry_hash
            entries.append(entry)
        built.append(tuple(entries))
        if segment.rotate_to is not None:
            changes.append(KeyRetired(signer.key_id, head.seq))
            signer = segment.rotate_to
            changes.append(KeyIntroduced(signer, head.seq + 1))
    head.key_id = signer.key_id
    return Extension(head, tuple(built), tuple(nodes), tuple(changes))


def rotation_draft(actor: str, new: Signer, origin: str, reason: str, now: float) -> EntryDraft:
    """The entry that introduces `new`: the verifier trusts the new key because of it
    (`gateway.domain.audit.keys.read_next_signer` reads what `next_signer_details` writes)."""
    return EntryDraft(
        timestamp=format_timestamp(now),
        event_type=ROTATION_EVENT,
        actor=actor,
        actor_type=ActorType.USER,
        action_id="",
        action_type="",
        resource=f"{SIGNER_RESOURCE_PREFIX}{new.key_id}",
        details={
            "reason": reason,
            "next_signer": next_signer_details(origin, new.public_key_raw),
        },
        outcome="rotated",
    )


def sign_head(head: Head, origin: str, timestamp: str, signer: Signer) -> tuple[Checkpoint, str]:
    """The checkpoint of `head` and its signed note, by `signer` (the head's key)."""
    checkpoint = Checkpoint(
        origin=origin,
        size=head.seq,
        root_hash=head.tree.root(),
        head_hash=head.hash,
        timestamp=timestamp,
    )
    return checkpoint, sign_checkpoint(checkpoint, signer)


def inclusion_range(seq: int, tree_size: int, head_size: int) -> int:
    """The tree size a proof of entry `seq` is for (`tree_size` 0: the head's), or
    InvalidRequest naming the field that asks for the impossible."""
    if seq < 1:
        raise InvalidRequest("seq", "must be >= 1")
    if tree_size > head_size:
        raise InvalidRequest("tree_size", f"{tree_size} is beyond the log's size {head_size}")
    size = tree_size or head_size
    if seq > size:
        raise InvalidRequest("seq", f"{seq} is beyond tree size {size}")
    return size


def consistency_range(old_size: int, new_size: int, head_size: int) -> int:
    """The newer tree size of a consistency proof (`new_size` 0: the head's), or
    InvalidRequest naming the field."""
    if new_size > head_size:
        raise InvalidRequest("new_size", f"{new_size} is beyond the log's size {head_size}")
    size = new_size or head_size
    if old_size > size:
        raise InvalidRequest("old_size", f"{old_size} is larger than new_size {size}")
    return size

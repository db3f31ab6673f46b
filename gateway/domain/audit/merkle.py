"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and proof verification.

Owns the tree over audit entries (leaf index = seq - 1): leaf and node hashes, the
root of a list of leaves, the compact range (right frontier) that lets the appender
and the streaming verifier extend the root in O(log n) memory, and inclusion and
consistency proofs. Proofs are built either over a full list of leaf hashes (the
reference implementation) or, through a `ProofPlan`, from the stored roots of perfect
subtrees (node ids `(level, index)`); it knows nothing about entries or storage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
HASH_SIZE: Final = 32

# (level, index) of a perfect subtree: leaves index * 2**level .. (index + 1) * 2**level - 1.
NodeId: TypeAlias = tuple[int, int]


def leaf_hash_of(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash (MTH) of the given leaf hashes."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


class CompactRange:
    """The roots of the perfect subtrees covering leaves 0..size-1, left to right.

    There is one root per set bit of `size` (largest subtree first), so memory is
    O(log size). A mutable accumulator, not a value: `append` changes it.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf; return (level, index, hash) of every perfect subtree it completed.

        The list starts with the leaf itself at level 0 (index = leaf index); a node at
        level L and index i covers leaves i*2**L .. (i+1)*2**L - 1.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        level, index, current = 0, self._size, leaf_hash
        completed = [(0, index, current)]
        while (self._size >> level) & 1:
            current = node_hash(self._hashes.pop(), current)
            level += 1
            index >>= 1
            completed.append((level, index, current))
        self._hashes.append(current)
        self._size += 1
        return completed

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        current = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            current = node_hash(left, current)
        return current

    def to_hex_list(self) -> list[str]:
        return [h.hex() for h in self._hashes]

    @classmethod
    def from_hex_list(cls, size: int, hashes: Sequence[str]) -> CompactRange:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a compact range of size {size} has {size.bit_count()} hashes")
        decoded = [bytes.fromhex(h) for h in hashes]
        if any(len(h) != HASH_SIZE for h in decoded):
            raise ValueError("compact range hashes are 32 bytes")
        compact = cls()
        compact._size = size
        compact._hashes = decoded
        return compact


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(index, D[0:size])."""
    if not 0 <= index < size <= len(leaf_hashes):
        raise ValueError(f"no inclusion proof for index {index} in a tree of size {size}")
    return _path(index, leaf_hashes[:size])


def _path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, leaves[:k]), root_of(leaves[k:])]
    return [*_path(m - k, leaves[k:]), root_of(leaves[:k])]


def consistency_proof(leaf_hashes: Sequence[bytes], m: int, n: int) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(m, D[0:n]); empty when m is 0 or m == n."""
    if not 0 <= m <= n <= len(leaf_hashes):
        raise ValueError(f"no consistency proof from size {m} to size {n}")
    if m in (0, n):
        return []
    return _subproof(m, leaf_hashes[:n], True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root_of(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root_of(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root_of(leaves[:k])]


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does `proof` show leaf `index` is in the tree `root` of `size`?"""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree `root_n` of size n an extension of `root_m`?"""
    if not 0 <= m <= n or any(len(p) != HASH_SIZE for p in proof):
        return False
    if m == n:
        return not proof and root_m == root_n
    if m == 0:
        # Every tree extends the empty tree; there is nothing to prove.
        return not proof and root_m == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if m & (m - 1) == 0:
        path.insert(0, root_m)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root_m and sr == root_n and sn == 0


# --- proofs from stored perfect-subtree nodes ----------------------------------------
#
# An appender that stores every node `CompactRange.append` completes holds the root of
# every perfect subtree of the tree so far. Each hash of an RFC 6962 proof is the root
# of a subtree D[begin:end] met in the recursion of PATH or PROOF: either a perfect
# subtree, or one on the right edge of a tree whose size is not a power of two. The
# latter is the right fold, with node_hash, of the perfect subtrees its size's bits
# describe (largest first), which is exactly how MTH splits it. So a proof needs
# O(log n) stored nodes, and the plans below find them without reading anything.


def subtree_nodes(begin: int, end: int) -> tuple[NodeId, ...]:
    """The perfect subtrees, left to right, whose right fold is MTH(D[begin:end]).

    Valid for the subtrees of the RFC 6962 recursion, where `begin` is a multiple of
    the smallest power of two >= end - begin; anything else raises ValueError.
    """
    size = end - begin
    if begin < 0 or size < 1:
        raise ValueError(f"no subtree covers leaves {begin}..{end - 1}")
    nodes: list[NodeId] = []
    position = begin
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            if position % (1 << level):
                raise ValueError(f"leaves {begin}..{end - 1} are not a subtree of the tree")
            nodes.append((level, position >> level))
            position += 1 << level
    return tuple(nodes)


def root_nodes(size: int) -> tuple[NodeId, ...]:
    """The perfect subtrees whose right fold is the root of the tree of `size` leaves.

    They are the nodes a compact range of that size holds; none for the empty tree.
    """
    if size < 0:
        raise ValueError("a tree size is >= 0")
    return subtree_nodes(0, size) if size else ()


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Right fold of perfect-subtree roots given left to right: the MTH of their union.

    The fold of no subtrees is the empty tree's root.
    """
    if not hashes:
        return EMPTY_ROOT
    current = hashes[-1]
    for left in reversed(hashes[:-1]):
        current = node_hash(left, current)
    return current


@dataclass(frozen=True)
class ProofPlan:
    """Which stored nodes make up each hash of a proof, in proof order.

    `hashes[i]` lists the perfect subtrees whose right fold is proof hash i.
    """

    hashes: tuple[tuple[NodeId, ...], ...]

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        """Every node the proof needs, each once, in first-use order."""
        return tuple(dict.fromkeys(node for element in self.hashes for node in element))

    def assemble(self, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
        """The proof hashes; KeyError names a node missing from `nodes`."""
        return [fold_subtrees([nodes[node] for node in element]) for element in self.hashes]


def inclusion_plan(index: int, size: int) -> ProofPlan:
    """The plan of PATH(index, D[0:size]) (RFC 6962 §2.1.1), leaf-side hash first."""
    if not 0 <= index < size:
        raise ValueError(f"no inclusion proof for index {index} in a tree of size {size}")
    top_down: list[tuple[NodeId, ...]] = []
    begin, end = 0, size
    while end - begin > 1:
        k = _split(end - begin)
        if index < begin + k:
            top_down.append(subtree_nodes(begin + k, end))
            end = begin + k
        else:
            top_down.append(subtree_nodes(begin, begin + k))
            begin += k
    return ProofPlan(tuple(reversed(top_down)))


def consistency_plan(m: int, n: int) -> ProofPlan:
    """The plan of PROOF(m, D[0:n]) (RFC 6962 §2.1.2); empty when m is 0 or m == n."""
    if not 0 <= m <= n:
        raise ValueError(f"no consistency proof from size {m} to size {n}")
    if m in (0, n):
        return ProofPlan(())
    top_down: list[tuple[NodeId, ...]] = []
    begin, end, complete = 0, n, True
    while m != end - begin:
        k = _split(end - begin)
        if m <= k:
            top_down.append(subtree_nodes(begin + k, end))
            end = begin + k
        else:
            top_down.append(subtree_nodes(begin, begin + k))
            begin, m, complete = begin + k, m - k, False
    if not complete:
        # SUBPROOF(m, D[m], false) = MTH(D[m]): the old tree's own subtree.
        top_down.append(subtree_nodes(begin, end))
    return ProofPlan(tuple(reversed(top_down)))

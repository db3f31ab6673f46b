"""RFC 6962 Merkle tree: known roots, compact range, and every proof up to size 64."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash_of,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The certificate-transparency / transparency-dev reference tree: 8 leaves and the root
# of the first n of them.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f"]
]  # fmt: skip
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_CONSISTENCY = {
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
CT_LEAF_HASHES = [leaf_hash_of(data) for data in CT_LEAVES]
LEAVES_64 = [leaf_hash_of(i.to_bytes(2, "big")) for i in range(64)]
LEAVES_130 = [leaf_hash_of(i.to_bytes(2, "big")) for i in range(130)]


def test_hash_prefixes_are_rfc_6962() -> None:
    assert leaf_hash_of(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(9))
def test_roots_match_the_reference_tree(size: int) -> None:
    assert root_of(CT_LEAF_HASHES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("m", "n"), sorted(CT_CONSISTENCY))
def test_consistency_proofs_match_the_reference_tree(m: int, n: int) -> None:
    proof = consistency_proof(CT_LEAF_HASHES, m, n)
    assert [p.hex() for p in proof] == CT_CONSISTENCY[(m, n)]
    assert verify_consistency(m, n, bytes.fromhex(CT_ROOTS[m]), bytes.fromhex(CT_ROOTS[n]), proof)


def test_compact_range_root_equals_root_of_for_every_size_up_to_130() -> None:
    compact = CompactRange()
    assert compact.root() == root_of([])
    for size in range(1, 131):
        compact.append(LEAVES_130[size - 1])
        assert compact.size == size
        assert compact.root() == root_of(LEAVES_130[:size])
        assert len(compact.to_hex_list()) == size.bit_count()


def test_compact_range_reports_each_perfect_subtree_it_completes() -> None:
    compact = CompactRange()
    reported: dict[tuple[int, int], bytes] = {}
    for leaf in LEAVES_64[:16]:
        for level, index, digest in compact.append(leaf):
            reported[(level, index)] = digest
    for level in range(5):
        width = 1 << level
        for index in range(16 // width):
            expected = root_of(LEAVES_64[index * width : (index + 1) * width])
            assert reported[(level, index)] == expected
    assert len(reported) == 31
    # Appending leaf 16 completes only the leaf itself; leaf 17 completes (1, 8).
    assert [(lv, ix) for lv, ix, _ in compact.append(LEAVES_64[16])] == [(0, 16)]
    assert [(lv, ix) for lv, ix, _ in compact.append(LEAVES_64[17])] == [(0, 17), (1, 8)]


def test_compact_range_survives_storage_as_hex() -> None:
    compact = CompactRange()
    for leaf in LEAVES_64[:45]:
        compact.append(leaf)
    restored = CompactRange.from_hex_list(45, compact.to_hex_list())
    restored.append(LEAVES_64[45])
    assert restored.root() == root_of(LEAVES_64[:46])
    with pytest.raises(ValueError, match="has 3 hashes"):
        CompactRange.from_hex_list(7, compact.to_hex_list())


def test_every_inclusion_proof_up_to_size_64_verifies() -> None:
    for size in range(1, 65):
        root = root_of(LEAVES_64[:size])
        for index in range(size):
            proof = inclusion_proof(LEAVES_64, index, size)
            assert verify_inclusion(LEAVES_64[index], index, size, proof, root)
            assert not verify_inclusion(LEAVES_64[index], index, size, proof, flip(root, 3))
            if size > 1:
                other = (index + 1) % size
                assert not verify_inclusion(LEAVES_64[index], other, size, proof, root)


def test_every_consistency_proof_up_to_size_64_verifies() -> None:
    roots = [root_of(LEAVES_64[:n]) for n in range(65)]
    for n in range(0, 65):
        for m in range(0, n + 1):
            proof = consistency_proof(LEAVES_64, m, n)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            if 0 < m < n:
                assert not verify_consistency(m, n, roots[m - 1], roots[n], proof)
                assert not verify_consistency(m, n, roots[m], roots[n - 1], proof)
                assert not verify_consistency(m, n, roots[m], roots[n], proof[:-1])


def test_verifiers_refuse_impossible_arguments() -> None:
    root = root_of(LEAVES_64[:4])
    assert not verify_inclusion(LEAVES_64[0], 4, 4, [], root)
    assert not verify_inclusion(LEAVES_64[0], -1, 4, [], root)
    assert not verify_consistency(5, 4, root, root, [])
    assert not verify_consistency(2, 4, root_of(LEAVES_64[:2]), root, [])
    assert verify_consistency(0, 4, EMPTY_ROOT, root, [])
    assert not verify_consistency(0, 4, EMPTY_ROOT, root, [root])
    assert not verify_consistency(4, 4, root, root, [root])
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES_64, 4, 4)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES_64, 5, 4)


def flip(digest: bytes, bit: int) -> bytes:
    data = bytearray(digest)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


@settings(max_examples=300)
@given(st.data())
def test_inclusion_proof_with_a_flipped_bit_fails(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, 64), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(LEAVES_64, index, size)
    which = data.draw(st.integers(0, len(proof) - 1), label="which")
    bit = data.draw(st.integers(0, 255), label="bit")
    proof[which] = flip(proof[which], bit)
    assert not verify_inclusion(LEAVES_64[index], index, size, proof, root_of(LEAVES_64[:size]))


@settings(max_examples=300)
@given(st.data())
def test_consistency_proof_with_a_flipped_bit_fails(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 64), label="n")
    m = data.draw(st.integers(1, n - 1), label="m")
    proof = consistency_proof(LEAVES_64, m, n)
    which = data.draw(st.integers(0, len(proof) - 1), label="which")
    bit = data.draw(st.integers(0, 255), label="bit")
    proof[which] = flip(proof[which], bit)
    roots = root_of(LEAVES_64[:m]), root_of(LEAVES_64[:n])
    assert not verify_consistency(m, n, *roots, proof)


def test_every_single_bit_flip_in_every_small_proof_fails() -> None:
    # Exhaustive over positions for sizes up to 16, complementing the random search.
    for n in range(2, 17):
        root_n = root_of(LEAVES_64[:n])
        for index in range(n):
            proof = inclusion_proof(LEAVES_64, index, n)
            for which in range(len(proof)):
                for bit in (0, 7, 128, 255):
                    bad = [*proof]
                    bad[which] = flip(bad[which], bit)
                    assert not verify_inclusion(LEAVES_64[index], index, n, bad, root_n)
        for m in range(1, n):
            proof = consistency_proof(LEAVES_64, m, n)
            for which in range(len(proof)):
                bad = [*proof]
                bad[which] = flip(bad[which], 0)
                assert not verify_consistency(m, n, root_of(LEAVES_64[:m]), root_n, bad)

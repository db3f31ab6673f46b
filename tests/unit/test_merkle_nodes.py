"""Proofs from stored perfect-subtree nodes equal the reference proofs over all leaves."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    NodeId,
    ProofPlan,
    consistency_plan,
    consistency_proof,
    fold_subtrees,
    inclusion_plan,
    inclusion_proof,
    root_nodes,
    root_of,
    subtree_nodes,
    verify_consistency,
    verify_inclusion,
)

BIG = 3000


def leaves_for(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]


def stored_nodes(leaves: list[bytes]) -> dict[NodeId, bytes]:
    """What the appender stores: every node CompactRange.append reports."""
    compact = CompactRange()
    nodes: dict[NodeId, bytes] = {}
    for leaf in leaves:
        for level, index, value in compact.append(leaf):
            assert (level, index) not in nodes, "a node is completed once"
            nodes[(level, index)] = value
    return nodes


LEAVES = leaves_for(BIG)
NODES = stored_nodes(LEAVES)


def assert_within(plan_nodes: tuple[NodeId, ...], size: int) -> None:
    # A proof for tree_size may only read nodes that exist once `size` leaves are in.
    for level, index in plan_nodes:
        assert (index + 1) << level <= size, (level, index, size)


def test_a_tree_of_n_leaves_stores_2n_minus_popcount_nodes() -> None:
    for n in range(1, 200):
        assert len(stored_nodes(LEAVES[:n])) == 2 * n - n.bit_count()


def test_subtree_nodes_split_a_right_edge_by_the_bits_of_its_size() -> None:
    assert subtree_nodes(0, 8) == ((3, 0),)
    assert subtree_nodes(4, 5) == ((0, 4),)
    assert subtree_nodes(8, 15) == ((2, 2), (1, 6), (0, 14))
    assert subtree_nodes(16, 22) == ((2, 4), (1, 10))
    assert root_nodes(13) == ((3, 0), (2, 2), (0, 12))
    assert root_nodes(0) == ()


@pytest.mark.parametrize(("begin", "end"), [(1, 3), (2, 6), (3, 3), (-1, 1), (5, 4)])
def test_subtree_nodes_refuse_ranges_that_are_not_subtrees(begin: int, end: int) -> None:
    with pytest.raises(ValueError):
        subtree_nodes(begin, end)


def test_root_nodes_fold_to_the_root_and_match_the_compact_range() -> None:
    compact = CompactRange()
    for n in range(0, 300):
        ids = root_nodes(n)
        assert [NODES[i].hex() for i in ids] == compact.to_hex_list()
        assert fold_subtrees([NODES[i] for i in ids]) == root_of(LEAVES[:n]) == compact.root()
        compact.append(LEAVES[n])
    assert fold_subtrees([]) == EMPTY_ROOT


def test_every_inclusion_plan_up_to_64_equals_the_reference_proof() -> None:
    for size in range(1, 65):
        for index in range(size):
            plan = inclusion_plan(index, size)
            assert_within(plan.node_ids, size)
            assert plan.assemble(NODES) == inclusion_proof(LEAVES, index, size), (index, size)


def test_every_consistency_plan_up_to_64_equals_the_reference_proof() -> None:
    for n in range(0, 65):
        for m in range(0, n + 1):
            plan = consistency_plan(m, n)
            assert_within(plan.node_ids, n)
            assert plan.assemble(NODES) == consistency_proof(LEAVES, m, n), (m, n)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_plans_in_large_trees(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, BIG), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    plan = inclusion_plan(index, size)
    assert_within(plan.node_ids, size)
    # O(log n): at most one proof hash is an imperfect right edge.
    assert len(plan.node_ids) <= 2 * size.bit_length()
    proof = plan.assemble(NODES)
    assert proof == inclusion_proof(LEAVES, index, size)
    assert verify_inclusion(LEAVES[index], index, size, proof, root_of(LEAVES[:size]))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_plans_in_large_trees(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, BIG), label="n")
    m = data.draw(st.integers(0, n), label="m")
    plan = consistency_plan(m, n)
    assert_within(plan.node_ids, n)
    assert len(plan.node_ids) <= 2 * n.bit_length()
    proof = plan.assemble(NODES)
    assert proof == consistency_proof(LEAVES, m, n)
    assert verify_consistency(m, n, root_of(LEAVES[:m]), root_of(LEAVES[:n]), proof)


def test_node_ids_are_unique_and_in_first_use_order() -> None:
    plan = ProofPlan((((1, 0), (0, 2)), ((0, 2),), ((2, 1),)))
    assert plan.node_ids == ((1, 0), (0, 2), (2, 1))


def test_assembling_without_a_needed_node_names_it() -> None:
    plan = inclusion_plan(5, 13)
    missing = plan.node_ids[-1]
    nodes = {k: v for k, v in NODES.items() if k != missing}
    with pytest.raises(KeyError) as e:
        plan.assemble(nodes)
    assert e.value.args[0] == missing


@pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 3)])
def test_inclusion_plan_refuses_a_leaf_outside_the_tree(index: int, size: int) -> None:
    with pytest.raises(ValueError):
        inclusion_plan(index, size)


@pytest.mark.parametrize(("m", "n"), [(4, 3), (-1, 2)])
def test_consistency_plan_refuses_a_shrinking_tree(m: int, n: int) -> None:
    with pytest.raises(ValueError):
        consistency_plan(m, n)

"""The sealed log's tlog-tiles form (gateway/domain/audit/tiles.py) against the
independent vectors in tests/vectors/tlog_tiles/ and the reference
(tests/tlog_tiles_reference.py): paths, bundles, hash tiles, which tiles a sealed
size completes, which tree nodes a tile makes redundant, and reading a node back
from its tile. The product's hashes come from gateway.domain.audit.merkle; the
expected bytes only ever from the vectors or the reference."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.audit.entry import MAX_ENTRY_BYTES
from gateway.domain.audit.merkle import HASH_SIZE, NodeId, leaf_hash_of, root_of
from gateway.domain.audit.tiles import (
    TILE_WIDTH,
    TileError,
    TilePath,
    check_full_file,
    decode_bundle,
    decode_lines,
    decode_tile,
    encode_bundle,
    encode_index,
    encode_lines,
    encode_tile,
    entries_path,
    inside_sealed,
    lines_path,
    node_from_tile,
    nodes_below_tile,
    parse_tile_path,
    tile_nodes,
    tile_of,
    tile_path,
    tiles_completed,
)
from tests import tlog_tiles_reference as reference
from tests.vectors.tlog_tiles import make_vectors

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "tlog_tiles"
LARGEST = 70_000  # the largest tree of the vectors


def vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


PATHS = vectors("paths.json")
TILE_SETS = vectors("tile_sets.json")
TREES = vectors("trees.json")


@cache
def entries() -> tuple[bytes, ...]:
    """The vectors' fixed entries ("entry %d"), as many as the largest tree has."""
    return tuple(make_vectors.fixed_entry(i) for i in range(LARGEST))


@cache
def leaves() -> tuple[bytes, ...]:
    return tuple(leaf_hash_of(entry) for entry in entries())


@cache
def subtree_root(height: int, index: int) -> bytes:
    """The product's RFC 6962 root of leaves index*2^height .. (index+1)*2^height - 1."""
    if height == 0:
        return leaves()[index]
    if height <= 8:
        return root_of(leaves()[index << height : (index + 1) << height])
    # Above a tile, from the roots below (root_of of 2^k perfect subtree roots is the
    # same fold): keeps the recursion over 65,536 leaves to one pass.
    below = height - 8
    return root_of([subtree_root(8, (index << below) + i) for i in range(1 << below)])


@cache
def reference_tile(level: int, index: int) -> bytes:
    """A full tile of the fixed entries, from the reference's own formula."""
    return reference.tile_bytes(level, index, TILE_WIDTH, reference_leaves())


@cache
def reference_leaves() -> tuple[bytes, ...]:
    return tuple(reference.leaf_hash(entry) for entry in entries())


def product_file(path: str) -> bytes:
    """The bytes the product's encoders give the file at `path` of the fixed log."""
    parsed = parse_tile_path(path)
    first = parsed.index * TILE_WIDTH
    if parsed.kind == "entries":
        return encode_bundle(entries()[first : first + parsed.width])
    assert parsed.kind == "tile"
    return encode_tile([subtree_root(8 * parsed.level, first + i) for i in range(parsed.width)])


# --- paths --------------------------------------------------------------------------


@pytest.mark.parametrize("case", PATHS["tiles"], ids=lambda case: case["path"])
def test_tile_paths_are_the_vectors(case: dict[str, Any]) -> None:
    level, index, width = case["level"], case["index"], case["width"]
    assert tile_path(level, index, width) == case["path"]
    assert parse_tile_path(case["path"]) == TilePath("tile", level, index, width)
    assert str(parse_tile_path(case["path"])) == case["path"]


@pytest.mark.parametrize("case", PATHS["entry_bundles"], ids=lambda case: case["path"])
def test_entry_bundle_paths_are_the_vectors(case: dict[str, Any]) -> None:
    assert entries_path(case["index"], case["width"]) == case["path"]
    assert parse_tile_path(case["path"]) == TilePath("entries", 0, case["index"], case["width"])


@pytest.mark.parametrize("case", PATHS["malformed"], ids=lambda case: case["why"])
def test_malformed_paths_are_refused(case: dict[str, Any]) -> None:
    with pytest.raises(TileError):
        parse_tile_path(case["path"])


def test_lines_paths_sit_beside_the_standard_ones() -> None:
    assert lines_path(0) == "lines/000"
    assert lines_path(1234067) == "lines/x001/x234/067"
    assert parse_tile_path("lines/x001/x234/067") == TilePath("lines", 0, 1234067)
    assert parse_tile_path("lines/001.p/5") == TilePath("lines", 0, 1, 5)
    for malformed in ("lines/1", "lines/x000/001", "lines/000.p/256", "line/000", "lines/000/"):
        with pytest.raises(TileError):
            parse_tile_path(malformed)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["tile", "entries", "lines"]),
    level=st.integers(0, 63),
    index=st.integers(0, 2**64 - 1),
    width=st.integers(1, TILE_WIDTH),
)
def test_a_path_parses_back_to_what_it_names(kind: str, level: int, index: int, width: int) -> None:
    named = TilePath(kind, level if kind == "tile" else 0, index, width)
    assert parse_tile_path(str(named)) == named
    if kind != "lines":  # the reference knows only the standard paths
        ref = reference.tile_path(level, index, width) if kind == "tile" else None
        ref = ref or reference.entries_path(index, width)
        assert str(named) == ref
    assert encode_index(index) == reference.encode_index(index)


# --- file contents ----------------------------------------------------------------------


def test_every_tile_and_bundle_of_the_vector_trees_has_the_vectors_sha256() -> None:
    files = TREES["file_sha256"]
    assert len(files) > 500
    for path, digest in files.items():
        assert hashlib.sha256(product_file(path)).hexdigest() == digest, path


@pytest.mark.parametrize("tree", TREES["small_trees"], ids=lambda tree: str(tree["size"]))
def test_the_smallest_trees_files_are_the_vectors_bytes(tree: dict[str, Any]) -> None:
    for path, hex_bytes in tree["files"].items():
        data = bytes.fromhex(hex_bytes)
        assert product_file(path) == data, path
        parsed = parse_tile_path(path)
        if parsed.kind == "entries":
            assert decode_bundle(data) == list(entries()[: parsed.width])
        else:
            assert decode_tile(data, parsed.width) == [
                data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)
            ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=TILE_WIDTH))
def test_a_bundle_is_the_references_and_decodes_back(items: list[bytes]) -> None:
    bundle = encode_bundle(items)
    assert bundle == reference.entry_bundle(items)
    assert decode_bundle(bundle) == items
    with pytest.raises(TileError, match="cut off"):
        decode_bundle(bundle[:-1])  # a bundle cut anywhere in its last entry or prefix


def test_a_bundle_holds_entries_of_at_most_65535_bytes() -> None:
    assert decode_bundle(encode_bundle([b"x" * MAX_ENTRY_BYTES])) == [b"x" * MAX_ENTRY_BYTES]
    with pytest.raises(TileError, match="65535"):
        encode_bundle([b"x" * (MAX_ENTRY_BYTES + 1)])
    for cut in (b"\x00", b"\x00\x05abc"):
        with pytest.raises(TileError, match="cut off"):
            decode_bundle(cut)


def test_a_tile_is_1_to_256_hashes_of_32_bytes() -> None:
    one = bytes(32)
    assert decode_tile(encode_tile([one] * TILE_WIDTH)) == [one] * TILE_WIDTH
    assert decode_tile(encode_tile([one] * 3), 3) == [one] * 3
    for bad in ([], [one] * (TILE_WIDTH + 1), [bytes(31)], [one, bytes(33)]):
        with pytest.raises(TileError):
            encode_tile(bad)
    with pytest.raises(TileError):
        decode_tile(bytes(32 * 255))  # a full tile is 8,192 bytes
    with pytest.raises(TileError):
        decode_tile(bytes(32 * 4 + 1), 4)


@given(st.lists(st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]))))
def test_lines_files_decode_back(lines: list[str]) -> None:
    data = encode_lines(lines)
    assert decode_lines(data) == lines
    if lines and lines[-1]:
        with pytest.raises(TileError, match="cut off"):
            decode_lines(data[:-1])


# --- which tiles a sealed size completes ----------------------------------------------------


def full_tiles_of(size: int) -> set[tuple[int, int]]:
    """(level, index) of the full tiles in tile_sets.json for a tree of `size`."""
    (entry,) = (s for s in TILE_SETS["sizes"] if s["size"] == size)
    found = set()
    for path in entry["tiles"]:
        parsed = parse_tile_path(path)
        if not parsed.partial:
            found.add((parsed.level, parsed.index))
    return found


@pytest.mark.parametrize("size", [s["size"] for s in TILE_SETS["sizes"]])
def test_sealing_256_at_a_time_completes_the_full_tiles_of_the_vectors(size: int) -> None:
    """The union of what each seal completes, up to the largest sealed size within
    `size`, is every full tile of that tree (tiles are immutable: the partial ones are
    the only ones a sealed log does not have)."""
    sealed = size - size % TILE_WIDTH
    completed: list[tuple[int, int]] = []
    for step in range(TILE_WIDTH, sealed + 1, TILE_WIDTH):
        done = tiles_completed(step)
        assert done[0] == (0, step // TILE_WIDTH - 1)  # level 0's last, first
        completed += done
    assert len(completed) == len(set(completed))  # each tile completed once
    assert set(completed) == full_tiles_of(size)
    bundles = {
        parse_tile_path(p).index
        for s in TILE_SETS["sizes"]
        if s["size"] == size
        for p in s["entry_bundles"]
        if not parse_tile_path(p).partial
    }
    assert bundles == {index for level, index in completed if level == 0}


def test_sealing_to_65536_completes_the_first_level_1_tile() -> None:
    assert tiles_completed(256) == [(0, 0)]
    assert tiles_completed(65536) == [(0, 255), (1, 0)]
    assert tiles_completed(2 * 65536) == [(0, 511), (1, 1)]
    assert tiles_completed(256**3) == [(0, 65535), (1, 255), (2, 0)]
    for size in (0, -256, 255, 257, 65535):
        with pytest.raises(TileError):
            tiles_completed(size)


# --- which nodes a tile holds ---------------------------------------------------------------


@pytest.mark.parametrize(("level", "index"), [(0, 0), (0, 1), (0, 272), (1, 0), (1, 5), (2, 0)])
def test_a_tile_makes_510_nodes_redundant_its_hashes_and_those_between_them_and_its_root(
    level: int, index: int
) -> None:
    nodes = nodes_below_tile(level, index)
    assert len(nodes) == len(set(nodes)) == 510  # 256 + 128 + ... + 2
    expected = {
        (8 * level + up, i)
        for up in range(8)
        for i in range((index * TILE_WIDTH) >> up, ((index + 1) * TILE_WIDTH) >> up)
    }
    assert set(nodes) == expected
    assert set(tile_nodes(level, index)) <= set(nodes)
    root = (8 * level + 8, index)
    assert root not in nodes  # the next level's hash stays
    for node in nodes:
        assert tile_of(node)[:2] == (level, index)


def test_tiles_sealed_up_to_a_size_make_exactly_the_nodes_inside_it_redundant() -> None:
    sealed = 65536 + 512  # a level-1 tile, 258 level-0 tiles
    trimmed: set[NodeId] = set()
    for step in range(TILE_WIDTH, sealed + 1, TILE_WIDTH):
        for tile in tiles_completed(step):
            trimmed.update(nodes_below_tile(*tile))
    every = {(h, i) for h in range(24) for i in range(sealed >> h)}
    assert trimmed == {node for node in every if inside_sealed(node, sealed)}
    # Kept: the level-1 tile's root (a level-2 hash), and the level-8+ nodes over the
    # two level-0 tiles past it, which level-1 tile 1 will hold.
    assert every - trimmed == {(16, 0), (8, 256), (8, 257), (9, 128)}


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_node_read_from_a_reference_tile_is_the_root_of_its_leaves(data: st.DataObject) -> None:
    height = data.draw(st.integers(0, 15), label="height")
    index = data.draw(st.integers(0, (65536 >> height) - 1), label="index")
    level, tile, first, count = tile_of((height, index))
    assert level == height // 8
    assert count == 1 << (height % 8)
    assert first + count <= TILE_WIDTH
    hashes = decode_tile(reference_tile(level, tile))
    assert node_from_tile((height, index), hashes) == subtree_root(height, index)


def test_every_node_of_the_first_tiles_reads_back_from_them() -> None:
    for level, index in [(0, 0), (0, 255), (1, 0)]:
        hashes = decode_tile(reference_tile(level, index))
        for node in nodes_below_tile(level, index):
            assert node_from_tile(node, hashes) == subtree_root(*node), node
        root = node_hash_of_tile(hashes)
        assert root == subtree_root(8 * level + 8, index)
        assert root == reference.merkle_tree_hash(hashes)


def node_hash_of_tile(hashes: list[bytes]) -> bytes:
    """The tile's root, folded by node_from_tile from its two halves."""
    halves = [node_from_tile((7, i), hashes) for i in (0, 1)]
    return root_of(halves)


def test_a_node_from_a_short_tile_is_refused() -> None:
    hashes = decode_tile(reference_tile(0, 0))[:100]
    with pytest.raises(TileError):
        node_from_tile((7, 0), hashes)


@settings(max_examples=400, deadline=None)
@given(
    height=st.integers(0, 31),
    index=st.integers(0, 2**20),
    tiles=st.integers(0, 3 * 256 + 2),
)
def test_inside_sealed_is_whether_the_nodes_reference_tile_is_full_in_the_sealed_log(
    height: int, index: int, tiles: int
) -> None:
    sealed = tiles * TILE_WIDTH
    level, rest = divmod(height, 8)
    tile_index = (index << rest) >> 8
    # Full in a tree of the sealed size, by the reference's own arithmetic.
    full = tile_index < reference.full_tile_count(level, sealed)
    assert inside_sealed((height, index), sealed) == full


@pytest.mark.parametrize(
    ("kind", "full"),
    [
        ("tile", encode_tile([bytes([i]) * 32 for i in range(TILE_WIDTH)])),
        ("entries", encode_bundle([b"e%d" % i for i in range(TILE_WIDTH)])),
        ("lines", encode_lines([f"line {i}" for i in range(TILE_WIDTH)])),
    ],
)
def test_a_full_file_is_exactly_its_256_hashes_entries_or_lines(kind: str, full: bytes) -> None:
    path = TilePath(kind, 0, 3, TILE_WIDTH)
    check_full_file(path, full)
    for wrong, why in [(full[:-1], "fewer than 256|cut off"), (full + b"\n", "more than 256")]:
        with pytest.raises(TileError, match=why):
            check_full_file(path, wrong)
    with pytest.raises(TileError, match="more than 256"):
        check_full_file(path, full + full)
    for tiny in (b"", full[:1]):
        with pytest.raises(TileError):
            check_full_file(path, tiny)


def test_an_index_past_every_log_parses_as_one_beyond_every_log() -> None:
    """Without int()'s limit of 4,300 digits: any index over 20 digits is past every log."""
    huge = parse_tile_path("tile/0/x100/" + "x000/" * 1500 + "000")
    assert huge.index == 1 << 64
    assert parse_tile_path("tile/0/x018/x446/x744/x073/x709/x551/615").index == 2**64 - 1

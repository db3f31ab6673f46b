"""Generate the tlog-tiles vectors in this folder from tests/tlog_tiles_reference.py alone.

Nothing here imports the product (`gateway`): the vectors are what the spec-derived
reference computes, so a product test compares the product's tiles with them. The
output is deterministic; tests/unit/test_tlog_tiles_reference.py fails if a file here
differs from what this derives now.
Run from the repository root: `.venv/bin/python -m tests.vectors.tlog_tiles.make_vectors`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from tests.tlog_tiles_reference import (
    HASH_SIZE,
    EntryBundle,
    Tile,
    bundles_for_size,
    entries_path,
    entry_bundle,
    full_tile_count,
    leaf_hash,
    level_count,
    parse_tile_path,
    partial_tile_width,
    root_from_tiles,
    tile_bytes,
    tile_path,
    tiles_for_size,
)

VECTOR_DIR = Path(__file__).resolve().parent

PATH_INDEXES = (0, 1, 255, 256, 999, 1000, 1001, 65535, 1234067, 2**56 - 1, 2**63 - 1, 2**64 - 1)
PATH_WIDTHS = (None, 1, 112, 255)
PATH_LEVELS = (0, 1, 2, 63)
MALFORMED_PATHS = (
    ("tile/0/1234", "index element of 4 digits: 1234 is x001/234"),
    ("tile/0/x001/x234/67", "last index element of 2 digits"),
    ("tile/0/67", "index element of 2 digits"),
    ("tile/0/0000", "index element of 4 digits"),
    ("tile/0/x000/001", "an extra leading x000 element: 1 is 001"),
    ("tile/0/x001", "the last element has an x"),
    ("tile/0/001/234", "an element but the last lacks its x"),
    ("tile/0/x1/234", "x element of 1 digit"),
    ("tile/0/abc", "index is not digits"),
    ("tile/0/-01", "negative index"),
    ("tile/0/\u0660\u0660\u0660", "index in non-ASCII digits"),
    ("tile/0/000.p/0", "partial width 0"),
    ("tile/0/000.p/256", "partial width 256: a full tile has no .p suffix"),
    ("tile/0/000.p/01", "partial width with a leading zero"),
    ("tile/0/000.p/", "partial width missing"),
    ("tile/0/000.p", ".p without a width"),
    ("tile/0/000.p/1/", "trailing slash"),
    ("tile/0/000.P/1", "upper-case P"),
    ("tile/0/000.p/x1", "partial width is not digits"),
    ("tile/00/000", "level with a leading zero"),
    ("tile/64/000", "level above 63"),
    ("tile/-1/000", "negative level"),
    ("tile/a/000", "level is not digits"),
    ("tile//000", "level missing"),
    ("tile/0/", "index missing"),
    ("tile/0", "index missing"),
    ("/tile/0/000", "leading slash: paths are relative to the prefix"),
    ("tiles/0/000", "not under tile/"),
    ("tile/8/0/000", "the go.dev/design/25530-sumdb layout with a height element"),
    ("tile/data/000", "sumdb's data tiles are tile/entries/ here"),
    ("tile/entries/1234", "entry bundle index element of 4 digits"),
    ("tile/entries/000.p/0", "entry bundle partial width 0"),
    ("tile/entries/000.p/256", "entry bundle partial width 256"),
    ("tile/entries/x000/001", "entry bundle index with an extra x000"),
    ("tile/0/000 ", "trailing space"),
)

TILE_SET_SIZES = (0, 1, 2, 255, 256, 257, 511, 512, 65535, 65536, 65537, 70000)
ROOT_SIZES = (0, 1, 2, 3, 4, 5, 7, 8, 255, 256, 257, 511, 512, 513, 1000, *TILE_SET_SIZES[-4:])
SMALL_TREE_SIZES = (1, 2, 3)
ENTRY_RULE = "entry i is the ASCII bytes of 'entry %d' % i, no newline: entry 0 is b'entry 0'"


def fixed_entry(index: int) -> bytes:
    return b"entry %d" % index


def path_vectors() -> dict[str, Any]:
    tiles = [
        {
            "level": level,
            "index": index,
            "width": width or 256,
            "path": tile_path(level, index, width),
        }
        for level in PATH_LEVELS
        for index in PATH_INDEXES
        for width in PATH_WIDTHS
    ]
    entries = [
        {"index": index, "width": width or 256, "path": entries_path(index, width)}
        for index in PATH_INDEXES
        for width in PATH_WIDTHS
    ]
    for path, _ in MALFORMED_PATHS:
        try:
            parse_tile_path(path)
        except ValueError:
            continue
        raise AssertionError(f"the reference accepts the malformed path {path!r}")
    return {
        "about": "tlog-tiles path encodings (c2sp.org/tlog-tiles, Merkle Tree and Log entries)",
        "tiles": tiles,
        "entry_bundles": entries,
        "malformed": [{"path": path, "why": why} for path, why in MALFORMED_PATHS],
    }


def _zero_tile(path: str) -> bytes:
    parsed = parse_tile_path(path)
    return bytes(parsed.width * HASH_SIZE)


def root_reads(size: int) -> list[str]:
    """The tiles root_from_tiles reads for `size`, in the order it reads them."""
    read: list[str] = []

    def fetch(path: str) -> bytes:
        read.append(path)
        return _zero_tile(path)

    root_from_tiles(size, fetch)
    return read


def tile_set_vectors() -> dict[str, Any]:
    sizes = []
    for size in TILE_SET_SIZES:
        levels = [
            {
                "level": level,
                "full_tiles": full_tile_count(level, size),
                "partial_width": partial_tile_width(level, size),
            }
            for level in range(level_count(size))
        ]
        sizes.append(
            {
                "size": size,
                "levels": levels,
                "tiles": [tile.path for tile in tiles_for_size(size)],
                "entry_bundles": [bundle.path for bundle in bundles_for_size(size)],
                "root_reads": root_reads(size),
            }
        )
    return {
        "about": (
            "the hash tiles and entry bundles a tree of each size is served as, per level "
            "the count of full tiles and the partial width (0: none), and the tiles a "
            "client reads to recompute the root (the partial tile of each level)"
        ),
        "sizes": sizes,
    }


def tree_vectors() -> dict[str, Any]:
    largest = max(ROOT_SIZES)
    entries = [fixed_entry(i) for i in range(largest)]
    leaves = [leaf_hash(entry) for entry in entries]
    # Each tile and bundle depends only on the entries it spans, so one computation per
    # path serves every size that has it (tiles are immutable [tiles §Merkle Tree]).
    files: dict[Tile | EntryBundle, bytes] = {}
    roots = []
    for size in ROOT_SIZES:
        for tile in tiles_for_size(size):
            if tile not in files:
                files[tile] = tile_bytes(tile.level, tile.index, tile.width, leaves)
        for bundle in bundles_for_size(size):
            if bundle not in files:
                first = bundle.index * 256
                files[bundle] = entry_bundle(entries[first : first + bundle.width])
        by_path = {name.path: data for name, data in files.items()}
        root = root_from_tiles(size, by_path.__getitem__)
        roots.append(
            {"size": size, "root_hex": root.hex(), "root_base64": base64.b64encode(root).decode()}
        )
    ordered = sorted(files, key=lambda name: (isinstance(name, EntryBundle), name))
    small = [
        {
            "size": size,
            "files": {
                name.path: files[name].hex()
                for name in ordered
                if name in set(tiles_for_size(size)) | set(bundles_for_size(size))
            },
        }
        for size in SMALL_TREE_SIZES
    ]
    return {
        "about": (
            "for the fixed entries below: the root of each size, the SHA-256 of every "
            "tile and bundle file of those trees, and the whole files of the smallest trees"
        ),
        "entries": ENTRY_RULE,
        "leaf_hashes_hex": [leaf.hex() for leaf in leaves[:3]],
        "roots": roots,
        "file_sha256": {name.path: hashlib.sha256(files[name]).hexdigest() for name in ordered},
        "small_trees": small,
    }


def build_vectors() -> dict[str, dict[str, Any]]:
    """File name -> content of every vector file."""
    return {
        "paths.json": path_vectors(),
        "tile_sets.json": tile_set_vectors(),
        "trees.json": tree_vectors(),
    }


def render(content: dict[str, Any]) -> str:
    return json.dumps(content, indent=1, ensure_ascii=True) + "\n"


def main() -> None:
    for name, content in build_vectors().items():
        (VECTOR_DIR / name).write_text(render(content), encoding="utf-8")


if __name__ == "__main__":
    main()

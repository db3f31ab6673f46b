"""What gateway/domain/audit/tiles.py adds for serving and checking a log by its files
(which tree sizes have a file, partial files as prefixes, an export line's bundle
entry, and the standard files a log's entries imply, a bundle at a time), checked
against the independent tlog-tiles reference (tests/tlog_tiles_reference.py)."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.audit.tiles import (
    TILE_WIDTH,
    ExpectedFiles,
    TileError,
    TilePath,
    bundle_widths,
    encode_lines,
    entry_data,
    file_difference,
    file_prefix,
    full_file,
    leaves_needed,
    parse_tile_path,
)
from tests.tlog_tiles_reference import TilePathError, tile_log_files, tile_width
from tests.unit.test_tlog_tiles_reference import fixed_entries, fixed_log_files

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "audit-v1.json"


def expected_files(entries: tuple[bytes, ...]) -> dict[str, bytes]:
    """Every file ExpectedFiles gives for the log of `entries`, each path once."""
    expected = ExpectedFiles(len(entries))
    files: dict[str, bytes] = {}
    for index, width in bundle_widths(len(entries)):
        bundle = entries[index * TILE_WIDTH : index * TILE_WIDTH + width]
        for path, data in expected.bundle(index, bundle):
            assert path not in files, path
            files[path] = data
    return files


# --- which tree sizes have a file --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "needed"),
    [
        ("tile/0/000.p/3", 3),
        ("tile/0/000", 256),
        ("tile/0/002", 768),
        ("tile/entries/001.p/4", 260),
        ("lines/003", 1024),
        ("lines/003.p/1", 769),
        ("tile/1/000.p/3", 768),
        ("tile/1/000", 65536),
        ("tile/1/001.p/17", 65536 + 17 * 256),
        ("tile/2/000.p/1", 65536),
        ("tile/2/x001/000.p/2", (1000 * 256 + 2) * 65536),
    ],
)
def test_a_file_exists_from_the_tree_size_that_holds_its_last_hash(path: str, needed: int) -> None:
    assert leaves_needed(parse_tile_path(path)) == needed


@settings(max_examples=300)
@given(
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=1, max_value=256),
    st.integers(min_value=0, max_value=2**34),
)
def test_leaves_needed_agrees_with_the_tiles_a_reference_tree_has(
    level: int, index: int, width: int, size: int
) -> None:
    try:
        has = tile_width(level, index, size) >= width
    except TilePathError:
        has = False
    assert (leaves_needed(TilePath("tile", level, index, width)) <= size) == has


def test_the_full_file_of_a_partial_one_is_its_tile_at_width_256() -> None:
    assert str(full_file(parse_tile_path("tile/1/x001/002.p/9"))) == "tile/1/x001/002"
    assert str(full_file(parse_tile_path("lines/004"))) == "lines/004"


# --- partial files are prefixes ----------------------------------------------------------


@given(st.integers(min_value=1, max_value=255))
def test_a_partial_file_is_the_prefix_of_its_full_file(width: int) -> None:
    full = tile_log_files(fixed_entries(256))
    partial = tile_log_files(fixed_entries(width))
    for kind in ("tile/0", "tile/entries"):
        path = parse_tile_path(f"{kind}/000.p/{width}")
        assert file_prefix(path, full[f"{kind}/000"]) == partial[f"{kind}/000.p/{width}"]
    lines = [f"line {n}" for n in range(256)]
    prefix = file_prefix(parse_tile_path(f"lines/000.p/{width}"), encode_lines(lines))
    assert prefix == encode_lines(lines[:width])


@pytest.mark.parametrize(
    ("path", "data", "why"),
    [
        ("tile/0/000.p/3", b"\x00" * 64, "fewer than 3 hashes"),
        ("tile/entries/000.p/2", b"\x00\x01a", "fewer than 2 entries"),
        ("tile/entries/000.p/1", b"\x00\x05ab", "cut off"),
        ("lines/000.p/2", b"one\ntwo", "fewer than 2 lines"),
    ],
)
def test_a_full_file_too_short_for_the_prefix_is_refused(path: str, data: bytes, why: str) -> None:
    with pytest.raises(TileError, match=why):
        file_prefix(parse_tile_path(path), data)


# --- an export line's entry ----------------------------------------------------------------


def test_an_export_lines_bundle_entry_is_its_canonical_bytes_c() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    entries = vectors["entries"] + vectors["rotation"]["entries"]
    assert len(entries) >= 4
    for entry in entries:
        assert entry_data(entry["export_line"]) == entry["canonical"].encode("utf-8")


@pytest.mark.parametrize("change", ["spaced", "not json", "no entry"])
def test_a_line_that_is_no_canonical_entry_has_no_bundle_entry(change: str) -> None:
    line = json.loads(VECTORS.read_text(encoding="utf-8"))["entries"][0]["export_line"]
    bad = {
        "spaced": line.replace('":', '": ', 1),
        "not json": line[:-1],
        "no entry": '{"seq":1}',
    }[change]
    with pytest.raises(TileError, match="not a canonical export line"):
        entry_data(bad)


# --- the standard files a log implies --------------------------------------------------------


def test_bundles_are_full_but_the_last_and_listed_lazily() -> None:
    assert list(bundle_widths(0)) == []
    assert list(bundle_widths(255)) == [(0, 255)]
    assert list(bundle_widths(256)) == [(0, 256)]
    assert list(bundle_widths(513)) == [(0, 256), (1, 256), (2, 1)]
    assert list(islice(bundle_widths(2**70), 2)) == [(0, 256), (1, 256)]


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=1400))
def test_expected_files_are_the_reference_log_files(size: int) -> None:
    entries = fixed_entries(size)
    assert expected_files(entries) == (tile_log_files(entries) if size else {})


@pytest.mark.parametrize("size", [65535, 65536, 65537, 70000])
def test_expected_files_include_every_level_of_a_large_log(size: int) -> None:
    # 65536 completes tile/1/000 and starts tile/2/000.p/1; 70000 is the spec's example.
    assert expected_files(fixed_entries(size)) == fixed_log_files(size)


def test_bundles_must_come_in_order_and_at_their_width() -> None:
    entries = fixed_entries(300)
    expected = ExpectedFiles(300)
    with pytest.raises(TileError, match="bundle 1 of 44 entries"):
        expected.bundle(1, entries[256:])
    with pytest.raises(TileError, match="bundle 0 of 255 entries"):
        expected.bundle(0, entries[:255])
    assert len(expected.bundle(0, entries[:256])) == 2
    with pytest.raises(TileError, match="bundle 2 of 0 entries"):
        expected.bundle(2, ())


# --- where a served file differs ---------------------------------------------------------------


def test_the_first_difference_of_a_served_file_is_named() -> None:
    files = tile_log_files(fixed_entries(10))
    bundle, tile = files["tile/entries/000.p/10"], files["tile/0/000.p/10"]
    assert file_difference("tile/entries/000.p/10", bundle, bundle) is None
    other = bytearray(bundle)
    other[bundle.index(b"entry 3") + 6] = ord("9")
    assert file_difference("tile/entries/000.p/10", bytes(other), bundle) == "entry 3 differs"
    short = tile_log_files(fixed_entries(9))["tile/entries/000.p/9"]
    assert file_difference("tile/entries/000.p/10", short, bundle) == "it has 9 entries, not 10"
    assert file_difference("tile/entries/000", b"\x00", bundle).startswith(
        "it is not an entry bundle"
    )
    swapped = tile[32:64] + tile[:32] + tile[64:]
    assert file_difference("tile/0/000.p/10", swapped, tile) == "hash 0 differs"
    assert file_difference("tile/0/000.p/10", tile[:64], tile) == "it has 2 hashes, not 10"
    lines = encode_lines(["a", "b"])
    assert file_difference("lines/000.p/2", encode_lines(["a", "c"]), lines) == "line 1 differs"
    assert file_difference("lines/000.p/2", encode_lines(["a"]), lines) == "it has 1 lines, not 2"

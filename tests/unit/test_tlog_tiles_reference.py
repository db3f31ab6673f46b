"""The tlog-tiles reference (tests/tlog_tiles_reference.py): against the spec's worked
examples, the product's RFC 6962 root, its own vector files, and, for the streaming
client, a real HTTP server on loopback serving a log signed with the product's note
signer."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.domain.audit.keys import Signer
from gateway.domain.audit.merkle import root_of
from gateway.domain.audit.note import note_key_hash, note_verifier_key, sign_note
from tests.tlog_tiles_reference import (
    EMPTY_ROOT,
    MAX_ENTRY_SIZE,
    CheckpointError,
    EntryBundle,
    EntryBundleError,
    FetchError,
    InconsistentLogError,
    NoteError,
    Tile,
    TilePathError,
    TileSizeError,
    bundles_for_size,
    encode_index,
    entries_path,
    entry_bundle,
    full_tile_count,
    http_get,
    leaf_hash,
    level_count,
    merkle_tree_hash,
    open_signed_note,
    parse_checkpoint_text,
    parse_entry_bundle,
    parse_note_verifier_key,
    parse_tile_path,
    partial_tile_width,
    root_from_tiles,
    tile_bytes,
    tile_hashes,
    tile_log_files,
    tile_path,
    tile_width,
    tiles_for_size,
    verify_tile_log,
)
from tests.unit.test_audit_checkpoint import GO_NOTE, GO_TEXT, GO_VERIFIER_KEY
from tests.vectors.tlog_tiles import make_vectors

ROOT = Path(__file__).resolve().parents[2]
VECTOR_DIR = ROOT / "tests" / "vectors" / "tlog_tiles"
ORIGIN = "agentgw.example/tiles-test"
SIGNER = Signer.from_seed(bytes(range(32)))  # a public test seed: never a real log's key
OTHER_SIGNER = Signer.from_seed(bytes(range(1, 33)))
VERIFIER_KEY = note_verifier_key(ORIGIN, SIGNER.public_key_raw)
LARGE_SIZES = (65535, 65536, 65537, 70000)
SMALL_LOG = 600  # two full level-0 tiles, one partial; a partial level-1 tile of width 2


@cache
def _fixed_leaves(count: int) -> tuple[bytes, ...]:
    return tuple(leaf_hash(entry) for entry in fixed_entries(count))


def fixed_entries(count: int) -> tuple[bytes, ...]:
    return tuple(make_vectors.fixed_entry(i) for i in range(count))


def fixed_leaves(count: int) -> tuple[bytes, ...]:
    """The leaf hashes of the first `count` fixed entries (computed once, for 70000)."""
    return _fixed_leaves(max(count, 70000))[:count]


@cache
def fixed_tile(path: str) -> bytes:
    """A tile of the fixed entries, computed once from its definition: a tile's bytes
    depend only on the entries it spans, so one cache serves every tree size."""
    tile = parse_tile_path(path)
    assert isinstance(tile, Tile)
    return tile_bytes(tile.level, tile.index, tile.width, fixed_leaves(70000))


def fixed_log_files(size: int) -> dict[str, bytes]:
    """tile_log_files(fixed_entries(size)), with the hash tiles from the shared cache."""
    entries = fixed_entries(size)
    files = {tile.path: fixed_tile(tile.path) for tile in tiles_for_size(size)}
    for bundle in bundles_for_size(size):
        first = bundle.index * 256
        files[bundle.path] = entry_bundle(entries[first : first + bundle.width])
    return files


# --- The spec's worked examples ---------------------------------------------------------


def test_index_is_written_in_x_prefixed_three_digit_groups_as_the_spec_example() -> None:
    assert encode_index(1234067) == "x001/x234/067"
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(0, 0) == "tile/0/000"
    assert entries_path(0) == "tile/entries/000"
    assert tile_path(0, 999) == "tile/0/999"
    assert tile_path(0, 1000) == "tile/0/x001/000"


def test_paths_agree_with_the_go_and_tessera_examples() -> None:
    # Go tile.go: "123456789 encodes as x123/x456/789"; Tessera's layout tests.
    assert encode_index(123456789) == "x123/x456/789"
    assert entries_path(123456789000) == "tile/entries/x123/x456/x789/000"
    assert tile_path(15, 455667) == "tile/15/x455/667"
    assert tile_path(3, 1234567) == "tile/3/x001/x234/567"
    assert entries_path(0, tile_width(0, 0, 8)) == "tile/entries/000.p/8"
    assert entries_path(1, tile_width(0, 1, 257)) == "tile/entries/001.p/1"
    assert tile_path(1, 0, tile_width(1, 0, 1024)) == "tile/1/000.p/4"
    assert tile_path(0, 0, tile_width(0, 0, 255)) == "tile/0/000.p/255"


def test_partial_suffix_only_for_widths_below_256() -> None:
    assert tile_path(0, 7, 256) == tile_path(0, 7) == "tile/0/007"
    assert tile_path(2, 7, 1) == "tile/2/007.p/1"
    assert entries_path(7, 255) == "tile/entries/007.p/255"


def test_tree_of_70000_is_served_as_the_spec_example_says() -> None:
    tiles = tiles_for_size(70000)
    level0 = [t for t in tiles if t.level == 0]
    assert [t for t in level0 if not t.is_partial] == [Tile(0, n) for n in range(273)]
    assert [t for t in level0 if t.is_partial] == [Tile(0, 273, 112)]
    assert [t for t in tiles if t.level == 1] == [Tile(1, 0), Tile(1, 1, 17)]
    assert [t for t in tiles if t.level == 2] == [Tile(2, 0, 1)]
    assert len(tiles) == 273 + 1 + 1 + 1 + 1


def test_tree_of_256_is_a_full_level0_tile_and_a_level1_tile_of_width_1() -> None:
    assert tiles_for_size(256) == [Tile(0, 0), Tile(1, 0, 1)]
    assert bundles_for_size(256) == [EntryBundle(0)]


def test_empty_tree_has_no_tiles() -> None:
    assert tiles_for_size(0) == [] and bundles_for_size(0) == []
    assert root_from_tiles(0, fixed_tile) == EMPTY_ROOT


@settings(max_examples=200)
@given(st.integers(min_value=1, max_value=2**18))
def test_each_level_spans_exactly_its_hashes_and_the_top_is_partial(size: int) -> None:
    tiles = tiles_for_size(size)
    for level in range(level_count(size)):
        at_level = [t for t in tiles if t.level == level]
        assert sum(t.width for t in at_level) == size >> (8 * level)
        assert len([t for t in at_level if t.is_partial]) == (partial_tile_width(level, size) > 0)
        assert [t.index for t in at_level] == list(range(len(at_level)))
        assert full_tile_count(level, size) == len([t for t in at_level if not t.is_partial])
    top = level_count(size) - 1
    assert [t.is_partial for t in tiles if t.level == top] == [True]


@given(st.integers(min_value=1, max_value=2**64))
def test_level_counts_follow_the_spec_formulas_up_to_2_to_the_64(size: int) -> None:
    # [tiles Partial Tiles]: the partial tile at level l has floor(s / 256**l) mod 256.
    for level in range(level_count(size)):
        assert partial_tile_width(level, size) == (size // 256**level) % 256
        assert full_tile_count(level, size) == size // 256 ** (level + 1)
    assert size // 256 ** level_count(size) == 0 < size // 256 ** (level_count(size) - 1)


# --- Paths: round trip and refusals -------------------------------------------------------


@settings(max_examples=300)
@given(
    st.integers(min_value=0, max_value=63),
    st.integers(min_value=0, max_value=2**70),
    st.integers(min_value=1, max_value=256),
)
def test_tile_and_bundle_paths_round_trip(level: int, index: int, width: int) -> None:
    assert parse_tile_path(tile_path(level, index, width)) == Tile(level, index, width)
    assert parse_tile_path(entries_path(index, width)) == EntryBundle(index, width)


@pytest.mark.parametrize(("path", "why"), make_vectors.MALFORMED_PATHS)
def test_malformed_path_is_refused(path: str, why: str) -> None:
    with pytest.raises(TilePathError):
        parse_tile_path(path)


@settings(max_examples=500)
@given(
    st.sampled_from(["tile/0/", "tile/1/", "tile/63/", "tile/entries/", "tile/", "tile/00/"]),
    st.text(alphabet="0123456789x/.p", max_size=24),
)
def test_a_path_parses_only_if_it_is_the_path_of_what_it_names(prefix: str, rest: str) -> None:
    try:
        parsed = parse_tile_path(prefix + rest)
    except TilePathError:
        return
    assert parsed.path == prefix + rest


@pytest.mark.parametrize(
    ("level", "index", "width"), [(64, 0, 256), (-1, 0, 256), (0, -1, 256), (0, 0, 0), (0, 0, 257)]
)
def test_coordinates_outside_the_spec_have_no_path(level: int, index: int, width: int) -> None:
    with pytest.raises(TilePathError):
        tile_path(level, index, width)


def test_a_tree_has_no_tile_past_its_end() -> None:
    with pytest.raises(TilePathError):
        tile_width(0, 1, 256)
    with pytest.raises(TilePathError):
        tile_width(1, 0, 255)


# --- Tile bytes and roots against the product's RFC 6962 root -----------------------------


def test_level0_tile_is_the_leaf_hashes_and_level1_hashes_are_full_tile_roots() -> None:
    leaves = fixed_leaves(SMALL_LOG)
    assert tile_bytes(0, 1, 88, leaves) == b"".join(leaves[256:344])
    level1 = tile_hashes(tile_bytes(1, 0, 2, leaves))
    assert level1 == [root_of(leaves[0:256]), root_of(leaves[256:512])]
    assert level1[1] == merkle_tree_hash(tile_hashes(tile_bytes(0, 1, 256, leaves)))


def test_root_from_tiles_equals_product_root_of_for_sizes_1_to_600() -> None:
    leaves = fixed_leaves(SMALL_LOG)
    for size in range(1, SMALL_LOG + 1):
        assert root_from_tiles(size, fixed_tile) == root_of(leaves[:size]), size


def test_root_from_tiles_and_vector_roots_equal_product_root_of_for_every_vector_size() -> None:
    roots = {r["size"]: r for r in vectors("trees.json")["roots"]}
    sizes = set(roots) | {s["size"] for s in vectors("tile_sets.json")["sizes"]}
    assert set(LARGE_SIZES) <= sizes == set(roots)
    leaves = fixed_leaves(max(sizes))
    for size in sorted(sizes):
        root = root_of(leaves[:size])
        assert root_from_tiles(size, fixed_tile) == root, size
        assert roots[size]["root_hex"] == root.hex()
        assert base64.b64decode(roots[size]["root_base64"]) == root


def test_every_full_tile_of_a_large_tree_hashes_to_its_hash_in_the_tile_above() -> None:
    leaves = fixed_leaves(70000)
    fetch = fixed_tile
    for tile in tiles_for_size(70000):
        if tile.is_partial:
            continue
        parent_index = tile.index // 256
        parent = Tile(tile.level + 1, parent_index, tile_width(tile.level + 1, parent_index, 70000))
        expected = tile_hashes(fetch(parent.path))[tile.index % 256]
        assert merkle_tree_hash(tile_hashes(fetch(tile.path))) == expected, tile.path
    level1 = tile_hashes(fetch("tile/1/000"))
    assert merkle_tree_hash(level1) == root_of(leaves[:65536]) == fetch("tile/2/000.p/1")


def test_root_is_read_from_the_partial_tile_of_each_level_only() -> None:
    for size, expected in [
        (256, ["tile/1/000.p/1"]),
        (257, ["tile/1/000.p/1", "tile/0/001.p/1"]),
        (65536, ["tile/2/000.p/1"]),
        (70000, ["tile/2/000.p/1", "tile/1/001.p/17", "tile/0/273.p/112"]),
    ]:
        read: list[str] = []

        def fetch(path: str, read: list[str] = read) -> bytes:
            read.append(path)
            return fixed_tile(path)

        root_from_tiles(size, fetch)
        assert read == expected


def test_a_tile_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(TileSizeError, match=r"tile/0/000\.p/3: 64 bytes"):
        root_from_tiles(3, lambda path: bytes(64))


# --- Entry bundles -----------------------------------------------------------------------


def test_bundle_is_big_endian_uint16_length_prefixed_entries() -> None:
    assert (
        entry_bundle([b"ab", b"", b"\xff" * 300]) == b"\x00\x02ab\x00\x00\x01\x2c" + b"\xff" * 300
    )


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=256))
def test_bundles_round_trip(entries: list[bytes]) -> None:
    assert parse_entry_bundle(entry_bundle(entries), len(entries)) == entries


def test_truncated_bundle_is_refused_at_every_cut() -> None:
    entries = [b"entry 0", b"", b"entry two"]
    data = entry_bundle(entries)
    for cut in range(len(data)):
        with pytest.raises(EntryBundleError):
            parse_entry_bundle(data[:cut], width=3)
    with pytest.raises(EntryBundleError, match="truncated"):
        parse_entry_bundle(data[:-1])
    with pytest.raises(EntryBundleError, match="truncated"):
        parse_entry_bundle(data + b"\x00")


def test_entry_larger_than_65535_bytes_cannot_be_bundled() -> None:
    assert parse_entry_bundle(entry_bundle([bytes(MAX_ENTRY_SIZE)])) == [bytes(MAX_ENTRY_SIZE)]
    with pytest.raises(EntryBundleError, match="65536 bytes"):
        entry_bundle([bytes(MAX_ENTRY_SIZE + 1)])


def test_bundle_of_more_than_256_entries_is_refused() -> None:
    with pytest.raises(EntryBundleError):
        entry_bundle([b"x"] * 257)
    with pytest.raises(EntryBundleError):
        parse_entry_bundle(b"\x00\x00" * 257)
    with pytest.raises(EntryBundleError, match="its width is 2"):
        parse_entry_bundle(entry_bundle([b"x"]), width=2)


# --- Vector files --------------------------------------------------------------------------


def vectors(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTOR_DIR / name).read_text("utf-8"))
    return loaded


def test_vector_files_are_what_the_reference_derives_now() -> None:
    for name, content in make_vectors.build_vectors().items():
        assert make_vectors.render(content) == (VECTOR_DIR / name).read_text("utf-8"), (
            f"tests/vectors/tlog_tiles/{name} drifted from the reference: if intended, "
            "rerun `.venv/bin/python -m tests.vectors.tlog_tiles.make_vectors`"
        )


def test_vector_paths_parse_back_to_their_coordinates() -> None:
    paths = vectors("paths.json")
    for item in paths["tiles"]:
        assert parse_tile_path(item["path"]) == Tile(item["level"], item["index"], item["width"])
    for item in paths["entry_bundles"]:
        assert parse_tile_path(item["path"]) == EntryBundle(item["index"], item["width"])


def test_vector_file_hashes_match_the_files_of_each_tree() -> None:
    trees = vectors("trees.json")
    for size in (1, 3, 257, 513):
        for path, data in tile_log_files(fixed_entries(size)).items():
            assert hashlib.sha256(data).hexdigest() == trees["file_sha256"][path], path
    for small in trees["small_trees"]:
        files = tile_log_files(fixed_entries(small["size"]))
        assert {path: data.hex() for path, data in files.items()} == small["files"]


# --- Signed notes and checkpoints ------------------------------------------------------------


def test_reads_product_verifier_keys() -> None:
    key = parse_note_verifier_key(VERIFIER_KEY)
    assert key.name == ORIGIN
    assert key.public_key == SIGNER.public_key_raw
    assert key.key_id == note_key_hash(ORIGIN, SIGNER.public_key_raw)


def test_opens_the_go_documentation_note() -> None:
    assert open_signed_note(GO_NOTE, parse_note_verifier_key(GO_VERIFIER_KEY)) == GO_TEXT


@pytest.mark.parametrize(
    "bad",
    [
        VERIFIER_KEY.replace("+", "++", 1),
        VERIFIER_KEY[:-4] + "AAA=",
        VERIFIER_KEY.split("+")[0] + "+00000000+" + VERIFIER_KEY.split("+", 2)[2],
        "bad name+" + VERIFIER_KEY.split("+", 1)[1],
    ],
)
def test_malformed_verifier_key_is_refused(bad: str) -> None:
    with pytest.raises(NoteError):
        parse_note_verifier_key(bad)


def test_opens_the_published_audit_checkpoint_with_its_extension_lines() -> None:
    audit = json.loads((ROOT / "tests" / "vectors" / "audit-v1.json").read_text("utf-8"))
    text = open_signed_note(
        audit["checkpoint_note"], parse_note_verifier_key(audit["note_verifier_key"])
    )
    checkpoint = parse_checkpoint_text(text)
    assert (checkpoint.origin, checkpoint.size) == (audit["origin"], audit["tree_size"])
    assert checkpoint.root_hash.hex() == audit["root_hash"]
    assert [line.split(" ")[0] for line in checkpoint.extensions] == ["head", "timestamp"]


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n",
        "o\n01\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_malformed_checkpoint_text_is_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint_text(text)


# --- The streaming client over HTTP -----------------------------------------------------------


class LogServer(ThreadingHTTPServer):
    """Serves the files under `root` on loopback, optionally gzipping entry bundles."""

    daemon_threads = True

    def __init__(self, root: Path, gzip_bundles: bool) -> None:
        super().__init__(("127.0.0.1", 0), LogRequestHandler)
        self.root = root
        self.gzip_bundles = gzip_bundles
        self.accept_encodings: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/log"


class LogRequestHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = cast(LogServer, self.server)
        server.accept_encodings.append(self.headers.get("Accept-Encoding", ""))
        relative = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        file = (server.root / relative.lstrip("/")).resolve()
        if not file.is_relative_to(server.root) or not file.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        body = file.read_bytes()
        self.send_response(HTTPStatus.OK)
        is_checkpoint = file.name == "checkpoint"
        kind = "text/plain; charset=utf-8" if is_checkpoint else "application/octet-stream"
        self.send_header("Content-Type", kind)
        if server.gzip_bundles and "/tile/entries/" in relative:
            body = gzip.compress(body, mtime=0)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(root: Path, gzip_bundles: bool = False) -> Iterator[LogServer]:
    server = LogServer(root.resolve(), gzip_bundles)
    # The poll interval bounds how long shutdown() waits for the serving loop to notice.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="tlog-tiles-server"
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def signed_checkpoint(size: int, root: bytes, signer: Signer = SIGNER) -> str:
    head = hashlib.sha256(b"head %d" % size).hexdigest()
    checkpoint = Checkpoint(ORIGIN, size, root, head, "2026-11-25T06:00:01.000000Z")
    return sign_checkpoint(checkpoint, signer)


def publish(
    directory: Path,
    entries: tuple[bytes, ...],
    checkpoint: str | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write the log's tiles, bundles (`files`, default: tile_log_files(entries)) and
    checkpoint under directory/log."""
    log = directory / "log"
    for path, data in (tile_log_files(entries) if files is None else files).items():
        (log / path).parent.mkdir(parents=True, exist_ok=True)
        (log / path).write_bytes(data)
    if checkpoint is None:
        checkpoint = signed_checkpoint(len(entries), root_of([leaf_hash(e) for e in entries]))
    log.mkdir(parents=True, exist_ok=True)
    (log / "checkpoint").write_text(checkpoint, encoding="utf-8")
    return log


def flip_byte(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def large_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("large-log")
    publish(directory, fixed_entries(70000), files=fixed_log_files(70000))
    return directory


@pytest.fixture
def small_log(tmp_path: Path) -> Path:
    publish(tmp_path, fixed_entries(SMALL_LOG), files=fixed_log_files(SMALL_LOG))
    return tmp_path


def test_honest_log_verifies_and_streams_every_entry_in_order(small_log: Path) -> None:
    seen: list[tuple[int, bytes]] = []
    with serving(small_log) as server:
        result = verify_tile_log(server.url, VERIFIER_KEY, lambda i, e: seen.append((i, e)))
    assert seen == list(enumerate(fixed_entries(SMALL_LOG)))
    assert (result.checkpoint.origin, result.checkpoint.size) == (ORIGIN, SMALL_LOG)
    assert [line.split(" ")[0] for line in result.checkpoint.extensions] == ["head", "timestamp"]
    assert result.hash_tiles_fetched == len(tiles_for_size(SMALL_LOG))
    assert result.entry_bundles_fetched == 3


def test_large_log_verifies_fetching_each_tile_once_holding_few(large_log: Path) -> None:
    # Three tile levels need 65536+ entries: read through file:// URLs (the same urllib
    # client, the sealed directory itself), as 550 loopback HTTP round trips take seconds.
    count = 0

    def check(index: int, entry: bytes) -> None:
        nonlocal count
        assert index == count and entry == b"entry %d" % index
        count += 1

    result = verify_tile_log((large_log / "log").as_uri(), VERIFIER_KEY, check)
    assert count == 70000
    assert result.hash_tiles_fetched == len(tiles_for_size(70000))
    assert result.entry_bundles_fetched == 274
    assert result.most_tiles_held <= 2 * level_count(70000)


def test_entries_reach_the_callback_before_the_next_bundle_is_fetched(small_log: Path) -> None:
    events: list[str] = []

    def fetch(url: str) -> bytes:
        events.append(url.rsplit("/log/", 1)[1])
        return http_get(url)

    with serving(small_log) as server:
        verify_tile_log(
            server.url, VERIFIER_KEY, lambda i, e: events.append(f"entry {i}"), fetch=fetch
        )
    assert events[0] == "checkpoint"
    assert events.index("tile/entries/000") < events.index("entry 0") < events.index("entry 255")
    assert events.index("entry 255") < events.index("tile/entries/001")


def test_gzip_encoded_bundles_verify_and_the_client_asks_for_gzip(small_log: Path) -> None:
    with serving(small_log, gzip_bundles=True) as server:
        result = verify_tile_log(server.url, VERIFIER_KEY)
    assert result.checkpoint.size == SMALL_LOG
    assert set(server.accept_encodings) == {"gzip, identity"}


def test_empty_log_verifies_from_the_checkpoint_alone(tmp_path: Path) -> None:
    publish(tmp_path, (), signed_checkpoint(0, EMPTY_ROOT))
    with serving(tmp_path) as server:
        result = verify_tile_log(server.url, VERIFIER_KEY)
    assert result.checkpoint.size == 0 and result.hash_tiles_fetched == 0


def test_cosignature_by_an_unknown_key_is_ignored(small_log: Path) -> None:
    note = (small_log / "log" / "checkpoint").read_text("utf-8")
    body = note[: note.rfind("\n\n") + 1]
    cosignature = sign_note(body, "witness.example/w1", OTHER_SIGNER)[len(body) + 1 :]
    (small_log / "log" / "checkpoint").write_text(note + cosignature, encoding="utf-8")
    with serving(small_log) as server:
        assert verify_tile_log(server.url, VERIFIER_KEY).checkpoint.size == SMALL_LOG


def test_audit_checkpoint_verifies_over_bundles_of_canonical_entries_not_export_lines(
    tmp_path: Path,
) -> None:
    # docs/audit-format.md §3: the leaf is SHA-256(0x00 || C), C without entry_hash and
    # signature; a bundle entry must hash to its leaf, so bundles hold C, not the line.
    audit = json.loads((ROOT / "tests" / "vectors" / "audit-v1.json").read_text("utf-8"))
    canonical = tuple(e["canonical"].encode() for e in audit["entries"])
    export_lines = tuple(e["export_line"].encode() for e in audit["entries"])
    publish(tmp_path / "c", canonical, audit["checkpoint_note"])
    publish(tmp_path / "lines", export_lines, audit["checkpoint_note"])
    with serving(tmp_path) as server:
        url = server.url.removesuffix("/log")
        result = verify_tile_log(url + "/c/log", audit["note_verifier_key"])
        assert result.checkpoint.size == len(canonical) == audit["tree_size"]
        with pytest.raises(InconsistentLogError, match="root"):
            verify_tile_log(url + "/lines/log", audit["note_verifier_key"])


def test_tampered_entry_is_refused(small_log: Path) -> None:
    flip_byte(small_log / "log" / "tile/entries/001", 5)
    seen: list[int] = []
    with serving(small_log) as server, pytest.raises(InconsistentLogError, match="entry 256"):
        verify_tile_log(server.url, VERIFIER_KEY, lambda i, e: seen.append(i))
    assert seen == list(range(256))  # nothing of the bad bundle was handed out


def test_tampered_entry_with_its_leaf_hash_rewritten_is_refused_by_the_tile_above(
    small_log: Path,
) -> None:
    log = small_log / "log"
    entries = list(fixed_entries(SMALL_LOG))
    entries[300] = b"entry 300 rewritten"
    (log / "tile/entries/001").write_bytes(entry_bundle(entries[256:512]))
    (log / "tile/0/001").write_bytes(b"".join(leaf_hash(e) for e in entries[256:512]))
    with (
        serving(small_log) as server,
        pytest.raises(InconsistentLogError, match=r"tile/1/000\.p/2"),
    ):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_tampered_hash_in_a_full_tile_is_refused(small_log: Path) -> None:
    flip_byte(small_log / "log" / "tile/0/000", 32 * 7)
    with serving(small_log) as server, pytest.raises(InconsistentLogError, match="tile/0/000"):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_tampered_hash_in_a_partial_tile_is_refused_by_the_root(small_log: Path) -> None:
    flip_byte(small_log / "log" / "tile/1/000.p/2", 40)
    with serving(small_log) as server, pytest.raises(InconsistentLogError, match="root"):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_checkpoint_signed_by_another_key_is_refused(small_log: Path) -> None:
    root = root_of(fixed_leaves(SMALL_LOG))
    (small_log / "log" / "checkpoint").write_text(signed_checkpoint(SMALL_LOG, root, OTHER_SIGNER))
    with serving(small_log) as server, pytest.raises(NoteError, match="no signature by"):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_checkpoint_with_a_forged_signature_is_refused(small_log: Path) -> None:
    note = (small_log / "log" / "checkpoint").read_text("utf-8")
    (small_log / "log" / "checkpoint").write_text(note.replace("\n600\n", "\n599\n"))
    with serving(small_log) as server, pytest.raises(NoteError, match="does not verify"):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_a_second_bad_signature_by_the_trusted_key_is_refused(small_log: Path) -> None:
    # [note §Signatures]: a failing signature by a known key SHOULD reject the note. Go's
    # note.Open (and the product's opener) skip a key's repeated signatures instead.
    note = (small_log / "log" / "checkpoint").read_text("utf-8")
    line = note[note.rfind("\n\n") + 2 :]
    blob = base64.b64decode(line.rsplit(" ", 1)[1])
    forged = blob[:4] + bytes(64)
    bad_line = line.rsplit(" ", 1)[0] + " " + base64.b64encode(forged).decode() + "\n"
    (small_log / "log" / "checkpoint").write_text(note + bad_line, encoding="utf-8")
    with serving(small_log) as server, pytest.raises(NoteError, match="does not verify"):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_checkpoint_of_another_origin_is_refused(small_log: Path) -> None:
    with serving(small_log) as server, pytest.raises(CheckpointError, match="origin"):
        verify_tile_log(server.url, VERIFIER_KEY, origin="agentgw.example/other")


def test_checkpoint_with_a_wrong_root_is_refused(small_log: Path) -> None:
    root = root_of(fixed_leaves(SMALL_LOG - 1))
    (small_log / "log" / "checkpoint").write_text(signed_checkpoint(SMALL_LOG, root))
    with serving(small_log) as server, pytest.raises(InconsistentLogError, match="root"):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_checkpoint_larger_than_the_served_tiles_is_refused(small_log: Path) -> None:
    root = root_of(fixed_leaves(SMALL_LOG + 1))
    (small_log / "log" / "checkpoint").write_text(signed_checkpoint(SMALL_LOG + 1, root))
    with (
        serving(small_log) as server,
        pytest.raises(FetchError, match=r"tile/0/002\.p/89: HTTP 404"),
    ):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_missing_tile_is_refused(small_log: Path) -> None:
    (small_log / "log" / "tile/0/001").unlink()
    with serving(small_log) as server, pytest.raises(FetchError, match="tile/0/001: HTTP 404"):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_missing_entry_bundle_is_refused(small_log: Path) -> None:
    shutil.rmtree(small_log / "log" / "tile/entries/002.p")
    with serving(small_log) as server, pytest.raises(FetchError, match=r"002\.p/88: HTTP 404"):
        verify_tile_log(server.url, VERIFIER_KEY)


def test_truncated_tile_is_refused(small_log: Path) -> None:
    tile = small_log / "log" / "tile/0/000"
    tile.write_bytes(tile.read_bytes()[:-1])
    with serving(small_log) as server, pytest.raises(TileSizeError, match="tile/0/000: 8191"):
        verify_tile_log(server.url, VERIFIER_KEY)

"""The sealed audit log in C2SP tlog-tiles form (https://c2sp.org/tlog-tiles): paths,
entry bundles, hash tiles, and which tiles a sealed size completes.

A tile is 256 hashes (tile height 8). Level-L tile N holds the roots of the perfect
subtrees of height 8L numbered N*256 .. N*256+255, i.e. the Merkle nodes
`(8L, N*256 + i)`; level 0 holds the leaf hashes. Its path is `tile/<L>/<N>`, N
written in 3-digit groups with `x` before all but the last (1234067 ->
`x001/x234/067`); a partial tile, the first W < 256 hashes of a tile, is
`tile/<L>/<N>.p/<W>`. The entry bundle `tile/entries/<N>` holds entries N*256 ..
N*256+255 as the leaves' data C (docs/audit-format.md §3), each prefixed by its
length as a big-endian uint16 — so C is at most 65535 bytes. `lines/<N>` (agentgw's
own, beside the standard paths) holds the same entries as export lines, with their
entry hashes and signatures, one per line.

The log is sealed 256 entries at a time: sealed size S (a multiple of 256) means
level-0 tiles 0 .. S/256 - 1 are written, and each level-L tile whose 256^(L+1)
leaves are all below S. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from gateway.domain.audit.entry import MAX_ENTRY_BYTES, read_export_object, read_signed_line
from gateway.domain.audit.errors import AuditError
from gateway.domain.audit.merkle import HASH_SIZE, NodeId, leaf_hash_of, node_hash, root_of

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256


class TileError(AuditError):
    """A malformed tile path, tile or bundle."""


@dataclass(frozen=True)
class TilePath:
    """A parsed path: kind "tile" (with level), "entries" or "lines"; width 256 for a
    full tile, 1..255 for a partial one."""

    kind: str
    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH

    def __str__(self) -> str:
        base = {"tile": f"tile/{self.level}", "entries": "tile/entries", "lines": "lines"}
        suffix = f".p/{self.width}" if self.partial else ""
        return f"{base[self.kind]}/{encode_index(self.index)}{suffix}"


def encode_index(index: int) -> str:
    """N as 3-digit groups, `x` before every group but the last: 1234067 -> x001/x234/067."""
    if index < 0:
        raise TileError(f"tile index {index} is negative")
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(groups))


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    return str(TilePath("tile", level, index, width))


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    return str(TilePath("entries", 0, index, width))


def lines_path(index: int, width: int = TILE_WIDTH) -> str:
    return str(TilePath("lines", 0, index, width))


_INDEX = r"((?:x[0-9]{3}/)*[0-9]{3})"
_WIDTH = r"(?:\.p/([1-9][0-9]{0,2}))?"
_PATH = re.compile(rf"(?:tile/(0|[1-9][0-9]?|entries)|(lines))/{_INDEX}{_WIDTH}")


# A tile index no log reaches (a log has fewer than 2**64 entries).
BEYOND_EVERY_LOG = 1 << 64


def parse_tile_path(path: str) -> TilePath:
    """The tile, bundle or lines file a path names; TileError unless it is the one
    way to write it (no leading x000 group, W 1..255, level 0..63)."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise TileError(f"{path}: not a tile path")
    level_text, lines, index_text, width_text = match.groups()
    if index_text.startswith("x000"):
        raise TileError(f"{path}: the index has a leading zero group")
    width = int(width_text) if width_text else TILE_WIDTH
    if width_text and width >= TILE_WIDTH:
        raise TileError(f"{path}: a partial tile has 1 to 255 entries")
    digits = index_text.replace("x", "").replace("/", "")
    # More than 20 digits lies past every log (fewer than 2**64 entries), and past
    # what int() reads (4,300 digits): one index beyond any tile stands for them all.
    index = int(digits) if len(digits.lstrip("0")) <= 20 else BEYOND_EVERY_LOG
    if lines:
        return TilePath("lines", 0, index, width)
    if level_text == "entries":
        return TilePath("entries", 0, index, width)
    level = int(level_text)
    if level > 63:
        raise TileError(f"{path}: level {level} is above 63")
    return TilePath("tile", level, index, width)


# --- contents ---------------------------------------------------------------------


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    """Each entry's data after its big-endian uint16 length."""
    out = bytearray()
    for data in entries:
        if len(data) > MAX_ENTRY_BYTES:
            raise TileError(f"an entry of {len(data)} bytes does not fit a bundle (at most 65535)")
        out += len(data).to_bytes(2, "big")
        out += data
    return bytes(out)


def decode_bundle(data: bytes) -> list[bytes]:
    entries, at = [], 0
    while at < len(data):
        if at + 2 > len(data):
            raise TileError("entry bundle: a length prefix is cut off")
        size = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if at + size > len(data):
            raise TileError("entry bundle: an entry is cut off")
        entries.append(data[at : at + size])
        at += size
    return entries


def encode_lines(lines: Sequence[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("utf-8")


def decode_lines(data: bytes) -> list[str]:
    text = data.decode("utf-8")
    if text and not text.endswith("\n"):
        raise TileError("lines file: the last line is cut off")
    return text.split("\n")[:-1]


def encode_tile(hashes: Sequence[bytes]) -> bytes:
    if not 1 <= len(hashes) <= TILE_WIDTH or any(len(h) != HASH_SIZE for h in hashes):
        raise TileError("a tile is 1 to 256 hashes of 32 bytes")
    return b"".join(hashes)


def decode_tile(data: bytes, width: int = TILE_WIDTH) -> list[bytes]:
    if len(data) != width * HASH_SIZE:
        raise TileError(f"a tile of width {width} is {width * HASH_SIZE} bytes, not {len(data)}")
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


# --- which nodes a tile holds ----------------------------------------------------------


def tile_nodes(level: int, index: int, width: int = TILE_WIDTH) -> list[NodeId]:
    """The Merkle nodes a tile's hashes are, in order."""
    return [(TILE_HEIGHT * level, index * TILE_WIDTH + i) for i in range(width)]


def tile_of(node: NodeId) -> tuple[int, int, int, int]:
    """Where a node's hash comes from: (tile level, tile index, first hash, count):
    the node is the root of hashes first..first+count-1 of that tile."""
    height, index = node
    level, above = divmod(height, TILE_HEIGHT)
    first = (index << above) % TILE_WIDTH
    return level, (index << above) // TILE_WIDTH, first, 1 << above


def node_from_tile(node: NodeId, hashes: Sequence[bytes]) -> bytes:
    """The node's hash from the hashes of its tile (tile_of): folded pairwise."""
    _, _, first, count = tile_of(node)
    layer = list(hashes[first : first + count])
    if len(layer) != count:
        raise TileError(f"node {node}: its tile holds {len(hashes)} hashes")
    while len(layer) > 1:
        layer = [node_hash(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    return layer[0]


def inside_sealed(node: NodeId, sealed_size: int) -> bool:
    """Whether the node's tile is a full tile of a log sealed to `sealed_size`."""
    level, index, _, _ = tile_of(node)
    end: int = (index + 1) * TILE_WIDTH ** (level + 1)
    return end <= sealed_size


def tiles_completed(sealed_size: int) -> list[tuple[int, int]]:
    """The full tiles (level, index) that sealing up to `sealed_size` (a multiple of
    256) completes: level 0's last, and each level L whose 256^(L+1) leaves end there."""
    if sealed_size <= 0 or sealed_size % TILE_WIDTH:
        raise TileError(f"a sealed size is a positive multiple of 256, not {sealed_size}")
    done, level = [], 0
    while sealed_size % TILE_WIDTH ** (level + 1) == 0:
        done.append((level, sealed_size // TILE_WIDTH ** (level + 1) - 1))
        level += 1
    return done


def nodes_below_tile(level: int, index: int) -> list[NodeId]:
    """The nodes a sealed tile makes redundant in Redis: its own hashes (height 8L)
    and every node between them and its root (heights 8L+1 .. 8L+7), which
    node_from_tile gives back. Its root (height 8L+8) is the next level's hash."""
    base = TILE_HEIGHT * level
    return [
        (base + up, (index << (TILE_HEIGHT - up)) + i)
        for up in range(TILE_HEIGHT)
        for i in range(1 << (TILE_HEIGHT - up))
    ]


# --- serving and checking a log by its files ---------------------------------------------


def leaves_needed(path: TilePath) -> int:
    """The tree size from which the file exists: a level-L tile of width W at index N
    needs (N*256 + W) * 256^L leaves; a bundle or lines file of width W, N*256 + W."""
    level = path.level if path.kind == "tile" else 0
    return (path.index * TILE_WIDTH + path.width) << (TILE_HEIGHT * level)


def full_file(path: TilePath) -> TilePath:
    """The full tile or bundle a partial one is a prefix of (itself when full)."""
    return replace(path, width=TILE_WIDTH)


def file_prefix(path: TilePath, data: bytes) -> bytes:
    """The bytes of partial `path` from those of its full file: its first W hashes,
    entries or lines (every file of a tile only grows at its end). TileError if the
    full file is shorter."""
    width = path.width
    if path.kind == "tile":
        if len(data) < width * HASH_SIZE:
            raise TileError(f"{full_file(path)} has fewer than {width} hashes")
        return data[: width * HASH_SIZE]
    at = 0
    for _ in range(width):
        if path.kind == "entries":
            if at + 2 > len(data):
                raise TileError(f"{full_file(path)} has fewer than {width} entries")
            at += 2 + int.from_bytes(data[at : at + 2], "big")
        else:
            end = data.find(b"\n", at)
            if end < 0:
                raise TileError(f"{full_file(path)} has fewer than {width} lines")
            at = end + 1
    if at > len(data):
        raise TileError(f"{full_file(path)}: an entry is cut off")
    return data[:at]


def check_full_file(path: TilePath, data: bytes) -> None:
    """TileError unless `data` is exactly 256 hashes, entries or lines: the shape of
    the full file `path` (a file cut short, or with more after it, is not served)."""
    if file_prefix(path, data) != data:
        unit = "hashes" if path.kind == "tile" else path.kind
        raise TileError(f"{path} has more than {path.width} {unit}")


def entry_data(line: str) -> bytes:
    """An export line's entry as a bundle holds it: its canonical bytes C
    (docs/audit-format.md §3). TileError unless the line is a canonical entry."""
    signed = read_signed_line(line)
    if signed is not None:
        return signed.canonical
    try:
        return read_export_object(json.loads(line), line)[1]
    except (ValueError, RecursionError) as e:
        raise TileError(f"not a canonical export line: {e}") from None


def bundle_widths(size: int) -> Iterator[tuple[int, int]]:
    """(index, width) of each entry bundle of a tree of `size`, in order: all full
    but the last, which is partial unless `size` is a multiple of 256. Lazily."""
    for index in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        yield index, min(TILE_WIDTH, size - index * TILE_WIDTH)


class ExpectedFiles:
    """The standard files a log of `size` entries is served as (tlog-tiles: every
    entry bundle and every hash tile, full and partial, of each level), worked out
    from the entries a bundle at a time, in order. It keeps the hashes of one
    unfinished tile per level above 0, so memory is O(log size) tiles: a client that
    streams a log checks every tile a standard client could fetch at little cost."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._next = 0  # the bundle expected next
        self._pending: list[list[bytes]] = []  # [L - 1]: level L's hashes of its open tile

    def bundle(self, index: int, entries: Sequence[bytes]) -> list[tuple[str, bytes]]:
        """(path, bytes) of the files bundle `index` completes: its entry bundle and
        level-0 tile, each higher-level tile it fills, and after the last bundle the
        partial tile of each level above 0. TileError out of order or width."""
        width = min(TILE_WIDTH, self.size - index * TILE_WIDTH)
        if index != self._next or width <= 0 or len(entries) != width:
            raise TileError(
                f"bundle {index} of {len(entries)} entries is not the next of a log of {self.size}"
            )
        self._next += 1
        leaves = [leaf_hash_of(data) for data in entries]
        files = [
            (entries_path(index, width), encode_bundle(entries)),
            (tile_path(0, index, width), encode_tile(leaves)),
        ]
        if width == TILE_WIDTH:
            self._carry(1, index, root_of(leaves), files)
        if self._next * TILE_WIDTH >= self.size:
            for above, hashes in enumerate(self._pending):
                level = above + 1
                if hashes:
                    at = self.size >> (TILE_HEIGHT * (level + 1))
                    files.append((tile_path(level, at, len(hashes)), encode_tile(hashes)))
        return files

    def _carry(self, level: int, below: int, hash_: bytes, files: list[tuple[str, bytes]]) -> None:
        """Hash `below` of `level`: the root of full tile `below` of the level under it."""
        while len(self._pending) < level:
            self._pending.append([])
        hashes = self._pending[level - 1]
        hashes.append(hash_)
        if len(hashes) == TILE_WIDTH:
            index = below // TILE_WIDTH
            files.append((tile_path(level, index), encode_tile(hashes)))
            root = root_of(hashes)
            hashes.clear()
            self._carry(level + 1, index, root, files)


def file_difference(path: str, served: bytes, expected: bytes) -> str | None:
    """Where a served file first differs from the expected one, in words (None when
    they are equal): `entry 17 differs`, `it has 3 hashes, not 4`."""
    if served == expected:
        return None
    kind = parse_tile_path(path).kind
    got: list[bytes]
    want: list[bytes]
    if kind == "entries":
        one, many = "entry", "entries"
        try:
            got = decode_bundle(served)
        except TileError as e:
            return f"it is not an entry bundle ({e})"
        want = decode_bundle(expected)
    elif kind == "lines":
        one, many = "line", "lines"
        got, want = _split_lines(served), _split_lines(expected)
    else:
        one, many = "hash", "hashes"
        got = [served[i : i + HASH_SIZE] for i in range(0, len(served), HASH_SIZE)]
        want = [expected[i : i + HASH_SIZE] for i in range(0, len(expected), HASH_SIZE)]
    for index, (mine, theirs) in enumerate(zip(got, want, strict=False)):
        if mine != theirs:
            return f"{one} {index} differs"
    return f"it has {len(got)} {many}, not {len(want)}"


def _split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines

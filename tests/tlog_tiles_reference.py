"""An independent reference for C2SP tlog-tiles, written from the specifications alone.

Owns what a tiled log looks like from the outside: tile and entry-bundle paths, which
tiles a tree of a given size has, the bytes of each tile computed straight from the
spec's definition, entry bundles, the root a client recomputes from tiles, and a
streaming client that checks a served log end to end against a signed checkpoint. It is
the yardstick the product's tiles are checked against, so it must not import the
product (`gateway`): sharing code would make the check circular.

Sources, cited as [tiles §...] etc. in the docstrings below:

- [tiles]      C2SP tlog-tiles, https://c2sp.org/tlog-tiles
- [checkpoint] C2SP tlog-checkpoint, https://c2sp.org/tlog-checkpoint
- [note]       C2SP signed-note, https://c2sp.org/signed-note
- [RFC 6962]   §2.1, the Merkle Tree Hash (MTH)
- [Go tlog]    golang.org/x/mod/sumdb/tlog, tile.go (Tile.Path, ParseTilePath,
               HashFromTile, TileHashReader): cross-checked facts, no code copied.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HASH_SIZE: Final = 32
TILE_HEIGHT: Final = 8  # [tiles §Merkle Tree]: "a tile represents the entire subtree of height 8"
TILE_WIDTH: Final = 1 << TILE_HEIGHT  # 256 hashes, 8,192 bytes in a full tile
MAX_LEVEL: Final = 63  # [tiles §Merkle Tree]: <L> is "between 0 and 63"
MAX_ENTRY_SIZE: Final = 0xFFFF  # [tiles §Log entries]: uint16 length prefix
# The largest resource a client needs: a full bundle of maximum-size entries.
MAX_RESOURCE_SIZE: Final = TILE_WIDTH * (2 + MAX_ENTRY_SIZE)
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()  # [RFC 6962 §2.1]: MTH({}) = SHA-256()
CHECKPOINT_PATH: Final = "checkpoint"  # [tiles §Checkpoints]: <prefix>/checkpoint
ED25519_TYPE: Final = 0x01  # [note §Signature types]
SIGNATURE_PREFIX: Final = "\u2014 "  # [note §Format]: em dash, space
MAX_SIGNATURES: Final = 100  # [note §Format]: verifiers MUST accept at least 16
HTTP_TIMEOUT_SECONDS: Final = 30.0

_DIGITS: Final = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_INDEX: Final = re.compile(r"(?:x[0-9]{3}/)*[0-9]{3}", re.ASCII)
_KEY_HASH: Final = re.compile(r"[0-9a-fA-F]{8}", re.ASCII)

Fetch = Callable[[str], bytes]
"""Returns the bytes of a resource named by its path under the log prefix, or raises."""


class TileLogError(Exception):
    """A tiled log, one of its resources, or its checkpoint breaks a rule of the specs."""


class TilePathError(TileLogError, ValueError):
    """A tile or entry-bundle path, or its coordinates, is not in the spec's form."""


class EntryBundleError(TileLogError, ValueError):
    """An entry bundle is malformed, or an entry cannot be put in one."""


class NoteError(TileLogError):
    """A verifier key or signed note is malformed, or no trusted signature verifies."""


class CheckpointError(TileLogError):
    """A checkpoint's text is not in the tlog-checkpoint form, or names another log."""


class FetchError(TileLogError):
    """A resource the client needs could not be fetched (missing, HTTP error, too big)."""


class TileSizeError(TileLogError):
    """A hash tile does not have exactly width * 32 bytes."""


class InconsistentLogError(TileLogError):
    """Tiles disagree with the entries, with the tiles above them, or with the root."""


# --- Paths ------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Tile:
    """Hash tile `index` at `level` holding `width` hashes (256 = full) [tiles §Merkle Tree]."""

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        _check_level(self.level)
        _check_index(self.index)
        _check_width(self.width)

    @property
    def path(self) -> str:
        return tile_path(self.level, self.index, self.width)

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH


@dataclass(frozen=True, order=True)
class EntryBundle:
    """Entry bundle `index` holding `width` entries (256 = full) [tiles §Log entries]."""

    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        _check_index(self.index)
        _check_width(self.width)

    @property
    def path(self) -> str:
        return entries_path(self.index, self.width)

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH


def encode_index(index: int) -> str:
    """<N> as zero-padded 3-digit path elements, all but the last prefixed with `x`.

    [tiles §Merkle Tree]: "index 1234067 will be encoded as x001/x234/067"; 0 is `000`.
    The number of elements is the fewest that hold the index (as [Go tlog] Tile.Path
    writes it), so each index has exactly one encoding.
    """
    _check_index(index)
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(groups))


def _suffix(width: int | None) -> str:
    """`.p/<W>` for a partial width 1..255, nothing for a full tile [tiles §Merkle Tree]."""
    if width is None or width == TILE_WIDTH:
        return ""
    _check_width(width)
    return f".p/{width}"


def tile_path(level: int, index: int, width: int | None = None) -> str:
    """`tile/<L>/<N>[.p/<W>]` [tiles §Merkle Tree]; width None or 256 means a full tile."""
    _check_level(level)
    return f"tile/{level}/{encode_index(index)}{_suffix(width)}"


def entries_path(index: int, width: int | None = None) -> str:
    """`tile/entries/<N>[.p/<W>]`; <N> and .p/<W> as in tile paths [tiles §Log entries]."""
    return f"tile/entries/{encode_index(index)}{_suffix(width)}"


def parse_tile_path(path: str) -> Tile | EntryBundle:
    """The hash tile or entry bundle a path names, or TilePathError.

    [tiles §Merkle Tree]: <L> is decimal 0..63 with no leading zeroes; <N> is 3-digit
    elements, all but the last starting with `x`; <W> is decimal 1..255 with no leading
    zeroes. Only ASCII digits count. Like [Go tlog] ParseTilePath, a path is accepted only
    if it is the one encoding of what it names (so `x000/001` for 1 is refused).
    """
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TilePathError(f"{path!r}: not tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]")
    level_text, rest = parts[1], "/".join(parts[2:])
    width = TILE_WIDTH
    body, dot_p, width_text = rest.rpartition(".p/")
    if dot_p:
        if not _DIGITS.fullmatch(width_text) or not 1 <= int(width_text) < TILE_WIDTH:
            raise TilePathError(f"{path!r}: partial width {width_text!r} is not 1..255")
        width, rest = int(width_text), body
    if not _INDEX.fullmatch(rest):
        raise TilePathError(
            f"{path!r}: index {rest!r} is not 3-digit groups, x before all but last"
        )
    index = int(rest.replace("x", "").replace("/", ""))
    parsed: Tile | EntryBundle
    if level_text == "entries":
        parsed = EntryBundle(index, width)
    elif _DIGITS.fullmatch(level_text) and int(level_text) <= MAX_LEVEL:
        parsed = Tile(int(level_text), index, width)
    else:
        raise TilePathError(f"{path!r}: level {level_text!r} is not 0..63 or 'entries'")
    if parsed.path != path:
        raise TilePathError(f"{path!r}: not canonical, the path of this tile is {parsed.path!r}")
    return parsed


def _check_level(level: int) -> None:
    if not 0 <= level <= MAX_LEVEL:
        raise TilePathError(f"level {level} is not 0..{MAX_LEVEL}")


def _check_index(index: int) -> None:
    if index < 0:
        raise TilePathError(f"index {index} is negative")


def _check_width(width: int) -> None:
    if not 1 <= width <= TILE_WIDTH:
        raise TilePathError(f"width {width} is not 1..{TILE_WIDTH}")


# --- Which tiles a tree has ---------------------------------------------------------------


def level_count(size: int) -> int:
    """The number of tile levels of a tree: levels l with floor(size / 256**l) > 0."""
    count = 0
    while size >> (TILE_HEIGHT * count):
        count += 1
    return count


def full_tile_count(level: int, size: int) -> int:
    """Full tiles at `level`: floor(size / 256**(level+1)) [tiles §Merkle Tree, end index]."""
    return size >> (TILE_HEIGHT * (level + 1))


def partial_tile_width(level: int, size: int) -> int:
    """floor(size / 256**level) mod 256, 0 for none [tiles §Partial Tiles]."""
    return (size >> (TILE_HEIGHT * level)) % TILE_WIDTH


def tile_width(level: int, index: int, size: int) -> int:
    """The width tile `index` at `level` has in a tree of `size` (256 if full)."""
    hashes_at_level = size >> (TILE_HEIGHT * level)
    width = min(TILE_WIDTH, hashes_at_level - index * TILE_WIDTH)
    if width <= 0:
        raise TilePathError(f"a tree of size {size} has no tile {index} at level {level}")
    return width


def tiles_for_size(size: int) -> list[Tile]:
    """Every hash tile a tree of `size` is served as, by level then index.

    [tiles §Partial Tiles]: "a tree of size 70,000 will be represented by 273 full level
    0 tiles, one partial level 0 tile of width 112, one full level 1 tile, one partial
    level 1 tile of width 17, and one partial level 2 tile of width 1"; "Empty tiles MUST
    NOT be served". The same set as [Go tlog] NewTiles(8, 0, size) at its widest widths.
    """
    tiles: list[Tile] = []
    for level in range(level_count(size)):
        full = full_tile_count(level, size)
        tiles.extend(Tile(level, index) for index in range(full))
        width = partial_tile_width(level, size)
        if width:
            tiles.append(Tile(level, full, width))
    return tiles


def bundles_for_size(size: int) -> list[EntryBundle]:
    """The entry bundles of a tree of `size`: one per level-0 tile, same index and width."""
    return [EntryBundle(tile.index, tile.width) for tile in tiles_for_size(size) if not tile.level]


# --- Hashes --------------------------------------------------------------------------------


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry) [RFC 6962 §2.1], as [tiles §Log entries] hashes entries."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right) [RFC 6962 §2.1]."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_tree_hash(leaf_hashes: Sequence[bytes], begin: int = 0, end: int | None = None) -> bytes:
    """MTH(D[begin:end]) given the leaf hashes of D [RFC 6962 §2.1].

    MTH of one leaf is its leaf hash; of n > 1, the node hash of MTH(D[0:k]) and
    MTH(D[k:n]) with k the largest power of two smaller than n; of none, SHA-256("").
    """
    end = len(leaf_hashes) if end is None else end
    count = end - begin
    if count < 0 or begin < 0 or end > len(leaf_hashes):
        raise ValueError(f"no range [{begin}:{end}] in {len(leaf_hashes)} leaves")
    if count == 0:
        return EMPTY_ROOT
    if count == 1:
        return leaf_hashes[begin]
    split = 1 << ((count - 1).bit_length() - 1)
    return node_hash(
        merkle_tree_hash(leaf_hashes, begin, begin + split),
        merkle_tree_hash(leaf_hashes, begin + split, end),
    )


def tile_bytes(level: int, index: int, width: int, leaf_hashes: Sequence[bytes]) -> bytes:
    """The bytes of tile `index` at `level` with `width` hashes, from the definition.

    [tiles §Merkle Tree]: the n-th tile at level l is the sequence, for i from 0 to
    width-1, of MTH(D[(n * 256 + i) * 256**l : (n * 256 + i + 1) * 256**l]); each hash
    is recomputed from the leaves, not from the tile below. `leaf_hashes` must reach the
    end of the tile's span; leaves after it do not change the tile (tiles are immutable).
    """
    _check_level(level)
    _check_index(index)
    _check_width(width)
    span = TILE_WIDTH**level
    first = index * TILE_WIDTH * span
    if first + width * span > len(leaf_hashes):
        raise ValueError(
            f"{tile_path(level, index, width)} needs leaves up to {first + width * span}"
        )
    return b"".join(
        merkle_tree_hash(leaf_hashes, first + i * span, first + (i + 1) * span)
        for i in range(width)
    )


def tile_hashes(data: bytes) -> list[bytes]:
    """The 32-byte hashes of a tile, in order."""
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def perfect_subtrees(size: int) -> list[tuple[int, int]]:
    """(height, index) of the perfect subtrees whose fold is MTH of `size` leaves.

    [RFC 6962 §2.1] splits at the largest power of two, so the root is a right fold of
    one perfect subtree per set bit of `size`, largest (leftmost) first; a subtree of
    height h and index i covers leaves i * 2**h .. (i+1) * 2**h - 1.
    """
    subtrees: list[tuple[int, int]] = []
    start = 0
    for height in reversed(range(size.bit_length())):
        if size >> height & 1:
            subtrees.append((height, start >> height))
            start += 1 << height
    return subtrees


def _fetch_tile(fetch: Fetch, tile: Tile) -> bytes:
    data = fetch(tile.path)
    if len(data) != tile.width * HASH_SIZE:
        raise TileSizeError(
            f"{tile.path}: {len(data)} bytes, a tile of width {tile.width} has "
            f"{tile.width * HASH_SIZE} [tiles §Merkle Tree]"
        )
    return data


def _root_and_tiles(size: int, fetch: Fetch) -> tuple[bytes, dict[Tile, bytes]]:
    """The root of `size` from tiles, and the tiles read (each fetched once)."""
    tiles: dict[Tile, bytes] = {}
    subtree_roots: list[bytes] = []
    for height, index in perfect_subtrees(size):
        # A subtree of height 8L + r is 2**r consecutive hashes of a level-L tile: the
        # tile levels between stored hashes are "reconstructed by hashing the leaves".
        level, rest = divmod(height, TILE_HEIGHT)
        first = index << rest
        tile_index = first >> TILE_HEIGHT
        tile = Tile(level, tile_index, tile_width(level, tile_index, size))
        if tile not in tiles:
            tiles[tile] = _fetch_tile(fetch, tile)
        offset = first % TILE_WIDTH
        subtree_roots.append(
            merkle_tree_hash(tile_hashes(tiles[tile]), offset, offset + (1 << rest))
        )
    if not subtree_roots:
        return EMPTY_ROOT, tiles
    root = subtree_roots[-1]
    for left in reversed(subtree_roots[:-1]):
        root = node_hash(left, root)
    return root, tiles


def root_from_tiles(size: int, fetch: Fetch) -> bytes:
    """The tree head of `size` leaves recomputed from tiles, as a client does.

    For each perfect subtree of the root (see perfect_subtrees) of height h, the client
    reads the tile at level h // 8 that holds it and hashes 2**(h % 8) of its hashes,
    then folds the subtree hashes right to left. Like [Go tlog] TileHashReader, this
    reads only the rightmost, partial tile of each level: for size 256 it reads
    `tile/1/000.p/1`, not `tile/0/000`. `fetch(path)` returns a resource's bytes.
    """
    return _root_and_tiles(size, fetch)[0]


def tile_log_files(entries: Sequence[bytes]) -> dict[str, bytes]:
    """Every hash tile and entry bundle of the log of `entries`, by path (no checkpoint)."""
    leaves = [leaf_hash(entry) for entry in entries]
    files = {
        tile.path: tile_bytes(tile.level, tile.index, tile.width, leaves)
        for tile in tiles_for_size(len(entries))
    }
    for bundle in bundles_for_size(len(entries)):
        first = bundle.index * TILE_WIDTH
        files[bundle.path] = entry_bundle(entries[first : first + bundle.width])
    return files


# --- Entry bundles -------------------------------------------------------------------------


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Entries, each prefixed by its length as a big-endian uint16 [tiles §Log entries].

    An entry longer than 65535 bytes cannot be written: the spec has no other encoding
    ("TODO: check if current logs need bigger leaves"), so it is an EntryBundleError.
    """
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise EntryBundleError(f"a bundle holds 1..{TILE_WIDTH} entries, not {len(entries)}")
    out = bytearray()
    for position, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY_SIZE:
            raise EntryBundleError(
                f"entry {position}: {len(entry)} bytes; a bundle's uint16 length prefix "
                f"allows at most {MAX_ENTRY_SIZE} [tiles §Log entries]"
            )
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def parse_entry_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """The entries of a bundle; with `width`, exactly that many [tiles §Log entries].

    Each entry in a bundle "hashes to the corresponding entry in the corresponding level
    0 tile", so a bundle of width W holds W entries, and no bytes may dangle.
    """
    entries: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise EntryBundleError(f"truncated bundle: a length prefix is cut at byte {offset}")
        length = int.from_bytes(data[offset : offset + 2], "big")
        start, offset = offset + 2, offset + 2 + length
        if offset > len(data):
            raise EntryBundleError(
                f"truncated bundle: entry {len(entries)} needs {length} bytes at byte "
                f"{start}, {len(data) - start} remain"
            )
        entries.append(data[start:offset])
        if len(entries) > TILE_WIDTH:
            raise EntryBundleError(f"bundle holds more than {TILE_WIDTH} entries")
    if width is not None and len(entries) != width:
        raise EntryBundleError(f"bundle holds {len(entries)} entries, its width is {width}")
    return entries


# --- Signed notes and checkpoints -----------------------------------------------------------


@dataclass(frozen=True)
class NoteVerifierKey:
    """A trusted Ed25519 note key: name, 4-byte key ID and raw public key [note]."""

    name: str
    key_id: bytes
    public_key: bytes


def note_key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4] [note §Ed25519 signatures]."""
    return hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ED25519_TYPE]) + public_key
    ).digest()[:4]


def _check_key_name(name: str) -> None:
    # [note §Format]: "Key names MUST be non-empty and MUST NOT contain any Unicode
    # spaces or plus (U+002B) characters."
    if not name or "+" in name or any(ch.isspace() for ch in name):
        raise NoteError(f"key name {name!r} is empty or has a space or '+'")


def parse_note_verifier_key(text: str) -> NoteVerifierKey:
    """Parse `<name>+<8 hex key ID>+<base64(0x01 || 32-byte public key)>`.

    The verifier key string of Go's golang.org/x/mod/sumdb/note (docs/audit-format.md §6
    publishes it); the key ID must be the one [note §Ed25519 signatures] derives.
    """
    name, _, rest = text.partition("+")
    key_id_hex, _, key_b64 = rest.partition("+")  # base64 may itself hold '+'
    _check_key_name(name)
    if not _KEY_HASH.fullmatch(key_id_hex):
        raise NoteError(f"verifier key {text!r}: key ID is not 8 hex digits")
    try:
        key = base64.b64decode(key_b64, validate=True)
    except binascii.Error:
        raise NoteError(f"verifier key {text!r}: key is not base64") from None
    if len(key) != 33 or key[0] != ED25519_TYPE:
        raise NoteError(f"verifier key {text!r}: not 0x01 followed by a 32-byte Ed25519 key")
    verifier = NoteVerifierKey(name, bytes.fromhex(key_id_hex), key[1:])
    if note_key_id(name, verifier.public_key) != verifier.key_id:
        raise NoteError(f"verifier key {text!r}: key ID does not match name and key")
    return verifier


def open_signed_note(note: str, key: NoteVerifierKey) -> str:
    """The text of `note` if `key` signed it, else NoteError [note §Format, §Signatures].

    A note is UTF-8 with no control characters but newline; its text ends at the last
    blank line; each signature line is `— <name> <base64(4-byte key ID || signature)>`.
    Signatures by other keys are ignored; a signature by `key` that fails to verify
    rejects the note; a note with no valid signature by `key` is rejected.
    """
    if any(ch < " " and ch != "\n" for ch in note) or any(
        "\ud800" <= ch <= "\udfff" for ch in note
    ):
        raise NoteError("note has a control character other than newline")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise NoteError("note is not text, a blank line and signature lines ending in newline")
    text, lines = note[: split + 1], note[split + 2 : -1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    signed = False
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"signature line {line!r} does not start with an em dash and space")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        _check_key_name(name)
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError(f"signature by {name!r} is not base64") from None
        if len(blob) < 5:
            raise NoteError(f"signature by {name!r} is shorter than a key ID and a signature")
        if (name, blob[:4]) != (key.name, key.key_id):
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(blob[4:], text.encode())
        except InvalidSignature:
            raise NoteError(f"signature by {name}+{blob[:4].hex()} does not verify") from None
        signed = True
    if not signed:
        raise NoteError(f"note has no signature by {key.name}+{key.key_id.hex()}")
    return text


@dataclass(frozen=True)
class TileCheckpoint:
    """A checkpoint's text: origin, tree size, root hash and opaque extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...]


def parse_checkpoint_text(text: str) -> TileCheckpoint:
    """Parse a note text as a checkpoint [checkpoint §Note text].

    At least three non-empty lines: origin; tree size in decimal, no leading zeroes;
    standard base64 of the 32-byte RFC 6962 root. Further lines are extension lines,
    opaque and non-empty. The root must be in its one canonical base64 spelling.
    """
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise CheckpointError("checkpoint text is not at least three non-empty lines")
    origin, size_text, root_text, *extensions = lines
    if not _DIGITS.fullmatch(size_text):
        raise CheckpointError(f"tree size {size_text!r} is not decimal without leading zeroes")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise CheckpointError(f"root hash {root_text!r} is not base64") from None
    if len(root) != HASH_SIZE or base64.b64encode(root).decode() != root_text:
        raise CheckpointError(f"root hash {root_text!r} is not canonical base64 of 32 bytes")
    return TileCheckpoint(origin, int(size_text), root, tuple(extensions))


# --- The client ----------------------------------------------------------------------------


def http_get(url: str) -> bytes:
    """GET `url` (http, https or file) and return the body, or FetchError.

    [tiles §Log entries]: clients SHOULD send `Accept-Encoding` with gzip and identity,
    and logs MAY answer with `Content-Encoding: gzip` without negotiation.
    """
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip, identity"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            body: bytes = response.read(MAX_RESOURCE_SIZE + 1)
            encoding = (response.headers.get("Content-Encoding") or "identity").lower()
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchError(f"GET {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"GET {url}: {exc}") from None
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, MAX_RESOURCE_SIZE + 1)
        except zlib.error as exc:
            raise FetchError(f"GET {url}: bad gzip body: {exc}") from None
        if not inflater.eof and len(body) <= MAX_RESOURCE_SIZE:
            raise FetchError(f"GET {url}: truncated gzip body")
    elif encoding != "identity":
        raise FetchError(f"GET {url}: Content-Encoding {encoding!r} was not asked for")
    if len(body) > MAX_RESOURCE_SIZE:
        raise FetchError(f"GET {url}: more than {MAX_RESOURCE_SIZE} bytes")
    return body


@dataclass(frozen=True)
class VerifiedTileLog:
    """What verify_tile_log checked, and what it cost."""

    checkpoint: TileCheckpoint
    hash_tiles_fetched: int
    entry_bundles_fetched: int
    most_tiles_held: int  # the memory bound: at most about two tiles per level


class _TileWalk:
    """Hands out hash tiles of one tree, each checked against the root before use.

    The root check authenticates the partial tile of every level. A full tile at level
    L is authenticated by its MTH being hash N mod 256 of tile N // 256 at level L+1,
    itself authenticated first; the top level only ever has a partial tile, so every
    chain ends at the root. One full tile per level is kept (walking in index order, a
    parent is reused by its 256 children), so memory is O(log size) tiles.
    """

    def __init__(self, size: int, fetch: Fetch, root_tiles: dict[Tile, bytes]) -> None:
        self.size = size
        self.fetch = fetch
        self.root_tiles = root_tiles
        self.current: dict[int, tuple[int, bytes]] = {}
        self.fetched = len(root_tiles)
        self.most_held = len(root_tiles)

    def verified(self, level: int, index: int) -> bytes:
        tile = Tile(level, index, tile_width(level, index, self.size))
        if tile in self.root_tiles:
            return self.root_tiles[tile]
        held = self.current.get(level)
        if held is not None and held[0] == index:
            return held[1]
        if tile.is_partial:
            raise AssertionError(f"bad math: partial {tile.path} was not read for the root")
        data = _fetch_tile(self.fetch, tile)
        self.fetched += 1
        parent_index, position = divmod(index, TILE_WIDTH)
        parent = self.verified(level + 1, parent_index)
        expected = parent[position * HASH_SIZE : (position + 1) * HASH_SIZE]
        if merkle_tree_hash(tile_hashes(data)) != expected:
            raise InconsistentLogError(
                f"{tile.path}: its Merkle Tree Hash is not hash {position} of "
                f"{tile_path(level + 1, parent_index, len(parent) // HASH_SIZE)}"
            )
        self.current[level] = (index, data)
        self.most_held = max(self.most_held, len(self.root_tiles) + len(self.current))
        return data


def verify_tile_log(
    base_url: str,
    note_verifier_key: str,
    on_entry: Callable[[int, bytes], None] | None = None,
    *,
    fetch: Fetch = http_get,
    origin: str | None = None,
) -> VerifiedTileLog:
    """Check a whole tlog-tiles log served under `base_url` against its checkpoint.

    Fetches `<base_url>/checkpoint` [tiles §Checkpoints], opens it as a signed note with
    the verifier key [note], and parses it [checkpoint]; its origin must be `origin`
    (default: the key's name, as [checkpoint §Signatures] recommends). Then recomputes
    the root from the partial tiles (root_from_tiles) and compares it with the
    checkpoint's; only tiles the verified size requires are fetched [tiles §Partial
    Tiles]. Then walks the entry bundles in order: each bundle's entries are hashed
    (RFC 6962 leaf hashes) and must equal its level-0 tile, whose chain of parent tiles
    up to the root is checked first (_TileWalk). Each entry is handed to
    `on_entry(leaf index, bytes)` once its whole bundle has checked, so the caller sees
    only authenticated entries, in order, and never all of them at once.

    `fetch(url)` returns a resource's bytes (default: HTTP GET via urllib). Any broken
    rule raises a TileLogError naming the resource and the rule.
    """
    prefix = base_url.rstrip("/") + "/"

    def fetch_path(path: str) -> bytes:
        return fetch(prefix + path)

    key = parse_note_verifier_key(note_verifier_key)
    try:
        note = fetch_path(CHECKPOINT_PATH).decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("checkpoint is not UTF-8") from None
    checkpoint = parse_checkpoint_text(open_signed_note(note, key))
    expected_origin = key.name if origin is None else origin
    if checkpoint.origin != expected_origin:
        raise CheckpointError(f"checkpoint origin {checkpoint.origin!r} is not {expected_origin!r}")
    root, root_tiles = _root_and_tiles(checkpoint.size, fetch_path)
    if root != checkpoint.root_hash:
        raise InconsistentLogError(
            f"the tiles of size {checkpoint.size} hash to root {root.hex()}, the checkpoint "
            f"says {checkpoint.root_hash.hex()}"
        )
    walk = _TileWalk(checkpoint.size, fetch_path, root_tiles)
    bundles = 0
    for bundle in _bundles(checkpoint.size):
        leaves = walk.verified(0, bundle.index)
        entries = parse_entry_bundle(fetch_path(bundle.path), bundle.width)
        bundles += 1
        first = bundle.index * TILE_WIDTH
        for position, entry in enumerate(entries):
            if leaf_hash(entry) != leaves[position * HASH_SIZE : (position + 1) * HASH_SIZE]:
                raise InconsistentLogError(
                    f"{bundle.path}: entry {first + position} does not hash to leaf hash "
                    f"{position} of {tile_path(0, bundle.index, bundle.width)}"
                )
        if on_entry is not None:
            for position, entry in enumerate(entries):
                on_entry(first + position, entry)
    return VerifiedTileLog(checkpoint, walk.fetched, bundles, walk.most_held)


def _bundles(size: int) -> Iterator[EntryBundle]:
    """The bundles of `size` lazily, so a huge tree is never listed in memory."""
    for index in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        yield EntryBundle(index, min(TILE_WIDTH, size - index * TILE_WIDTH))

"""The audit log served as C2SP tlog-tiles (`--tiles-listen`) by a real gateway whose
log is partly sealed into the tile store and partly in Redis: an independent tlog-tiles
client (tests/tlog_tiles_reference.py) and `agentgw audit verify --url` both verify
it; the files are the bytes the reference computes from the export; the endpoint's
auth, statuses, headers, TLS and bounds; and a sealed file tampered with on disk is
named by both verifiers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import Message
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import redis

from clients.cli import main
from clients.cli.auditor import _ServedLines
from clients.cli.tile_fetch import TileFetch
from gateway.api import http_endpoint
from gateway.api.tile_server import TileServer
from gateway.app import App
from gateway.config import (
    Config,
    Overrides,
    TileServerSettings,
    TlsSettings,
    load_config,
    parse_config,
)
from gateway.domain.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.domain.audit.entry import format_timestamp, read_export_object
from gateway.domain.audit.keys import Signer
from gateway.domain.audit.merkle import leaf_hash_of, root_of
from gateway.domain.audit.note import note_verifier_key
from gateway.domain.detect.anomaly import AnomalySettings
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.profile import ProfileSettings
from gateway.domain.detect.rates import AgentLimits, RateSettings
from gateway.errors import ConfigError, StoreUnavailable
from gateway.services.tile_files import TileFile
from gateway.store.keys import KeySpace
from tests.audit_drafts import note_draft
from tests.certificates import Authority
from tests.harness import RunningGateway, start_and_stop, token_for, wait_for
from tests.tlog_tiles_reference import (
    FetchError,
    InconsistentLogError,
    http_get,
    tile_log_files,
    verify_tile_log,
)

AUDITOR = token_for("auditor-1")
SEALED = 512  # two tiles sealed into the store (and trimmed from Redis)
SIZE = 800  # then tile 2 full but not sealed, and tile 3 partial (32 entries)


# --- helpers ----------------------------------------------------------------------------


# Hundreds of decisions in seconds, one entry each: no rate limit, baseline or profile
# holds them (sessions of 4 distinct actions are no loop either).
QUIET = DetectionSettings(
    rates=RateSettings(defaults=AgentLimits(0, 0, 0)),
    anomaly=AnomalySettings(enabled=False),
    profile=ProfileSettings(enabled=False),
)


def tiles_gateway(make_gateway: Callable[..., RunningGateway], **tiles: Any) -> RunningGateway:
    return make_gateway(tiles=TileServerSettings(listen="127.0.0.1:0", **tiles), detection=QUIET)


def url_of(gw: RunningGateway) -> str:
    assert gw.app.tile_server is not None
    return f"http://127.0.0.1:{gw.app.tile_server.port}"


def get(
    url: str,
    path: str,
    token: str | None = AUDITOR,
    method: str = "GET",
    context: ssl.SSLContext | None = None,
) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(f"{url}/{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


def auditor_fetch(url: str) -> bytes:
    """The reference client's fetch, with the auditor's token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {AUDITOR}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            data: bytes = answer.read()
            return data
    except urllib.error.HTTPError as e:
        e.close()
        raise FetchError(f"GET {url}: HTTP {e.code}") from None


def verifier_key(gw: RunningGateway) -> str:
    keys = gw.key_set()
    return note_verifier_key(keys.origin, keys.keys[0].public_key_raw)


def submit(gw: RunningGateway, until: int) -> None:
    """Decisions until the log has `until` entries (one entry each)."""
    agent = gw.agent()
    for n in range(gw.audit_head(), until):
        agent.submit("search", session_id=f"tiles-{n // 4}", parameters={"q": n})
    assert gw.audit_head() == until


def sealed_size(gw: RunningGateway) -> int:
    return gw.run(gw.app.sealing.sealer.state()).size


def build_log(gw: RunningGateway, raw: redis.Redis, sealed: int, size: int) -> str:
    """`size` entries of which the first `sealed` are sealed; returns the published
    checkpoint note (of `size`)."""
    submit(gw, min(size, sealed + 8))
    wait_for(lambda: sealed_size(gw) == sealed, what=f"{sealed} entries sealed")
    # Another replica holds the seal lease from now on: the next tile stays in Redis.
    lease = KeySpace(gw.config.redis.key_prefix).audit_seal_lease
    raw.set(lease, "another-replica", px=600_000)
    submit(gw, size)
    assert sealed_size(gw) == sealed
    return gw.run(gw.app.audit.checkpoint()).note


def entries_of(lines: list[str]) -> list[bytes]:
    """Each export line's C (docs/audit-format.md §3), as the format library reads it."""
    return [read_export_object(json.loads(line), line)[1] for line in lines]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def served(make_gateway: Callable[..., RunningGateway], raw: redis.Redis) -> RunningGateway:
    gw = tiles_gateway(make_gateway)
    build_log(gw, raw, SEALED, SIZE)
    tiles = gw.config.tile_dir_path
    assert (tiles / "tile/0/001").is_file() and not (tiles / "tile/0/002").exists()
    return gw


def save_keys(gw: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The key set as an auditor saves it (`agentgw audit keys`)."""
    path = tmp_path / "keys.json"
    argv = ("audit", "keys", "--server", gw.target, "--token", AUDITOR, "--out", str(path))
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    return path


# --- verifying the served log ---------------------------------------------------------


def test_a_standard_tlog_client_verifies_the_served_log_to_its_partial_edge(
    served: RunningGateway,
) -> None:
    gw = served
    lines = gw.export_lines()
    seen: list[tuple[int, bytes]] = []
    result = verify_tile_log(
        url_of(gw), verifier_key(gw), lambda i, e: seen.append((i, e)), fetch=auditor_fetch
    )
    assert result.checkpoint.size == SIZE
    assert seen == list(enumerate(entries_of(lines)))
    assert result.entry_bundles_fetched == 4  # 000, 001 sealed; 002 full in Redis; 003.p/32

    # The log grows after the client read the checkpoint: the partial files it then
    # asks for are prefixes of what the tiles hold now, so that checkpoint still verifies.
    note = get(url_of(gw), "checkpoint")[2]
    submit(gw, SIZE + 10)
    status, _, grown = get(url_of(gw), "tile/0/003.p/42")
    assert status == 200

    def then(url: str) -> bytes:
        return note if url.endswith("/checkpoint") else auditor_fetch(url)

    assert verify_tile_log(url_of(gw), verifier_key(gw), fetch=then).checkpoint.size == SIZE
    assert get(url_of(gw), "tile/0/003.p/32")[2] == grown[: 32 * 32]


def test_served_files_are_the_bytes_the_reference_computes_from_the_export(
    served: RunningGateway,
) -> None:
    gw = served
    lines = gw.export_lines()
    files = tile_log_files(entries_of(lines))
    # Sealed (from the store), full but unsealed (from Redis), and partial files.
    assert {"tile/0/000", "tile/0/002", "tile/entries/001", "tile/0/003.p/32"} <= set(files)
    assert "tile/1/000.p/3" in files
    for path, data in files.items():
        status, headers, body = get(url_of(gw), path)
        assert (status, body) == (200, data), path
        assert headers["Content-Type"] == "application/octet-stream"
        partial = ".p/" in path
        immutable = "private, max-age=31536000, immutable"  # it wants a token
        assert headers["Cache-Control"] == ("no-cache" if partial else immutable), path
    # Partial files inside full tiles: sealed ones are prefixes of the store's file,
    # the unsealed ones prefixes of what Redis holds.
    for index in (1, 2):
        full = files[f"tile/0/00{index}"]
        assert get(url_of(gw), f"tile/0/00{index}.p/7")[2] == full[: 7 * 32]
        bundle = get(url_of(gw), f"tile/entries/00{index}.p/3")[2]
        assert (
            bundle
            == tile_log_files(entries_of(lines[index * 256 : index * 256 + 3]))[
                "tile/entries/000.p/3"
            ]
        )
        text = "".join(line + "\n" for line in lines[index * 256 : index * 256 + 5])
        assert get(url_of(gw), f"lines/00{index}.p/5")[2] == text.encode()
    text = "".join(line + "\n" for line in lines[:256])
    assert get(url_of(gw), "lines/000")[2] == text.encode()


def test_audit_verify_url_streams_the_log_and_agrees_with_an_export(
    served: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = served
    keys_file = save_keys(gw, tmp_path, capsys)
    export = tmp_path / "log.jsonl"
    export.write_text("".join(line + "\n" for line in gw.export_lines()), encoding="utf-8")
    keys = str(keys_file)
    code, out, err = cli(capsys, "audit", "verify", str(export), "--keys", keys, "-o", "json")
    assert code == 0, err
    offline = json.loads(out)
    url = url_of(gw)
    code, out, err = cli(
        capsys, "audit", "verify", "--url", url, "--keys", keys, "--token", AUDITOR, "-o", "json"
    )
    assert code == 0, (out, err)
    streamed = json.loads(out)
    assert streamed["count"] == offline["count"] == SIZE
    assert streamed["root_hash"] == offline["root_hash"]
    assert streamed["head_hash"] == offline["head_hash"]
    # 4 lines files, 4 bundles, 4 level-0 tiles and the partial level-1 tile.
    assert streamed["files_checked"] == 13
    code, out, _ = cli(
        capsys, "audit", "verify", "--url", url + "/", "--keys", keys, "--token", AUDITOR
    )
    assert code == 0
    assert out.startswith(f"OK: {SIZE} entries verified; root {offline['root_hash']}")


def saved_checkpoint(
    gw: RunningGateway,
    lines: list[str],
    size: int,
    folder: Path,
    root: bytes | None = None,
    signer: Signer | None = None,
) -> str:
    """A checkpoint of the log's first `size` entries as an auditor saved it earlier
    (`agentgw audit checkpoint`), its root computed here from the export; `root`
    and `signer` stand in for another log's and another key."""
    known = lines[:size]
    if root is None:
        root = root_of([leaf_hash_of(data) for data in entries_of(known)])
    head = json.loads(known[-1])["entry_hash"] if known else "0" * 64
    checkpoint = Checkpoint(gw.config.audit.origin, size, root, head, format_timestamp(0))
    path = folder / f"checkpoint-{size}.note"
    path.write_text(
        sign_checkpoint(checkpoint, signer or gw.app.audit.signing_keys.first), encoding="utf-8"
    )
    return str(path)


def test_a_served_log_that_extends_a_saved_checkpoint_verifies(
    served: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sizes inside sealed tiles, at tile edges, in the full tile in Redis, in the
    partial edge, and the served size itself."""
    gw = served
    keys = str(save_keys(gw, tmp_path, capsys))
    lines = gw.export_lines()
    verify = ("audit", "verify", "--url", url_of(gw), "--keys", keys, "--token", AUDITOR)
    for size in (1, 2, 255, 256, 257, 300, 512, 513, 700, 768, 769, 799, SIZE):
        saved = saved_checkpoint(gw, lines, size, tmp_path)
        code, out, err = cli(capsys, *verify, "--checkpoint", saved)
        assert code == 0 and out.startswith(f"OK: {SIZE} entries verified"), (size, out, err)


def test_a_served_log_that_does_not_extend_a_saved_checkpoint_fails(
    served: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = served
    keys = str(save_keys(gw, tmp_path, capsys))
    lines = gw.export_lines()
    verify = ("audit", "verify", "--url", url_of(gw), "--keys", keys, "--token", AUDITOR)
    # A log once seen longer: rolled back, or another log served under the same name.
    saved = saved_checkpoint(gw, [*lines, *lines], SIZE + 100, tmp_path)
    code, out, _ = cli(capsys, *verify, "--checkpoint", saved)
    assert (code, out) == (
        1,
        f"FAILED rolled_back: the served log has {SIZE} entries, fewer than the {SIZE + 100} "
        "of --checkpoint: it was rolled back, or is another log\n",
    )
    # The same size, another tree: what the auditor was shown then is not what is served.
    for size in (100, 600, SIZE):
        saved = saved_checkpoint(gw, lines, size, tmp_path, root=bytes(32))
        code, out, _ = cli(capsys, *verify, "--checkpoint", saved, "-o", "json")
        failed = json.loads(out)
        assert (code, failed["ok"], failed["kind"]) == (1, False, "forked"), size
        assert f"the served log's first {size} entries have root " in failed["message"]
    # A checkpoint the log's keys never signed proves nothing: refused before any fetch.
    forged = saved_checkpoint(gw, lines, 300, tmp_path, signer=Signer.from_seed(b"\x09" * 32))
    code, out, _ = cli(capsys, *verify, "--checkpoint", forged)
    assert code == 1 and out.startswith("FAILED checkpoint_signature: --checkpoint ")
    # Only the key history says which key had to sign it.
    anchor = verifier_key(gw)
    code, _, err = cli(
        capsys, "audit", "verify", "--url", url_of(gw), "--trust-key", anchor, "--checkpoint", saved
    )
    assert code == 2 and "give --keys" in err


def test_audit_verify_url_without_a_token_fails_naming_the_checkpoint(
    make_gateway: Callable[..., RunningGateway],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = tiles_gateway(make_gateway)
    keys = save_keys(gw, tmp_path, capsys)
    monkeypatch.delenv("AGENTGW_TOKEN", raising=False)
    url = url_of(gw)
    code, out, _ = cli(capsys, "audit", "verify", "--url", url, "--keys", str(keys))
    assert code == 1
    assert out.startswith(f"FAILED fetch_failed: GET {url}/checkpoint: HTTP 401")
    assert len(out.splitlines()) == 1


def test_audit_verify_url_fetches_one_bundle_at_a_time_as_the_verifier_reads(
    make_gateway: Callable[..., RunningGateway], raw: redis.Redis
) -> None:
    gw = tiles_gateway(make_gateway)
    build_log(gw, raw, 256, 260)
    asked: list[str] = []

    class Recording(TileFetch):
        def get(self, path: str, limit: int) -> bytes:
            asked.append(path)
            return super().get(path, limit)

    stream = _ServedLines(Recording(url_of(gw), AUDITOR, None, 10.0), 260).lines()
    assert len(list(islice(stream, 256))) == 256
    assert asked == ["lines/000"]
    next(stream)  # the first line of the next bundle: the first one's files are checked
    assert asked == ["lines/000", "tile/entries/000", "tile/0/000", "lines/001.p/4"]
    assert len(list(stream)) == 3
    assert asked[4:] == ["tile/entries/001.p/4", "tile/0/001.p/4", "tile/1/000.p/1"]


def test_audit_verify_takes_an_export_or_a_url_not_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vectors = json.loads((Path(__file__).parents[1] / "vectors" / "audit-v1.json").read_text())
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(vectors["key_set"]), encoding="utf-8")
    export = tmp_path / "log.jsonl"
    export.write_text("", encoding="utf-8")
    code, _, err = cli(capsys, "audit", "verify", "--keys", str(keys))
    assert (code, err) == (
        2,
        "agentgw: give the export file to verify, or --url URL of a tile server\n",
    )
    both = ("audit", "verify", str(export), "--url", "http://127.0.0.1:1", "--keys", str(keys))
    code, _, err = cli(capsys, *both)
    assert code == 2 and "--url verifies the served log: give no export file" in err
    code, _, err = cli(capsys, "audit", "verify", "--url", "ftp://host/", "--keys", str(keys))
    assert (code, err) == (2, "agentgw: --url ftp://host/: expected an http:// or https:// URL\n")


@pytest.mark.parametrize(
    ("path", "damage", "reference_names"),
    [
        ("tile/entries/000", "actor", "tile/entries/000: entry 0 does not hash"),
        ("tile/0/000", "first byte", "tile/0/000: its Merkle Tree Hash is not hash 0"),
        ("lines/000", "actor", None),  # agentgw's own file: a standard client never reads it
    ],
)
def test_a_sealed_file_tampered_with_on_disk_fails_the_verifiers_naming_it(
    make_gateway: Callable[..., RunningGateway],
    raw: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    path: str,
    damage: str,
    reference_names: str | None,
) -> None:
    gw = tiles_gateway(make_gateway)
    build_log(gw, raw, 256, 260)
    keys = save_keys(gw, tmp_path, capsys)
    file = gw.config.tile_dir_path / path
    data = bytearray(file.read_bytes())
    if damage == "actor":
        at = data.index(b'"actor":"agent-1"') + len(b'"actor":"agent-')
        data[at] = ord("2")
    else:
        data[0] ^= 1
    file.write_bytes(bytes(data))

    url = url_of(gw)
    if reference_names is None:
        assert verify_tile_log(url, verifier_key(gw), fetch=auditor_fetch).checkpoint.size == 260
    else:
        with pytest.raises(InconsistentLogError, match=reference_names):
            verify_tile_log(url, verifier_key(gw), fetch=auditor_fetch)
    code, out, _ = cli(
        capsys, "audit", "verify", "--url", url, "--keys", str(keys), "--token", AUDITOR
    )
    assert code == 1
    assert out.startswith("FAILED ") and path in out and len(out.splitlines()) == 1
    if path == "lines/000":
        assert out.startswith("FAILED edited at lines/000 line 1: seq 1: ")
    else:
        assert f"{path} does not agree with lines/000" in out


def test_a_tampered_tree_node_in_redis_fails_both_verifiers(
    make_gateway: Callable[..., RunningGateway],
    raw: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = tiles_gateway(make_gateway)
    build_log(gw, raw, 256, 260)
    keys = save_keys(gw, tmp_path, capsys)
    # Node (8, 0), the root of the sealed tile, is tile/1/000.p/1's one hash.
    tree = KeySpace(gw.config.redis.key_prefix).audit_tree
    raw.hset(tree, "8:0", "00" * 32)
    url = url_of(gw)
    with pytest.raises(InconsistentLogError, match="the tiles of size 260 hash to root"):
        verify_tile_log(url, verifier_key(gw), fetch=auditor_fetch)
    code, out, _ = cli(
        capsys, "audit", "verify", "--url", url, "--keys", str(keys), "--token", AUDITOR
    )
    assert (code, out) == (
        1,
        "FAILED tile_mismatch: tile/1/000.p/1 does not agree with the lines up to "
        "lines/001.p/4: hash 0 differs\n",
    )


# --- the endpoint -----------------------------------------------------------------------


def test_the_tiles_want_an_auditor_or_admin_token_unless_public(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = tiles_gateway(make_gateway)
    url = url_of(gw)
    status, headers, body = get(url, "checkpoint", token=None)
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="agentgw tiles"'
    assert b"authorization" in body
    assert get(url, "checkpoint", token="not-a-token")[0] == 401
    assert get(url, "checkpoint", token=token_for("agent-1"))[0] == 403
    assert get(url, "checkpoint", token=token_for("approver-1"))[0] == 403
    assert get(url, "tile/0/000.p/1", token=token_for("agent-1"))[0] == 403
    assert get(url, "checkpoint", token=AUDITOR)[0] == 200
    assert get(url, "checkpoint", token=token_for("admin-1"))[0] == 200
    assert gw.app.tile_server is not None
    port = gw.app.tile_server.port
    gw.stop()  # stops the tile server too
    with pytest.raises(ConnectionError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

    public = tiles_gateway(make_gateway, public=True)
    status, headers, body = get(url_of(public), "checkpoint", token=None)
    assert status == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body.decode().startswith(public.config.audit.origin + "\n")
    # What the reference client's own fetch (no token at all) reads.
    assert http_get(f"{url_of(public)}/checkpoint") == body


def test_only_a_public_logs_full_files_may_be_kept_by_shared_caches(
    make_gateway: Callable[..., RunningGateway], raw: redis.Redis
) -> None:
    public = tiles_gateway(make_gateway, public=True)
    build_log(public, raw, SEALED, SIZE)
    for path in ("tile/0/000", "tile/entries/000", "tile/0/002"):  # sealed, and in Redis
        status, headers, _ = get(url_of(public), path, token=None)
        assert (status, headers["Cache-Control"]) == (200, "public, max-age=31536000, immutable")


def test_paths_beyond_the_head_are_absent_and_malformed_ones_refused(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = tiles_gateway(make_gateway)
    submit(gw, 3)
    note = gw.run(gw.app.audit.checkpoint()).note
    url = url_of(gw)
    status, headers, body = get(url, "checkpoint")
    assert (status, body) == (200, note.encode())
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    for path in ("tile/0/000.p/3", "tile/entries/000.p/3", "lines/000.p/3", "tile/0/000.p/1"):
        status, headers, _ = get(url, path)
        assert (status, headers["Cache-Control"]) == (200, "no-cache"), path
    beyond = (
        "tile/0/000.p/4",
        "tile/0/000",
        "tile/entries/000.p/4",
        "lines/000",
        "tile/1/000.p/1",
        "tile/0/x001/000",
        "",
        "metrics",
        "tiles/0/000",
    )
    for path in beyond:
        status, headers, body = get(url, path)
        assert status == 404, path
        assert headers["Cache-Control"] == "no-store"
    malformed = ("tile/0/0", "tile/0/000.p/256", "tile/0/000.p/0", "tile/0/x000/001", "tile/64/000")
    for path in malformed:
        status, _, body = get(url, path)
        assert status == 400, path
        assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert get(url, "tile/0/0", token=None)[0] == 401  # nothing said to a stranger
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        status, headers, _ = get(url, "checkpoint", method=method)
        assert (status, headers["Allow"]) == (405, "GET"), method


def test_the_tiles_are_served_over_tls_with_the_gateway_certificate(
    make_gateway: Callable[..., RunningGateway],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca = Authority(tmp_path / "pki")
    cert = ca.issue("gateway", server=True)
    gw = make_gateway(
        tls=TlsSettings(cert.cert_file, cert.key_file),
        tiles=TileServerSettings(listen="127.0.0.1:0"),
    )
    audit = gw.app.audit
    for _ in range(3):
        gw.run(audit.commit([note_draft(1)]))
    gw.run(audit.checkpoint())
    assert gw.app.tile_server is not None
    url = f"https://localhost:{gw.app.tile_server.port}"
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    assert get(url, "tile/0/000.p/3", context=context)[0] == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get(f"http://127.0.0.1:{gw.app.tile_server.port}", "checkpoint")
    anchor = note_verifier_key(gw.config.audit.origin, audit.signing_keys.first.public_key_raw)
    argv = ["audit", "verify", "--url", url, "--trust-key", anchor, "--token", AUDITOR]
    code, out, _ = cli(capsys, *argv, "--tls-ca", str(ca.ca_file))
    assert (code, out.split(";")[0]) == (0, "OK: 3 entries verified")
    code, out, _ = cli(capsys, *argv)  # the system's CAs do not know the test CA
    assert code == 1 and out.startswith(f"FAILED fetch_failed: GET {url}/checkpoint: ")


def test_a_token_protected_tile_server_is_refused_in_cleartext_off_loopback(
    gateway_config: Config,
) -> None:
    config = replace(gateway_config, tiles=TileServerSettings(listen="0.0.0.0:0"))
    app = App(config)

    with pytest.raises(ConfigError, match=r"refusing to serve the audit log on 0\.0\.0\.0:0"):
        start_and_stop(app)


# --- config and flags ---------------------------------------------------------------------


def config_file(tmp_path: Path, body: str = "") -> Path:
    """A config file with one auditor, and `body`."""
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "agentgw.yaml"
    principal = f"  - name: auditor-1\n    role: auditor\n    token_sha256: {'ab' * 32}\n"
    path.write_text(f"principals:\n{principal}{body}", encoding="utf-8")
    return path


def test_the_tiles_section_the_flag_and_the_environment_set_the_tile_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, "tiles:\n  listen: 0.0.0.0:8443\n  public: true\n")
    assert load_config(Overrides(config_file=path), {})[0].tiles == TileServerSettings(
        listen="0.0.0.0:8443", public=True
    )
    env = {"AGENTGW_TILES_LISTEN": "127.0.0.1:9000"}
    config, _ = load_config(Overrides(config_file=path), env)
    assert config.tiles == TileServerSettings(listen="127.0.0.1:9000", public=True)
    config, _ = load_config(Overrides(config_file=path, tiles_listen="127.0.0.1:9001"), env)
    assert config.tiles.listen == "127.0.0.1:9001"
    with pytest.raises(ConfigError, match="AGENTGW_TILES_LISTEN: listen: expected HOST:PORT"):
        load_config(Overrides(config_file=path), {"AGENTGW_TILES_LISTEN": "9000"})
    plain = config_file(tmp_path / "plain")
    assert load_config(Overrides(config_file=plain), {})[0].tiles == TileServerSettings()
    # `agentgw serve --tiles-listen` hands the flag to load_config.
    seen: list[Overrides] = []

    def load(overrides: Overrides, env: object) -> None:
        seen.append(overrides)
        raise ConfigError("stop here")

    monkeypatch.setattr("gateway.config.load_config", load)
    assert main(["serve", "--config", str(path), "--tiles-listen", "127.0.0.1:9002"]) == 1
    assert seen[0].tiles_listen == "127.0.0.1:9002"


@pytest.mark.parametrize(
    ("section", "why"),
    [
        ("tiles:\n  listen: nowhere\n", "expected HOST:PORT, got 'nowhere'"),
        ("tiles:\n  public: maybe\n", "tiles.public"),
        ("tiles:\n  port: 1\n", "port"),
    ],
)
def test_a_bad_tiles_section_is_refused_naming_the_key(section: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_config(section, "agentgw.yaml", Path("."))


# --- the server alone: failures and bounds ----------------------------------------------


class FakeFiles:
    """A TileFiles stand-in: answers with `answer`, or raises it."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.released = asyncio.Event()

    async def read(self, path: str) -> TileFile | None:
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer == "forever":
            await self.released.wait()
        return TileFile(b"tile bytes", immutable=True)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@contextlib.contextmanager
def standalone(
    files: FakeFiles, loop: asyncio.AbstractEventLoop, answer_seconds: float = 10.0
) -> Iterator[str]:
    server = TileServer(files, "127.0.0.1:0", None, loop, answer_seconds=answer_seconds)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_a_redis_failure_is_a_503_with_a_one_line_reason(loop: asyncio.AbstractEventLoop) -> None:
    failure = StoreUnavailable("reading the sealed log: Redis is unreachable\n(connection refused)")
    with standalone(FakeFiles(failure), loop) as url:
        status, headers, body = get(url, "tile/0/000")
    assert status == 503 and headers["Cache-Control"] == "no-store"
    assert body == b"reading the sealed log: Redis is unreachable (connection refused)\n"


def test_a_read_that_takes_too_long_is_a_503(loop: asyncio.AbstractEventLoop) -> None:
    files = FakeFiles("forever")
    with standalone(files, loop, answer_seconds=0.2) as url:
        status, _, body = get(url, "tile/0/000")
        assert (status, body) == (503, b"tile/0/000: reading the audit log timed out\n")
        loop.call_soon_threadsafe(files.released.set)
        assert get(url, "tile/0/000")[0] == 200


def test_connections_beyond_the_workers_and_the_queue_are_closed_unanswered(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_endpoint, "WORKERS", 1)
    monkeypatch.setattr(http_endpoint, "WAITING", 1)
    with standalone(FakeFiles("ok"), loop) as url:
        port = int(url.rsplit(":", 1)[1])
        # One silent client holds the only worker, another waits for it.
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            third = socket.create_connection(("127.0.0.1", port), timeout=5)
            with third:
                third.sendall(b"GET /tile/0/000 HTTP/1.0\r\n\r\n")
                assert third.recv(100) == b""  # closed, not answered, and not held
        finally:
            for sock in silent:
                sock.close()
        # Once they go (and their slots are free), the server answers again.

        def answered() -> bool:
            try:
                return get(url, "tile/0/000")[0] == 200
            except (urllib.error.URLError, ConnectionError):
                return False  # still closed: the slots are not free yet

        assert wait_for(answered, what="an answer")

"""Hostile probes of the tile server (`--tiles-listen`) and of `agentgw audit verify
--url`.

The server side runs a real gateway on loopback and talks to its tile server with raw
sockets and urllib, as an attacker would: traversal and non-canonical paths, huge
indexes, other methods, tokens in the wrong place, oversized requests, floods of
connections and slow clients, cache headers and damaged files in the tile store.

The client side runs `agentgw audit verify --url` against a hostile server
(tests/hostile_tile_server.py) that mirrors a real gateway's signed log and then lies:
a checkpoint larger than its tiles, tiles that disagree, a bundle that runs past its
end, endless and trickled bodies, redirects to another host, errors and truncations.
The verifier must fail with one clear line and a non-zero code, never report success,
never hang and never hand the auditor's token to anyone else.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from clients.cli import main
from clients.cli.auditor import LINES_LIMIT, NOTE_LIMIT
from gateway.api import http_endpoint, tile_server
from gateway.config import TileServerSettings
from gateway.domain.audit.note import note_verifier_key
from gateway.domain.audit.tiles import encode_index
from gateway.domain.detect.anomaly import AnomalySettings
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.profile import ProfileSettings
from gateway.domain.detect.rates import AgentLimits, RateSettings
from tests.audit_drafts import note_draft
from tests.harness import GatewayLogs, RunningGateway, token_for, wait_for
from tests.hostile_tile_server import (
    HostileTileServer,
    endless,
    raw,
    redirect,
    silent,
    status,
    trickle,
    truncated,
)

AUDITOR = token_for("auditor-1")
ROOT = Path(__file__).parents[2]
QUIET = DetectionSettings(
    rates=RateSettings(defaults=AgentLimits(0, 0, 0)),
    anomaly=AnomalySettings(enabled=False),
    profile=ProfileSettings(enabled=False),
)
# What a log of 3 entries is served as, beside its checkpoint.
SMALL_FILES = ("lines/000.p/3", "tile/entries/000.p/3", "tile/0/000.p/3")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# --- the gateway --------------------------------------------------------------------------


def tiles_gateway(make_gateway: Callable[..., RunningGateway], **tiles: Any) -> RunningGateway:
    return make_gateway(tiles=TileServerSettings(listen="127.0.0.1:0", **tiles), detection=QUIET)


def port_of(gw: RunningGateway) -> int:
    assert gw.app.tile_server is not None
    return gw.app.tile_server.port


def url_of(gw: RunningGateway) -> str:
    return f"http://127.0.0.1:{port_of(gw)}"


def grow(gw: RunningGateway, until: int) -> None:
    """Entries committed straight to the audit log until it has `until`."""
    head = gw.audit_head()
    while head < until:
        batch = [note_draft(head + i) for i in range(min(64, until - head))]
        gw.run(gw.app.audit.commit(batch))
        head = gw.audit_head()
    assert head == until


def publish(gw: RunningGateway) -> bytes:
    """A checkpoint of the head, published: what /checkpoint serves from now on."""
    return gw.run(gw.app.audit.checkpoint()).note.encode("utf-8")


def trust_key(gw: RunningGateway) -> str:
    keys = gw.key_set()
    return note_verifier_key(keys.origin, keys.keys[0].public_key_raw)


def get(
    url: str,
    path: str,
    token: str | None = AUDITOR,
    method: str = "GET",
) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(f"{url}/{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """`request` as raw bytes on a new connection; everything the server says back
    until it closes (b"" if it closes without a word)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def request_for(target: str, method: str = "GET", token: str | None = AUDITOR) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    return head.encode("latin-1")


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def answered(url: str) -> bool:
    """Whether the tile server answers an auditor's GET of the checkpoint with a 200."""
    try:
        return get(url, "checkpoint")[0] == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False


@pytest.fixture
def small(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """A token-protected tile server over a log of 3 entries (all in Redis)."""
    gw = tiles_gateway(make_gateway)
    grow(gw, 3)
    publish(gw)
    return gw


@pytest.fixture
def sealed(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """A token-protected tile server over 260 entries, the first 256 sealed."""
    gw = tiles_gateway(make_gateway)
    grow(gw, 260)
    wait_for(lambda: gw.run(gw.app.sealing.sealer.state()).size == 256, what="a sealed tile")
    assert (gw.config.tile_dir_path / "tile/0/000").is_file()
    publish(gw)
    return gw


# --- the server: paths ----------------------------------------------------------------------

TRAVERSALS = (
    "/agentgw-tile-store.json",
    "//agentgw-tile-store.json",
    "/tile/../agentgw-tile-store.json",
    "/tile/0/../../agentgw-tile-store.json",
    "/tile/0/000/../../../agentgw-tile-store.json",
    "/lines/000/../../agentgw-tile-store.json",
    "/tile/%2e%2e/agentgw-tile-store.json",
    "/tile/0/%2e%2e%2f%2e%2e%2fagentgw-tile-store.json",
    "/tile/..%2f..%2fagentgw-tile-store.json",
    "/tile\\0\\..\\..\\agentgw-tile-store.json",
    "/tile/0/000%00",
    "/tile/./0/000",
    "/tile//0/000",
    "/tile/0//000",
    "/./tile/0/000",
    "/tile/0/000/",
    "/etc/passwd",
    "/tile/0/x000/../000",
)


def test_no_traversal_or_other_spelling_reaches_a_file_of_the_store(
    sealed: RunningGateway,
) -> None:
    gw = sealed
    port = port_of(gw)
    store_id = json.loads((gw.config.tile_dir_path / "agentgw-tile-store.json").read_text())
    tile = (gw.config.tile_dir_path / "tile/0/000").read_bytes()
    targets = (*TRAVERSALS, f"/{gw.config.tile_dir_path / 'agentgw-tile-store.json'}")
    for target in targets:
        response = exchange(port, request_for(target))
        assert status_of(response) in (400, 404), target
        body = body_of(response)
        assert store_id["store_id"].encode() not in body and tile not in body, target
    # The canonical spelling is served, with a query string or not.
    assert body_of(exchange(port, request_for("/tile/0/000"))) == tile
    assert body_of(exchange(port, request_for("/tile/0/000?x=1"))) == tile


NON_CANONICAL = (
    "tile/0/0",
    "tile/0/00",
    "tile/0/0000",
    "tile/0/x000",
    "tile/0/x001",
    "tile/0/x000/000",
    "tile/0/x000/x001/000",
    "tile/0/X001/000",
    "tile/0/x01/000",
    "tile/0/+00",
    "tile/0/-01",
    "tile/0/0x0",
    "tile/0/%30%30%30",
    "tile/00/000",
    "tile/01/000",
    "tile/64/000",
    "tile/999/000",
    "tile/-1/000",
    "tile/0/000.p/0",
    "tile/0/000.p/00",
    "tile/0/000.p/01",
    "tile/0/000.p/256",
    "tile/0/000.p/1000",
    "tile/0/000.p/",
    "tile/0/000.p",
    "tile/0/000.p/1/",
    "tile/0/000.P/1",
    "tile/0/000.p/-1",
    "tile/entries/0",
    "tile/entries/x000/000",
    "tile/entries/000.p/0",
    "tile/lines/000",
    "lines/0",
    "lines/000.p/256",
    "lines/x000/000",
)


def test_every_non_canonical_spelling_of_a_tile_path_is_a_400(small: RunningGateway) -> None:
    port = port_of(small)
    for path in NON_CANONICAL:
        response = exchange(port, request_for(f"/{path}"))
        assert status_of(response) == 400, path
        assert body_of(response).count(b"\n") == 1, path


def test_tiles_beyond_the_tree_are_404_however_far_and_at_whatever_width(
    small: RunningGateway,
) -> None:
    url = url_of(small)
    beyond = (
        "tile/0/000.p/4",  # wider than the tree's edge (3 entries)
        "tile/0/000.p/255",
        "tile/0/000",
        "tile/entries/000",
        "lines/000.p/4",
        "tile/0/001.p/1",
        "tile/1/000.p/1",
        "tile/63/000.p/1",
        f"tile/0/{encode_index(2**70)}",
        f"tile/entries/{encode_index(2**70)}.p/7",
        f"tile/63/{encode_index(2**200)}",
        f"lines/{encode_index(10**4000)}",  # 4,001 digits: still an int Python parses
    )
    for path in beyond:
        code, headers, body = get(url, path)
        assert code == 404, path
        assert headers["Cache-Control"] == "no-store", path
        assert body.count(b"\n") == 1


def test_a_tile_index_too_long_for_int_is_refused_not_an_internal_error(
    small: RunningGateway, gateway_logs: GatewayLogs
) -> None:
    """A canonical tile path whose index has more than 4,300 digits (past what
    int() reads) is past every log: 404, nothing logged as an error."""
    index = "x100/" + "x000/" * 1500 + "000"  # 10**4505: 4,506 digits
    code, _, body = get(url_of(small), f"tile/0/{index}")
    assert code in (400, 404), body[:200]
    errors = [r for r in gateway_logs.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [], [r.getMessage() for r in errors]
    assert answered(url_of(small))


# --- the server: methods, tokens, limits -------------------------------------------------------


def test_only_get_is_served_and_head_answers_without_a_body(small: RunningGateway) -> None:
    port = port_of(small)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for token in (AUDITOR, None):
            response = exchange(port, request_for("/checkpoint", method, token))
            assert status_of(response) == 405, (method, token)
            assert b"\r\nAllow: GET\r\n" in response
    head = exchange(port, request_for("/checkpoint", "HEAD"))
    assert status_of(head) == 405 and body_of(head) == b""
    for method in ("TRACE", "CONNECT", "PROPFIND", "get", "G\x7fT"):
        response = exchange(port, request_for("/checkpoint", method))
        assert status_of(response) in (400, 405, 501), method
    # A body sent with a GET is not read as a second request.
    smuggled = (
        b"GET /checkpoint HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + AUDITOR.encode()
        + b"\r\nContent-Length: 40\r\n\r\nGET /tile/0/000.p/1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert exchange(port, smuggled).count(b"HTTP/1.") == 1


def test_only_an_auditor_or_admin_bearer_header_opens_the_tiles(small: RunningGateway) -> None:
    port = port_of(small)
    url = url_of(small)
    for path in ("checkpoint", "tile/0/000.p/3", "lines/000.p/3", "tile/0/0", "nothing"):
        assert get(url, path, token=None)[0] == 401, path
        assert get(url, f"{path}?token={AUDITOR}", token=None)[0] == 401, path
        assert get(url, f"{path}?access_token={AUDITOR}", token=None)[0] == 401, path
        assert get(url, path, token=token_for("agent-1"))[0] == 403, path
        assert get(url, path, token=token_for("approver-1"))[0] == 403, path
    for header in (
        f"Basic {AUDITOR}",
        f"Token {AUDITOR}",
        "Bearer",
        "Bearer ",
        f"Bearer {AUDITOR}x",
        f"Bearer {AUDITOR[:-1]}",
        f"Bearer {'a' * 60000}",
    ):
        head = f"GET /checkpoint HTTP/1.0\r\nAuthorization: {header}\r\n\r\n"
        assert status_of(exchange(port, head.encode())) == 401, header[:40]
    in_other_header = f"GET /checkpoint HTTP/1.0\r\nX-Authorization: Bearer {AUDITOR}\r\n\r\n"
    assert status_of(exchange(port, in_other_header.encode())) == 401
    # Two Authorization headers (an agent's, then an auditor's) never open the tiles.
    two = (
        f"GET /checkpoint HTTP/1.0\r\nAuthorization: Bearer {token_for('agent-1')}\r\n"
        f"Authorization: Bearer {AUDITOR}\r\n\r\n"
    )
    assert status_of(exchange(port, two.encode())) in (401, 403)
    assert get(url, "checkpoint", token=token_for("admin-1"))[0] == 200


def test_oversized_requests_are_refused_and_the_server_goes_on(small: RunningGateway) -> None:
    port = port_of(small)
    auth = f"Authorization: Bearer {AUDITOR}\r\n"
    long_line = f"GET /tile/0/{'x001/' * 14000}000 HTTP/1.0\r\n{auth}\r\n"
    assert status_of(exchange(port, long_line.encode())) == 414
    many = "".join(f"X-{n}: 1\r\n" for n in range(150))
    assert (
        status_of(exchange(port, f"GET /checkpoint HTTP/1.0\r\n{auth}{many}\r\n".encode())) == 431
    )
    big = f"GET /checkpoint HTTP/1.0\r\n{auth}X-Big: {'a' * 70000}\r\n\r\n"
    assert status_of(exchange(port, big.encode())) == 431
    # A TLS hello in cleartext: a 400 (as HTTP/0.9: http.server's body alone).
    hello = exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
    assert b"400" in hello and b"checkpoint" not in hello
    socket.create_connection(("127.0.0.1", port)).close()  # connects, says nothing, hangs up
    assert answered(url_of(small))


def test_a_flood_beyond_the_pool_is_dropped_and_legit_clients_are_answered_after(
    small: RunningGateway,
) -> None:
    port = port_of(small)
    url = url_of(small)
    # One client that connects and says nothing holds up no one.
    with socket.create_connection(("127.0.0.1", port)):
        assert answered(url)
    flood = [
        socket.create_connection(("127.0.0.1", port), timeout=10)
        for _ in range(http_endpoint.WORKERS + http_endpoint.WAITING + 16)
    ]
    try:
        # Meanwhile an auditor is closed unanswered (all 40 slots held), or answered.
        during = exchange(port, request_for("/checkpoint"))
        assert during == b"" or status_of(during) == 200
    finally:
        for sock in flood:
            sock.close()
    assert wait_for(lambda: answered(url), what="an answer once the flood is gone")


def held_connection(port: int) -> socket.socket | None:
    """A connection that has sent a request line and that the server holds open (in
    its one worker), or None if it was closed at once (the slot not yet free)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /checkpoint HTTP/1.1\r\n")
    sock.settimeout(0.1)
    try:
        sock.recv(1)
    except TimeoutError:
        return sock  # no word: held, waiting for the rest of the request
    sock.close()
    return None


def test_one_slow_client_cannot_hold_a_worker_past_the_socket_timeout(
    make_gateway: Callable[..., RunningGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request head is due within the socket timeout in all, not per read
    (http_endpoint.py `BoundedHandler`): a client trickling header lines, each
    inside the timeout, is cut off and frees its worker. Here, with a timeout of
    0.5 s and one worker, it trickles 30 lines 0.1 s apart."""
    monkeypatch.setattr(tile_server, "SOCKET_SECONDS", 0.5)
    monkeypatch.setattr(http_endpoint, "WORKERS", 1)
    monkeypatch.setattr(http_endpoint, "WAITING", 0)
    gw = tiles_gateway(make_gateway)
    publish(gw)
    url = url_of(gw)
    assert answered(url)
    slow = wait_for(lambda: held_connection(port_of(gw)), what="the worker, free again")
    assert slow is not None
    try:
        cut_off = False
        for n in range(30):
            try:
                slow.recv(1)  # b"" or an answer (408): the server gave up on it
                cut_off = True
                break
            except TimeoutError:
                pass  # still held open for us: one more line
            try:
                slow.sendall(f"X-Slow-{n}: 1\r\n".encode())
            except OSError:
                cut_off = True
                break
        # Unless the server gave up on it, the slow client is still sending, 6 socket
        # timeouts after it began, and still holds the only worker: an auditor is refused.
        assert cut_off or answered(url), "a slow client still holds the only worker"
    finally:
        slow.close()


# --- the server: headers and the files it serves ------------------------------------------------


def test_answers_say_what_they_are_and_only_full_files_are_cacheable(
    sealed: RunningGateway,
) -> None:
    url = url_of(sealed)
    code, headers, _ = get(url, "checkpoint")
    assert code == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    for path in ("tile/0/001.p/4", "tile/entries/001.p/4", "lines/001.p/4", "tile/0/000.p/9"):
        code, headers, _ = get(url, path)
        assert code == 200 and headers["Content-Type"] == "application/octet-stream", path
        assert headers["Cache-Control"] == "no-cache", path
    for path, token in (
        ("tile/0/001.p/5", AUDITOR),
        ("tile/0/001", AUDITOR),
        ("tile/0/0", AUDITOR),
        ("tile/0/000", None),
        ("tile/0/000", token_for("agent-1")),
    ):
        code, headers, _ = get(url, path, token=token)
        assert code in (400, 401, 403, 404), path
        assert headers["Cache-Control"] == "no-store", (path, token)
    assert "immutable" in get(url, "tile/0/000")[1]["Cache-Control"]


@pytest.mark.parametrize("path", ["tile/0/000", "tile/entries/000", "lines/000"])
def test_a_token_protected_full_file_is_not_marked_public_for_shared_caches(
    sealed: RunningGateway, path: str
) -> None:
    """A token-protected full file is `private, max-age=31536000, immutable`: a
    shared cache (RFC 9111 §3.5, §5.2.2.9) must not hand the auditor-only log on."""
    code, headers, _ = get(url_of(sealed), path)
    assert code == 200
    directives = {d.strip().split("=")[0] for d in headers["Cache-Control"].split(",")}
    assert "public" not in directives, headers["Cache-Control"]


def test_a_public_tile_server_lets_caches_keep_full_files(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = tiles_gateway(make_gateway, public=True)
    grow(gw, 3)
    publish(gw)
    code, headers, _ = get(url_of(gw), "checkpoint", token=None)
    assert code == 200 and headers["Cache-Control"] == "no-cache"
    assert get(url_of(gw), "tile/0/000.p/3", token=None)[1]["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    ("path", "keep", "partial"),
    [
        ("tile/0/000", 100, "tile/0/000.p/4"),  # 3 hashes and a bit, of 256
        ("tile/entries/000", 1000, "tile/entries/000.p/255"),  # cut inside an entry
        ("lines/000", None, None),  # 255 whole lines of 256
    ],
)
def test_a_truncated_sealed_file_is_not_served_as_immutable(
    sealed: RunningGateway, path: str, keep: int | None, partial: str | None
) -> None:
    """A sealed full file cut short in the store (a torn copy, a bad restore) is
    503, not served as an immutable file every cache would keep for a year."""
    file = sealed.config.tile_dir_path / path
    data = file.read_bytes()
    if keep is None:
        keep = data.rindex(b"\n", 0, len(data) - 1) + 1
    file.write_bytes(data[:keep])
    code, headers, body = get(url_of(sealed), path)
    assert code == 503 or "immutable" not in headers["Cache-Control"], (
        code,
        headers["Cache-Control"],
        len(body),
    )
    if partial is not None:  # a partial read of the same file does notice
        assert get(url_of(sealed), partial)[0] == 503


# --- the client: against a hostile mirror ------------------------------------------------------


@dataclass(frozen=True)
class Mirror:
    """A real gateway's log of 3 entries, as a tile server serves it."""

    gw: RunningGateway
    files: dict[str, bytes]
    trust_key: str


@pytest.fixture
def mirror(small: RunningGateway) -> Mirror:
    files = {}
    for path in ("checkpoint", *SMALL_FILES):
        code, _, body = get(url_of(small), path)
        assert code == 200, path
        files[path] = body
    return Mirror(small, files, trust_key(small))


@pytest.fixture
def hostile(mirror: Mirror) -> Iterator[HostileTileServer]:
    with HostileTileServer(mirror.files) as server:
        yield server


def verify(
    capsys: pytest.CaptureFixture[str], url: str, mirror: Mirror, *extra: str
) -> tuple[int, str]:
    """`agentgw audit verify --url` in this process: (exit code, what it printed)."""
    capsys.readouterr()
    argv = ["audit", "verify", "--url", url, "--trust-key", mirror.trust_key, "--token", AUDITOR]
    code = main([*argv, "--timeout", "5", *extra])
    out, err = capsys.readouterr()
    return code, out + err


def verify_in_a_process(url: str, mirror: Mirror, guard: float, *extra: str) -> tuple[int, str]:
    """The same as a process of its own, killed (and the test failed) if it is still
    running after `guard` seconds: for answers that might hold a client forever."""
    argv = [sys.executable, "-m", "clients.cli", "audit", "verify", "--url", url]
    argv += ["--trust-key", mirror.trust_key, "--token", AUDITOR, *extra]
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=guard)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"`agentgw audit verify --url {url} {' '.join(extra)}` was still running after "
            f"{guard} s: the server holds it for as long as it likes"
        ) from None
    return done.returncode, done.stdout + done.stderr


def assert_failed(code: int, out: str, *words: str) -> None:
    """Failed, in one line of text, naming `words`, never OK."""
    assert code == 1, out
    assert len(out.splitlines()) == 1 and out.startswith("FAILED "), out
    assert "OK" not in out.split(":")[0]
    for word in words:
        assert word in out, (word, out)


def test_a_faithful_mirror_verifies(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = verify(capsys, hostile.url, mirror)
    assert code == 0 and out.startswith("OK: 3 entries verified"), out
    assert hostile.paths() == ["checkpoint", *SMALL_FILES]


def test_a_checkpoint_larger_than_the_tiles_fails(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    grow(mirror.gw, 5)
    hostile.files["checkpoint"] = publish(mirror.gw)  # signed, of 5 entries
    code, out = verify(capsys, hostile.url, mirror)
    assert_failed(code, out, "fetch_failed", "lines/000.p/5", "HTTP 404")
    # Or it serves the 3 lines under the name of 5.
    hostile.files["lines/000.p/5"] = mirror.files["lines/000.p/3"]
    code, out = verify(capsys, hostile.url, mirror)
    assert_failed(code, out, "tile_mismatch", "lines/000.p/5", "3 lines, not 5")


def test_a_checkpoint_smaller_than_the_tiles_is_verified_at_its_size(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    grow(mirror.gw, 5)
    for path in SMALL_FILES:  # the tiles of 5, under the names of 3
        hostile.files[path] = get(url_of(mirror.gw), path.replace(".p/3", ".p/5"))[2]
    code, out = verify(capsys, hostile.url, mirror)
    assert_failed(code, out, "lines/000.p/3", "5 lines, not 3")


@pytest.mark.parametrize("path", ["tile/0/000.p/3", "tile/entries/000.p/3"])
def test_a_tile_or_bundle_that_disagrees_with_the_checkpoint_fails_naming_it(
    hostile: HostileTileServer,
    mirror: Mirror,
    capsys: pytest.CaptureFixture[str],
    path: str,
) -> None:
    data = bytearray(mirror.files[path])
    data[-1] ^= 1
    hostile.files[path] = bytes(data)
    code, out = verify(capsys, hostile.url, mirror)
    assert_failed(code, out, "tile_mismatch", path, "differs")


def test_a_lines_file_that_disagrees_with_the_checkpoint_fails(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = mirror.files["lines/000.p/3"].split(b"\n")
    lines[1] = lines[1].replace(b'"n":1', b'"n":7')
    hostile.files["lines/000.p/3"] = b"\n".join(lines)
    code, out = verify(capsys, hostile.url, mirror)
    assert code == 1 and out.startswith("FAILED ") and len(out.splitlines()) == 1, out
    assert "lines/000.p/3 line 2" in out


@pytest.mark.parametrize(
    "damage",
    ["prefix past the end", "prefix cut off", "empty", "hashes as a bundle"],
)
def test_a_malformed_entry_bundle_fails(
    hostile: HostileTileServer,
    mirror: Mirror,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    bundle = mirror.files["tile/entries/000.p/3"]
    if damage == "prefix past the end":
        size = int.from_bytes(bundle[:2], "big")
        bad = (size + 1000).to_bytes(2, "big") + bundle[2:]
    elif damage == "prefix cut off":
        bad = bundle + b"\x01"
    elif damage == "empty":
        bad = b""
    else:
        bad = mirror.files["tile/0/000.p/3"]
    hostile.files["tile/entries/000.p/3"] = bad
    code, out = verify(capsys, hostile.url, mirror)
    assert_failed(code, out, "tile_mismatch", "tile/entries/000.p/3")


def test_a_forged_or_garbled_checkpoint_fails_before_any_tile(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    note = mirror.files["checkpoint"].decode()
    body, _, signatures = note.partition("\n\n")
    origin, _size, *rest = body.split("\n")
    for forged in (
        "\n".join([origin, "1000000", *rest]) + "\n\n" + signatures,  # bigger, same signature
        "\n".join([origin, "0", *rest]) + "\n\n" + signatures,
        note.replace("\u2014", "-"),
        "\xff\xfe" + note,
        "",
        "not a checkpoint\n",
    ):
        hostile.files["checkpoint"] = forged.encode("utf-8", "surrogateescape")
        code, out = verify(capsys, hostile.url, mirror)
        assert code == 1 and out.startswith("FAILED ") and len(out.splitlines()) == 1, out
    assert set(hostile.paths()) == {"checkpoint"}


@pytest.mark.parametrize("answer", ["500", "503 with a long reason", "403", "429"])
def test_error_answers_fail_in_one_line(
    hostile: HostileTileServer,
    mirror: Mirror,
    capsys: pytest.CaptureFixture[str],
    answer: str,
) -> None:
    code_number = int(answer.split()[0])
    reason = b"x" * 100_000 if "long" in answer else b"down\nfor\r\nmaintenance"
    hostile.answers["tile/0/000.p/3"] = status(code_number, reason)
    code, out = verify(capsys, hostile.url, mirror)
    assert_failed(code, out, "fetch_failed", "tile/0/000.p/3", f"HTTP {code_number}")
    assert len(out) < 1000


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("lines/000.p/3", "cut inside a line"),
        ("lines/000.p/3", "cut at a line's end"),
        ("tile/0/000.p/3", "cut inside a hash"),
        ("checkpoint", "cut inside the note"),
    ],
)
def test_a_truncated_body_fails(
    hostile: HostileTileServer,
    mirror: Mirror,
    capsys: pytest.CaptureFixture[str],
    path: str,
    answer: str,
) -> None:
    data = mirror.files[path]
    cut = data.index(b"\n") + 1 if "line's end" in answer else len(data) // 2
    hostile.answers[path] = truncated(data[:cut], len(data))
    code, out = verify(capsys, hostile.url, mirror)
    assert code == 1 and out.startswith("FAILED ") and len(out.splitlines()) == 1, out


@pytest.mark.parametrize(("path", "limit"), [("checkpoint", NOTE_LIMIT), ("lines/000.p/3", 0)])
def test_an_endless_body_is_cut_off_at_the_files_limit(
    hostile: HostileTileServer,
    mirror: Mirror,
    capsys: pytest.CaptureFixture[str],
    path: str,
    limit: int,
) -> None:
    hostile.answers[path] = endless()
    code, out = verify(capsys, hostile.url, mirror)
    assert_failed(code, out, "fetch_failed", path, f"more than {limit or LINES_LIMIT} bytes")


def test_a_server_that_never_answers_times_out(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile.answers["lines/000.p/3"] = silent()
    code, out = verify(capsys, hostile.url, mirror, "--timeout", "0.5")
    assert_failed(code, out, "fetch_failed", "lines/000.p/3", "timed out")


@pytest.mark.parametrize("path", ["checkpoint", "lines/000.p/3"])
def test_a_trickled_body_cannot_hold_the_verifier_forever(
    hostile: HostileTileServer, mirror: Mirror, path: str
) -> None:
    """`--timeout` bounds each request whole (connect to the body's last byte): a
    server that trickles a byte every 0.05 s fails the verifier at the timeout."""
    hostile.answers[path] = trickle(0.05)
    code, out = verify_in_a_process(hostile.url, mirror, 20.0, "--timeout", "1")
    assert_failed(code, out, "fetch_failed", path)


def test_a_redirect_does_not_take_the_token_to_another_host(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    """A redirect is a failure, never followed: the auditor's token goes to no other
    host. Here the mirror at 127.0.0.1 redirects one tile to a server at `localhost`
    that records what it gets."""
    with HostileTileServer(mirror.files, host="localhost") as elsewhere:
        hostile.answers["tile/0/000.p/3"] = redirect(f"{elsewhere.url}/tile/0/000.p/3")
        code, out = verify(capsys, hostile.url, mirror)
        leaked = [s.headers.get("Authorization") for s in elsewhere.seen]
    assert AUDITOR not in " ".join(str(h) for h in leaked), (code, out, leaked)


def test_a_redirect_loop_fails(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile.answers["lines/000.p/3"] = redirect(f"{hostile.url}/lines/000.p/3")
    code, out = verify(capsys, hostile.url, mirror)
    assert_failed(code, out, "fetch_failed", "lines/000.p/3")


SPOOF = "\x1b[1G\x1b[2KOK: 3 entries verified\x1b[8m"


@pytest.mark.parametrize(
    "answer",
    [
        "an error's reason",
        "a status line",
    ],
)
def test_what_a_server_says_cannot_write_control_characters_to_the_terminal(
    hostile: HostileTileServer,
    mirror: Mirror,
    capsys: pytest.CaptureFixture[str],
    answer: str,
) -> None:
    """What a server says (an error body, a malformed status line) is printed with
    its unprintable characters escaped: `ESC[1G ESC[2K OK: 3 entries verified
    ESC[8m` cannot make the terminal show a clean "OK" over a FAILED line."""
    if answer == "a status line":
        hostile.answers["lines/000.p/3"] = raw(f"{SPOOF}\r\n\r\n".encode())
    else:
        hostile.answers["lines/000.p/3"] = status(500, SPOOF.encode())
    code, out = verify(capsys, hostile.url, mirror)
    assert code == 1, out
    assert CONTROL.search(out.rstrip("\n")) is None, repr(out)


def test_json_output_of_a_failure_is_one_parseable_object(
    hostile: HostileTileServer, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile.answers["lines/000.p/3"] = status(500, SPOOF.encode())
    code, out = verify(capsys, hostile.url, mirror, "-o", "json")
    assert code == 1
    document = json.loads(out)
    assert document["ok"] is False and document["path"] == "lines/000.p/3"

"""The audit log over HTTP(S) as a C2SP tlog-tiles log (`--tiles-listen HOST:PORT`).

Read-only: GET `/checkpoint`, `/tile/<L>/<N>[.p/<W>]`, `/tile/entries/<N>[.p/<W>]`
and agentgw's own `/lines/<N>[.p/<W>]`, answered by `TileFiles` (the files
themselves, and why a partial one agrees with the checkpoint, are explained there),
so that any tlog-tiles client can fetch and verify the log and `agentgw audit verify
--url` can stream it. Like the metrics endpoint (metrics.py) it wants a bearer token
of an auditor or admin principal unless `tiles.public` is set, speaks TLS with the
gateway's certificate when it has one, and refuses a token-protected endpoint in
cleartext off loopback. Full tiles and bundles are immutable and say so (a year of
`Cache-Control`, `public` only when the server is, else `private`: no shared cache
hands a token-protected file on); the checkpoint and partial files are `no-cache`.

The server runs in threads of its own (http_endpoint.py: a bounded pool, socket
timeouts), never on the event loop: each request hands its read to the app's loop
(`run_coroutine_threadsafe`) and waits for it at most ANSWER_SECONDS; http.server
bounds the request line (64 KiB) and the headers (100 lines of 64 KiB).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from clients.transport import is_local
from gateway.api.auth import Authenticator
from gateway.api.http_endpoint import (
    SOCKET_SECONDS,
    BoundedHandler,
    HttpEndpoint,
    bearer_refusal,
)
from gateway.api.tls import CertificateFiles
from gateway.config import Config
from gateway.domain.principals import Role
from gateway.errors import ConfigError, GatewayError, InvalidRequest, StoreUnavailable
from gateway.services.tile_files import TileFiles

log = logging.getLogger("agentgw.tiles")

READER_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
ANSWER_SECONDS = 10.0
# A full file never changes; `public` lets shared caches keep it only when anyone may
# read it: a token-protected one is `private` (RFC 9111 §3.5), never handed on.
IMMUTABLE_PUBLIC = "public, max-age=31536000, immutable"
IMMUTABLE_PRIVATE = "private, max-age=31536000, immutable"
TEXT = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"


class TileServer(HttpEndpoint):
    """The tile files over HTTP(S) (see the module docstring)."""

    def __init__(
        self,
        files: TileFiles,
        listen: str,
        auth: Authenticator | None,
        loop: asyncio.AbstractEventLoop,
        tls: Callable[[], ssl.SSLContext] | None = None,
        answer_seconds: float = ANSWER_SECONDS,
    ) -> None:
        super().__init__(listen, _handler(files, auth, loop, answer_seconds), tls, "agentgw-tiles")


def serve_tiles(
    config: Config, auth: Authenticator, certificates: CertificateFiles | None, files: TileFiles
) -> TileServer:
    """Starts the tile server of `config.tiles` on the running loop; ConfigError if it
    would take tokens in cleartext off loopback, or cannot bind."""
    settings = config.tiles
    listen = settings.listen
    assert listen is not None
    tls = certificates.ssl_context if certificates is not None else None
    if tls is None and not (settings.public or config.insecure or is_local(listen)):
        raise ConfigError(
            f"tiles.listen: refusing to serve the audit log on {listen} without TLS (the "
            "auditor's token would travel in cleartext): give the gateway --tls-cert and "
            "--tls-key, or --insecure, or make it public (tiles.public: true)"
        )
    try:
        server = TileServer(
            files, listen, None if settings.public else auth, asyncio.get_running_loop(), tls
        )
    except OSError as e:
        raise ConfigError(f"tiles.listen: cannot bind {listen}: {e}") from e
    server.start()
    log.info("tile server listening", extra={"listen": listen, "port": server.port})
    return server


def _handler(
    files: TileFiles,
    auth: Authenticator | None,
    loop: asyncio.AbstractEventLoop,
    answer_seconds: float,
) -> type[BaseHTTPRequestHandler]:
    immutable = IMMUTABLE_PUBLIC if auth is None else IMMUTABLE_PRIVATE

    class Handler(BoundedHandler):
        timeout = SOCKET_SECONDS
        server_version = "agentgw-tiles"

        def do_GET(self) -> None:
            refusal = self._refusal()
            if refusal is not None:
                self._answer(*_error(*refusal))
                return
            self._answer(*self._file(self.path.split("?", 1)[0].removeprefix("/")))

        def _file(self, path: str) -> tuple[int, bytes, str, str]:
            """(status, body, content type, cache control) of the answer for `path`."""
            future = asyncio.run_coroutine_threadsafe(files.read(path), loop)
            try:
                found = future.result(answer_seconds)
            except TimeoutError:
                future.cancel()
                return _error(503, f"{path}: reading the audit log timed out")
            except InvalidRequest as e:
                return _error(400, str(e))
            except StoreUnavailable as e:
                return _error(503, str(e))
            except GatewayError as e:
                return _error(500, str(e))
            except Exception:
                log.exception("tile request failed", extra={"category": "error", "path": path})
                return _error(500, f"{path}: internal error")
            if found is None:
                return _error(404, f"{path}: the log has no such file")
            if found.note:
                return 200, found.data, TEXT, "no-cache"
            return 200, found.data, OCTETS, immutable if found.immutable else "no-cache"

        def _refusal(self) -> tuple[int, str] | None:
            forbidden = "the audit log's tiles are for auditor and admin principals"
            return bearer_refusal(auth, self.headers, READER_ROLES, forbidden)

        def _not_allowed(self) -> None:
            self._answer(*_error(405, "the tile server is read-only: GET only"))

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_allowed

        def _answer(self, status: int, body: bytes, kind: str, cache: str) -> None:
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="agentgw tiles"')
            if status == 405:
                self.send_header("Allow", "GET")
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # a request is not worth a log line; refusals are answered

    return Handler


def _error(status: int, reason: str) -> tuple[int, bytes, str, str]:
    """An answer that is not a file: the reason in one line, never cached."""
    return status, (" ".join(reason.split()) + "\n").encode(), TEXT, "no-store"

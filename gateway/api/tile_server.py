"""The audit log over HTTP(S) as a C2SP tlog-tiles log (`--tiles-listen HOST:PORT`).

Read-only: GET `/checkpoint`, `/tile/<L>/<N>[.p/<W>]`, `/tile/entries/<N>[.p/<W>]`
and agentgw's own `/lines/<N>[.p/<W>]`, answered by `TileFiles` (the files
themselves, and why a partial one agrees with the checkpoint, are explained there),
so that any tlog-tiles client can fetch and verify the log and `agentgw audit verify
--url` can stream it. Like the metrics endpoint (metrics.py) it wants a bearer token
of an auditor or admin principal unless `tiles.public` is set, speaks TLS with the
gateway's certificate when it has one, and refuses a token-protected endpoint in
cleartext off loopback. Full tiles and bundles are immutable and say so (a year of
`Cache-Control`); the checkpoint and partial files are `no-cache`.

The server runs in threads of its own, never on the event loop: each request hands
its read to the app's loop (`run_coroutine_threadsafe`) and waits for it at most
ANSWER_SECONDS. A fixed pool of WORKERS threads answers; at most WAITING more
connections wait for one, and any beyond are closed unanswered, so that slow or many
clients cannot take more threads than that. Every socket read or write times out after
SOCKET_SECONDS, and http.server bounds the request line (64 KiB) and the headers (100
lines of 64 KiB).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from gateway.api.auth import Authenticator
from gateway.api.tls import CertificateFiles, is_loopback
from gateway.config import Config
from gateway.domain.principals import Role
from gateway.errors import ConfigError, GatewayError, InvalidRequest, StoreUnavailable
from gateway.services.tile_files import TileFiles

log = logging.getLogger("agentgw.tiles")

READER_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
WORKERS = 8
WAITING = 32
SOCKET_SECONDS = 10.0
ANSWER_SECONDS = 10.0
IMMUTABLE = "public, max-age=31536000, immutable"
TEXT = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"


class TileServer:
    """The tile files over HTTP(S) in threads of its own (see the module docstring)."""

    def __init__(
        self,
        files: TileFiles,
        listen: str,
        auth: Authenticator | None,
        loop: asyncio.AbstractEventLoop,
        tls: Callable[[], ssl.SSLContext] | None = None,
        answer_seconds: float = ANSWER_SECONDS,
    ) -> None:
        host, _, port = listen.rpartition(":")
        handler = _handler(files, auth, loop, answer_seconds)
        self.server = _Server((host.strip("[]"), int(port)), handler, tls)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="agentgw-tiles", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def serve_tiles(
    config: Config, auth: Authenticator, certificates: CertificateFiles | None, files: TileFiles
) -> TileServer:
    """Starts the tile server of `config.tiles` on the running loop; ConfigError if it
    would take tokens in cleartext off loopback, or cannot bind."""
    settings = config.tiles
    listen = settings.listen
    assert listen is not None
    tls = certificates.ssl_context if certificates is not None else None
    if tls is None and not (settings.public or config.insecure or is_loopback(listen)):
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


class _Server(HTTPServer):
    """An HTTPServer whose requests run on a bounded pool (see the module docstring)."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls: Callable[[], ssl.SSLContext] | None,
    ) -> None:
        self.tls = tls
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, "agentgw-tiles")
        self._slots = threading.BoundedSemaphore(WORKERS + WAITING)
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        # As metrics.py: the handshake happens in the worker, at the first read, under
        # the socket timeout; the context is asked for at each connection.
        wrapped = self.tls().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # every worker busy, enough waiting: closed
            return
        try:
            self._pool.submit(self._answer, request, client_address)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._slots.release()
            self.shutdown_request(request)

    def _answer(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away or stalled past the timeout: not worth a traceback.
        log.debug("tile request failed", exc_info=True, extra={"client": str(client_address)})

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=True)


def _handler(
    files: TileFiles,
    auth: Authenticator | None,
    loop: asyncio.AbstractEventLoop,
    answer_seconds: float,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
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
            return 200, found.data, OCTETS, IMMUTABLE if found.immutable else "no-cache"

        def _refusal(self) -> tuple[int, str] | None:
            if auth is None:
                return None
            header = self.headers.get("Authorization")
            metadata = () if header is None else (("authorization", header),)
            try:
                principal = auth.authenticate(metadata)
            except GatewayError as e:
                return 401, str(e)
            if principal.role not in READER_ROLES:
                return 403, "the audit log's tiles are for auditor and admin principals"
            return None

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

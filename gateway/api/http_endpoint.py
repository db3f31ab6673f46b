"""What the gateway's HTTP endpoints share: the metrics (metrics.py) and the tile
server (tile_server.py).

`HttpEndpoint` runs an http.server handler in threads of its own, never on the event
loop: a fixed pool of WORKERS threads answers, at most WAITING more connections wait
for one, and any beyond are closed unanswered, so that slow or many clients cannot
take more threads than that (a handler sets its socket `timeout`). With TLS, each
connection is wrapped with the context asked for at that moment (renewed certificate
files apply at once), and the handshake happens in the worker at its first read,
under the socket timeout: a client that connects and says nothing holds up no one
else; `BoundedHandler` gives a request's head one deadline in all (a client that
trickles it holds a worker no longer). `bearer_refusal` is the one token check of
both: a bearer token of one of the allowed roles, or nothing when the endpoint is
public.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from gateway.api.auth import Authenticator
from gateway.domain.principals import Role
from gateway.errors import GatewayError

log = logging.getLogger("agentgw.http")

WORKERS = 8
WAITING = 32
SOCKET_SECONDS = 10.0  # each socket read or write of a request


class BoundedHandler(BaseHTTPRequestHandler):
    """A handler whose request head (request line and headers, and the TLS handshake
    before them) must arrive within `timeout` seconds in all, not only per read: a
    client trickling it a byte at a time, or idling on a kept-alive connection, is cut
    off (its socket shut down) and frees its worker. Writes keep the per-write timeout."""

    timeout = SOCKET_SECONDS

    def handle_one_request(self) -> None:
        timer = threading.Timer(self.timeout, self._cut_off)
        timer.daemon = True
        self._head_deadline = timer
        timer.start()
        try:
            super().handle_one_request()
        finally:
            timer.cancel()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self._head_deadline.cancel()  # the head is in: the answer has the write timeout
        return parsed

    def _cut_off(self) -> None:
        # The plain socket's shutdown, also under TLS: it wakes the blocked read at once
        # and leaves the TLS object to the thread reading with it.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)


class HttpEndpoint:
    """A handler served on `listen` (HOST:PORT, or [IPv6]:PORT) until `stop`; `port`
    is the bound one."""

    def __init__(
        self,
        listen: str,
        handler: type[BaseHTTPRequestHandler],
        tls: Callable[[], ssl.SSLContext] | None,
        name: str,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.server = _BoundedServer((host.strip("[]"), int(port)), handler, tls, name)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def bearer_refusal(
    auth: Authenticator | None, headers: Message, roles: frozenset[Role], forbidden: str
) -> tuple[int, str] | None:
    """(401, why) or (403, `forbidden`) unless the request's `Authorization` header
    (exactly one) names a principal of one of `roles`; None when it does, or when
    `auth` is None (public)."""
    if auth is None:
        return None
    metadata = [("authorization", value) for value in headers.get_all("Authorization", [])]
    try:
        principal = auth.authenticate(metadata)
    except GatewayError as e:
        return 401, str(e)
    if principal.role not in roles:
        return 403, forbidden
    return None


class _BoundedServer(HTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls: Callable[[], ssl.SSLContext] | None,
        name: str,
    ) -> None:
        self.tls = tls
        if ":" in address[0]:  # an IPv6 address, written [::1]:PORT in `listen`
            self.address_family = socket.AF_INET6
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, name)
        self._slots = threading.BoundedSemaphore(WORKERS + WAITING)
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
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
        log.debug("http request failed", exc_info=True, extra={"client": str(client_address)})

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=True)

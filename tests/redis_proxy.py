"""A TCP proxy to Redis that loses the reply to one script call, and a gateway
behind it: what a dropped connection or a failover does to a call in flight."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, quote, unquote, urlparse

from gateway.config import RedisSettings
from gateway.store.connection import script_text
from gateway.store.embedded import EmbeddedRedis
from tests.harness import RunningGateway


class ReplyDroppingProxy:
    """A TCP proxy to Redis that, once armed for a script, forwards the next call of
    that script but drops the connection instead of forwarding its reply, as a network
    failure or a Redis failover would. redis-py then resends the call on a new
    connection.

    `slow_down` instead delays every reply to one script by a fixed time, as a slow
    link or a busy Redis would, while every other command goes at full speed;
    `hold_replies` holds them until the test lets them go."""

    def __init__(self, upstream: dict[str, object]) -> None:
        self._upstream = upstream
        self._sha = b""
        self.armed = threading.Event()
        self.dropped = 0
        self._slow_sha = b""
        self._delay = 0.0
        self._gate: threading.Event | None = None
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, script: str) -> None:
        """Drop the reply to the next EVALSHA of gateway/store/scripts/<script>.lua."""
        self._sha = script_sha(script)
        self.armed.set()

    def slow_down(self, script: str, seconds: float) -> None:
        """Hold each reply to an EVALSHA of <script>.lua for `seconds` (0: stop)."""
        self._slow_sha, self._delay = script_sha(script), seconds

    def hold_replies(self, script: str) -> threading.Event:
        """Hold each reply to an EVALSHA of <script>.lua (Redis has run it) until the
        returned event is set."""
        self._gate = threading.Event()
        self._slow_sha = script_sha(script)
        return self._gate

    def _connect_upstream(self) -> socket.socket:
        if "path" in self._upstream:
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self._upstream["path"]))
            return upstream
        return socket.create_connection((str(self._upstream["host"]), int(self._upstream["port"])))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = self._connect_upstream()
            self._sockets += [client, upstream]
            doomed, slow = threading.Event(), threading.Event()
            threading.Thread(
                target=self._requests, args=(client, upstream, doomed, slow), daemon=True
            ).start()
            threading.Thread(
                target=self._replies, args=(upstream, client, doomed, slow), daemon=True
            ).start()

    def _requests(
        self,
        client: socket.socket,
        upstream: socket.socket,
        doomed: threading.Event,
        slow: threading.Event,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.armed.is_set() and self._sha in data:
                    self.armed.clear()
                    doomed.set()
                if (self._delay or self._gate) and self._slow_sha in data:
                    slow.set()
                upstream.sendall(data)
        _close(client, upstream)

    def _replies(
        self,
        upstream: socket.socket,
        client: socket.socket,
        doomed: threading.Event,
        slow: threading.Event,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if doomed.is_set():
                    # Redis has run the script (it answered); the client never hears.
                    self.dropped += 1
                    break
                if slow.is_set():
                    # redis-py sends one command at a time per connection: this reply
                    # is the slowed script's. The wait is the simulated link's latency.
                    slow.clear()
                    if self._gate is not None:
                        self._gate.wait(30)
                    else:
                        self._closed.wait(self._delay)
                client.sendall(data)
        _close(client, upstream)

    def close(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._closed.set()
        _close(*self._sockets)


def script_sha(script: str) -> bytes:
    """The SHA-1 that EVALSHA names gateway/store/scripts/<script>.lua by."""
    return hashlib.sha1(script_text(script).encode()).hexdigest().encode()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@contextlib.contextmanager
def lossy_gateway(
    redis_server: EmbeddedRedis, key_prefix: str, make_gateway: Callable[..., RunningGateway]
) -> Iterator[tuple[RunningGateway, ReplyDroppingProxy]]:
    """A gateway whose Redis connections go through a ReplyDroppingProxy."""
    url = urlparse(redis_server.url)
    password = (
        parse_qs(url.query)["password"][0] if url.scheme == "unix" else unquote(url.password or "")
    )
    upstream: dict[str, object] = (
        {"path": unquote(url.path)}
        if url.scheme == "unix"
        else {"host": url.hostname, "port": url.port}
    )
    proxy = ReplyDroppingProxy(upstream)
    try:
        proxied = f"redis://:{quote(password, safe='')}@127.0.0.1:{proxy.port}/0"
        gw = make_gateway(redis=RedisSettings(url=proxied, key_prefix=key_prefix))
        # The first calls load the scripts into Redis (NOSCRIPT, then SCRIPT LOAD);
        # arm the proxy only once they run by their sha.
        gw.agent().submit("search", session_id="warm-up")
        yield gw, proxy
    finally:
        proxy.close()

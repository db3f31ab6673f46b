"""A hostile tlog-tiles server, for probing `agentgw audit verify --url`: a real
http.server on 127.0.0.1 (port 0), in threads of its own, that serves `files` as a
faithful mirror would, except for the paths given an `Answer` of their own (an
error, a redirect, an endless or trickled body, a truncated one, raw bytes, or no
answer at all). It records every request (path and headers) it gets.

Every answer that could go on forever ends when the server stops (`stopping`), or
when the client goes away, so stopping it never waits on a client."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[["HostileHandler"], None]
CUT_OFF = (BrokenPipeError, ConnectionResetError, TimeoutError)


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]


class HostileHandler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10.0  # a client that stops reading cannot hold a thread past this
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        hostile = self.server.hostile
        path = self.path.lstrip("/")
        with hostile.lock:
            hostile.seen.append(Seen(path, dict(self.headers.items())))
        answer = hostile.answers.get(path)
        if answer is not None:
            with contextlib.suppress(*CUT_OFF):  # the client gave up on it
                answer(self)
            return
        data = hostile.files.get(path)
        if data is None:
            self.reply(404, b"no such file\n")
        else:
            self.reply(200, data)

    def reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close joins every handler (each ends on `stopping`)
    hostile: HostileTileServer


class HostileTileServer:
    def __init__(self, files: Mapping[str, bytes] | None = None, host: str = "127.0.0.1") -> None:
        self.files = dict(files or {})
        self.answers: dict[str, Answer] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), HostileHandler)
        self._server.hostile = self
        self.port = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def paths(self) -> list[str]:
        with self.lock:
            return [seen.path for seen in self.seen]

    def __enter__(self) -> HostileTileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# --- answers ------------------------------------------------------------------------


def status(code: int, body: bytes, headers: Mapping[str, str] | None = None) -> Answer:
    def answer(h: HostileHandler) -> None:
        h.reply(code, body, headers)

    return answer


def redirect(location: str) -> Answer:
    return status(302, b"", {"Location": location})


def endless(chunk: bytes = b"0" * 65536) -> Answer:
    """200 and a body without a length, written until the client goes away."""

    def answer(h: HostileHandler) -> None:
        h.send_response(200)
        h.end_headers()
        stopping = h.server.hostile.stopping
        while not stopping.is_set():
            h.wfile.write(chunk)

    return answer


def trickle(every: float, declared: int = 1 << 20) -> Answer:
    """200 with a Content-Length of `declared`, then one byte each `every` seconds
    (waiting on the server's `stopping`): each read of the client gets a byte well
    inside its socket timeout, and the body never ends."""

    def answer(h: HostileHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(declared))
        h.end_headers()
        stopping = h.server.hostile.stopping
        for _ in range(declared):
            h.wfile.write(b"a")
            if stopping.wait(every):
                return

    return answer


def truncated(data: bytes, declared: int) -> Answer:
    """200 with a Content-Length of `declared` but only `data`, then the end."""

    def answer(h: HostileHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(declared))
        h.end_headers()
        h.wfile.write(data)
        h.close_connection = True

    return answer


def raw(data: bytes) -> Answer:
    """`data` as the whole answer, status line included."""

    def answer(h: HostileHandler) -> None:
        h.wfile.write(data)
        h.close_connection = True

    return answer


def silent() -> Answer:
    """No answer at all, until the server stops."""

    def answer(h: HostileHandler) -> None:
        h.server.hostile.stopping.wait(60)

    return answer

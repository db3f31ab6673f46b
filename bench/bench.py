"""The benchmark: the gateway against a bare grpc.aio echo server, same load, one run.

Starts `bench/echo_server.py` and `agentgw serve` (default policy, embedded Redis,
fresh temp config and data dir) as separate processes and, for each concurrency,
drives them in alternating rounds (echo, gateway, echo, gateway, ...) with the same
sequence of `Submit` calls from grpc.aio clients in this process. Each measurement
records decisions/s, p50 and p99 latency, and the CPU time (from /proc) of the
echo server, the gateway, its embedded Redis and this load generator. It prints
each round, then the medians over rounds with the range of the gateway/echo ratio,
the CPU per request, and whether the design targets (docs/design.md, issue 12) are
met on the medians; the offline verify figures come from `verify_bench.measure`.
It measures; it never asserts. See docs/benchmark.md.

    .venv/bin/python bench/bench.py [--requests N | --seconds S] [--rounds N]
                                    [--json] [--json-file FILE] [--no-verify]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import verify_bench  # noqa: E402

AGENT = "bench-agent"
DEFAULT_CONCURRENCIES = (1, 32)
DEFAULT_REQUESTS = {1: 1000, 32: 3000}  # other concurrencies: 100 per worker, at least 1000
DEFAULT_WARMUP = 200
DEFAULT_ROUNDS = 3
# Fewer entries than `make bench-verify` (100 000), so that the whole `make bench`
# stays within a few minutes on 2 cores; enough that the pool's start-up is small
# beside the verify itself.
DEFAULT_VERIFY_ENTRIES = 40_000
# Design targets (docs/design.md; the c=1 latency is issue 12's tighter figure).
TARGET_RATIO_CONCURRENCY = 32
TARGET_RATIO = 0.60
TARGET_ADDED_P50_MS = 0.8
TARGET_VERIFY_RATIO = 0.85
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CALL_TIMEOUT = 30.0
SESSION_LENGTH = 20
LOOPING_SESSION_EVERY = 5
UNUSUAL_SESSION_EVERY = 7
# The bench agent sends hundreds of actions a second: as one busy production agent
# would be configured, its own limits are off, but exports are limited per type.
BENCH_DETECTION = (
    "detection:\n"
    "  rates:\n"
    "    actions_per_minute: 0\n"
    "    session_actions_per_minute: 0\n"
    "    request_bytes_per_minute: 0\n"
    "    action_types:\n"
    "      export_data: 600\n"
)
ECHO_SERVER = Path(__file__).with_name("echo_server.py")
TARGETS = ("echo", "gateway")  # the order within a round


class BenchmarkError(Exception):
    """A server did not start, or the run could not be completed."""


# --- the request mix --------------------------------------------------------------

# One action: (action_type, resource, parameters).
Spec = tuple[str, str, dict[str, Any]]


def benign_action(rng: random.Random) -> Spec:
    n = rng.randrange(10_000)
    kind = rng.choice(("search", "read_file", "read_file", "list_directory", "fetch_url"))
    if kind == "search":
        return kind, "", {"query": f"quarterly report {n}", "limit": rng.choice((5, 10, 20))}
    if kind == "read_file":
        path = f"/srv/data/project-{n % 50}/file-{n}.txt"
        return kind, path, {"path": path, "offset": rng.randrange(0, 65_536, 512), "length": 4096}
    if kind == "list_directory":
        path = f"/srv/data/project-{n % 50}"
        return kind, path, {"path": path, "recursive": rng.random() < 0.2}
    url = f"https://docs.example.com/page/{n}"
    return kind, url, {"url": url, "timeout_seconds": 10}


def suspicious_action(rng: random.Random) -> Spec:
    n = rng.randrange(10_000)
    if rng.random() < 0.5:
        to = f"customer-{n}@example.com"
        # Renamed spellings too: the suspicious-action detector holds them all.
        kind = rng.choice(("send_email", "sendEmail", "mail.SendEmail"))
        return kind, to, {"to": to, "subject": f"Invoice {n}", "body": "Please find..."}
    path = f"/srv/data/project-{n % 50}/file-{n}.txt"
    return rng.choice(("delete_file", "fs.deleteFile")), path, {"path": path}


def unusual_action(rng: random.Random) -> Spec:
    """What the agent does not usually do: its profile flags the session, and
    `export_data` has a per-type rate limit (BENCH_DETECTION) that refuses some."""
    n = rng.randrange(10_000)
    if rng.random() < 0.5:
        return "export_data", f"db://reports/{n}", {"table": f"reports_{n % 7}", "rows": n}
    return "upload_file", f"s3://bucket/{n}", {"key": f"upload-{n}", "size": n * 10}


@functools.lru_cache(maxsize=4096)
def session_plan(seed: int, session: int) -> tuple[Spec, ...]:
    """The actions of one session, a pure function of (seed, session).

    Ordinary sessions: 14 benign, 4 suspicious (held by the default policy and the
    suspicious-action detector, some under renamed spellings) and 2 retries of the
    action just before. Every LOOPING_SESSION_EVERY-th session ends in five
    identical actions, so loop detection holds and pauses it on the last one.
    Every UNUSUAL_SESSION_EVERY-th session is mostly exports and uploads, unlike
    the agent's profile (profile_deviation), some refused by a rate limit. Every
    request also runs the rate windows and the learned baselines (the bench agent
    is far above the prior of 5 actions a minute: statistical_anomaly).
    """
    rng = random.Random(seed * 1_000_003 + session)
    if session % UNUSUAL_SESSION_EVERY == UNUSUAL_SESSION_EVERY - 1:
        kinds = ["unusual"] * 16 + ["benign"] * 4
        rng.shuffle(kinds)
    elif session % LOOPING_SESSION_EVERY == LOOPING_SESSION_EVERY - 1:
        kinds = ["benign"] * 12 + ["suspicious"] * 3
        rng.shuffle(kinds)
        kinds += ["benign"] + ["repeat"] * 4
    else:
        kinds = ["benign"] * 14 + ["suspicious"] * 4 + ["repeat"] * 2
        rng.shuffle(kinds)
        if kinds[0] == "repeat":  # a retry needs an action before it
            first = kinds.index("benign")
            kinds[0], kinds[first] = kinds[first], kinds[0]
    plan: list[Spec] = []
    for kind in kinds:
        if kind == "repeat":
            plan.append(plan[-1])
        elif kind == "benign":
            plan.append(benign_action(rng))
        elif kind == "unusual":
            plan.append(unusual_action(rng))
        else:
            plan.append(suspicious_action(rng))
    return tuple(plan)


SUSPICIOUS_TYPES = ("send_email", "sendEmail", "mail.SendEmail", "delete_file", "fs.deleteFile")


def kind_of(action_type: str) -> str:
    if action_type in SUSPICIOUS_TYPES:
        return "suspicious"
    return "unusual" if action_type in ("export_data", "upload_file") else "benign"


@dataclass(frozen=True)
class RequestMix:
    """Request i of a phase is a pure function of (seed, phase, i): same for every target."""

    seed: int

    def request(self, phase: str, index: int) -> gateway_pb2.ActionRequest:
        session, position = divmod(index, SESSION_LENGTH)
        action_type, resource, parameters = session_plan(self.seed, session)[position]
        request = gateway_pb2.ActionRequest(
            action_id=f"{phase}-a{index:07d}",
            agent_id=AGENT,
            session_id=f"{phase}-s{session:05d}",
            action_type=action_type,
            resource=resource,
        )
        request.parameters.update(parameters)
        return request

    def composition(self, count: int) -> dict[str, int]:
        """How many of the first `count` requests are benign, suspicious, repeated."""
        counts: Counter[str] = Counter()
        for index in range(count):
            session, position = divmod(index, SESSION_LENGTH)
            plan = session_plan(self.seed, session)
            if position > 0 and plan[position] is plan[position - 1]:
                counts["repeated"] += 1
            else:
                counts[kind_of(plan[position][0])] += 1
        return {k: counts[k] for k in ("benign", "suspicious", "unusual", "repeated")}


# --- the servers ------------------------------------------------------------------


@dataclass
class ServerProcess:
    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then wait; SIGKILL only if it does not stop in `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(name: str, command: Sequence[str], address: str, workdir: Path) -> ServerProcess:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    return ServerProcess(name, address, process, log_path)


def start_echo(workdir: Path) -> ServerProcess:
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, str(ECHO_SERVER), "--listen", address]
    return spawn("echo", command, address, workdir)


def agentgw_command() -> list[str]:
    beside_python = Path(sys.executable).with_name("agentgw")
    found = str(beside_python) if beside_python.exists() else shutil.which("agentgw")
    if found is None:
        raise BenchmarkError("the `agentgw` command is not installed (run `make run` once)")
    return [found]


def start_gateway(workdir: Path, token: str) -> ServerProcess:
    config = workdir / "agentgw.yaml"
    config.write_text(
        "principals:\n"
        f"  - name: {AGENT}\n"
        "    role: agent\n"
        f"    token_sha256: {hashlib.sha256(token.encode()).hexdigest()}\n" + BENCH_DETECTION
    )
    address = f"127.0.0.1:{free_port()}"
    command = [
        *agentgw_command(),
        "serve",
        "--config",
        str(config),
        "--listen",
        address,
        "--data-dir",
        str(workdir / "gateway-data"),
    ]
    return spawn("gateway", command, address, workdir)


async def wait_until_serving(server: ServerProcess, timeout: float = READY_TIMEOUT) -> None:
    """Polls grpc.health.v1 Check until SERVING; fails if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            returncode = server.process.poll()
            if returncode is not None:
                raise BenchmarkError(
                    f"{server.name} exited with status {returncode} during startup:\n"
                    + server.log_tail()
                )
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"{server.name} was not SERVING on {server.address} after {timeout:.0f} s:\n"
                    + server.log_tail()
                )
            await asyncio.sleep(0.1)


def redis_version(gateway: ServerProcess) -> str:
    """'valkey-server 8.1.1', from the gateway's 'embedded redis started' log line."""
    with contextlib.suppress(OSError):
        for line in gateway.log_path.read_text(errors="replace").splitlines():
            if '"embedded redis started"' not in line:
                continue
            with contextlib.suppress(ValueError):
                data = json.loads(line).get("data", {})
                return f"{Path(data.get('binary', 'redis')).name} {data.get('version', '?')}"
    return "unknown"


# --- CPU time, from /proc -----------------------------------------------------------


def clock_ticks_per_second() -> int | None:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):  # no sysconf, or no such name: not Linux
        return None


CLOCK_TICKS = clock_ticks_per_second()


def read_stat(pid: int) -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of /proc/<pid>/stat; None without /proc or process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it runs from the first "(" to the last ")".
    close = stat.rindex(")")
    return stat[stat.index("(") + 1 : close], stat[close + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads, in seconds."""
    stat = read_stat(pid)
    if stat is None or not CLOCK_TICKS:
        return None
    fields = stat[1]  # fields[0] is field 3 (state) of proc(5): utime is 14, stime 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def find_redis(gateway_pid: int) -> int | None:
    """The pid of the gateway's embedded redis-server/valkey-server: its child process."""
    try:
        entries = [e.name for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return None
    for name in entries:
        stat = read_stat(int(name))
        if stat is None:
            continue
        comm, fields = stat
        if int(fields[1]) == gateway_pid and ("redis" in comm or "valkey" in comm):
            return int(name)
    return None


@dataclass(frozen=True)
class CpuProbe:
    """The processes whose CPU time each measurement reads, by role: `load` is this
    process (the grpc.aio clients), the others are the servers. A pid of None (not
    found, or not Linux) reads as None."""

    pids: dict[str, int | None]

    def read(self) -> dict[str, float | None]:
        return {role: None if pid is None else cpu_seconds(pid) for role, pid in self.pids.items()}


def cpu_used(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, float | None]:
    used: dict[str, float | None] = {}
    for role, start in before.items():
        end = after.get(role)
        used[role] = None if start is None or end is None else end - start
    return used


# --- the driver -------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    target: str
    concurrency: int
    round: int
    channels: int
    requests: int  # calls that returned a Decision
    errors: dict[str, int]  # gRPC status code name -> count
    seconds: float
    decisions_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    verdicts: dict[str, int]
    # CPU seconds each process used while the clock ran, by CpuProbe role (None: n/a).
    cpu_seconds: dict[str, float | None] = field(default_factory=dict)

    def cpu_us_per_request(self, role: str) -> float | None:
        used = self.cpu_seconds.get(role)
        calls = self.requests + sum(self.errors.values())
        return None if used is None or calls == 0 else used * 1e6 / calls


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def drive(
    target: str,
    address: str,
    token: str,
    request_at: Callable[[int], gateway_pb2.ActionRequest],
    *,
    concurrency: int,
    channels: int,
    count: int | None = None,
    seconds: float | None = None,
    round_number: int = 0,
    cpu: CpuProbe | None = None,
) -> Measurement:
    """`concurrency` workers share `channels` channels and submit requests 0, 1, 2, ...

    With `count`, the requests are built before the clock starts; with `seconds`,
    each worker builds its next request itself (the same cost for every target).
    `cpu` is read when the clock starts and when it stops.
    """
    if (count is None) == (seconds is None):
        raise ValueError("drive: give exactly one of count and seconds")
    prebuilt = [request_at(i) for i in range(count)] if count is not None else None
    metadata = (("authorization", f"Bearer {token}"),)
    open_channels = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    latencies: list[float] = []
    verdicts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    next_index = 0
    try:
        for channel in open_channels:
            await asyncio.wait_for(channel.channel_ready(), READY_TIMEOUT)
        stubs = [gateway_pb2_grpc.GatewayStub(channel) for channel in open_channels]
        deadline = math.inf

        async def worker(number: int) -> None:
            nonlocal next_index
            submit = stubs[number % channels].Submit
            while True:
                index = next_index
                if prebuilt is not None:
                    if index >= len(prebuilt):
                        return
                    request = prebuilt[index]
                elif time.perf_counter() >= deadline:
                    return
                else:
                    request = request_at(index)
                next_index = index + 1
                started = time.perf_counter()
                try:
                    decision = await submit(request, metadata=metadata, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as e:
                    errors[e.code().name] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                verdicts[gateway_pb2.Verdict.Name(decision.verdict).removeprefix("VERDICT_")] += 1

        cpu_before = cpu.read() if cpu is not None else {}
        started = time.perf_counter()
        if seconds is not None:
            deadline = started + seconds
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu_after = cpu.read() if cpu is not None else {}
    finally:
        for channel in open_channels:
            await channel.close()
    latencies.sort()
    return Measurement(
        target=target,
        concurrency=concurrency,
        round=round_number,
        channels=channels,
        requests=len(latencies),
        errors=dict(errors),
        seconds=elapsed,
        decisions_per_s=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_ms=(sum(latencies) / len(latencies) * 1000) if latencies else math.nan,
        verdicts=dict(sorted(verdicts.items())),
        cpu_seconds=cpu_used(cpu_before, cpu_after),
    )


# --- the run ----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCIES
    requests: int | None = None  # None: DEFAULT_REQUESTS per concurrency
    seconds: float | None = None  # time-based instead of count-based
    warmup: int = DEFAULT_WARMUP
    channels: int = 1
    seed: int = 1
    rounds: int = DEFAULT_ROUNDS

    def count_for(self, concurrency: int) -> int:
        if self.requests is not None:
            return self.requests
        return DEFAULT_REQUESTS.get(concurrency, max(1000, 100 * concurrency))


@dataclass(frozen=True)
class Round:
    """One echo measurement and the gateway measurement right after it."""

    concurrency: int
    number: int
    echo: Measurement
    gateway: Measurement

    @property
    def ratio(self) -> float:
        """Gateway decisions/s over echo's, in this round."""
        if not self.echo.decisions_per_s:
            return math.nan
        return self.gateway.decisions_per_s / self.echo.decisions_per_s

    @property
    def added_p50_ms(self) -> float:
        return self.gateway.p50_ms - self.echo.p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.gateway.p99_ms - self.echo.p99_ms


# CPU per request, by the role it is reported under: (target measured, CpuProbe role).
# `load` is this process while it drives the gateway; `load_echo`, while it drives echo.
CPU_REPORTED = {
    "gateway": ("gateway", "gateway"),
    "redis": ("gateway", "redis"),
    "echo": ("echo", "echo"),
    "load": ("gateway", "load"),
    "load_echo": ("echo", "load"),
}


@dataclass(frozen=True)
class Summary:
    """One concurrency over its rounds: medians, and the range of the ratio."""

    concurrency: int
    rounds: int
    echo_rps: float
    gateway_rps: float
    ratio: float  # median of the rounds' gateway/echo ratios
    ratio_min: float
    ratio_max: float
    ratios: list[float]  # per round, in order
    added_p50_ms: float  # median of the rounds' gateway p50 - echo p50
    added_p99_ms: float
    cpu_us_per_request: dict[str, float | None]  # median over rounds; None: n/a


@dataclass(frozen=True)
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    mix: dict[str, int]
    results: list[Measurement]  # in the order they were measured
    summaries: list[Summary] = field(default_factory=list)
    verify: dict[str, Any] | None = None  # verify_bench.measure's figures


def pair_rounds(results: Sequence[Measurement]) -> list[Round]:
    by_key = {(m.target, m.concurrency, m.round): m for m in results}
    rounds = []
    for concurrency, number in sorted({(m.concurrency, m.round) for m in results}):
        echo = by_key.get(("echo", concurrency, number))
        gateway = by_key.get(("gateway", concurrency, number))
        if echo is not None and gateway is not None:
            rounds.append(Round(concurrency, number, echo, gateway))
    return rounds


def median_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(known) if known else None


def summarize(rounds: Sequence[Round]) -> list[Summary]:
    summaries = []
    for concurrency in sorted({r.concurrency for r in rounds}):
        these = [r for r in rounds if r.concurrency == concurrency]
        ratios = [r.ratio for r in these]
        known = [x for x in ratios if not math.isnan(x)] or [math.nan]
        cpu = {}
        for name, (target, role) in CPU_REPORTED.items():
            measured = [r.echo if target == "echo" else r.gateway for r in these]
            cpu[name] = median_or_none([m.cpu_us_per_request(role) for m in measured])
        summaries.append(
            Summary(
                concurrency=concurrency,
                rounds=len(these),
                echo_rps=statistics.median(r.echo.decisions_per_s for r in these),
                gateway_rps=statistics.median(r.gateway.decisions_per_s for r in these),
                ratio=statistics.median(known),
                ratio_min=min(known),
                ratio_max=max(known),
                ratios=ratios,
                added_p50_ms=statistics.median(r.added_p50_ms for r in these),
                added_p99_ms=statistics.median(r.added_p99_ms for r in these),
                cpu_us_per_request=cpu,
            )
        )
    return summaries


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
    }


async def run_benchmark(
    settings: Settings, progress: Callable[[str], None] = lambda _: None
) -> Report:
    """Starts both servers, measures every (concurrency, round, target), stops them,
    cleans up. Within a concurrency the targets alternate: echo, gateway, echo, ..."""
    token = secrets.token_urlsafe(24)
    mix = RequestMix(settings.seed)
    results: list[Measurement] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentgw-bench-")))
        servers: dict[str, ServerProcess] = {}
        for name, start in (("echo", start_echo), ("gateway", lambda d: start_gateway(d, token))):
            servers[name] = start(workdir)
            stack.callback(servers[name].stop)  # LIFO: processes stop before the dir goes
        await asyncio.gather(*(wait_until_serving(s) for s in servers.values()))
        machine = machine_info() | {"redis_server": redis_version(servers["gateway"])}
        gateway_pid = servers["gateway"].process.pid
        cpu = CpuProbe(
            {
                "gateway": gateway_pid,
                "redis": find_redis(gateway_pid),
                "echo": servers["echo"].process.pid,
                "load": os.getpid(),
            }
        )
        machine["cpu_pids"] = cpu.pids
        progress(
            f"servers ready: echo {servers['echo'].address}, gateway "
            f"{servers['gateway'].address} ({machine['redis_server']})"
        )

        for concurrency in settings.concurrencies:
            count = None if settings.seconds is not None else settings.count_for(concurrency)
            for number in range(1, settings.rounds + 1):
                # Fresh action and session ids every round: the gateway must decide each
                # request anew, not answer it from its idempotency records.
                phase = f"c{concurrency}-r{number}"
                for target in TARGETS:
                    server = servers[target]
                    if settings.warmup:
                        await drive(
                            target,
                            server.address,
                            token,
                            functools.partial(mix.request, f"warm-{phase}"),
                            concurrency=concurrency,
                            channels=settings.channels,
                            count=settings.warmup,
                        )
                    measurement = await drive(
                        target,
                        server.address,
                        token,
                        functools.partial(mix.request, phase),
                        concurrency=concurrency,
                        channels=settings.channels,
                        count=count,
                        seconds=settings.seconds,
                        round_number=number,
                        cpu=cpu,
                    )
                    results.append(measurement)
                    progress(
                        f"c={concurrency:<3} round {number}/{settings.rounds} {target:<8} "
                        f"{measurement.requests} decisions in {measurement.seconds:.2f} s"
                    )
                    if server.process.poll() is not None:
                        raise BenchmarkError(
                            f"{target} exited during the run:\n" + server.log_tail()
                        )
        largest = max(m.requests + sum(m.errors.values()) for m in results)
    return Report(
        machine=machine,
        settings=asdict(settings),
        mix=mix.composition(largest),
        results=results,
        summaries=summarize(pair_rounds(results)),
    )


def run_verify(
    entries: int, seconds: float, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """verify_bench's figures with one worker per CPU, as `make bench-verify` measures."""
    return verify_bench.measure(
        entries, os.cpu_count() or 1, seconds=seconds, progress=lambda s: progress(f"verify: {s}")
    )


# --- output -----------------------------------------------------------------------


def number(value: float | None, digits: int) -> float | None:
    """A figure for the JSON line: rounded, and null where it is unknown or not finite."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def summary_line(report: Report) -> dict[str, Any]:
    """The `--json` line: per concurrency `c<N>`, then `verify` (null if skipped)."""
    line: dict[str, Any] = {}
    for s in report.summaries:
        line[f"c{s.concurrency}"] = {
            "echo_rps": number(s.echo_rps, 1),
            "gateway_rps": number(s.gateway_rps, 1),
            "ratio": number(s.ratio, 4),
            "ratio_min": number(s.ratio_min, 4),
            "ratio_max": number(s.ratio_max, 4),
            "added_p50_ms": number(s.added_p50_ms, 3),
            "added_p99_ms": number(s.added_p99_ms, 3),
            "rounds": s.rounds,
            "ratios": [number(x, 4) for x in s.ratios],
            "cpu_us_per_request": {k: number(v, 1) for k, v in s.cpu_us_per_request.items()},
        }
    v = report.verify
    line["verify"] = (
        None
        if v is None
        else {
            "raw_per_core": v["raw_verifies_per_s_one_core"],
            "workers_1_ratio": v["ratio_1_worker_vs_raw_one_core"],
            "workers_n_ratio": v["ratio_n_workers_vs_raw_times_cores"],
            "workers": v["workers"],
            "entries": v["entries"],
        }
    )
    return line


def microseconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def format_rounds(report: Report, summary: Summary) -> list[str]:
    rounds = [r for r in pair_rounds(report.results) if r.concurrency == summary.concurrency]
    lines = [
        f"c={summary.concurrency}: {summary.rounds} rounds, echo and gateway alternating",
        f"{'round':>5} {'target':<8} {'requests':>8} {'errors':>6} {'decisions/s':>11} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'cpu us/req: server':>18} {'redis':>5} {'load':>5}  "
        "verdicts",
    ]
    for r in rounds:
        for m in (r.echo, r.gateway):
            server, redis = m.cpu_us_per_request(m.target), "-"
            if m.target == "gateway":
                redis = microseconds(m.cpu_us_per_request("redis"))
            verdicts = " ".join(f"{k.lower()}={v}" for k, v in m.verdicts.items())
            lines.append(
                f"{r.number:>5} {m.target:<8} {m.requests:>8} {sum(m.errors.values()):>6} "
                f"{m.decisions_per_s:>11.0f} {m.p50_ms:>7.3f} {m.p99_ms:>7.3f} "
                f"{microseconds(server):>18} {redis:>5} "
                f"{microseconds(m.cpu_us_per_request('load')):>5}  {verdicts}"
            )
        lines.append(
            f"{'':>5} gateway/echo {r.ratio:.3f}, added p50 {r.added_p50_ms:+.3f} ms, "
            f"p99 {r.added_p99_ms:+.3f} ms"
        )
    cpu = summary.cpu_us_per_request
    lines += [
        f"median of {summary.rounds}: echo {summary.echo_rps:.0f}/s, gateway "
        f"{summary.gateway_rps:.0f}/s, gateway/echo {summary.ratio:.3f} (range "
        f"{summary.ratio_min:.3f}-{summary.ratio_max:.3f}), added p50 "
        f"{summary.added_p50_ms:+.3f} ms, p99 {summary.added_p99_ms:+.3f} ms",
        f"cpu per request (us, median of rounds): gateway {microseconds(cpu['gateway'])} "
        f"+ redis {microseconds(cpu['redis'])}, echo {microseconds(cpu['echo'])}; "
        f"load generator {microseconds(cpu['load'])} driving the gateway, "
        f"{microseconds(cpu['load_echo'])} driving echo",
    ]
    return lines


def format_targets(report: Report) -> list[str]:
    by_concurrency = {s.concurrency: s for s in report.summaries}
    rounds = pair_rounds(report.results)
    lines = ["design targets (docs/design.md; c=1 latency per issue 12), judged on medians:"]
    c = TARGET_RATIO_CONCURRENCY
    s = by_concurrency.get(c)
    if s is None:
        lines.append(f"  c={c}: gateway/echo >= {TARGET_RATIO:.2f}: not measured (c={c} not run)")
    else:
        hits = sum(r.ratio >= TARGET_RATIO for r in rounds if r.concurrency == c)
        lines.append(
            f"  c={c}: gateway/echo >= {TARGET_RATIO:.2f}: {s.ratio:.3f} "
            f"(range {s.ratio_min:.3f}-{s.ratio_max:.3f}, {hits} of {s.rounds} rounds): "
            + met(s.ratio >= TARGET_RATIO)
        )
    s = by_concurrency.get(1)
    if s is None:
        lines.append(f"  c=1: added p50 <= {TARGET_ADDED_P50_MS} ms: not measured (c=1 not run)")
    else:
        hits = sum(r.added_p50_ms <= TARGET_ADDED_P50_MS for r in rounds if r.concurrency == 1)
        lines.append(
            f"  c=1: added p50 <= {TARGET_ADDED_P50_MS} ms: {s.added_p50_ms:+.3f} ms "
            f"({hits} of {s.rounds} rounds): " + met(s.added_p50_ms <= TARGET_ADDED_P50_MS)
        )
    v = report.verify
    if v is None:
        lines.append(f"  verify >= {TARGET_VERIFY_RATIO:.2f} of raw x cores: not measured")
    else:
        ratio = v["ratio_n_workers_vs_raw_times_cores"]
        lines.append(
            f"  verify, {v['workers']} workers >= {TARGET_VERIFY_RATIO:.2f} of raw x "
            f"{v['workers']} cores: {ratio:.3f}: " + met(ratio >= TARGET_VERIFY_RATIO)
        )
    return lines


def format_report(report: Report) -> str:
    m = report.machine
    lines = [
        f"machine: {m['cpu_count']} CPUs, {m['implementation']} {m['python']}, "
        f"grpcio {m['grpcio']}, {m['redis_server']} (embedded), {m['platform']}",
        f"channels per client: {report.settings['channels']}; "
        f"request mix (largest measurement): "
        + ", ".join(f"{v} {k}" for k, v in report.mix.items()),
    ]
    for summary in report.summaries:
        lines += ["", *format_rounds(report, summary)]
    if report.verify is not None:
        v = report.verify
        lines += [
            "",
            f"verify ({v['entries']} entries): raw Ed25519 "
            f"{v['raw_verifies_per_s_one_core']}/s per core; audit verify 1 worker "
            f"{v['verify_entries_per_s_1_worker']}/s ({v['ratio_1_worker_vs_raw_one_core']:.3f}"
            f" of raw), {v['workers']} workers {v['verify_entries_per_s_n_workers']}/s "
            f"({v['ratio_n_workers_vs_raw_times_cores']:.3f} of raw x {v['workers']})",
        ]
    lines += ["", *format_targets(report)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Options:
    settings: Settings
    json_line: bool
    json_file: Path | None
    verify: bool
    verify_entries: int
    verify_seconds: float


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--requests",
        type=int,
        help="requests per measurement (default: 1000 at c=1, 3000 at c=32)",
    )
    size.add_argument("--seconds", type=float, help="run each measurement for this long instead")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=list(DEFAULT_CONCURRENCIES),
        help="concurrent workers (default: 1 32)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"echo/gateway rounds per concurrency (default: {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--channels", type=int, default=1, help="gRPC channels the workers share (default: 1)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help=f"unmeasured requests before each measurement (default: {DEFAULT_WARMUP})",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument(
        "--json", action="store_true", help="end stdout with one line: the summary as JSON"
    )
    parser.add_argument("--json-file", type=Path, help="also write the full results to this file")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the offline verify benchmark"
    )
    parser.add_argument(
        "--verify-entries",
        type=int,
        default=DEFAULT_VERIFY_ENTRIES,
        help=f"entries in the verify benchmark's export (default: {DEFAULT_VERIFY_ENTRIES})",
    )
    parser.add_argument(
        "--verify-seconds",
        type=float,
        default=verify_bench.DEFAULT_SECONDS,
        help=f"length of each raw Ed25519 loop (default: {verify_bench.DEFAULT_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.channels < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--concurrency, --channels and --rounds must be >= 1, --warmup >= 0")
    if (args.requests is not None and args.requests < 1) or (
        args.seconds is not None and args.seconds <= 0
    ):
        parser.error("--requests and --seconds must be positive")
    if args.verify_entries < 1 or args.verify_seconds <= 0:
        parser.error("--verify-entries and --verify-seconds must be positive")
    settings = Settings(
        concurrencies=tuple(args.concurrency),
        requests=args.requests,
        seconds=args.seconds,
        warmup=args.warmup,
        channels=args.channels,
        seed=args.seed,
        rounds=args.rounds,
    )
    return Options(
        settings=settings,
        json_line=args.json,
        json_file=args.json_file,
        verify=not args.no_verify,
        verify_entries=args.verify_entries,
        verify_seconds=args.verify_seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # Verify first: its pool may fork, which is safe only before this process has
    # gRPC threads (the CLI checks for Python threads, not gRPC's).
    verify = None
    if options.verify:
        verify = run_verify(options.verify_entries, options.verify_seconds, progress)
    try:
        report = asyncio.run(run_benchmark(options.settings, progress=progress))
    except BenchmarkError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    report = replace(report, verify=verify)
    print(format_report(report))
    if options.json_file is not None:
        full = asdict(report) | {"summary": summary_line(report)}
        options.json_file.write_text(json.dumps(full, indent=2) + "\n")
    if options.json_line:
        print(json.dumps(summary_line(report), separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

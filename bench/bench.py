"""The benchmark: the gateway against a bare grpc.aio echo server, same load, one run.

Starts `bench/echo_server.py` and `agentgw serve` (default policy, embedded Redis,
fresh temp config and data dir) as separate processes, drives each with the same
sequence of `Submit` calls from grpc.aio clients in this process, and prints
decisions/s, p50 and p99 latency per target and concurrency, then the ratios that
the design targets (docs/design.md) are about. It measures; it never asserts. See
docs/benchmark.md.

    .venv/bin/python bench/bench.py [--requests N | --seconds S] [--json FILE]
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
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc

AGENT = "bench-agent"
DEFAULT_CONCURRENCIES = (1, 32)
DEFAULT_REQUESTS = {1: 1000, 32: 3000}  # other concurrencies: 100 per worker, at least 1000
DEFAULT_WARMUP = 200
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
TARGETS = ("echo", "gateway")


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
        """SIGTERM, then wait; SIGKILL only if it does not stop in STOP_TIMEOUT."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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


# --- the driver -------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    target: str
    concurrency: int
    channels: int
    requests: int  # calls that returned a Decision
    errors: dict[str, int]  # gRPC status code name -> count
    seconds: float
    decisions_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    verdicts: dict[str, int]


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
) -> Measurement:
    """`concurrency` workers share `channels` channels and submit requests 0, 1, 2, ...

    With `count`, the requests are built before the clock starts; with `seconds`,
    each worker builds its next request itself (the same cost for every target).
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

        started = time.perf_counter()
        if seconds is not None:
            deadline = started + seconds
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        for channel in open_channels:
            await channel.close()
    latencies.sort()
    return Measurement(
        target=target,
        concurrency=concurrency,
        channels=channels,
        requests=len(latencies),
        errors=dict(errors),
        seconds=elapsed,
        decisions_per_s=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_ms=(sum(latencies) / len(latencies) * 1000) if latencies else math.nan,
        verdicts=dict(sorted(verdicts.items())),
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

    def count_for(self, concurrency: int) -> int:
        if self.requests is not None:
            return self.requests
        return DEFAULT_REQUESTS.get(concurrency, max(1000, 100 * concurrency))


@dataclass(frozen=True)
class Comparison:
    concurrency: int
    throughput_pct: float  # gateway decisions/s as a percentage of echo's
    added_p50_ms: float  # gateway p50 - echo p50
    added_p99_ms: float


@dataclass(frozen=True)
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    mix: dict[str, int]
    results: list[Measurement]
    comparisons: list[Comparison] = field(default_factory=list)


def compare(results: Sequence[Measurement]) -> list[Comparison]:
    by_key = {(m.target, m.concurrency): m for m in results}
    out = []
    for concurrency in sorted({m.concurrency for m in results}):
        echo, gateway = by_key.get(("echo", concurrency)), by_key.get(("gateway", concurrency))
        if echo is None or gateway is None:
            continue
        out.append(
            Comparison(
                concurrency=concurrency,
                throughput_pct=100 * gateway.decisions_per_s / echo.decisions_per_s
                if echo.decisions_per_s
                else math.nan,
                added_p50_ms=gateway.p50_ms - echo.p50_ms,
                added_p99_ms=gateway.p99_ms - echo.p99_ms,
            )
        )
    return out


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
    """Starts both servers, measures every (concurrency, target), stops them, cleans up."""
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
        progress(
            f"servers ready: echo {servers['echo'].address}, gateway "
            f"{servers['gateway'].address} ({machine['redis_server']})"
        )

        for concurrency in settings.concurrencies:
            count = None if settings.seconds is not None else settings.count_for(concurrency)
            phase = f"c{concurrency}"
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
                )
                results.append(measurement)
                progress(
                    f"{target:<8} c={concurrency:<3} {measurement.requests} decisions in "
                    f"{measurement.seconds:.2f} s"
                )
                if server.process.poll() is not None:
                    raise BenchmarkError(f"{target} exited during the run:\n" + server.log_tail())
        largest = max(m.requests + sum(m.errors.values()) for m in results)
    return Report(
        machine=machine,
        settings=asdict(settings),
        mix=mix.composition(largest),
        results=results,
        comparisons=compare(results),
    )


# --- output -----------------------------------------------------------------------


def format_report(report: Report) -> str:
    m = report.machine
    lines = [
        f"machine: {m['cpu_count']} CPUs, {m['implementation']} {m['python']}, "
        f"grpcio {m['grpcio']}, {m['redis_server']} (embedded), {m['platform']}",
        f"channels per client: {report.settings['channels']}; "
        f"request mix (largest run): " + ", ".join(f"{v} {k}" for k, v in report.mix.items()),
        "",
        f"{'target':<8} {'conc':>4} {'requests':>8} {'errors':>6} {'decisions/s':>11} "
        f"{'p50 ms':>7} {'p99 ms':>7}  verdicts",
    ]
    for r in report.results:
        verdicts = " ".join(f"{k.lower()}={v}" for k, v in r.verdicts.items())
        lines.append(
            f"{r.target:<8} {r.concurrency:>4} {r.requests:>8} {sum(r.errors.values()):>6} "
            f"{r.decisions_per_s:>11.0f} {r.p50_ms:>7.3f} {r.p99_ms:>7.3f}  {verdicts}"
        )
    lines += [
        "",
        f"{'conc':>4} {'gateway/echo throughput':>23} {'added p50 ms':>12} {'added p99 ms':>12}",
    ]
    for c in report.comparisons:
        lines.append(
            f"{c.concurrency:>4} {c.throughput_pct:>21.1f} % {c.added_p50_ms:>+12.3f} "
            f"{c.added_p99_ms:>+12.3f}"
        )
    lines += ["", "design targets (docs/design.md):"]
    for c in report.comparisons:
        met = "met" if c.throughput_pct >= 60 else "NOT met"
        lines.append(f"  c={c.concurrency}: throughput >= 60 % of echo: {met}")
    for c in report.comparisons:
        if c.concurrency == 1:
            met = "met" if c.added_p50_ms <= 1.0 else "NOT met"
            lines.append(f"  c=1: added p50 <= 1 ms: {met}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--requests",
        type=int,
        help="requests per target and concurrency (default: 1000 at c=1, 3000 at c=32)",
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
        "--channels", type=int, default=1, help="gRPC channels the workers share (default: 1)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help="unmeasured requests before each measurement (default: 200)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.channels < 1 or args.warmup < 0:
        parser.error("--concurrency and --channels must be >= 1, --warmup >= 0")
    if (args.requests is not None and args.requests < 1) or (
        args.seconds is not None and args.seconds <= 0
    ):
        parser.error("--requests and --seconds must be positive")
    settings = Settings(
        concurrencies=tuple(args.concurrency),
        requests=args.requests,
        seconds=args.seconds,
        warmup=args.warmup,
        channels=args.channels,
        seed=args.seed,
    )
    return settings, args.json


def main(argv: Sequence[str] | None = None) -> int:
    settings, json_path = parse_args(argv)
    try:
        report = asyncio.run(
            run_benchmark(settings, progress=lambda s: print(s, file=sys.stderr, flush=True))
        )
    except BenchmarkError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

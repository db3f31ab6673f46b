"""Sentinel failover: kill -9 the master under load, and no answered decision is lost.

Real processes from the suite's server binary: a master, a replica (`replicaof`) and
one sentinel (quorum 1, down after 1 s). The gateway connects through the sentinel
(`redis+sentinel://`) with `redis.min_replicas_acked: 1`, so an answer means the entry
is on the replica too. Clients submit concurrently and, as agents do, retry an
unanswered call with the same action_id. The master is killed; the sentinel promotes
the replica; the killed master comes back as a replica of the new one (as an operator
would restart it), so that appends can be acknowledged again. Afterwards every answer
(before or after the kill) is in the chain at its audit_seq, and the chain verifies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from gateway.config import RedisSettings
from gateway.store.embedded import find_server_binary
from tests.failover import Ledger, check_every_answer_in_chain, drive, wait_async
from tests.harness import RunningGateway, wait_for
from tests.processes import server_binary
from tests.servers import ServerProcess, replica_in_sync, replication_lines

MASTER_NAME = "agw-master"
ANSWERS_BEFORE_KILL = 60
ANSWERS_AFTER_FAILOVER = 40


@dataclass
class Topology:
    binary: Path
    root: Path
    master: ServerProcess
    replica: ServerProcess
    sentinel: ServerProcess
    restarted: list[ServerProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{MASTER_NAME}"

    def master_port(self) -> int | None:
        try:
            address = self.sentinel.client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
            )
        except redis.RedisError:
            return None
        return int(address[1]) if address else None

    def failed_over_to_replica(self) -> bool:
        """The sentinel names the replica the master and has finished the failover."""
        try:
            state = _fields(self.sentinel.client.execute_command("SENTINEL", "MASTER", MASTER_NAME))
        except redis.RedisError:
            return False
        return state.get("port") == str(self.replica.port) and state.get("flags") == "master"

    def sentinel_sees_replica(self) -> bool:
        try:
            replicas = self.sentinel.client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
        except redis.RedisError:
            return False
        return any(_fields(r).get("port") == str(self.replica.port) for r in replicas)

    def rejoin_old_master(self, new_master: ServerProcess) -> ServerProcess:
        """Restart the killed master on its port as a replica of the new master."""
        rejoined = ServerProcess(
            self.binary,
            self.root / "rejoined",
            replication_lines(new_master.port),
            port=self.master.port,
        )
        self.restarted.append(rejoined)
        return rejoined


def _fields(reply: object) -> dict[str, str]:
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    assert isinstance(reply, list)
    return {str(k): str(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    binary = find_server_binary(server_binary())
    master = ServerProcess(binary, tmp_path / "master", replication_lines(None))
    processes = [master]
    try:
        replica = ServerProcess(binary, tmp_path / "replica", replication_lines(master.port))
        processes.append(replica)
        wait_for(lambda: replica_in_sync(master), timeout=15, what="the replica to sync")
        sentinel = ServerProcess(
            binary,
            tmp_path / "sentinel",
            [
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 1",
                # Less makes the sentinel flap: it can take that long to reach a new master.
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                f"sentinel failover-timeout {MASTER_NAME} 3000",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
            ],
            sentinel=True,
        )
        processes.append(sentinel)
        found = Topology(binary, tmp_path, master, replica, sentinel)
        # The sentinel learns the replica from the master's INFO; a failover needs it.
        wait_for(found.sentinel_sees_replica, timeout=15, what="the sentinel to see the replica")
        yield found
        processes.extend(found.restarted)
    finally:
        for process in reversed(processes):
            process.stop()


def test_gateway_follows_a_failover_and_keeps_every_answered_decision(
    topology: Topology, make_gateway: Callable[..., RunningGateway], key_prefix: str
) -> None:
    settings = RedisSettings(
        url=topology.url,
        key_prefix=key_prefix,
        min_replicas_acked=1,
        # Long enough that a replica slowed by a busy machine (the whole suite on 2
        # cores) still acknowledges before the kill: this test is about the failover,
        # test_idempotency.py about what too few replicas do.
        replica_ack_timeout_seconds=2.0,
    )
    gw = make_gateway(redis=settings)
    ledger = Ledger()

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        load = asyncio.create_task(
            drive(gw.target, ledger, lambda: answered_after_failover() >= ANSWERS_AFTER_FAILOVER)
        )

        def answered_after_failover() -> int:
            killed = ledger.killed_at
            return (
                0
                if killed is None
                else sum(a.answered_at > killed for a in ledger.answers.values())
            )

        await wait_async(lambda: len(ledger.answers) >= ANSWERS_BEFORE_KILL, 20, "answers")
        topology.master.kill()
        ledger.killed_at = time.monotonic()
        await wait_async(topology.failed_over_to_replica, 20, "the sentinel to fail over")
        promoted = time.monotonic() - ledger.killed_at
        new_master = topology.replica
        rejoined = await loop.run_in_executor(None, topology.rejoin_old_master, new_master)
        await wait_async(lambda: replica_in_sync(new_master), 20, "the old master to rejoin")
        assert rejoined.client.info("replication")["role"] == "slave"
        await asyncio.wait_for(load, 30)
        first_after = min(
            a.answered_at for a in ledger.answers.values() if a.first_sent_at > ledger.killed_at
        )
        return promoted, first_after - ledger.killed_at

    promoted, first_answer = asyncio.run(scenario())
    print(f"failover: promoted after {promoted:.2f}s, first new answer after {first_answer:.2f}s")

    lines = gw.export_lines()
    entries = check_every_answer_in_chain(lines, gw.key_set(), ledger)

    # New calls are decided on the new master, and the health probe followed it.
    after = gw.agent().submit("search", session_id="after-failover", action_id="after-failover")
    assert after.audit_seq == len(entries) + 1
    assert topology.master_port() == topology.replica.port
    assert topology.replica.client.info("replication")["role"] == "master"

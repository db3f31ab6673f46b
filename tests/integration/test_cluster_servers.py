"""`tests.servers.ClusterProcesses`: a real three-master Redis Cluster, and what it
refuses that a single server allows.

Keys of different hash tags live on different nodes, and a script may only touch
keys of one slot: a Lua script over two slots is refused with CROSSSLOT by the
server (and, before sending, by redis-py's cluster client). That is why the
gateway's scripts must keep every key they touch in one slot ({hash tag}) before it
can run against a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from tests.harness import wait_for
from tests.servers import CLUSTER_SLOTS, ClusterProcesses, ServerProcess

SET_BOTH = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return 1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    with ClusterProcesses(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
def client(cluster: ClusterProcesses) -> Iterator[RedisCluster]:
    nodes = [ClusterNode(h, p) for h, p in cluster.startup_nodes]  # type: ignore[no-untyped-call]
    connected = RedisCluster(startup_nodes=nodes, decode_responses=True, socket_timeout=5)
    try:
        yield connected
    finally:
        connected.close()


def one_key_per_master(cluster: ClusterProcesses, prefix: str) -> dict[int, str]:
    """A key with its own {hash tag} for each master, by master port."""
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < len(cluster.masters):
        key = f"{{{prefix}-{n}}}:value"
        keys.setdefault(cluster.node_for_key(key).port, key)
        n += 1
    return keys


def server_error(error: redis.ResponseError) -> str:
    """The error reply as the server sent it: redis-py moves a known error code
    (MOVED, CROSSSLOT, ...) out of the message into `status_code`."""
    code = error.status_code
    return f"{code} {error}" if code else str(error)


def test_every_slot_is_served_and_the_url_names_the_masters(cluster: ClusterProcesses) -> None:
    assert cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster.ports)
    assert len(set(cluster.ports)) == 3
    owners = {cluster.node_for_slot(slot).port for slot in (0, CLUSTER_SLOTS - 1)}
    assert len(owners) == 2
    for node in cluster.masters:
        info = node.client.cluster("info")
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == str(CLUSTER_SLOTS)
        assert info["cluster_known_nodes"] == "3"


def test_keys_of_three_hash_tags_land_on_three_nodes(
    cluster: ClusterProcesses, client: RedisCluster, key_prefix: str
) -> None:
    keys = one_key_per_master(cluster, key_prefix)
    assert sorted(keys) == sorted(cluster.ports)
    for port, key in keys.items():
        assert client.set(key, f"at {port}")
        assert client.get(key) == f"at {port}"
        owner = cluster.node_for_key(key)
        assert owner.port == port == client.get_node_from_key(key).port  # type: ignore[no-untyped-call]
        # The owner holds it; a plain client on another master is redirected.
        assert owner.client.get(key) == f"at {port}"
        for other in cluster.masters:
            if other is not owner:
                with pytest.raises(redis.ResponseError) as moved:
                    other.client.get(key)
                slot = key_slot(key.encode())
                assert server_error(moved.value) == f"MOVED {slot} 127.0.0.1:{port}"


def test_a_script_over_two_slots_is_refused_with_crossslot(
    cluster: ClusterProcesses, client: RedisCluster, key_prefix: str
) -> None:
    first, second = list(one_key_per_master(cluster, key_prefix).values())[:2]
    owner: ServerProcess = cluster.node_for_key(first)

    # The server refuses it, whichever node it is sent to.
    with pytest.raises(redis.ResponseError) as direct:
        owner.client.eval(SET_BOTH, 2, first, second, "v")
    target = client.get_node("127.0.0.1", owner.port)  # type: ignore[no-untyped-call]
    assert target is not None
    with pytest.raises(redis.ResponseError) as routed:
        client.execute_command(  # type: ignore[no-untyped-call]
            "EVAL", SET_BOTH, 2, first, second, "v", target_nodes=target
        )
    for refused in (direct.value, routed.value):
        assert isinstance(refused, ClusterCrossSlotError)
        assert "CROSSSLOT" in server_error(refused), server_error(refused)
    # redis-py's cluster client does not even send it.
    with pytest.raises(RedisClusterException, match="same key slot"):
        client.eval(SET_BOTH, 2, first, second, "v")
    assert client.exists(first, second) == 0

    # Two keys of one {hash tag} are one slot: the script runs, on that slot's node.
    tag = first.partition("}")[0] + "}"
    same = (f"{tag}:a", f"{tag}:b")
    assert client.eval(SET_BOTH, 2, *same, "v") == 1
    assert [owner.client.get(k) for k in same] == ["v", "v"]


def test_a_master_can_have_a_replica(tmp_path: Path, key_prefix: str) -> None:
    with ClusterProcesses(tmp_path, replicas=1, replica_master=1) as cluster:
        master, replica = cluster.masters[1], cluster.replica()
        assert replica.client.info("replication")["role"] == "slave"
        assert replica.client.info("replication")["master_port"] == master.port
        for node in cluster.processes:
            assert node.client.cluster("info")["cluster_known_nodes"] == "4"

        key = next(
            k
            for k in (f"{{{key_prefix}-{n}}}" for n in range(1000))
            if cluster.node_for_key(k) is master
        )
        master.client.set(key, "replicated")
        reader = redis.Redis(
            port=replica.port, decode_responses=True, single_connection_client=True
        )
        try:
            reader.readonly()
            wait_for(lambda: reader.get(key) == "replicated", what="the write on the replica")
        finally:
            reader.close()

"""Many agents waiting: Awaits share one subscription and one read per hold, use the
holds pool only, and never take the decision path's connections; the gRPC server
closes idle connections and caps the calls in flight per connection."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgw.v1 import approvals_pb2, gateway_pb2, gateway_pb2_grpc
from gateway.config import ServerSettings
from gateway.store.connection import HOLD_POOL_SIZE
from tests.harness import RunningGateway, wait_for

WAITERS = 2000
CHANNELS = 4  # 500 calls each, within the default cap of calls per connection
SUBMITS = 200
SUBMIT_THREADS = 8


# What a well-behaved client does: retry UNAVAILABLE. gRPC needs it at the stream
# cap of a connection: a queued call started as another ends may find the server
# still counting that one, and be refused (REFUSED_STREAM: it never reached the
# gateway) instead of being retried transparently.
RETRY_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "agentgw.v1.Gateway"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def own_channel(target: str, *, retry: bool = False) -> grpc.Channel:
    # A local subchannel pool: a connection of its own, not one shared per target.
    options: list[tuple[str, str | int]] = [("grpc.use_local_subchannel_pool", 1)]
    if retry:
        options.append(("grpc.service_config", RETRY_UNAVAILABLE))
    return grpc.insecure_channel(target, options=options)


@pytest.fixture
def channels(gw: RunningGateway) -> Iterator[list[grpc.Channel]]:
    opened = [own_channel(gw.target) for _ in range(CHANNELS)]
    yield opened
    for channel in opened:
        channel.close()


def gateway_connections(client: redis.Redis, key_prefix: str) -> dict[str, int]:
    """The gateway's connections to Redis by pool, from CLIENT LIST."""
    counts: dict[str, int] = {}
    for entry in client.client_list():
        name = str(entry.get("name", ""))
        if name.startswith(f"agentgw:{key_prefix}:"):
            pool = name.rsplit(":", 1)[1]
            counts[pool] = counts.get(pool, 0) + 1
    return counts


class PeakConnections:
    """Samples CLIENT LIST from a thread until stopped; keeps the largest counts."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.key_prefix = key_prefix
        self.peak: dict[str, int] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for pool, n in gateway_connections(self.client, self.key_prefix).items():
            self.peak[pool] = max(self.peak.get(pool, 0), n)

    def _run(self) -> None:
        while not self.stopped.wait(0.005):
            self.sample()

    def __enter__(self) -> PeakConnections:
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(10)
        self.sample()
        self.client.close()


def held(gw: RunningGateway) -> gateway_pb2.Decision:
    decision = gw.agent().submit("send_email", session_id="s1", parameters={"to": "x@y.z"})
    assert decision.verdict == gateway_pb2.VERDICT_HOLD
    return decision


def approve(gw: RunningGateway, hold_id: str) -> None:
    gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=hold_id, reason="ok"),
        metadata=gw.md("approver-1"),
        timeout=30,
    )


def waiting(gw: RunningGateway, hold_id: str) -> Callable[[], int]:
    return lambda: len(gw.app.listener._waiters.get(hold_id, ()))


def test_two_thousand_waiters_on_one_hold_need_a_few_connections_and_starve_no_submit(
    gw: RunningGateway, channels: list[grpc.Channel], redis_url: str, key_prefix: str
) -> None:
    decision = held(gw)
    request = gateway_pb2.AwaitRequest(hold_id=decision.hold_id)
    stubs = [gateway_pb2_grpc.GatewayStub(c) for c in channels]
    with PeakConnections(redis_url, key_prefix) as connections:
        waiters = [
            stubs[i % CHANNELS].Await.future(request, metadata=gw.md("agent-1"), timeout=60)
            for i in range(WAITERS)
        ]
        wait_for(
            lambda: waiting(gw, decision.hold_id)() == WAITERS,
            timeout=60,
            what=f"{WAITERS} Awaits to wait",
        )
        other = gw.agent("agent-2")
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            submits = [
                pool.submit(other.submit, "search", session_id=f"other-{i % 20}", timeout=30)
                for i in range(SUBMITS)
            ]
            approve(gw, decision.hold_id)
            verdicts = [w.result(timeout=60).verdict for w in waiters]
            submitted = [s.result(timeout=60).verdict for s in submits]
    assert verdicts == [gateway_pb2.VERDICT_ALLOW] * WAITERS
    assert len(submitted) == SUBMITS
    assert gateway_pb2.VERDICT_UNSPECIFIED not in submitted
    peak = connections.peak
    # One pool for holds (subscription, waiters' shared reads, the approval), one for
    # decisions (at most one per concurrent Submit, plus the audit writer), one probe.
    assert peak.get("holds", 0) <= HOLD_POOL_SIZE, peak
    assert peak.get("decisions", 0) <= SUBMIT_THREADS + 4, peak
    assert peak.get("health", 0) <= 1, peak
    assert sum(peak.values()) <= HOLD_POOL_SIZE + SUBMIT_THREADS + 5, peak


def test_calls_beyond_the_stream_cap_of_a_connection_queue_and_all_complete(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    cap = 4
    gw = make_gateway(server=ServerSettings(max_concurrent_streams=cap))
    decision = held(gw)
    channel = own_channel(gw.target, retry=True)
    try:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        # One call first: the client learns the server's limit from its settings.
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        request = gateway_pb2.AwaitRequest(hold_id=decision.hold_id)
        waiters = [
            stub.Await.future(request, metadata=gw.md("agent-1"), timeout=60)
            for _ in range(3 * cap)
        ]
        wait_for(lambda: waiting(gw, decision.hold_id)() >= cap, what=f"{cap} Awaits to wait")
        # The others queue in the client: the connection carries no more than the cap.
        assert waiting(gw, decision.hold_id)() == cap
        assert not any(w.done() for w in waiters)
        approve(gw, decision.hold_id)
        verdicts = [w.result(timeout=30).verdict for w in waiters]
    finally:
        channel.close()
    assert verdicts == [gateway_pb2.VERDICT_ALLOW] * (3 * cap)


class Connectivity:
    """The states a channel went through, recorded as they happen."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(self.states.append, try_to_connect=False)

    def reaches(self, state: grpc.ChannelConnectivity, after: int = 0) -> Callable[[], bool]:
        return lambda: state in self.states[after:]

    def close(self) -> None:
        self.channel.unsubscribe(self.states.append)
        self.channel.close()


def connect_then_idle(target: str) -> Connectivity:
    """A channel that made one call and was then closed by the server as idle."""
    watched = Connectivity(own_channel(target))
    health_pb2_grpc.HealthStub(watched.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    wait_for(watched.reaches(grpc.ChannelConnectivity.READY), what="the channel to connect")
    ready_at = watched.states.index(grpc.ChannelConnectivity.READY)
    # No call for longer than the idle time: the server closes the connection.
    wait_for(
        watched.reaches(grpc.ChannelConnectivity.IDLE, ready_at),
        timeout=20,
        what="the server to close the idle connection",
    )
    return watched


def test_an_idle_connection_is_closed_and_the_channel_reconnects(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = make_gateway(server=ServerSettings(max_connection_idle_seconds=0.2))
    watched = connect_then_idle(gw.target)
    try:
        idle_at = len(watched.states)
        reply = health_pb2_grpc.HealthStub(watched.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        wait_for(watched.reaches(grpc.ChannelConnectivity.READY, idle_at), what="a new connection")
    finally:
        watched.close()


def test_a_connection_with_a_call_in_flight_is_not_idle(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = make_gateway(server=ServerSettings(max_connection_idle_seconds=0.2))
    decision = held(gw)
    channel = own_channel(gw.target)
    try:
        waiter = gateway_pb2_grpc.GatewayStub(channel).Await.future(
            gateway_pb2.AwaitRequest(hold_id=decision.hold_id),
            metadata=gw.md("agent-1"),
            timeout=60,
        )
        wait_for(lambda: waiting(gw, decision.hold_id)() == 1, what="the Await to wait")
        # Another connection going idle shows the idle time has passed meanwhile.
        connect_then_idle(gw.target).close()
        approve(gw, decision.hold_id)
        assert waiter.result(timeout=30).verdict == gateway_pb2.VERDICT_ALLOW
    finally:
        channel.close()

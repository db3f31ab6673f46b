"""Alerts across gateway processes: one alert per cooldown cluster-wide, delivered
once, and a delivery a stopped gateway could not make is made by the next one."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentgw.v1 import alerts_pb2, alerts_pb2_grpc
from clients.agent import AgentClient, bearer
from tests.harness import token_for, wait_for
from tests.processes import GatewayProcess, gateway_processes


class Receiver:
    """A webhook receiver on loopback: records every POST body; `status` is what it
    answers (changeable while it runs)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.refused = 0  # POSTs answered with another status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                status = receiver.status
                if status == 200:
                    receiver.bodies.append(body)
                else:
                    receiver.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/agentgw"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def alerts_config(url: str) -> dict[str, Any]:
    channel = {
        "name": "hook",
        "type": "webhook",
        "url": url,
        "timeout_seconds": 1,
        "backoff_seconds": 0.2,
        "max_backoff_seconds": 0.5,
        "max_attempts": 50,
    }
    return {"alerts": {"channels": [channel]}}


def listed(gateway: GatewayProcess) -> list[alerts_pb2.Alert]:
    with grpc.insecure_channel(gateway.target) as channel:
        stub = alerts_pb2_grpc.AlertsStub(channel)
        request = alerts_pb2.ListAlertsRequest()
        return list(stub.List(request, metadata=bearer(token_for("admin-1"))).alerts)


def loop_on(gateway: GatewayProcess, session: str) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        agent = AgentClient(gateway.target, token_for("agent-1"), "agent-1", channel=channel)
        for i in range(5):
            agent.submit("read_file", session_id=session, parameters={"i": i})


def test_two_replicas_seeing_loops_at_once_send_one_alert_once(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    redis = {"url": redis_url, "key_prefix": f"r{uuid.uuid4().hex[:12]}"}
    with gateway_processes(tmp_path, 2, redis, alerts_config(receiver.url)) as replicas:
        barrier = threading.Barrier(4)

        def looping(n: int) -> None:
            barrier.wait()
            loop_on(replicas[n % 2], f"session-{n}")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(looping, range(4)))

        def loop_bodies() -> list[dict[str, Any]]:
            return [b for b in receiver.bodies if b["rule"] == "agent_stuck_in_loop"]

        wait_for(loop_bodies, timeout=20, what="a delivery")
        alerts = [a for a in listed(replicas[0]) if a.rule == "agent_stuck_in_loop"]
        assert len(alerts) == 1, alerts
        assert [a.alert_id for a in listed(replicas[1]) if a.rule == "agent_stuck_in_loop"] == [
            alerts[0].alert_id
        ]
        # Every alert is delivered once: no two bodies for one alert.
        wait_for(lambda: len(receiver.bodies) == len(listed(replicas[0])), what="all deliveries")
        ids = [b["alert_id"] for b in receiver.bodies]
        assert len(ids) == len(set(ids))
        (body,) = loop_bodies()
        assert body["alert_id"] == alerts[0].alert_id
        assert body["rule"] == "agent_stuck_in_loop" and body["subject"] == "agent-1"
        assert body["severity"] == "high"


def test_a_delivery_outlives_the_gateway_that_queued_it(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    redis = {"url": redis_url, "key_prefix": f"r{uuid.uuid4().hex[:12]}"}
    receiver.status = 503  # down while the first gateway runs
    first = tmp_path / "first"
    first.mkdir()
    with gateway_processes(first, 1, redis, alerts_config(receiver.url)) as (gateway,):
        loop_on(gateway, "s")
        (alert,) = wait_for(
            lambda: [a for a in listed(gateway) if a.rule == "agent_stuck_in_loop"],
            what="the alert",
        )
        wait_for(lambda: receiver.refused >= 2, what="attempts that failed (and were retried)")
    assert receiver.bodies == []
    receiver.status = 200
    second = tmp_path / "second"
    second.mkdir()
    with gateway_processes(second, 1, redis, alerts_config(receiver.url)):
        wait_for(
            lambda: alert.alert_id in [b["alert_id"] for b in receiver.bodies],
            timeout=30,
            what="the delivery after the restart",
        )
        ids = [b["alert_id"] for b in receiver.bodies]
        assert len(ids) == len(set(ids))

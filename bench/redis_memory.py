"""What the gateway keeps in Redis: bytes and lifetime of each key family, measured.

Starts a gateway (embedded Redis, default policy, a fresh temp data dir) in this
process, drives a mix of flows through gRPC (allowed actions, holds approved,
rejected and left pending, a looping session that gets paused), then reads every
key with MEMORY USAGE and PTTL and prints one row per key family: how many keys,
mean bytes per key, and the TTL left. docs/operations.md quotes its figures.

    .venv/bin/python bench/redis_memory.py [--actions N]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import grpc
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentgw.v1 import approvals_pb2, approvals_pb2_grpc, gateway_pb2
from clients.agent import AgentClient
from gateway.app import App
from gateway.config import Config
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.rates import AgentLimits, RateSettings
from gateway.domain.principals import Principal, Role, token_digest

PRINCIPALS = {"agent": ("bench-agent", Role.AGENT), "approver": ("bench-approver", Role.APPROVER)}
FAMILY_PATTERNS = (
    ("action claim / marker", r":\{a:[^}]+\}:action:"),
    ("decided record", r":\{audit\}:decided:"),
    ("session pause", r":\{audit\}:pause:"),
    ("reported outcome", r":\{audit\}:outcome:"),
    ("session action types", r":session:[^:]+:types$"),
    ("session fingerprints", r":session:[^:]+:fingerprints$"),
    ("session rate window", r":session:[^:]+:rate$"),
    ("session type mix", r":session:[^:]+:mix$"),
    ("agent recent inputs", r":\{a:[^}]+\}:recent$"),
    ("agent rate window", r":\{a:[^}]+\}:rate$"),
    ("agent type window", r":\{a:[^}]+\}:rate:type:"),
    ("agent stats", r":\{a:[^}]+\}:stats$"),
    ("agent type profile", r":\{a:[^}]+\}:profile$"),
    ("agent open tasks", r":\{a:[^}]+\}:tasks$"),
    ("agent task calls", r":\{a:[^}]+\}:task_calls$"),
    ("agent outcomes", r":\{a:[^}]+\}:outcomes$"),
    ("hold", r":\{audit\}:hold:"),
    ("pending-holds index", r":\{audit\}:holds:pending$"),
    ("audit entries", r":\{audit\}:entries$"),
    ("audit tree nodes", r":\{audit\}:tree$"),
    ("audit head", r":\{audit\}:head$"),
    ("audit key history", r":\{audit\}:keys$"),
    ("published checkpoint", r":\{audit\}:checkpoint$"),
    ("alert", r":\{audit\}:alert:"),
    ("alert indexes", r":\{audit\}:alerts:(active|recent)$"),
    ("alert cooldown", r":\{audit\}:alerts:cooldown:"),
    ("alert feed", r":\{audit\}:alerts:feed$"),
    ("log stream", r":\{logs\}:"),
)


def family(key: str) -> str:
    for name, pattern in FAMILY_PATTERNS:
        if re.search(pattern, key):
            return name
    return "other: " + key


async def measure(actions: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokens = {role: f"tok-{role}" for role in PRINCIPALS}
        config = Config(
            listen="127.0.0.1:0",
            data_dir=Path(tmp),
            # One agent deciding 600 actions at once: far over its default rate limits.
            detection=DetectionSettings(rates=RateSettings(defaults=AgentLimits(0, 0, 0))),
            principals=tuple(
                Principal(name, role, token_digest(tokens[key]))
                for key, (name, role) in PRINCIPALS.items()
            ),
        )
        app = App(config)
        port = await app.start()
        try:
            await asyncio.to_thread(drive, f"127.0.0.1:{port}", tokens, actions)
            await app.alerting.drain()
            await app.log_sink.drain()
            await report(app.client, actions)
        finally:
            await app.stop(grace=1)


def drive(target: str, tokens: dict[str, str], actions: int) -> None:
    approver = (("authorization", f"Bearer {tokens['approver']}"),)
    agent_md = (("authorization", f"Bearer {tokens['agent']}"),)
    with grpc.insecure_channel(target) as channel:
        approvals = approvals_pb2_grpc.ApprovalsStub(channel)
        agent = AgentClient(target, tokens["agent"], agent_id="bench-agent", channel=channel)
        for i in range(actions):
            session = f"session-{i // 20}"
            if i % 10 == 0:
                held = agent.submit("send_email", session_id=session, parameters={"to": "x@y.z"})
                if i % 30 == 0:
                    approvals.Approve(
                        approvals_pb2.ApproveRequest(hold_id=held.hold_id, reason="ok"),
                        metadata=approver,
                    )
                elif i % 30 == 10:
                    approvals.Reject(
                        approvals_pb2.RejectRequest(hold_id=held.hold_id, reason="no"),
                        metadata=approver,
                    )
            else:
                kind = ("search", "read_file", "list_dir", "fetch_url")[i % 4]
                done = agent.submit(kind, session_id=session, parameters={"q": f"query {i}"})
                if i % 3 == 0:  # a third report their outcome
                    agent.stub.ReportOutcome(
                        gateway_pb2.Outcome(
                            action_id=done.action_id, agent_id="bench-agent", success=i % 2 == 0
                        ),
                        metadata=agent_md,
                    )
        for _ in range(5):  # one looping session: held and paused
            agent.submit("read_file", session_id="looping", parameters={"path": "/etc/x"})


async def report(client: aioredis.Redis, actions: int) -> None:
    sizes: dict[str, list[int]] = defaultdict(list)
    ttls: dict[str, list[int]] = defaultdict(list)
    async for key in client.scan_iter("*"):
        name = str(key)
        usage = await client.memory_usage(name)
        sizes[family(name)].append(int(usage or 0))
        ttls[family(name)].append(int(await client.pttl(name)))
    print(f"{actions + 5} actions decided")
    print(f"{'key family':<24} {'keys':>6} {'bytes/key':>10} {'total':>10}  ttl left")
    for name in sorted(sizes):
        left = [t for t in ttls[name] if t >= 0]
        ttl = "none" if not left else f"<= {max(left) / 3_600_000:.1f} h"
        print(
            f"{name:<24} {len(sizes[name]):>6} {statistics.mean(sizes[name]):>10.0f} "
            f"{sum(sizes[name]):>10}  {ttl}"
        )
    async for key in client.scan_iter("*:{logs}:*"):
        records = int(await client.xlen(str(key)))
        usage = int(await client.memory_usage(str(key)) or 0)
        stream = str(key).rsplit(":", 1)[1]
        print(f"log stream {stream}: {records} records, {usage / max(records, 1):.0f} B each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=600)
    asyncio.run(measure(parser.parse_args().actions))


if __name__ == "__main__":
    main()

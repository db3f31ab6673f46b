"""Readiness: what each gRPC service needs in order to serve, and whether it has it.

The gateway's health (grpc.health.v1) is computed here from named conditions that
the app's health watch sets every second:

- `redis`: Redis answers (a read of the log head's key id on the health
  connection, within 2 s);
- `signing_key`: this replica holds the key the audit log's head names, so it can
  sign the next entry (a rotation on a replica that does not share the key dir
  leaves the others without it);
- `audit_writer`: the task that appends audit entries is running;
- `policy`: a policy is in force (the file's last good version, or the built-in);
- `tile_sealing`: this replica's tile store is the log's and sealing keeps up
  (no more than audit.tiles.not_serving_after_entries entries wait in Redis).

A service is SERVING when every condition it needs holds; the overall server ("")
when all do (the app says which service needs what). `Readiness` is the state, pure;
`ReadinessWatch` reads the conditions from Redis and the gateway's own parts and
publishes each service's status through a callback (the app's health servicer),
logging each change once with the conditions that fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import redis.asyncio as aioredis

from gateway.errors import StoreUnavailable
from gateway.services.policy_reload import PolicyReloader
from gateway.store.audit_log import AuditLog
from gateway.store.connection import REDIS_FAILURES

log = logging.getLogger("agentgw.health")
# A check's Redis read (the head's key id) fails after this long.
CHECK_TIMEOUT = 2.0

CONDITIONS = ("redis", "signing_key", "audit_writer", "policy", "tile_sealing")


class Readiness:
    def __init__(self, needs: Mapping[str, frozenset[str]]) -> None:
        unknown = {c for wanted in needs.values() for c in wanted} - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown readiness conditions: {sorted(unknown)}")
        self._needs = {"": frozenset(CONDITIONS), **needs}
        self._failing: dict[str, str] = {}  # condition -> why it does not hold

    def set(self, condition: str, holds: bool, reason: str = "") -> bool:
        """Records a condition; True if that changed whether it holds."""
        if condition not in CONDITIONS:
            raise ValueError(f"unknown readiness condition {condition!r}")
        held = condition not in self._failing
        if holds:
            self._failing.pop(condition, None)
        else:
            self._failing[condition] = reason or "does not hold"
        return held != holds

    def serving(self, service: str) -> bool:
        return not (self._needs[service] & self._failing.keys())

    def statuses(self) -> dict[str, bool]:
        """Each service ("" for the whole server) -> whether it serves now."""
        return {service: self.serving(service) for service in self._needs}

    @property
    def failing(self) -> dict[str, str]:
        """The conditions that do not hold, with why."""
        return dict(self._failing)


class ReadinessWatch:
    """Sets the conditions from what the gateway sees now (`check`) and publishes
    the services whose status changed (`publish`)."""

    def __init__(
        self,
        needs: Mapping[str, frozenset[str]],
        client: aioredis.Redis,
        audit: AuditLog,
        audit_writer: asyncio.Task[None],
        policy: PolicyReloader,
        sealing_problem: Callable[[], str],
        on_redis_down: Callable[[str], None],
        publish: Callable[[str, bool], Awaitable[None]],
    ) -> None:
        self.state = Readiness(needs)
        self._client = client
        self._audit = audit
        self._audit_writer = audit_writer
        self._policy = policy
        self._sealing_problem = sealing_problem
        self._on_redis_down = on_redis_down
        self._publish = publish
        self._published: dict[str, bool] = {}  # service -> the status it shows

    async def check(self) -> None:
        state = self.state
        try:
            # One read both proves Redis answers and names the key the head wants.
            async with asyncio.timeout(CHECK_TIMEOUT):
                key_id = await self._audit.head_key_id(self._client)
        except REDIS_FAILURES as e:
            error = f"{type(e).__name__}: {e}"
            if state.set("redis", False, f"redis unreachable: {error}"):
                self._on_redis_down(error)
        else:
            state.set("redis", True)
            try:
                self._audit.signer_named(key_id)
                state.set("signing_key", True)
            except StoreUnavailable as e:
                state.set("signing_key", False, str(e))
        state.set("audit_writer", not self._audit_writer.done(), "the audit writer has stopped")
        state.set("policy", self._policy.current is not None, "no policy in force")
        problem = self._sealing_problem()
        state.set("tile_sealing", not problem, problem)

    async def publish(self) -> None:
        """Publishes each service whose status changed; logs the change in one record
        naming the services and the failing conditions (category error)."""
        changed: dict[str, bool] = {}
        for service, serving in self.state.statuses().items():
            if self._published.get(service) == serving:
                continue
            if service in self._published or not serving:
                changed[service] = serving  # a first SERVING is not news
            self._published[service] = serving
            await self._publish(service, serving)
        if not changed:
            return
        down = sorted(name or "(server)" for name, serving in changed.items() if not serving)
        up = sorted(name or "(server)" for name, serving in changed.items() if serving)
        failing = self.state.failing
        parts = [
            f"NOT_SERVING {', '.join(down)}" if down else "",
            f"SERVING {', '.join(up)}" if up else "",
            ", ".join(f"{c}: {why}" for c, why in failing.items()),
        ]
        log.log(
            logging.ERROR if down else logging.INFO,
            "health changed: %s",
            "; ".join(part for part in parts if part),
            extra={"category": "error", "not_serving": down, "serving": up, "failing": failing},
        )

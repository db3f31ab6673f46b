"""Counters, decision records, holds and session pauses in Redis.

Reads happen here; writes that must be atomic with an audit entry are returned as
`Mutation`s for `AuditLog.commit` to apply in the same script call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from gateway.actions import ActionRequest, Decision
from gateway.detect.loops import LoopSettings
from gateway.holds import (
    Hold,
    HoldStatus,
    decision_from_json,
    decision_to_json,
    hold_from_json,
    hold_to_json,
    with_resolution_seq,
)
from gateway.store.connection import load_script, unavailable_on_error
from gateway.store.keys import KeySpace

# Long enough for a slow audit append, short enough that a crashed call does not
# block a retry of the same action_id for long.
CLAIM_TTL_MS = 15_000
HISTORY_TTL_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Observation:
    """What the store knew when a new action arrived."""

    pause: dict[str, Any] | None
    recent_types: tuple[str, ...]
    recent_fingerprints: tuple[str, ...]


@dataclass(frozen=True)
class Seen:
    """The action_id was submitted before; `decision` is None while still in flight."""

    decision: Decision | None


if TYPE_CHECKING:
    from gateway.audit.entry import AuditEntry

# A value that depends on the audit entries of the same commit (e.g. their seq).
Deferred = Callable[["Sequence[AuditEntry]"], str]


@dataclass
class Mutation:
    """Checks and writes applied atomically with a batch of audit entries.

    Values may be `Deferred`: the audit writer calls them with the commit's entries
    once their sequence numbers are known.
    """

    checks: list[list[Any]] = field(default_factory=list)
    ops: list[list[Any]] = field(default_factory=list)

    def check_field(self, key: str, name: str, value: str) -> None:
        self.checks.append([key, "hfield", name, value])

    def check_exists(self, key: str) -> None:
        self.checks.append([key, "exists"])

    def set(self, key: str, value: str | Deferred, px: int = 0) -> None:
        self.ops.append(["set", key, value, px])

    def hset(self, key: str, mapping: dict[str, str | Deferred]) -> None:
        flat: list[Any] = ["hset", key]
        for k, v in mapping.items():
            flat += [k, v]
        self.ops.append(flat)

    def zadd(self, key: str, score: float, member: str) -> None:
        self.ops.append(["zadd", key, repr(score), member])

    def zrem(self, key: str, member: str) -> None:
        self.ops.append(["zrem", key, member])

    def delete(self, key: str) -> None:
        self.ops.append(["del", key])

    def publish(self, channel: str, message: str) -> None:
        self.ops.append(["publish", channel, message])


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class StateStore:
    def __init__(self, client: aioredis.Redis, keys: KeySpace) -> None:
        self.client = client
        self.keys = keys
        self._observe = load_script(client, "observe")

    async def observe(
        self, request: ActionRequest, fingerprint: str, settings: LoopSettings
    ) -> Observation | Seen:
        k = self.keys
        a, s = request.agent_id, request.session_id
        with unavailable_on_error("recording the action"):
            reply = await self._observe(
                keys=[
                    k.action(a, request.action_id),
                    k.session_pause(a, s),
                    k.recent_types(a, s),
                    k.recent_fingerprints(a, s),
                ],
                args=[
                    CLAIM_TTL_MS,
                    request.action_type,
                    fingerprint,
                    settings.history_length,
                    HISTORY_TTL_MS,
                ],
            )
        if reply[0] == "seen":
            record = reply[1]
            return Seen(None if record == "pending" else decision_from_json(json.loads(record)))
        pause = json.loads(reply[1]) if reply[1] else None
        return Observation(pause, tuple(reply[2]), tuple(reply[3]))

    async def release_claim(self, request: ActionRequest) -> None:
        """Frees an action_id whose decision could not be committed, so a retry works."""
        key = self.keys.action(request.agent_id, request.action_id)
        with unavailable_on_error("releasing the action claim"):
            script = (
                "if redis.call('GET', KEYS[1]) == 'pending' then redis.call('DEL', KEYS[1]) end"
            )
            await self.client.eval(script, 1, key)

    async def get_hold(self, hold_id: str) -> Hold | None:
        with unavailable_on_error("reading a hold"):
            raw = await self.client.hget(self.keys.hold(hold_id), "json")
        return hold_from_json(json.loads(raw)) if raw else None

    async def get_decision(self, agent_id: str, action_id: str) -> Decision | None:
        with unavailable_on_error("reading a decision"):
            raw = await self.client.get(self.keys.action(agent_id, action_id))
        if not raw or raw == "pending":
            return None
        return decision_from_json(json.loads(raw))

    async def pending_holds(self) -> list[Hold]:
        with unavailable_on_error("listing holds"):
            ids = [str(i) for i in await self.client.zrange(self.keys.pending_holds, 0, -1)]
            if not ids:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for hold_id in ids:
                    pipe.hget(self.keys.hold(hold_id), "json")
                raws = await pipe.execute()
        return [hold_from_json(json.loads(raw)) for raw in raws if raw]

    async def expired_hold_ids(self, now: float, limit: int = 100) -> list[str]:
        with unavailable_on_error("finding expired holds"):
            ids = await self.client.zrangebyscore(
                self.keys.pending_holds, "-inf", now, start=0, num=limit
            )
        return [str(i) for i in ids]

    async def next_expiry(self) -> float | None:
        with unavailable_on_error("finding the next hold expiry"):
            first = await self.client.zrange(self.keys.pending_holds, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def session_pause(self, agent_id: str, session_id: str) -> dict[str, Any] | None:
        with unavailable_on_error("reading the session state"):
            raw = await self.client.get(self.keys.session_pause(agent_id, session_id))
        return json.loads(raw) if raw else None

    # --- mutations applied with the audit entry that records them ---------------

    def record_decision(
        self,
        request: ActionRequest,
        decision: Decision,
        hold: Hold | None,
        ttl_seconds: float,
    ) -> Mutation:
        k = self.keys
        m = Mutation()
        m.set(
            k.action(request.agent_id, request.action_id),
            lambda entries: _dumps(decision_to_json(replace(decision, audit_seq=entries[0].seq))),
            int(ttl_seconds * 1000),
        )
        if hold is not None:
            m.hset(
                k.hold(hold.hold_id),
                {
                    "json": lambda entries: _dumps(
                        hold_to_json(replace(hold, audit_seq=entries[0].seq))
                    ),
                    "status": hold.status.value,
                },
            )
            m.zadd(k.pending_holds, hold.expires_at, hold.hold_id)
            if hold.paused_session:
                pause = {
                    "hold_id": hold.hold_id,
                    "reason": hold.reason,
                    "paused_at": hold.created_at,
                }
                m.set(k.session_pause(request.agent_id, request.session_id), _dumps(pause))
        return m

    def record_resolution(self, hold: Hold) -> Mutation:
        k = self.keys
        m = Mutation()
        m.check_field(k.hold(hold.hold_id), "status", HoldStatus.PENDING.value)
        m.hset(
            k.hold(hold.hold_id),
            {
                "json": lambda entries: _dumps(
                    hold_to_json(with_resolution_seq(hold, entries[0].seq))
                ),
                "status": hold.status.value,
            },
        )
        m.zrem(k.pending_holds, hold.hold_id)
        m.publish(k.hold_resolved_channel, hold.hold_id)
        return m

    def record_resume(self, agent_id: str, session_id: str) -> Mutation:
        key = self.keys.session_pause(agent_id, session_id)
        m = Mutation()
        m.check_exists(key)
        m.delete(key)
        return m

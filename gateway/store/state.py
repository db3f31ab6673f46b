"""Counters, decision records, holds and session pauses in Redis.

Reads happen here; writes that must be atomic with an audit entry are returned as
`Mutation`s for `AuditLog.commit` to apply in the same script call.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from gateway.domain.actions import ActionRequest, Decision
from gateway.domain.detect.loops import LoopSettings
from gateway.domain.holds import Hold, HoldStatus, SessionPause, with_resolution_seq
from gateway.store.connection import load_script, unavailable_on_error
from gateway.store.keys import KeySpace
from gateway.store.records import (
    decision_from_json,
    decision_to_json,
    hold_from_json,
    hold_to_json,
    pause_from_json,
    pause_to_json,
)


@dataclass(frozen=True)
class Lifetimes:
    """How long each kind of record lives in Redis (milliseconds); see
    docs/operations.md for every key family and its bound."""

    # A claim outlives a slow audit append (the writer retries for 10 s), and is short
    # enough that a claim left by a crashed gateway soon stops blocking its retry.
    claim_ms: int = 15_000
    decision_ms: int = 24 * 3600 * 1000  # idempotency: a resubmission gets the decision
    session_idle_ms: int = 24 * 3600 * 1000  # history and pause of a session at rest
    resolved_hold_ms: int = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Claim:
    """One call's claim on an action_id: the digest of the request it stands for and a
    token of the call, so that the call (and only it) recognises its own claim, also
    when the client library resends the claiming script after losing its reply."""

    digest: str  # 64 hex digits: `request_digest` of the request
    token: str

    @classmethod
    def new(cls, digest: str) -> Claim:
        return cls(digest, secrets.token_hex(8))

    @property
    def value(self) -> str:
        return f"p|{self.digest}|{self.token}"

    def decided(self, decision_json: str) -> str:
        """The action record once decided: digest kept, so that replays compare it."""
        return f"d|{self.digest}|{decision_json}"

    @staticmethod
    def decision_json(record: str) -> str | None:
        """The decision JSON of an action record; None while it is only claimed.
        ('d|' + 64 hex digits + '|', as observe.lua reads it too.)"""
        if not record.startswith("d|"):
            return None
        return record[len("d|") + 64 + 1 :]


@dataclass(frozen=True)
class Marks:
    """What one action adds to its session's history: its type and fingerprint."""

    action_type: str
    fingerprint: str


@dataclass(frozen=True)
class Observation:
    """What the store knew when a new action arrived (and was claimed)."""

    pause: SessionPause | None
    recent_types: tuple[str, ...]
    recent_fingerprints: tuple[str, ...]


@dataclass(frozen=True)
class Seen:
    """The action_id was decided before, for a request with the same digest."""

    decision: Decision


class Pending(enum.Enum):
    """Another call holds the claim on the action_id for the same request."""

    PENDING = "pending"


class Reused(enum.Enum):
    """The action_id was used before for a request with another digest."""

    REUSED = "reused"


if TYPE_CHECKING:
    from gateway.domain.audit.entry import AuditEntry

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

    def check_equals(self, key: str, value: str) -> None:
        self.checks.append([key, "equals", value])

    def set(self, key: str, value: str | Deferred, px: int = 0) -> None:
        self.ops.append(["set", key, value, px])

    def hset(self, key: str, mapping: dict[str, str | Deferred]) -> None:
        flat: list[Any] = ["hset", key]
        for k, v in mapping.items():
            flat += [k, v]
        self.ops.append(flat)

    def pexpire(self, key: str, milliseconds: int) -> None:
        self.ops.append(["pexpire", key, milliseconds])

    def zadd(self, key: str, score: float, member: str) -> None:
        self.ops.append(["zadd", key, repr(score), member])

    def zrem(self, key: str, member: str) -> None:
        self.ops.append(["zrem", key, member])

    def delete(self, key: str) -> None:
        self.ops.append(["del", key])

    def publish(self, channel: str, message: str) -> None:
        self.ops.append(["publish", channel, message])


# KEYS: action record, recent types, recent fingerprints; ARGV: claim, type, fingerprint.
# LREM with count 1 removes the newest equal entry: the one this claim pushed, or one
# equal to it, which leaves the same counts for detection.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('LREM', KEYS[2], 1, ARGV[2])
  redis.call('LREM', KEYS[3], 1, ARGV[3])
end
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class StateStore:
    def __init__(
        self, client: aioredis.Redis, keys: KeySpace, lifetimes: Lifetimes | None = None
    ) -> None:
        self.client = client
        self.keys = keys
        self.lifetimes = lifetimes or Lifetimes()
        self._observe = load_script(client, "observe")

    async def observe(
        self, request: ActionRequest, claim: Claim, marks: Marks, settings: LoopSettings
    ) -> Observation | Seen | Pending | Reused:
        """Claims the action_id and records the action in its session's history, or
        says why not (decided before, being decided, or used for another request)."""
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
                    self.lifetimes.claim_ms,
                    marks.action_type,
                    marks.fingerprint,
                    settings.history_length,
                    self.lifetimes.session_idle_ms,
                    claim.value,
                ],
            )
        status = reply[0]
        if status == "seen":
            return Seen(decision_from_json(json.loads(reply[1])))
        if status == "pending":
            return Pending.PENDING
        if status == "reused":
            return Reused.REUSED
        pause = pause_from_json(json.loads(reply[1])) if reply[1] else None
        return Observation(pause, tuple(reply[2]), tuple(reply[3]))

    async def release_claim(self, request: ActionRequest, claim: Claim, marks: Marks) -> None:
        """Frees an action_id that nothing was or will be committed for, so that a
        retry can claim it, and takes its marks back out of the session history (the
        retry adds them again): only this claim is released, never another call's."""
        k = self.keys
        a, s = request.agent_id, request.session_id
        with unavailable_on_error("releasing the action claim"):
            await self.client.eval(
                RELEASE_SCRIPT,
                3,
                k.action(a, request.action_id),
                k.recent_types(a, s),
                k.recent_fingerprints(a, s),
                claim.value,
                marks.action_type,
                marks.fingerprint,
            )

    async def get_hold(self, hold_id: str) -> Hold | None:
        with unavailable_on_error("reading a hold"):
            raw = await self.client.hget(self.keys.hold(hold_id), "json")
        return hold_from_json(json.loads(raw)) if raw else None

    async def get_decision(self, agent_id: str, action_id: str) -> Decision | None:
        with unavailable_on_error("reading a decision"):
            raw = await self.client.get(self.keys.action(agent_id, action_id))
        decision = Claim.decision_json(str(raw or ""))
        return None if decision is None else decision_from_json(json.loads(decision))

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

    async def forget_pending_hold(self, hold_id: str) -> None:
        """Drops a hold id from the pending index if its record is gone (expired)."""
        with unavailable_on_error("cleaning the pending-holds index"):
            script = (
                "if redis.call('EXISTS', KEYS[2]) == 0 then "
                "redis.call('ZREM', KEYS[1], ARGV[1]) end"
            )
            await self.client.eval(
                script, 2, self.keys.pending_holds, self.keys.hold(hold_id), hold_id
            )

    async def next_expiry(self) -> float | None:
        with unavailable_on_error("finding the next hold expiry"):
            first = await self.client.zrange(self.keys.pending_holds, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def session_pause(self, agent_id: str, session_id: str) -> SessionPause | None:
        with unavailable_on_error("reading the session state"):
            raw = await self.client.get(self.keys.session_pause(agent_id, session_id))
        return pause_from_json(json.loads(raw)) if raw else None

    # --- mutations applied with the audit entry that records them ---------------

    def record_decision(
        self, request: ActionRequest, claim: Claim, decision: Decision, hold: Hold | None
    ) -> Mutation:
        """The decision record (replacing this call's claim, which must still stand),
        the hold and the session pause, as one commit with the decision's entry."""
        k, life = self.keys, self.lifetimes
        action_key = k.action(request.agent_id, request.action_id)
        m = Mutation()
        # If the claim lapsed and another call claimed the action_id meanwhile, this
        # commit fails: one action_id is never decided twice.
        m.check_equals(action_key, claim.value)
        m.set(
            action_key,
            lambda entries: claim.decided(
                _dumps(decision_to_json(replace(decision, audit_seq=entries[0].seq)))
            ),
            life.decision_ms,
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
            # Bounded even if no gateway ever resolves it (the sweeper does, on time).
            pending_ms = max(0, int((hold.expires_at - hold.created_at) * 1000))
            m.pexpire(k.hold(hold.hold_id), pending_ms + life.resolved_hold_ms)
            m.zadd(k.pending_holds, hold.expires_at, hold.hold_id)
            if hold.paused_session:
                m.set(
                    k.session_pause(request.agent_id, request.session_id),
                    _dumps(pause_to_json(SessionPause.by(hold))),
                    life.session_idle_ms,
                )
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
        m.pexpire(k.hold(hold.hold_id), self.lifetimes.resolved_hold_ms)
        m.zrem(k.pending_holds, hold.hold_id)
        m.publish(k.hold_resolved_channel, hold.hold_id)
        return m

    def record_resume(self, agent_id: str, session_id: str) -> Mutation:
        key = self.keys.session_pause(agent_id, session_id)
        m = Mutation()
        m.check_exists(key)
        m.delete(key)
        return m

"""Claims, session history, decided actions, holds and session pauses in Redis.

Reads and the claim happen here; writes that must be atomic with an audit entry
are intents (`store/intents.py`) that `AuditLog.commit` applies in the same call.
"""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.domain.actions import ActionRequest, Decision
from gateway.domain.detect.loops import LoopSettings
from gateway.domain.holds import Hold, SessionPause
from gateway.store.connection import is_cluster, load_script, unavailable_on_error
from gateway.store.intents import Claim, DecidedRecord, Lifetimes
from gateway.store.keys import KeySpace
from gateway.store.records import hold_from_json, pause_from_json


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


# KEYS: action claim, recent types, recent fingerprints; ARGV: claim, type, fingerprint.
# LREM with count 1 removes the newest equal entry: the one this claim pushed, or one
# equal to it, which leaves the same counts for detection.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('LREM', KEYS[2], 1, ARGV[2])
  redis.call('LREM', KEYS[3], 1, ARGV[3])
end
"""


class StateStore:
    def __init__(
        self, client: aioredis.Redis, keys: KeySpace, lifetimes: Lifetimes | None = None
    ) -> None:
        self.client = client
        self.keys = keys
        self.lifetimes = lifetimes or Lifetimes()
        # On a cluster the session pause is in another slot than the claim.
        self.single_node = not is_cluster(client)
        self._observe = load_script(client, "observe")

    async def observe(
        self, request: ActionRequest, claim: Claim, marks: Marks, settings: LoopSettings
    ) -> Observation | Seen | Pending | Reused:
        """Claims the action_id and records the action in its session's history, or
        says why not (decided before, being decided, or used for another request)."""
        k = self.keys
        a, s = request.agent_id, request.session_id
        keys = [k.claim(a, request.action_id), k.recent_types(a, s), k.recent_fingerprints(a, s)]
        if self.single_node:
            keys.append(k.session_pause(a, s))
        script = self._observe(
            keys=keys,
            args=[
                self.lifetimes.claim_ms,
                marks.action_type,
                marks.fingerprint,
                settings.history_length,
                self.lifetimes.session_idle_ms,
                claim.value,
            ],
        )
        with unavailable_on_error("recording the action"):
            if self.single_node:
                reply = await script
            else:
                # GETEX keeps the pause alive with the session, as observe.lua does.
                reply, pause_json = await asyncio.gather(
                    script,
                    self.client.getex(k.session_pause(a, s), px=self.lifetimes.session_idle_ms),
                )
                if reply[0] == "new":
                    reply[1] = pause_json or ""
        status = reply[0]
        if status in ("seen", "pending"):
            return await self._decided_or(request, claim, status)
        if status == "reused":
            return Reused.REUSED
        pause = pause_from_json(json.loads(reply[1])) if reply[1] else None
        return Observation(pause, tuple(reply[2]), tuple(reply[3]))

    async def _decided_or(
        self, request: ActionRequest, claim: Claim, status: str
    ) -> Seen | Pending | Reused:
        """The decided record answers a claim found decided or pending: a pending claim
        may belong to a call that committed but did not replace it with the marker (a
        crash between the two writes on a cluster)."""
        record = await self.decided(request.agent_id, request.action_id)
        if record is None:
            # Decided, but the record lapsed a moment before the marker: it is about
            # to lapse too, and the call retries.
            return Pending.PENDING
        if record.digest != claim.digest:
            return Reused.REUSED
        return Seen(record.decision)

    async def decided(self, agent_id: str, action_id: str) -> DecidedRecord | None:
        with unavailable_on_error("reading a decision"):
            raw = await self.client.get(self.keys.decided(agent_id, action_id))
        return DecidedRecord.decode(str(raw)) if raw else None

    async def mark_decided(self, request: ActionRequest, claim: Claim) -> None:
        """Replaces a claim by the decided marker (after a commit found the action
        decided already), so that resubmissions are answered at once."""
        with unavailable_on_error("marking the action decided"):
            await self.client.set(
                self.keys.claim(request.agent_id, request.action_id),
                claim.marker,
                px=self.lifetimes.decision_ms,
            )

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
                k.claim(a, request.action_id),
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
        record = await self.decided(agent_id, action_id)
        return None if record is None else record.decision

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

"""Claims, session history, decided actions, holds and session pauses in Redis.

Reads and the claim happen here; writes that must be atomic with an audit entry
are intents (`store/intents.py`) that `AuditLog.commit` applies in the same call.
"""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from gateway.domain.actions import ActionRequest, Decision
from gateway.domain.detect.anomaly import METRICS, Stats
from gateway.domain.detect.engine import Counters, DetectionSettings
from gateway.domain.detect.loops import agent_mark
from gateway.domain.detect.rates import WINDOW_SECONDS, Quota, RateCounts, Refusal
from gateway.domain.holds import Hold, Quarantine, SessionPause
from gateway.store.connection import is_cluster, load_script, unavailable_on_error
from gateway.store.intents import Claim, DecidedRecord, Lifetimes
from gateway.store.keys import KeySpace
from gateway.store.records import (
    hold_from_json,
    pause_from_json,
    quarantine_from_json,
)


@dataclass(frozen=True)
class Marks:
    """What one action adds to what detection counts: its type and fingerprint in
    the session's history, its mark in the agent's, its size in the byte window, at
    `now` (unix seconds)."""

    action_type: str
    fingerprint: str
    session_id: str
    request_bytes: int
    now: float

    @property
    def agent_mark(self) -> str:
        return agent_mark(self.session_id, self.fingerprint)

    @property
    def now_ms(self) -> int:
        return int(self.now * 1000)


@dataclass(frozen=True)
class Observation:
    """What the store knew when a new action arrived (and was claimed and counted)."""

    pause: SessionPause | None
    counters: Counters
    quarantine: Quarantine | None = None


@dataclass(frozen=True)
class Limited:
    """One more action would take a rate window over its limit: nothing was claimed
    or counted."""

    refusal: Refusal


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


# KEYS[1] the paused-sessions index, KEYS[2..] pause keys; ARGV their index members.
FORGET_LAPSED_PAUSES = """
for i, member in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('ZREM', KEYS[1], member)
  end
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
        self._release = load_script(client, "release")
        self._outcome = load_script(client, "outcome")

    def _detection_keys(self, request: ActionRequest) -> list[str]:
        """observe.lua's KEYS 1-12 (release.lua's too)."""
        k = self.keys
        a, s = request.agent_id, request.session_id
        return [
            k.claim(a, request.action_id),
            k.recent_types(a, s),
            k.recent_fingerprints(a, s),
            k.agent_marks(a),
            k.agent_window(a),
            k.session_window(a, s),
            k.type_window(a, request.action_type),
            k.agent_stats(a),
            k.agent_profile(a),
            k.session_mix(a, s),
            k.open_tasks(a),
            k.task_calls(a),
        ]

    async def observe(
        self,
        request: ActionRequest,
        claim: Claim,
        marks: Marks,
        settings: DetectionSettings,
        quota: Quota,
    ) -> Observation | Seen | Pending | Reused | Limited:
        """Claims the action_id and counts the action for detection, or says why not
        (decided before, being decided, used for another request, over a limit)."""
        a, s = request.agent_id, request.session_id
        keys = self._detection_keys(request)
        if self.single_node:
            keys += [self.keys.session_pause(a, s), self.keys.quarantine(a)]
        anomaly, loops, limits = settings.anomaly, settings.loops, quota.limits
        apm = anomaly.priors["actions_per_minute"]
        cpt = anomaly.priors["calls_per_task"]
        script = self._observe(
            keys=keys,
            args=[
                self.lifetimes.claim_ms,
                marks.action_type,
                marks.fingerprint,
                loops.history_length,
                self.lifetimes.session_idle_ms,
                claim.value,
                marks.now_ms,
                WINDOW_SECONDS * 1000,
                limits.actions_per_minute,
                limits.session_actions_per_minute,
                quota.type_per_minute,
                limits.request_bytes_per_minute,
                marks.request_bytes,
                marks.agent_mark,
                loops.agent_loop_window,
                int(settings.baseline_ttl_seconds * 1000),
                anomaly.min_samples,
                repr(anomaly.z_threshold),
                repr(anomaly.min_std_fraction),
                repr(apm.mean),
                repr(apm.std),
                repr(cpt.mean),
                repr(cpt.std),
                int(settings.task_idle_seconds * 1000),
                settings.profile.max_types,
                settings.profile.min_session_actions,
                "1" if anomaly.enabled else "0",
                s,
            ],
        )
        with unavailable_on_error("recording the action"):
            if self.single_node:
                reply = await script
            else:
                reply, (pause_json, quarantine_json) = await asyncio.gather(
                    script, self._audit_slot_state(a, s)
                )
                if reply[0] == "new":
                    reply[1], reply[10] = pause_json or "", quarantine_json or ""
        status = reply[0]
        if status in ("seen", "pending"):
            return await self._decided_or(request, claim, status)
        if status == "reused":
            return Reused.REUSED
        if status == "limited":
            return Limited(Refusal(str(reply[1]), _rate_counts(reply[2])))
        pause = pause_from_json(json.loads(reply[1])) if reply[1] else None
        quarantine = quarantine_from_json(json.loads(reply[10])) if reply[10] else None
        return Observation(pause, _counters(reply), quarantine)

    async def _audit_slot_state(self, agent_id: str, session_id: str) -> list[str | None]:
        """On a cluster: the session's pause and the agent's quarantine, both in the
        `{audit}` slot, in one round trip beside observe.lua (GETEX keeps the pause
        alive with the session, as the script does on one node)."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.getex(
                self.keys.session_pause(agent_id, session_id), px=self.lifetimes.session_idle_ms
            )
            pipe.get(self.keys.quarantine(agent_id))
            found: list[str | None] = await pipe.execute()
        return found

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
        retry can claim it, and takes its counts back out (the retry counts it
        again): only this claim is released, never another call's."""
        with unavailable_on_error("releasing the action claim"):
            await self._release(
                keys=self._detection_keys(request),
                args=[
                    claim.value,
                    marks.action_type,
                    marks.fingerprint,
                    marks.agent_mark,
                    marks.request_bytes,
                    request.session_id,
                    marks.now_ms // 60_000,
                ],
            )

    async def record_outcome(
        self, agent_id: str, failed: bool, tokens: int | None, settings: DetectionSettings
    ) -> tuple[float | None, int]:
        """Feeds a reported outcome to the agent's baselines (after its audit entry).
        Returns the agent's error rate over its last outcomes (None until there are
        enough of them) and how many outcomes that rate is over."""
        anomaly = settings.anomaly
        error_rate, tokens_prior = anomaly.priors["error_rate"], anomaly.priors["tokens_per_action"]
        with unavailable_on_error("recording the outcome"):
            rate, counted = await self._outcome(
                keys=[self.keys.agent_stats(agent_id), self.keys.outcomes(agent_id)],
                args=[
                    "1" if failed else "0",
                    -1 if tokens is None else tokens,
                    OUTCOME_WINDOW,
                    OUTCOME_MIN_FOR_RATE,
                    anomaly.min_samples,
                    repr(anomaly.z_threshold),
                    repr(anomaly.min_std_fraction),
                    repr(error_rate.mean),
                    repr(error_rate.std),
                    repr(tokens_prior.mean),
                    repr(tokens_prior.std),
                    int(settings.baseline_ttl_seconds * 1000),
                    "1" if anomaly.enabled else "0",
                ],
            )
        return (float(rate) if rate else None), int(counted)

    async def get_hold(self, hold_id: str) -> Hold | None:
        with unavailable_on_error("reading a hold"):
            raw = await self.client.hget(self.keys.hold(hold_id), "json")
        return hold_from_json(json.loads(raw)) if raw else None

    async def get_decision(self, agent_id: str, action_id: str) -> Decision | None:
        record = await self.decided(agent_id, action_id)
        return None if record is None else record.decision

    async def pending_count(self) -> int:
        """How many holds are pending (all replicas')."""
        with unavailable_on_error("counting holds"):
            return int(await self.client.zcard(self.keys.pending_holds))

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

    async def holds_expiring(self, after: float, until: float) -> list[tuple[float, Hold]]:
        """Pending holds (with their expiry) expiring after `after` and by `until`,
        soonest first."""
        with unavailable_on_error("listing holds"):
            scored = cast(
                list[tuple[str, float]],
                await self.client.zrangebyscore(
                    self.keys.pending_holds, f"({after!r}", repr(until), withscores=True
                ),
            )
            if not scored:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for hold_id, _ in scored:
                    pipe.hget(self.keys.hold(str(hold_id)), "json")
                raws = await pipe.execute()
        return [
            (float(score), hold_from_json(json.loads(raw)))
            for (_, score), raw in zip(scored, raws, strict=True)
            if raw
        ]

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

    async def mark_escalated(self, hold: Hold) -> bool:
        """True for the one caller (on any replica) that marks the hold escalated."""
        ttl_ms = max(1000, int((hold.expires_at - hold.created_at) * 1000))
        with unavailable_on_error("marking a hold escalated"):
            done = await self.client.set(self.keys.escalated(hold.hold_id), "1", nx=True, px=ttl_ms)
        return bool(done)

    async def paused_sessions(self, agent_id: str = "") -> list[tuple[str, str, SessionPause]]:
        """(agent, session, pause) of every paused session, oldest first; entries of
        pauses that lapsed with their session are dropped from the index."""
        with unavailable_on_error("listing paused sessions"):
            members = [str(m) for m in await self.client.zrange(self.keys.paused_sessions, 0, -1)]
            pairs = [tuple(m.split("|", 1)) for m in members]
            wanted = [(m, p) for m, p in zip(members, pairs, strict=True) if len(p) == 2]
            if agent_id:
                wanted = [(m, p) for m, p in wanted if p[0] == agent_id]
            if not wanted:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for _, (agent, session) in wanted:
                    pipe.get(self.keys.session_pause(agent, session))
                raws = await pipe.execute()
            lapsed = [(m, p) for (m, p), raw in zip(wanted, raws, strict=True) if not raw]
            if lapsed:
                # Only if still lapsed: the session may have been paused again since.
                pause_keys = [self.keys.session_pause(a, s) for _, (a, s) in lapsed]
                await self.client.eval(
                    FORGET_LAPSED_PAUSES,
                    1 + len(lapsed),
                    self.keys.paused_sessions,
                    *pause_keys,
                    *[m for m, _ in lapsed],
                )
        return [
            (agent, session, pause_from_json(json.loads(raw)))
            for (_, (agent, session)), raw in zip(wanted, raws, strict=True)
            if raw
        ]

    async def session_pause(self, agent_id: str, session_id: str) -> SessionPause | None:
        with unavailable_on_error("reading the session state"):
            raw = await self.client.get(self.keys.session_pause(agent_id, session_id))
        return pause_from_json(json.loads(raw)) if raw else None


# An agent's error rate is over its last OUTCOME_WINDOW reported outcomes, once it
# has OUTCOME_MIN_FOR_RATE of them.
OUTCOME_WINDOW = 20
OUTCOME_MIN_FOR_RATE = 10


def _rate_counts(values: list[object]) -> RateCounts:
    agent, session, type_count, bytes_ = (int(str(v)) for v in values)
    return RateCounts(agent, session, type_count, bytes_)


def _pairs(flat: object) -> dict[str, str]:
    if not isinstance(flat, list):
        return {}
    return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def _counters(reply: list[object]) -> Counters:
    """observe.lua's 'new' reply: ['new', pause, types, prints, marks, counts, stats,
    samples, mix, profile]."""

    def strings(value: object) -> tuple[str, ...]:
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    flat_stats = reply[6]
    assert isinstance(flat_stats, list)
    stats = {
        str(flat_stats[i]): Stats(
            int(str(flat_stats[i + 1])), float(flat_stats[i + 2]), float(flat_stats[i + 3])
        )
        for i in range(0, len(flat_stats), 4)
        if str(flat_stats[i]) in METRICS
    }
    assert isinstance(reply[5], list)
    return Counters(
        recent_types=strings(reply[2]),
        recent_fingerprints=strings(reply[3]),
        agent_marks=strings(reply[4]),
        rates=_rate_counts(reply[5]),
        stats=stats,
        samples={k: float(v) for k, v in _pairs(reply[7]).items()},
        session_mix={k: int(v) for k, v in _pairs(reply[8]).items()},
        agent_profile={k: int(v) for k, v in _pairs(reply[9]).items()},
    )

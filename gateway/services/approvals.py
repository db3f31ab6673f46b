"""Releasing held actions: approve, reject, expire, resume a session, and wait.

Each transition is checked by the pure state machine in `gateway/domain/holds.py`, then
committed together with its audit entry; the store's compare-and-set on the hold's
status makes racing approvers (and replicas) produce exactly one winner.

Waiting (`await_decision`) costs no Redis connection while nothing happens: the
process's one subscription (`ResolutionListener`) wakes the waiters of a hold, and
all of them share one read of it (`FreshReads`) and, at its expiry, one expire
attempt. So any number of `Await`s on a hold costs a couple of reads per wake-up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from gateway.domain.actions import Decision, ResolutionStatus
from gateway.domain.alerts.events import hold_escalated_event, security_event
from gateway.domain.alerts.rules import AlertEvent
from gateway.domain.audit.entry import EntryDraft, format_timestamp
from gateway.domain.audit.events import ActorType, EventType
from gateway.domain.holds import (
    Hold,
    HoldStatus,
    SessionPause,
    approve,
    check_reason,
    resolve,
    with_resolution_seq,
)
from gateway.domain.principals import Principal
from gateway.domain.redaction import Redactor
from gateway.domain.validation import require_identifier
from gateway.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    RecordedRefusal,
    StoreUnavailable,
    preview,
)
from gateway.store.audit_log import AuditLog
from gateway.store.intents import LiftPause, ResolveHold
from gateway.store.notifications import ResolutionListener
from gateway.store.state import StateStore

log = logging.getLogger("agentgw.approvals")

SYSTEM = "system"
HOLD_EVENTS = {
    ResolutionStatus.APPROVED: EventType.HOLD_APPROVED,
    ResolutionStatus.REJECTED: EventType.HOLD_REJECTED,
    ResolutionStatus.EXPIRED: EventType.HOLD_EXPIRED,
}
# app.py wakes every waiter this often, in case a notification was lost; the waiters
# of one hold then share one read.
RECHECK_SECONDS = 5.0
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Approvals of one quorum racing each other: each loser is counted on top of the
# winner, re-read and committed again, at most this many times.
QUORUM_RACE_ATTEMPTS = 20

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FreshReads(Generic[K, V]):
    """Coalesced reads per key, each one fresh for everyone who shares it.

    Callers that ask while a read of the key is waiting to start share that read; a
    caller that asks while one is already running gets the next one, which starts
    when the running one ends. So every caller gets a value read after it asked (a
    wake-up is never answered with state from before it), and a key has at most one
    read running and one waiting, however many callers there are. A caller that is
    cancelled (its deadline passed) does not cancel a read others share.
    """

    def __init__(self, read: Callable[[K], Awaitable[V]]) -> None:
        self._read = read
        self._running: dict[K, asyncio.Task[V]] = {}
        self._waiting: dict[K, asyncio.Task[V]] = {}
        self._tasks: set[asyncio.Task[V]] = set()

    async def get(self, key: K) -> V:
        task = self._waiting.get(key)
        if task is None:
            task = asyncio.create_task(self._run(key, self._running.get(key)))
            self._waiting[key] = task
            self._tasks.add(task)
            task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    async def _run(self, key: K, previous: asyncio.Task[V] | None) -> V:
        if previous is not None:
            await asyncio.wait([previous])
        me = asyncio.current_task()
        assert me is not None
        # From here on the read may already have happened for a new caller: it must
        # get the next one.
        if self._waiting.get(key) is me:
            del self._waiting[key]
        self._running[key] = me
        try:
            return await self._read(key)
        finally:
            if self._running.get(key) is me:
                del self._running[key]

    def _finished(self, task: asyncio.Task[V]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone away

    async def drain(self, timeout: float | None = None) -> None:
        """Waits (up to `timeout` seconds) for the reads still running, at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


class ApprovalDesk:
    def __init__(
        self,
        state: StateStore,
        audit: AuditLog,
        listener: ResolutionListener,
        clock: Callable[[], float],
        redactor: Redactor | None = None,
        observe: Callable[[AlertEvent], None] = lambda event: None,
    ) -> None:
        self.state = state
        self.audit = audit
        self.listener = listener
        self.clock = clock
        self.observe = observe  # alerting: never blocks
        # Approvers' reasons are free text, signed into the log: redacted like requests.
        self.redactor = redactor or Redactor()
        self.closing = False
        self._holds = FreshReads(state.get_hold)
        self._expiring: dict[str, asyncio.Task[Hold]] = {}
        self._escalated_through = float("-inf")  # escalate_due's holds up to this expiry
        # Called with each hold this replica resolved (approved, rejected, expired).
        self.on_resolved: Callable[[Hold], None] = lambda hold: None

    def close(self) -> None:
        """Ends every Await with UNAVAILABLE so agents retry elsewhere during shutdown."""
        self.closing = True
        self.listener.wake_all()

    async def drain(self, timeout: float) -> None:
        """Waits (up to `timeout` seconds each) for the shared reads and expiries still
        running; after the server stopped."""
        await self._holds.drain(timeout)
        if self._expiring:
            await asyncio.wait(list(self._expiring.values()), timeout=timeout)

    async def list_holds(
        self,
        agent_id: str = "",
        session_id: str = "",
        action_type: str = "",
        min_age_seconds: float = 0.0,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Hold], str]:
        """Pending holds matching the filters, oldest first, one page of them, and the
        token of the next page ("" on the last)."""
        size = page_size or DEFAULT_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidRequest("page_size", f"must be from 1 to {MAX_PAGE_SIZE}")
        after = _page_position(page_token)
        newest = self.clock() - min_age_seconds
        holds = sorted(
            (
                h
                for h in await self.state.pending_holds()
                if (not agent_id or h.request.agent_id == agent_id)
                and (not session_id or h.request.session_id == session_id)
                and (not action_type or h.request.action_type == action_type)
                and h.created_at <= newest
                and (after is None or (h.created_at, h.hold_id) > after)
            ),
            key=lambda h: (h.created_at, h.hold_id),
        )
        page = holds[:size]
        token = _page_token(page[-1]) if len(holds) > size else ""
        return page, token

    async def paused_sessions(self, agent_id: str = "") -> list[tuple[str, str, SessionPause]]:
        if agent_id:
            require_identifier("agent_id", agent_id, 128)
        return await self.state.paused_sessions(agent_id)

    async def escalate_due(self, escalation_seconds: float, hold_ttl: float) -> int:
        """Raises an alert (and logs), once per hold across replicas, for every hold
        pending longer than `escalation_seconds`; returns how many.

        Reads only the holds that may have become due since the last call: those
        expiring (created + `hold_ttl`) by now - escalation + ttl and after the last
        hold this replica escalated or found escalated."""
        if escalation_seconds <= 0:
            return 0
        now, done = self.clock(), 0
        candidates = await self.state.holds_expiring(
            self._escalated_through, now - escalation_seconds + hold_ttl
        )
        for expiry, hold in candidates:
            if now - hold.created_at < escalation_seconds:
                break  # created later than its expiry says (the TTL changed): next time
            self._escalated_through = expiry
            if await self.state.mark_escalated(hold):
                done += 1
                log.warning(
                    "hold still pending past its escalation time",
                    extra={
                        "category": "security",
                        "event": "hold_escalated",
                        "hold_id": hold.hold_id,
                        "agent_id": hold.request.agent_id,
                        "action_type": hold.request.action_type,
                        "pending_seconds": round(now - hold.created_at, 3),
                        "approvals": len(hold.approvals),
                        "approvals_required": hold.approvals_required,
                    },
                )
                self.observe(
                    hold_escalated_event(
                        hold.request.agent_id,
                        hold.request.session_id,
                        hold.hold_id,
                        hold.request.action_type,
                        now - hold.created_at,
                        now,
                    )
                )
        return done

    async def approve(self, principal: Principal, hold_id: str, reason: str) -> Hold:
        return await self._decide(principal, hold_id, ResolutionStatus.APPROVED, reason)

    async def reject(self, principal: Principal, hold_id: str, reason: str) -> Hold:
        return await self._decide(principal, hold_id, ResolutionStatus.REJECTED, reason)

    async def expire(self, hold_id: str) -> Hold:
        require_identifier("hold_id", hold_id, 128)
        hold = await self._read(hold_id)
        resolved = resolve(
            hold, ResolutionStatus.EXPIRED, SYSTEM, "hold expired without a decision", self.clock()
        )
        return await self._commit(hold, resolved, ActorType.SYSTEM)

    async def expire_due(self) -> int:
        """Resolves every hold whose time has run out; returns how many this call did."""
        done = 0
        for hold_id in await self.state.expired_hold_ids(self.clock()):
            try:
                await self.expire(hold_id)
                done += 1
            except Conflict:
                pass  # another replica, or an approver, got there first
            except NotFound:
                # Its record outlived its retention with no gateway running to expire it.
                await self.state.forget_pending_hold(hold_id)
            except StoreUnavailable:
                raise
            except Exception as e:
                # One unreadable hold must not stop the others from expiring.
                log.error(
                    "hold could not be expired",
                    exc_info=True,
                    extra={"category": "error", "hold_id": hold_id, "error": preview(str(e))},
                )
        return done

    async def _read(self, hold_id: str) -> Hold:
        hold = await self.state.get_hold(hold_id)
        if hold is None:
            raise NotFound(f"hold {preview(hold_id)} not found")
        return hold

    async def _decide(
        self, principal: Principal, hold_id: str, status: ResolutionStatus, reason: str
    ) -> Hold:
        """An approver's approval or rejection. An approval of a hold that needs a
        quorum counts once per approver; it resolves the hold when the last one
        needed arrives. A commit that loses a race with another approval is re-read
        and tried again, so concurrent approvals all count."""
        require_identifier("hold_id", hold_id, 128)
        reason = self.redactor.text(check_reason(reason))
        for _ in range(QUORUM_RACE_ATTEMPTS):
            hold = await self._read(hold_id)
            if hold.request.agent_id in principal.owns:
                await self._refuse_owner(principal, hold, status)
            now = self.clock()
            if status is ResolutionStatus.APPROVED:
                after = approve(hold, principal.name, reason, now)
            else:
                after = resolve(hold, status, principal.name, reason, now)
            try:
                return await self._commit(hold, after, ActorType.USER)
            except Conflict:
                if hold.approvals_required <= 1:
                    raise
                # Another approval of this quorum landed first: count ours on top.
                continue
        raise Conflict(f"hold {preview(hold_id)} is being decided by others; try again")

    async def _refuse_owner(
        self, principal: Principal, hold: Hold, status: ResolutionStatus
    ) -> None:
        """Separation of duties: a principal does not decide its own agents' actions.
        Recorded as a security event, then refused."""
        verb = "approve" if status is ResolutionStatus.APPROVED else "reject"
        draft = EntryDraft(
            timestamp=format_timestamp(self.clock()),
            event_type=EventType.SEPARATION_OF_DUTIES,
            actor=principal.name,
            actor_type=ActorType.USER,
            action_id=hold.request.action_id,
            action_type=hold.request.action_type,
            resource=hold.request.resource,
            details={
                "hold_id": hold.hold_id,
                "agent_id": hold.request.agent_id,
                "attempted": verb,
                "reason": "the approver owns the agent that submitted the action",
            },
            outcome="refused",
        )
        (entry,) = await self.audit.commit([draft])
        log.warning(
            "an owner tried to decide its own agent's action",
            extra={
                "category": "security",
                "actor": principal.name,
                "agent_id": hold.request.agent_id,
                "hold_id": hold.hold_id,
                "audit_seq": entry.seq,
            },
        )
        self.observe(
            security_event(
                "separation_of_duties",
                f"{principal.name} tried to {verb} hold {hold.hold_id} of its own agent",
                self.clock(),
                subject=hold.request.agent_id,
                agent_id=hold.request.agent_id,
                session_id=hold.request.session_id,
                trace_id=hold.trace_id,
                data={"hold_id": hold.hold_id, "actor": principal.name, "audit_seq": entry.seq},
            )
        )
        raise RecordedRefusal(
            f"you own agent {hold.request.agent_id}: another approver must {verb} its actions"
        )

    async def _commit(self, hold: Hold, after: Hold, actor_type: ActorType) -> Hold:
        """Appends the entry of a resolution (or of one more approval) with the change."""
        hold_id = hold.hold_id
        if after.resolution is not None:
            event_type = HOLD_EVENTS[after.resolution.status]
            actor, reason = after.resolution.decided_by, after.resolution.reason
            outcome = after.resolution.status.value
        else:
            event_type = EventType.HOLD_APPROVAL_ADDED
            actor, reason = after.approvals[-1].approver, after.approvals[-1].reason
            outcome = "approved"
        draft = EntryDraft(
            timestamp=format_timestamp(self.clock()),
            event_type=event_type,
            actor=actor,
            actor_type=actor_type,
            action_id=hold.request.action_id,
            action_type=hold.request.action_type,
            resource=hold.request.resource,
            details={
                "hold_id": hold_id,
                "agent_id": hold.request.agent_id,
                "session_id": hold.request.session_id,
                "reason": reason,
                "decision_seq": hold.audit_seq,
                "approvals": len(after.approvals),
                "approvals_required": hold.approvals_required,
            },
            outcome=outcome,
        )
        entries = await self.audit.commit(
            [draft],
            ResolveHold(after, approvals_before=len(hold.approvals)),
            conflict=f"hold {preview(hold_id)} is no longer pending",
        )
        log.info(
            "hold resolved" if after.resolution is not None else "hold approval added",
            extra={
                "category": "decision",
                "hold_id": hold_id,
                "status": after.status.value,
                "decided_by": actor,
                "approvals": len(after.approvals),
                "audit_seq": entries[0].seq,
            },
        )
        resolved = with_resolution_seq(after, entries[0].seq)
        if resolved.resolution is not None:
            self.on_resolved(resolved)
        return resolved

    async def resume_session(
        self, principal: Principal, agent_id: str, session_id: str, reason: str
    ) -> tuple[bool, int]:
        require_identifier("agent_id", agent_id, 128)
        require_identifier("session_id", session_id, 128)
        reason = self.redactor.text(check_reason(reason))
        pause = await self.state.session_pause(agent_id, session_id)
        if pause is None:
            return False, 0
        draft = EntryDraft.of_no_action(
            self.clock(),
            EventType.SESSION_RESUMED,
            principal.name,
            ActorType.USER,
            details={
                "agent_id": agent_id,
                "session_id": session_id,
                "reason": reason,
                "paused_by_hold": pause.hold_id,
            },
            outcome="resumed",
        )
        try:
            entries = await self.audit.commit(
                [draft], LiftPause(agent_id, session_id), conflict="not paused"
            )
        except Conflict:
            return False, 0  # resumed by someone else meanwhile
        return True, entries[0].seq

    async def await_decision(self, principal: Principal, hold_id: str, action_id: str) -> Decision:
        """Returns once the hold is resolved; the call's deadline bounds the wait."""
        if not hold_id:
            if not action_id:
                raise InvalidRequest("hold_id", "hold_id or action_id is required")
            require_identifier("action_id", action_id, 128)
            decision = await self.state.get_decision(principal.name, action_id)
            if decision is None:
                raise NotFound(f"no decision for action_id {preview(action_id)}")
            if not decision.hold_id:
                return decision
            hold_id = decision.hold_id
        require_identifier("hold_id", hold_id, 128)
        with self.listener.watch(hold_id) as woken:
            while True:
                if self.closing:
                    raise StoreUnavailable("the gateway is shutting down; call Await again")
                # Cleared before the read, and the shared read starts after this: a
                # wake-up after the read is kept for the wait.
                woken.clear()
                hold = await self._holds.get(hold_id)
                # Only agents await, and only their own holds.
                if hold is None or hold.request.agent_id != principal.name:
                    raise NotFound(f"hold {preview(hold_id)} not found")
                if hold.status is not HoldStatus.PENDING:
                    return hold.decision()
                remaining = hold.expires_at - self.clock()
                if remaining <= 0:
                    try:
                        return (await self._expire_shared(hold_id)).decision()
                    except Conflict:
                        continue
                # No timer of its own beyond the expiry: app.py wakes every waiter
                # every RECHECK_SECONDS, and the hold's waiters share that read.
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel
                # that lands as the wait ends, and a revoked call must end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await woken.wait()

    async def _expire_shared(self, hold_id: str) -> Hold:
        """One expire attempt for all the waiters whose hold ran out together."""
        task = self._expiring.get(hold_id)
        if task is None:
            task = asyncio.create_task(self.expire(hold_id))
            self._expiring[hold_id] = task

            def finished(done: asyncio.Task[Hold]) -> None:
                if self._expiring.get(hold_id) is done:
                    del self._expiring[hold_id]
                if not done.cancelled():
                    done.exception()  # retrieved: every waiter may have gone away

            task.add_done_callback(finished)
        return await asyncio.shield(task)


def _page_token(last: Hold) -> str:
    """Where the next page starts: after this hold (by creation time, then id)."""
    return base64.urlsafe_b64encode(f"{last.created_at!r}|{last.hold_id}".encode()).decode()


def _page_position(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        created, _, hold_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        position = (float(created), hold_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("page_token", "is not a token this gateway gave") from None
    if not hold_id:
        raise InvalidRequest("page_token", "is not a token this gateway gave")
    return position

"""Releasing held actions: approve, reject, expire, resume a session, and wait.

Each transition is checked by the pure state machine in `gateway/holds.py`, then
committed together with its audit entry; the store's compare-and-set on the hold's
status makes racing approvers (and replicas) produce exactly one winner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.actions import Decision, ResolutionStatus
from gateway.audit.entry import EntryDraft, format_timestamp
from gateway.config import Principal, Role
from gateway.errors import Conflict, InvalidRequest, NotFound, StoreUnavailable
from gateway.holds import Hold, HoldStatus, check_reason, resolve, with_resolution_seq
from gateway.store.audit_log import AuditLog
from gateway.store.notifications import ResolutionListener
from gateway.store.state import StateStore
from gateway.validation import require_identifier

log = logging.getLogger("agentgw.approvals")

SYSTEM = "system"
# Waiters re-read the hold at least this often, in case a notification was lost.
RECHECK_SECONDS = 5.0


class ApprovalDesk:
    def __init__(
        self,
        state: StateStore,
        audit: AuditLog,
        listener: ResolutionListener,
        clock: Callable[[], float],
    ) -> None:
        self.state = state
        self.audit = audit
        self.listener = listener
        self.clock = clock
        self.closing = False

    def close(self) -> None:
        """Ends every Await with UNAVAILABLE so agents retry elsewhere during shutdown."""
        self.closing = True
        self.listener.wake_all()

    async def list_holds(self, agent_id: str = "", session_id: str = "") -> list[Hold]:
        holds = await self.state.pending_holds()
        return [
            h
            for h in holds
            if (not agent_id or h.request.agent_id == agent_id)
            and (not session_id or h.request.session_id == session_id)
        ]

    async def approve(self, principal: Principal, hold_id: str, reason: str) -> Hold:
        return await self._resolve(
            hold_id, ResolutionStatus.APPROVED, principal.name, "user", reason
        )

    async def reject(self, principal: Principal, hold_id: str, reason: str) -> Hold:
        return await self._resolve(
            hold_id, ResolutionStatus.REJECTED, principal.name, "user", reason
        )

    async def expire(self, hold_id: str) -> Hold:
        return await self._resolve(
            hold_id, ResolutionStatus.EXPIRED, SYSTEM, "system", "hold expired without a decision"
        )

    async def expire_due(self) -> int:
        """Resolves every hold whose time has run out; returns how many this call did."""
        done = 0
        for hold_id in await self.state.expired_hold_ids(self.clock()):
            try:
                await self.expire(hold_id)
                done += 1
            except (Conflict, NotFound):
                pass  # another replica, or an approver, got there first
        return done

    async def _resolve(
        self, hold_id: str, status: ResolutionStatus, actor: str, actor_type: str, reason: str
    ) -> Hold:
        require_identifier("hold_id", hold_id, 128)
        reason = check_reason(reason)
        hold = await self.state.get_hold(hold_id)
        if hold is None:
            raise NotFound(f"hold {hold_id} not found")
        now = self.clock()
        resolved = resolve(hold, status, actor, reason, now)
        draft = EntryDraft(
            timestamp=format_timestamp(now),
            event_type=f"hold_{status.value}",
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
            },
            outcome=status.value,
        )
        entries = await self.audit.commit(
            [draft],
            self.state.record_resolution(resolved),
            conflict=f"hold {hold_id} is no longer pending",
        )
        log.info(
            "hold resolved",
            extra={
                "category": "user_interactions" if actor_type == "user" else "decisions",
                "hold_id": hold_id,
                "status": status.value,
                "decided_by": actor,
                "audit_seq": entries[0].seq,
            },
        )
        return with_resolution_seq(resolved, entries[0].seq)

    async def resume_session(
        self, principal: Principal, agent_id: str, session_id: str, reason: str
    ) -> tuple[bool, int]:
        require_identifier("agent_id", agent_id, 128)
        require_identifier("session_id", session_id, 128)
        reason = check_reason(reason)
        pause = await self.state.session_pause(agent_id, session_id)
        if pause is None:
            return False, 0
        draft = EntryDraft(
            timestamp=format_timestamp(self.clock()),
            event_type="session_resumed",
            actor=principal.name,
            actor_type="user",
            action_id="",
            action_type="",
            resource="",
            details={
                "agent_id": agent_id,
                "session_id": session_id,
                "reason": reason,
                "paused_by_hold": pause.get("hold_id", ""),
            },
            outcome="resumed",
        )
        try:
            entries = await self.audit.commit(
                [draft], self.state.record_resume(agent_id, session_id), conflict="not paused"
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
                raise NotFound(f"no decision for action_id {action_id}")
            if not decision.hold_id:
                return decision
            hold_id = decision.hold_id
        require_identifier("hold_id", hold_id, 128)
        with self.listener.watch(hold_id) as woken:
            while True:
                if self.closing:
                    raise StoreUnavailable("the gateway is shutting down; call Await again")
                # Cleared before the read: a wake-up after the read is kept for the wait.
                woken.clear()
                hold = await self.state.get_hold(hold_id)
                if hold is None or (
                    principal.role is Role.AGENT and hold.request.agent_id != principal.name
                ):
                    raise NotFound(f"hold {hold_id} not found")
                if hold.status is not HoldStatus.PENDING:
                    return hold.decision()
                remaining = hold.expires_at - self.clock()
                if remaining <= 0:
                    try:
                        return (await self.expire(hold_id)).decision()
                    except Conflict:
                        continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, RECHECK_SECONDS))

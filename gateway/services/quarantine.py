"""Quarantine: an admin holds (or denies) every action of one agent until released.

Both transitions need a reason and are audited (`agent_quarantined`,
`agent_released`), committed with the quarantine record in the `{audit}` slot; each
Submit of the agent reads the record with its counts (observe), so every replica
applies it from the next action on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.domain.audit.entry import EntryDraft
from gateway.domain.audit.events import ActorType, EventType
from gateway.domain.holds import Quarantine, check_reason
from gateway.domain.principals import Principal
from gateway.domain.redaction import Redactor
from gateway.domain.validation import require_identifier
from gateway.errors import Conflict, preview
from gateway.store.audit_log import AuditLog
from gateway.store.intents import QuarantineAgent, ReleaseAgent
from gateway.store.state import StateStore

log = logging.getLogger("agentgw.quarantine")


class QuarantineDesk:
    def __init__(
        self,
        state: StateStore,
        audit: AuditLog,
        clock: Callable[[], float],
        redactor: Redactor,
    ) -> None:
        self.state = state
        self.audit = audit
        self.clock = clock
        self.redactor = redactor

    async def quarantine(self, principal: Principal, agent_id: str, reason: str) -> Quarantine:
        require_identifier("agent_id", agent_id, 128)
        reason = self.redactor.text(check_reason(reason))
        now = self.clock()
        record = Quarantine(agent_id, reason, principal.name, now)
        entry = await self._record(
            principal,
            agent_id,
            reason,
            EventType.AGENT_QUARANTINED,
            "quarantined",
            QuarantineAgent(record),
            conflict=f"agent {preview(agent_id)} is already quarantined",
        )
        return Quarantine(agent_id, reason, principal.name, now, entry)

    async def release(self, principal: Principal, agent_id: str, reason: str) -> tuple[bool, int]:
        """(whether it was quarantined, the entry's seq); nothing is written if not."""
        require_identifier("agent_id", agent_id, 128)
        reason = self.redactor.text(check_reason(reason))
        try:
            seq = await self._record(
                principal,
                agent_id,
                reason,
                EventType.AGENT_RELEASED,
                "released",
                ReleaseAgent(agent_id),
                conflict=f"agent {preview(agent_id)} is not quarantined",
            )
        except Conflict:
            return False, 0
        return True, seq

    async def _record(
        self,
        principal: Principal,
        agent_id: str,
        reason: str,
        event_type: EventType,
        outcome: str,
        intent: QuarantineAgent | ReleaseAgent,
        conflict: str,
    ) -> int:
        draft = EntryDraft.of_no_action(
            self.clock(),
            event_type,
            principal.name,
            ActorType.USER,
            details={"agent_id": agent_id, "reason": reason},
            outcome=outcome,
        )
        (entry,) = await self.audit.commit([draft], intent, conflict=conflict)
        log.warning(
            f"agent {outcome}",
            extra={
                "category": "security",
                "actor": principal.name,
                "agent_id": agent_id,
                "audit_seq": entry.seq,
            },
        )
        return entry.seq

"""`Gateway.ReportOutcome`: an agent says how an action it submitted went.

Once per action, by the agent that submitted it: the outcome's audit entry and the
record that the action has one are committed together (a second report, on any
replica, fails), and then the outcome feeds the agent's baselines (error rate,
tokens per action) in the agent's slot. A failure between the two loses that one
sample, never the audit entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.config import Config
from gateway.domain.actions import Verdict
from gateway.domain.alerts.events import outcome_event
from gateway.domain.alerts.rules import AlertEvent
from gateway.domain.audit.entry import EntryDraft, format_timestamp
from gateway.domain.audit.events import ActorType, EventType
from gateway.domain.outcomes import Outcome, validate_outcome
from gateway.domain.principals import Principal
from gateway.domain.redaction import Redactor
from gateway.errors import InvalidRequest, NotFound, StoreUnavailable, preview
from gateway.services.decisions import authorize_agent
from gateway.store.audit_log import AuditLog
from gateway.store.intents import RecordOutcome
from gateway.store.state import StateStore

log = logging.getLogger("agentgw.outcomes")


class OutcomeDesk:
    def __init__(
        self,
        config: Config,
        state: StateStore,
        audit: AuditLog,
        clock: Callable[[], float],
        redactor: Redactor,
        observe: Callable[[AlertEvent], None] = lambda event: None,
    ) -> None:
        self.config = config
        self.state = state
        self.audit = audit
        self.clock = clock
        self.redactor = redactor
        self.observe = observe  # alerting: never blocks

    async def report(self, principal: Principal, outcome: Outcome) -> int:
        """Records the outcome; returns its audit seq."""
        validate_outcome(outcome, self.config.limits.max_id_chars)
        authorize_agent(principal, outcome.agent_id)
        # Only the agent's own decisions are found: another agent's action_id is
        # as unknown as one never submitted.
        decision = await self.state.get_decision(outcome.agent_id, outcome.action_id)
        if decision is None:
            raise NotFound(f"no decision for action_id {preview(outcome.action_id)}")
        if outcome.session_id and outcome.session_id != decision.session_id:
            raise InvalidRequest("session_id", "is not the session the action was submitted in")
        verdict = decision.verdict
        if decision.hold_id:
            hold = await self.state.get_hold(decision.hold_id)
            if hold is not None:
                verdict = hold.final_verdict
        draft = EntryDraft(
            timestamp=format_timestamp(self.clock()),
            event_type=EventType.OUTCOME_REPORTED,
            actor=outcome.agent_id,
            actor_type=ActorType.AGENT,
            action_id=outcome.action_id,
            action_type="",
            resource="",
            details={
                "session_id": decision.session_id,
                "error_type": self.redactor.text(outcome.error_type),
                "error": self.redactor.text(outcome.error),
                "duration_seconds": outcome.duration_seconds,
                "tokens": outcome.tokens,
                "cost": outcome.cost,
                "decision_seq": decision.audit_seq,
                "verdict": verdict.name.lower(),
            },
            outcome="success" if outcome.success else "failure",
        )
        (entry,) = await self.audit.commit(
            [draft],
            RecordOutcome(outcome.agent_id, outcome.action_id),
            conflict=f"an outcome was already reported for action_id {preview(outcome.action_id)}",
        )
        try:
            error_rate, counted = await self.state.record_outcome(
                outcome.agent_id, not outcome.success, outcome.tokens, self.config.detection
            )
            self.observe(
                outcome_event(
                    outcome.agent_id,
                    decision.session_id,
                    outcome.action_id,
                    outcome.success,
                    error_rate,
                    counted,
                    self.clock(),
                )
            )
        except StoreUnavailable as e:
            log.warning(
                "outcome recorded, but not counted in the agent's baselines",
                extra={"category": "error", "action_id": outcome.action_id, "error": str(e)},
            )
        log.info(
            "outcome reported",
            extra={
                "category": "action",
                "event_type": "outcome_reported",
                "agent_id": outcome.agent_id,
                "session_id": decision.session_id,
                "trace_id": decision.trace_id,
                "action_id": outcome.action_id,
                "success": outcome.success,
                "error_type": draft.details["error_type"],
                "result": draft.details["error"],
                "duration_seconds": outcome.duration_seconds,
                "tokens": outcome.tokens,
                "audit_seq": entry.seq,
            },
        )
        if verdict is not Verdict.ALLOW:
            log.warning(
                "outcome reported for an action that was not allowed",
                extra={
                    "category": "security",
                    "agent_id": outcome.agent_id,
                    "action_id": outcome.action_id,
                    "verdict": verdict.name.lower(),
                    "audit_seq": entry.seq,
                },
            )
        return entry.seq

"""One decision: the path of a `Submit` call, top to bottom.

authenticate (wire) -> validate -> idempotency + session state + counters (one Lua
call) -> policy -> detection -> verdict -> audit append with the state it records
(one Lua call) -> log. Any failure before the audit append completes ends in an
error (UNAVAILABLE / INVALID_ARGUMENT ...), never in an allow.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import replace

from gateway.actions import ActionRequest, Decision, Verdict
from gateway.audit.entry import EntryDraft, format_timestamp
from gateway.config import Config, Principal
from gateway.detect.loops import detect_loops, fingerprint
from gateway.errors import Forbidden, InFlight
from gateway.holds import Hold, finding_to_json
from gateway.policy.evaluator import evaluate_rules
from gateway.policy.reload import PolicyReloader
from gateway.redaction import redact
from gateway.store.audit_log import AuditLog
from gateway.store.state import Observation, Seen, StateStore
from gateway.validation import validate_request
from gateway.verdicts import VerdictOutcome, combine_verdict

log = logging.getLogger("agentgw.decisions")


def new_hold_id() -> str:
    return "hold_" + secrets.token_hex(12)


class DecisionPipeline:
    def __init__(
        self,
        config: Config,
        policy: PolicyReloader,
        state: StateStore,
        audit: AuditLog,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.policy = policy
        self.state = state
        self.audit = audit
        self.clock = clock

    async def submit(self, principal: Principal, request: ActionRequest) -> Decision:
        authorize_agent(principal, request)
        validate_request(request, self.config.limits)
        # Everything stored, logged or audited from here on uses the redacted copy.
        stored = replace(
            request, parameters=redact(request.parameters), labels=redact(request.labels)
        )
        observed = await self.state.observe(
            stored, fingerprint(stored, self.config.detection), self.config.detection
        )
        if isinstance(observed, Seen):
            return await self.replay(request, observed)
        try:
            decision = await self.decide(request, stored, observed)
        except BaseException:
            # Free the action_id so the agent can retry; best effort, Redis may be down.
            try:
                await self.state.release_claim(request)
            except Exception as e:
                log.warning("could not release an action claim", extra={"error": str(e)})
            raise
        log.info(
            "decision",
            extra={
                "category": "decisions",
                "agent_id": request.agent_id,
                "session_id": request.session_id,
                "action_id": request.action_id,
                "action_type": request.action_type,
                "verdict": decision.verdict.name.lower(),
                "findings": [f.type for f in decision.findings],
                "matched_rules": list(decision.matched_rules),
                "hold_id": decision.hold_id,
                "audit_seq": decision.audit_seq,
            },
        )
        return decision

    async def decide(
        self, request: ActionRequest, stored: ActionRequest, observed: Observation
    ) -> Decision:
        now = self.clock()
        policy_result = evaluate_rules(self.policy.current, request)
        findings = detect_loops(
            observed.recent_types, observed.recent_fingerprints, self.config.detection
        )
        outcome = combine_verdict(
            policy_result,
            findings,
            self.config.effects,
            session_paused=observed.pause is not None,
            paused_session_verdict=self.config.paused_session_verdict,
        )
        decision = Decision(
            action_id=request.action_id,
            session_id=request.session_id,
            verdict=outcome.verdict,
            reason=outcome.reason,
            findings=tuple(findings),
            matched_rules=policy_result.matched_rules,
        )
        hold = None
        if outcome.verdict is Verdict.HOLD:
            hold = Hold(
                hold_id=new_hold_id(),
                request=stored,
                findings=decision.findings,
                matched_rules=decision.matched_rules,
                reason=decision.reason,
                created_at=now,
                expires_at=now + self.config.hold_ttl_seconds,
                paused_session=outcome.pause_session,
            )
            decision = replace(decision, hold_id=hold.hold_id, expires_at=hold.expires_at)
        draft = decision_entry(stored, decision, outcome, now)  # `stored` is redacted
        mutation = self.state.record_decision(
            request, decision, hold, self.config.idempotency_ttl_seconds
        )
        entries = await self.audit.commit([draft], mutation)
        return replace(decision, audit_seq=entries[0].seq)

    async def replay(self, request: ActionRequest, seen: Seen) -> Decision:
        """The first decision for a resubmitted action_id; nothing is counted or written."""
        if seen.decision is None:
            raise InFlight(f"action_id {request.action_id} is being decided by another call; retry")
        if seen.decision.hold_id:
            hold = await self.state.get_hold(seen.decision.hold_id)
            if hold is not None:
                return hold.decision()
        return seen.decision


def authorize_agent(principal: Principal, request: ActionRequest) -> None:
    if request.agent_id != principal.name:
        raise Forbidden(
            f"agent_id '{request.agent_id}' does not match the authenticated agent "
            f"'{principal.name}'"
        )


def decision_entry(
    request: ActionRequest, decision: Decision, outcome: VerdictOutcome, now: float
) -> EntryDraft:
    details = {
        "session_id": request.session_id,
        "parameters": dict(request.parameters),
        "reasoning": request.reasoning,
        "labels": dict(request.labels),
        "reason": decision.reason,
        "findings": [finding_to_json(f) for f in decision.findings],
        "matched_rules": list(decision.matched_rules),
        "hold_id": decision.hold_id,
        "hold_expires_at": format_timestamp(decision.expires_at) if decision.hold_id else "",
        "session_paused": outcome.pause_session,
    }
    return EntryDraft(
        timestamp=format_timestamp(now),
        event_type="action_decided",
        actor=request.agent_id,
        actor_type="agent",
        action_id=request.action_id,
        action_type=request.action_type,
        resource=request.resource,
        details=details,
        outcome=decision.verdict.name.lower(),
    )

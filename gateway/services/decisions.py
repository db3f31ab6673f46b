"""One decision: the path of a `Submit` call, top to bottom.

validate -> authenticate the agent (wire + `authorize_agent`) -> claim the action_id
with idempotency + session state + counters (one Lua call) -> policy -> detection ->
verdict -> audit append with the state it records (one Lua call) -> log. Any failure
before the audit append completes ends in an error (UNAVAILABLE / INVALID_ARGUMENT
...), never in an allow.

An action_id stands for one request (its digest): the same request again gets the
first decision, another request under it is refused and recorded as a security
event. A claim on the action_id is released only when nothing was or will be
committed for it, so a cancelled or retried call never gets an action decided twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from gateway.config import Config
from gateway.domain.actions import (
    ActionRequest,
    Decision,
    Finding,
    Verdict,
    content_digest,
    request_content,
)
from gateway.domain.alerts.events import decision_event, security_event
from gateway.domain.alerts.rules import AlertEvent
from gateway.domain.audit.entry import MAX_ENTRY_BYTES, AuditEntry, EntryDraft, format_timestamp
from gateway.domain.audit.events import ActorType, EventType
from gateway.domain.audit.keys import Signer
from gateway.domain.detect.engine import detect
from gateway.domain.detect.loops import fingerprint
from gateway.domain.detect.rates import Quota, rate_limit_finding
from gateway.domain.holds import Hold
from gateway.domain.policy.evaluator import evaluate_rules
from gateway.domain.principals import Principal
from gateway.domain.redaction import Redactor
from gateway.domain.validation import validate_request
from gateway.domain.verdicts import VerdictOutcome, combine_verdict
from gateway.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    InFlight,
    InvalidRequest,
    OutcomeUnknown,
)
from gateway.services.policy_reload import PolicyReloader
from gateway.store.audit_log import AuditLog
from gateway.store.intents import Claim, RecordDecision
from gateway.store.records import finding_to_json
from gateway.store.state import Limited, Marks, Observation, Pending, Reused, Seen, StateStore

log = logging.getLogger("agentgw.decisions")

DIGEST_KEY_LABEL = b"agentgw/request-digest/v1\x00"
# A retry that finds its action being decided by another call waits this long for
# that call's decision before it is told to retry (ABORTED).
PENDING_WAIT_SECONDS = 5.0


# The most a request may weigh as audited (request_content): its entry must fit
# MAX_ENTRY_BYTES with the decision's own fields (reason, findings, rules) beside it.
AUDITED_REQUEST_BYTES = MAX_ENTRY_BYTES - 8 * 1024


def new_hold_id() -> str:
    return "hold_" + secrets.token_hex(12)


def digest_key(signer: Signer) -> bytes:
    """The key of request digests: the first audit key's (deterministic) Ed25519
    signature of a label no entry or checkpoint signature can have. Every replica has
    the first key, so every replica derives the same secret, and no new file is needed."""
    return signer.sign(DIGEST_KEY_LABEL)


class DecisionPipeline:
    def __init__(
        self,
        config: Config,
        policy: PolicyReloader,
        state: StateStore,
        audit: AuditLog,
        clock: Callable[[], float],
        redactor: Redactor,
        observe: Callable[[AlertEvent], None] = lambda event: None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.state = state
        self.audit = audit
        self.clock = clock
        self.redactor = redactor
        self.observe = observe  # alerting: never blocks
        self.digest_key = digest_key(audit.signing_keys.first)
        self._releases: set[asyncio.Task[None]] = set()
        # Called with each new decision and the seconds it took (the app counts them).
        self.on_decided: Callable[[Decision, float], None] = lambda decision, seconds: None
        # Tracing (set by the app when it traces): a child span around each step, and
        # attributes on the call's span; by default nothing.
        self.span: Callable[..., contextlib.AbstractContextManager[None]] = _no_span
        self.annotate: Callable[..., None] = lambda **attributes: None

    async def submit(
        self, principal: Principal, request: ActionRequest, trace_id: str = ""
    ) -> Decision:
        started = time.perf_counter()
        # Sizes first: nothing below looks at (or echoes) an oversized field.
        validate_request(request, self.config.limits)
        refuse_secret_identifiers(request, self.redactor)
        authorize_agent(principal, request.agent_id)
        content = request_content(request)
        if len(content) > AUDITED_REQUEST_BYTES:
            raise InvalidRequest(
                "parameters",
                f"the request is {len(content)} bytes as audited (parameters, reasoning, "
                f"labels, resource); at most {AUDITED_REQUEST_BYTES} fit its audit entry",
            )
        claim = Claim.new(content_digest(content, self.digest_key))
        # Everything stored, logged or audited from here on uses the redacted copy.
        stored = self.redactor.request(request)
        detection, now, size = self.config.detection, self.clock(), len(content)
        marks = Marks(
            stored.action_type,
            fingerprint(stored, detection.loops),
            stored.session_id,
            size,
            now,
        )
        quota = detection.rates.quota(request.agent_id, request.action_type, size)
        observed: Observation | Seen | Reused | Limited | None = None
        committing: asyncio.Future[list[AuditEntry]] | None = None
        try:
            # The audit writer may wait for this call's entry to append it with others.
            with self.audit.preparing():
                with self.span("agentgw.claim"):
                    observed = await self.claim_action(stored, claim, marks, quota)
                if isinstance(observed, Limited):
                    decision, draft, intent = self.decide_over_quota(
                        request, stored, claim, observed, quota, now, trace_id
                    )
                    counts, admitted = observed.refusal.counts, False
                    committing = self.audit.enqueue([draft], intent)
                elif isinstance(observed, Observation):
                    decision, draft, intent = self.decide(
                        request, stored, claim, observed, now, trace_id
                    )
                    counts, admitted = observed.counters.rates, True
                    committing = self.audit.enqueue([draft], intent)
            if isinstance(observed, Seen):
                return await self.replay(observed)
            if isinstance(observed, Reused):
                await self.refuse_reuse(stored, trace_id)
            assert committing is not None
            with self.span("agentgw.audit_commit"):
                entries = await asyncio.shield(committing)
        except Conflict:
            # Another call decided this action_id first (this call's claim lapsed):
            # nothing was written; its decision stands, and is the answer.
            self.release_unless_committed(request, claim, marks, committing)
            return await self.decided_elsewhere(stored, claim, trace_id)
        except BaseException:
            # None: cancelled or failed while claiming, so the claim may stand.
            if observed is None or isinstance(observed, Observation):
                self.release_unless_committed(request, claim, marks, committing)
            raise
        decision = replace(decision, audit_seq=entries[0].seq)
        log.info(
            "decision",
            extra={
                "category": "decision",
                "agent_id": request.agent_id,
                "session_id": request.session_id,
                "action_id": request.action_id,
                "action_type": request.action_type,
                "verdict": decision.verdict.name.lower(),
                "findings": [f.type for f in decision.findings],
                "matched_rules": list(decision.matched_rules),
                "hold_id": decision.hold_id,
                "audit_seq": decision.audit_seq,
                "trace_id": trace_id,
            },
        )
        self.observe(decision_event(stored, decision, quota, counts, admitted, now, trace_id))
        self.on_decided(decision, time.perf_counter() - started)
        self.annotate(
            **{
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": request.action_type,
                "gen_ai.agent.id": request.agent_id,
                "session.id": request.session_id,
                "agentgw.action_id": request.action_id,
                "agentgw.verdict": decision.verdict.name.lower(),
                "agentgw.audit_seq": decision.audit_seq,
                "agentgw.findings": [f.type for f in decision.findings],
                "agentgw.hold_id": decision.hold_id,
            }
        )
        return decision

    async def claim_action(
        self, stored: ActionRequest, claim: Claim, marks: Marks, quota: Quota
    ) -> Observation | Seen | Reused | Limited:
        """Claims the action_id, or finds its decision; while another call decides the
        same request, waits (bounded) for that call's decision."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + PENDING_WAIT_SECONDS
        pause = 0.005
        while True:
            observed = await self.state.observe(stored, claim, marks, self.config.detection, quota)
            if observed is not Pending.PENDING:
                return observed
            if loop.time() + pause > give_up:
                raise InFlight(
                    f"action_id {stored.action_id} is being decided by another call; retry"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    def release_unless_committed(
        self,
        request: ActionRequest,
        claim: Claim,
        marks: Marks,
        committing: asyncio.Future[list[AuditEntry]] | None,
    ) -> None:
        """Frees the claim once it is certain that nothing was or will be committed
        for it: at once if no commit was queued, else when the commit has failed
        without writing. A commit that landed, or whose outcome is unknown (its reply
        was lost), keeps the claim: the decision record replaces it, or it lapses
        after its TTL, and the commit itself checks that the claim still stands."""
        if committing is None:
            self._spawn_release(request, claim, marks)
            return

        def after_commit(future: asyncio.Future[list[AuditEntry]]) -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None and not isinstance(error, OutcomeUnknown):
                self._spawn_release(request, claim, marks)

        committing.add_done_callback(after_commit)

    def _spawn_release(self, request: ActionRequest, claim: Claim, marks: Marks) -> None:
        # A task of its own: the call that held the claim may be cancelled already.
        task = asyncio.get_running_loop().create_task(self._release(request, claim, marks))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, request: ActionRequest, claim: Claim, marks: Marks) -> None:
        try:
            await self.state.release_claim(request, claim, marks)
        except Exception as e:  # best effort: the claim lapses after its TTL anyway
            log.warning(
                "could not release an action claim",
                extra={"category": "error", "action_id": request.action_id, "error": str(e)},
            )

    async def drain(self) -> None:
        """Waits for claim releases in progress (the app calls this when stopping)."""
        while self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    def decide(
        self,
        request: ActionRequest,
        stored: ActionRequest,
        claim: Claim,
        observed: Observation,
        now: float,
        trace_id: str = "",
    ) -> tuple[Decision, EntryDraft, RecordDecision]:
        with self.span("agentgw.detection"):
            findings = detect(stored, observed.counters, self.config.detection)
        quarantine = observed.quarantine.reason if observed.quarantine else None
        decision, draft, hold = self.verdict(
            request, stored, findings, observed.pause is not None, now, quarantine, trace_id
        )
        return decision, draft, RecordDecision(request, claim, decision, hold)

    def decide_over_quota(
        self,
        request: ActionRequest,
        stored: ActionRequest,
        claim: Claim,
        limited: Limited,
        quota: Quota,
        now: float,
        trace_id: str = "",
    ) -> tuple[Decision, EntryDraft, RecordDecision | None]:
        """An action over a rate limit: recorded compactly (its digest and size, not its
        content), so that a flood fills neither Redis nor the log. Refused (the
        default effect of `rate_limit`), it is not kept for idempotency: the same
        action_id may be submitted again once the window has room."""
        finding = rate_limit_finding(limited.refusal, quota, request.action_type)
        compact = replace(
            stored,
            parameters={"digest": claim.digest, "bytes": quota.request_bytes},
            reasoning="",
        )
        decision, draft, hold = self.verdict(
            request, compact, [finding], False, now, trace_id=trace_id
        )
        if decision.verdict is Verdict.DENY:
            return decision, draft, None
        return decision, draft, RecordDecision(request, claim, decision, hold)

    def verdict(
        self,
        request: ActionRequest,
        stored: ActionRequest,
        findings: list[Finding],
        in_paused_session: bool,
        now: float,
        quarantine_reason: str | None = None,
        trace_id: str = "",
    ) -> tuple[Decision, EntryDraft, Hold | None]:
        """Policy and findings combined into the decision, its entry and its hold."""
        with self.span("agentgw.policy"):
            policy_result = evaluate_rules(self.policy.current, request)
        outcome = combine_verdict(
            policy_result,
            findings,
            self.config.recommendations,
            in_paused_session=in_paused_session,
            paused_session_verdict=self.config.paused_session_verdict,
            quarantine_reason=quarantine_reason,
            quarantine_verdict=self.config.quarantine_verdict,
        )
        decision = Decision(
            action_id=request.action_id,
            session_id=request.session_id,
            verdict=outcome.verdict,
            reason=outcome.reason,
            findings=tuple(findings),
            matched_rules=policy_result.matched_rules,
            trace_id=trace_id,
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
                paused_session=outcome.paused_session,
                # A hold rule's quorum; a hold for any other reason needs one approver.
                approvals_required=(
                    policy_result.quorum if policy_result.verdict is Verdict.HOLD else 1
                ),
                trace_id=trace_id,
            )
            decision = replace(
                decision,
                hold_id=hold.hold_id,
                expires_at=hold.expires_at,
                approvals_required=hold.approvals_required,
            )
        draft = decision_entry(stored, decision, outcome, now)  # `stored` is redacted
        return decision, draft, hold

    async def decided_elsewhere(
        self, stored: ActionRequest, claim: Claim, trace_id: str = ""
    ) -> Decision:
        """The answer when the commit found the action decided by another call: that
        decision if it was for the same request, else the reuse refusal."""
        record = await self.state.decided(stored.agent_id, stored.action_id)
        if record is None:  # lapsed since: the client's retry decides it anew
            raise InFlight(f"action_id {stored.action_id} was decided by another call; retry")
        if record.digest != claim.digest:
            await self.refuse_reuse(stored, trace_id)
        await self.state.mark_decided(stored, claim)
        return await self.replay(Seen(record.decision))

    async def replay(self, seen: Seen) -> Decision:
        """The first decision for a resubmitted request; nothing is counted or written.
        With replica acks, answered only once it is on enough replicas (the call that
        appended it may have failed for want of them)."""
        await self.audit.replicated()
        if seen.decision.hold_id:
            hold = await self.state.get_hold(seen.decision.hold_id)
            if hold is not None:
                return hold.decision()
        return seen.decision

    async def refuse_reuse(self, stored: ActionRequest, trace_id: str = "") -> None:
        """An action_id already used for other content: refused, and recorded as a
        security event and raised as an alert (the first decision is not returned for
        a different action)."""
        draft = EntryDraft(
            timestamp=format_timestamp(self.clock()),
            event_type=EventType.ACTION_ID_REUSED,
            actor=stored.agent_id,
            actor_type=ActorType.AGENT,
            action_id=stored.action_id,
            action_type=stored.action_type,
            resource=stored.resource,
            details={
                "session_id": stored.session_id,
                "reason": "the action_id was already used for a request with other content",
                "trace_id": trace_id,
            },
            outcome="refused",
        )
        (entry,) = await self.audit.commit([draft])
        self.observe(
            security_event(
                "action_id_reused",
                f"action_id {stored.action_id} resubmitted with other content",
                self.clock(),
                subject=stored.agent_id,
                agent_id=stored.agent_id,
                session_id=stored.session_id,
                trace_id=trace_id,
                data={"action_id": stored.action_id, "audit_seq": entry.seq},
            )
        )
        log.warning(
            "action_id reused for a different request",
            extra={
                "category": "security",
                "agent_id": stored.agent_id,
                "session_id": stored.session_id,
                "action_id": stored.action_id,
                "action_type": stored.action_type,
                "audit_seq": entry.seq,
                "trace_id": trace_id,
            },
        )
        raise AlreadyExists(
            f"action_id {stored.action_id} was already used for a request with different "
            "content; use a new action_id for a new action"
        )


def _no_span(name: str, **attributes: object) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def refuse_secret_identifiers(request: ActionRequest, redactor: Redactor) -> None:
    """Identifiers are stored, signed and compared as they are, never redacted: one
    that looks like a credential (a token, a key, a URL with a password) is refused
    rather than written into the append-only log. The message does not repeat it."""
    for field, value in (
        ("action_id", request.action_id),
        ("session_id", request.session_id),
        ("action_type", request.action_type),
    ):
        if redactor.looks_secret(value):
            raise InvalidRequest(
                field,
                "looks like a credential (token, key or password); identifiers are "
                "recorded as they are, so they must not carry secrets",
            )


def authorize_agent(principal: Principal, agent_id: str) -> None:
    """Agents act only as themselves."""
    if agent_id != principal.name:
        raise Forbidden(
            f"agent_id '{agent_id}' does not match the authenticated agent '{principal.name}'"
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
        "paused_session": outcome.paused_session,
        "trace_id": decision.trace_id,
    }
    return EntryDraft(
        timestamp=format_timestamp(now),
        event_type=EventType.ACTION_DECIDED,
        actor=request.agent_id,
        actor_type=ActorType.AGENT,
        action_id=request.action_id,
        action_type=request.action_type,
        resource=request.resource,
        details=details,
        outcome=decision.verdict.name.lower(),
    )

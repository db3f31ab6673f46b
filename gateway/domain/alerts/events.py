"""The events alert rules are evaluated on, built from what the gateway just did.

One builder per kind of event, so that every rule sees the same names: a decision
(its findings, verdict and how full its rate windows are), a reported outcome (the
agent's error rate), a security event, an escalated hold, a failed audit append.
Values come in redacted (the caller's `stored` request); identifiers are as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.domain.actions import ActionRequest, Decision, Finding
from gateway.domain.alerts.model import GATEWAY_SUBJECT
from gateway.domain.alerts.rules import LOOP_FINDINGS, AlertEvent
from gateway.domain.detect.rates import WINDOW_LABELS, Quota, RateCounts, usage

INVESTIGATE = "investigate"


def _finding(f: Finding) -> Mapping[str, Any]:
    return {
        "type": f.type,
        "severity": f.severity,
        "recommended_action": f.recommended_action,
        "description": f.description,
    }


def decision_event(
    request: ActionRequest,
    decision: Decision,
    quota: Quota,
    counts: RateCounts,
    admitted: bool,
    now: float,
    trace_id: str,
) -> AlertEvent:
    window, fill = usage(quota, counts, admitted)
    loops = [f.description for f in decision.findings if f.type in LOOP_FINDINGS]
    unusual = [f.description for f in decision.findings if f.recommended_action == INVESTIGATE]
    return AlertEvent(
        event_type="decision",
        subject=request.agent_id,
        time=now,
        agent_id=request.agent_id,
        session_id=request.session_id,
        trace_id=trace_id,
        metrics={
            "agent_actions_per_minute": float(counts.agent_actions),
            "session_actions_per_minute": float(counts.session_actions),
            "agent_bytes_per_minute": float(counts.agent_bytes),
            "resource_usage": fill,
            "findings": float(len(decision.findings)),
            "investigate": float(len(unusual)),
        },
        findings=tuple(_finding(f) for f in decision.findings),
        data={
            "action_id": request.action_id,
            "action_type": request.action_type,
            "verdict": decision.verdict.name.lower(),
            "matched_rules": list(decision.matched_rules),
            "audit_seq": decision.audit_seq,
            "resource": WINDOW_LABELS[window],
            "loop": "; ".join(loops),
            "unusual": "; ".join(unusual),
        },
    )


def outcome_event(
    agent_id: str,
    session_id: str,
    action_id: str,
    success: bool,
    error_rate: float | None,
    outcomes: int,
    now: float,
) -> AlertEvent:
    metrics = {"outcomes": float(outcomes)}
    if error_rate is not None:  # None: too few outcomes yet for a rate
        metrics["error_rate"] = error_rate
    return AlertEvent(
        event_type="outcome",
        subject=agent_id,
        time=now,
        agent_id=agent_id,
        session_id=session_id,
        metrics=metrics,
        data={"action_id": action_id, "success": success},
    )


def security_event(
    kind: str,
    description: str,
    now: float,
    subject: str = GATEWAY_SUBJECT,
    agent_id: str = "",
    session_id: str = "",
    trace_id: str = "",
    data: Mapping[str, Any] | None = None,
    count: int = 1,
) -> AlertEvent:
    """`kind`: authentication_failed, permission_denied, separation_of_duties,
    action_id_reused, tampering_detected, ... `count`: how many such events this one
    stands for (failures are coalesced per source and window)."""
    return AlertEvent(
        event_type="security",
        subject=subject,
        time=now,
        agent_id=agent_id,
        session_id=session_id,
        trace_id=trace_id,
        metrics={"count": float(count)},
        data={**(data or {}), "kind": kind, "description": description},
    )


def hold_escalated_event(
    agent_id: str, session_id: str, hold_id: str, action_type: str, pending: float, now: float
) -> AlertEvent:
    return AlertEvent(
        event_type="hold",
        subject=agent_id,
        time=now,
        agent_id=agent_id,
        session_id=session_id,
        metrics={"pending_seconds": pending},
        data={"kind": "escalated", "hold_id": hold_id, "action_type": action_type},
    )


def audit_failure_event(error: str, now: float) -> AlertEvent:
    return AlertEvent(
        event_type="audit",
        subject=GATEWAY_SUBJECT,
        time=now,
        data={"kind": "append_failed", "error": error},
    )


def sealing_failure_event(error: str, unsealed: int, now: float) -> AlertEvent:
    """The sealer could not write the next tiles: entries pile up in Redis, and past
    audit.tiles.max_unsealed_entries every decision fails closed."""
    return AlertEvent(
        event_type="tiles",
        subject=GATEWAY_SUBJECT,
        time=now,
        data={"kind": "seal_failed", "error": error},
        metrics={"unsealed": float(unsealed)},
    )


def store_unavailable_event(error: str, now: float) -> AlertEvent:
    """Redis stopped answering the gateway's health probe: every decision fails
    closed until it answers again."""
    return AlertEvent(
        event_type="store",
        subject=GATEWAY_SUBJECT,
        time=now,
        data={"kind": "unreachable", "error": error},
    )

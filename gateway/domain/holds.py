"""Hold lifecycle: pending -> approved | rejected | expired, exactly once.

Pure state machine over values and a clock reading. The store makes the transition
atomic across replicas (compare-and-set on the status); this module decides whether
a transition is allowed and what it produces. Quorum and separation of duties will
extend `resolve`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway.domain.actions import (
    ActionRequest,
    Decision,
    Finding,
    Resolution,
    ResolutionStatus,
    Verdict,
)
from gateway.errors import Conflict, InvalidRequest


class HoldStatus(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


_STATUS_FOR = {
    ResolutionStatus.APPROVED: HoldStatus.APPROVED,
    ResolutionStatus.REJECTED: HoldStatus.REJECTED,
    ResolutionStatus.EXPIRED: HoldStatus.EXPIRED,
}

MAX_REASON_CHARS = 2000


@dataclass(frozen=True)
class Hold:
    hold_id: str
    request: ActionRequest  # parameters already redacted
    findings: tuple[Finding, ...]
    matched_rules: tuple[str, ...]
    reason: str
    created_at: float
    expires_at: float
    paused_session: bool
    audit_seq: int = 0
    status: HoldStatus = HoldStatus.PENDING
    resolution: Resolution | None = None

    @property
    def final_verdict(self) -> Verdict:
        if self.status is HoldStatus.PENDING:
            return Verdict.HOLD
        return Verdict.ALLOW if self.status is HoldStatus.APPROVED else Verdict.DENY

    def decision(self) -> Decision:
        """What the agent sees for this hold now."""
        if self.resolution is None:
            reason = self.reason
        else:
            reason = f"{self.resolution.status.value} by {self.resolution.decided_by}: " + (
                self.resolution.reason
            )
        return Decision(
            action_id=self.request.action_id,
            session_id=self.request.session_id,
            verdict=self.final_verdict,
            reason=reason,
            findings=self.findings,
            matched_rules=self.matched_rules,
            hold_id=self.hold_id,
            expires_at=self.expires_at,
            resolution=self.resolution,
            audit_seq=self.audit_seq,
        )


def check_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise InvalidRequest("reason", "is required")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidRequest(
            "reason", f"length {len(reason)} exceeds the limit of {MAX_REASON_CHARS}"
        )
    return reason


def resolve(hold: Hold, status: ResolutionStatus, decided_by: str, reason: str, now: float) -> Hold:
    """Returns the resolved hold (audit_seq filled in by the caller after the append).

    Raises Conflict when the hold is no longer pending, or when an approver acts on a
    hold whose time has run out (it resolves as expired instead).
    """
    if hold.status is not HoldStatus.PENDING:
        raise Conflict(f"hold {hold.hold_id} is already {hold.status.value}")
    if status is ResolutionStatus.EXPIRED:
        if now < hold.expires_at:
            raise Conflict(f"hold {hold.hold_id} has not expired yet")
    elif now >= hold.expires_at:
        raise Conflict(f"hold {hold.hold_id} expired; it can no longer be {status.value}")
    resolution = Resolution(
        status=status, decided_by=decided_by, reason=reason, decided_at=now, audit_seq=0
    )
    return replace(hold, status=_STATUS_FOR[status], resolution=resolution)


def with_resolution_seq(hold: Hold, seq: int) -> Hold:
    assert hold.resolution is not None
    return replace(hold, resolution=replace(hold.resolution, audit_seq=seq))


# --- storage form (JSON object); the store keeps it as a string ---------------------


def finding_to_json(f: Finding) -> dict[str, Any]:
    return {
        "type": f.type,
        "severity": f.severity,
        "description": f.description,
        "recommended_action": f.recommended_action,
    }


def finding_from_json(obj: Mapping[str, Any]) -> Finding:
    return Finding(
        type=obj["type"],
        severity=float(obj["severity"]),
        description=obj["description"],
        recommended_action=obj["recommended_action"],
    )


def request_to_json(r: ActionRequest) -> dict[str, Any]:
    return {
        "action_id": r.action_id,
        "agent_id": r.agent_id,
        "session_id": r.session_id,
        "action_type": r.action_type,
        "resource": r.resource,
        "parameters": dict(r.parameters),
        "reasoning": r.reasoning,
        "labels": dict(r.labels),
    }


def request_from_json(obj: Mapping[str, Any]) -> ActionRequest:
    return ActionRequest(**obj)


def resolution_to_json(r: Resolution | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "status": r.status.value,
        "decided_by": r.decided_by,
        "reason": r.reason,
        "decided_at": r.decided_at,
        "audit_seq": r.audit_seq,
    }


def resolution_from_json(obj: Mapping[str, Any] | None) -> Resolution | None:
    if obj is None:
        return None
    return Resolution(
        status=ResolutionStatus(obj["status"]),
        decided_by=obj["decided_by"],
        reason=obj["reason"],
        decided_at=float(obj["decided_at"]),
        audit_seq=int(obj["audit_seq"]),
    )


def hold_to_json(h: Hold) -> dict[str, Any]:
    return {
        "hold_id": h.hold_id,
        "request": request_to_json(h.request),
        "findings": [finding_to_json(f) for f in h.findings],
        "matched_rules": list(h.matched_rules),
        "reason": h.reason,
        "created_at": h.created_at,
        "expires_at": h.expires_at,
        "paused_session": h.paused_session,
        "audit_seq": h.audit_seq,
        "status": h.status.value,
        "resolution": resolution_to_json(h.resolution),
    }


def hold_from_json(obj: Mapping[str, Any]) -> Hold:
    return Hold(
        hold_id=obj["hold_id"],
        request=request_from_json(obj["request"]),
        findings=tuple(finding_from_json(f) for f in obj["findings"]),
        matched_rules=tuple(obj["matched_rules"]),
        reason=obj["reason"],
        created_at=float(obj["created_at"]),
        expires_at=float(obj["expires_at"]),
        paused_session=bool(obj["paused_session"]),
        audit_seq=int(obj["audit_seq"]),
        status=HoldStatus(obj["status"]),
        resolution=resolution_from_json(obj["resolution"]),
    )


def decision_to_json(d: Decision) -> dict[str, Any]:
    return {
        "action_id": d.action_id,
        "session_id": d.session_id,
        "verdict": d.verdict.name,
        "reason": d.reason,
        "findings": [finding_to_json(f) for f in d.findings],
        "matched_rules": list(d.matched_rules),
        "hold_id": d.hold_id,
        "expires_at": d.expires_at,
        "resolution": resolution_to_json(d.resolution),
        "audit_seq": d.audit_seq,
    }


def decision_from_json(obj: Mapping[str, Any]) -> Decision:
    return Decision(
        action_id=obj["action_id"],
        session_id=obj["session_id"],
        verdict=Verdict[obj["verdict"]],
        reason=obj["reason"],
        findings=tuple(finding_from_json(f) for f in obj["findings"]),
        matched_rules=tuple(obj["matched_rules"]),
        hold_id=obj["hold_id"],
        expires_at=float(obj["expires_at"]),
        resolution=resolution_from_json(obj["resolution"]),
        audit_seq=int(obj["audit_seq"]),
    )

"""Hold lifecycle: pending -> approved | rejected | expired, exactly once.

Pure state machine over values and a clock reading. The store makes the transition
atomic across replicas (compare-and-set on the status); this module decides whether
a transition is allowed and what it produces. A hold that needs a quorum collects
approvals (`approve`) until that many distinct approvers have approved; a
rejection resolves it at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from gateway.domain.actions import (
    ActionRequest,
    Approval,
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
    approvals: tuple[Approval, ...] = ()
    approvals_required: int = 1
    trace_id: str = ""  # of the Submit that was held

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
            approvals=self.approvals,
            approvals_required=self.approvals_required,
            trace_id=self.trace_id,
        )


@dataclass(frozen=True)
class SessionPause:
    """A session paused for review: its later actions are held (or denied, per config)
    until an approver resumes it. `hold_id` is the hold that paused it."""

    hold_id: str
    reason: str
    paused_at: float  # unix seconds

    @classmethod
    def by(cls, hold: Hold) -> SessionPause:
        return cls(hold.hold_id, hold.reason, hold.created_at)


@dataclass(frozen=True)
class Quarantine:
    """An agent an admin put in quarantine: its actions are held (or denied, per
    config) until it is released."""

    agent_id: str
    reason: str
    quarantined_by: str
    since: float  # unix seconds
    audit_seq: int = 0


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
    _check_open(hold, status, now)
    resolution = Resolution(
        status=status, decided_by=decided_by, reason=reason, decided_at=now, audit_seq=0
    )
    return replace(hold, status=_STATUS_FOR[status], resolution=resolution)


def _check_open(hold: Hold, status: ResolutionStatus, now: float) -> None:
    """Conflict unless `hold` may take `status` now: it must be pending, and expired
    exactly when its time has run out."""
    if hold.status is not HoldStatus.PENDING:
        raise Conflict(f"hold {hold.hold_id} is already {hold.status.value}")
    if status is ResolutionStatus.EXPIRED:
        if now < hold.expires_at:
            raise Conflict(f"hold {hold.hold_id} has not expired yet")
    elif now >= hold.expires_at:
        raise Conflict(f"hold {hold.hold_id} expired; it can no longer be {status.value}")


def approve(hold: Hold, approver: str, reason: str, now: float) -> Hold:
    """The hold with one more approval: approved once it has `approvals_required`
    distinct approvers, else still pending. The same approver counts once (Conflict)."""
    _check_open(hold, ResolutionStatus.APPROVED, now)
    if any(a.approver == approver for a in hold.approvals):
        raise Conflict(
            f"hold {hold.hold_id} already has your approval; it needs "
            f"{hold.approvals_required - len(hold.approvals)} more from other approvers"
        )
    counted = replace(hold, approvals=(*hold.approvals, Approval(approver, reason, now)))
    if len(counted.approvals) < hold.approvals_required:
        return counted
    return resolve(counted, ResolutionStatus.APPROVED, approver, reason, now)


def with_resolution_seq(hold: Hold, seq: int) -> Hold:
    """The hold with `seq` in what the commit added: its resolution, or the last
    approval of a hold still collecting approvals."""
    if hold.resolution is None:
        *earlier, last = hold.approvals
        return replace(hold, approvals=(*earlier, replace(last, audit_seq=seq)))
    approvals = hold.approvals
    if approvals and approvals[-1].audit_seq == 0:
        approvals = (*approvals[:-1], replace(approvals[-1], audit_seq=seq))
    return replace(hold, resolution=replace(hold.resolution, audit_seq=seq), approvals=approvals)

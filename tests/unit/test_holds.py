"""The hold state machine: pending -> approved | rejected | expired, exactly once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.domain.actions import (
    ActionRequest,
    Decision,
    Finding,
    Resolution,
    ResolutionStatus,
    Verdict,
)
from gateway.domain.holds import (
    MAX_REASON_CHARS,
    Hold,
    HoldStatus,
    approve,
    check_reason,
    resolve,
    with_resolution_seq,
)
from gateway.errors import Conflict, InvalidRequest

CREATED = 1_700_000_000.0
EXPIRES = CREATED + 900.0

FINDING = Finding(
    type="suspicious_action",
    severity=0.7,
    description="payment is a suspicious action type",
    recommended_action="require_approval",
)


def pending_hold() -> Hold:
    return Hold(
        hold_id="hold-1",
        request=ActionRequest(
            action_id="act-1",
            agent_id="agent-1",
            session_id="sess-1",
            action_type="payment",
            resource="invoice/42",
            parameters={"amount": 1200.0, "api_key": "[REDACTED]"},
            reasoning="the invoice is due",
            labels={"team": "finance"},
        ),
        findings=(FINDING,),
        matched_rules=("hold-large-payments",),
        reason="suspicious_action: payment is a suspicious action type",
        created_at=CREATED,
        expires_at=EXPIRES,
        paused_session=False,
        audit_seq=7,
    )


# -- transitions ----------------------------------------------------------------------------------


def test_new_hold_is_pending() -> None:
    hold = pending_hold()
    assert hold.status is HoldStatus.PENDING
    assert hold.resolution is None


def test_approve_before_expiry_resolves_as_approved() -> None:
    hold = pending_hold()
    done = resolve(hold, ResolutionStatus.APPROVED, "alice", "looks fine", CREATED + 10)
    assert done.status is HoldStatus.APPROVED
    assert done.resolution == Resolution(
        status=ResolutionStatus.APPROVED,
        decided_by="alice",
        reason="looks fine",
        decided_at=CREATED + 10,
        audit_seq=0,
    )
    # everything else is unchanged, and the input is a frozen value left as it was
    assert replace(done, status=HoldStatus.PENDING, resolution=None) == hold
    assert hold.status is HoldStatus.PENDING


def test_reject_before_expiry_resolves_as_rejected() -> None:
    done = resolve(pending_hold(), ResolutionStatus.REJECTED, "bob", "not today", CREATED)
    assert done.status is HoldStatus.REJECTED
    assert done.resolution is not None
    assert done.resolution.status is ResolutionStatus.REJECTED
    assert (done.resolution.decided_by, done.resolution.reason) == ("bob", "not today")


def test_expire_at_the_expiry_time_resolves_as_expired() -> None:
    done = resolve(pending_hold(), ResolutionStatus.EXPIRED, "system", "ttl elapsed", EXPIRES)
    assert done.status is HoldStatus.EXPIRED
    assert done.resolution is not None
    assert done.resolution.decided_at == EXPIRES


def test_expire_after_the_expiry_time_resolves_as_expired() -> None:
    done = resolve(pending_hold(), ResolutionStatus.EXPIRED, "system", "ttl", EXPIRES + 3600)
    assert done.status is HoldStatus.EXPIRED


def test_expire_before_the_expiry_time_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="hold hold-1 has not expired yet"):
        resolve(pending_hold(), ResolutionStatus.EXPIRED, "system", "ttl", EXPIRES - 0.001)


@pytest.mark.parametrize("status", [ResolutionStatus.APPROVED, ResolutionStatus.REJECTED])
def test_approve_or_reject_just_before_expiry_succeeds(status: ResolutionStatus) -> None:
    done = resolve(pending_hold(), status, "alice", "ok", EXPIRES - 0.001)
    assert done.resolution is not None
    assert done.resolution.status is status


@pytest.mark.parametrize("status", [ResolutionStatus.APPROVED, ResolutionStatus.REJECTED])
@pytest.mark.parametrize("now", [EXPIRES, EXPIRES + 0.001, EXPIRES + 86400])
def test_approve_or_reject_at_or_after_expiry_is_a_conflict(
    status: ResolutionStatus, now: float
) -> None:
    with pytest.raises(Conflict) as caught:
        resolve(pending_hold(), status, "alice", "ok", now)
    assert str(caught.value) == f"hold hold-1 expired; it can no longer be {status.value}"


@pytest.mark.parametrize("first", list(ResolutionStatus))
@pytest.mark.parametrize("second", list(ResolutionStatus))
def test_resolving_a_resolved_hold_is_a_conflict(
    first: ResolutionStatus, second: ResolutionStatus
) -> None:
    when = EXPIRES if first is ResolutionStatus.EXPIRED else CREATED
    done = resolve(pending_hold(), first, "alice", "first", when)
    with pytest.raises(Conflict) as caught:
        resolve(done, second, "bob", "second", when)
    assert str(caught.value) == f"hold hold-1 is already {done.status.value}"


def test_already_resolved_wins_over_expired_in_the_conflict_message() -> None:
    done = resolve(pending_hold(), ResolutionStatus.APPROVED, "alice", "ok", CREATED)
    with pytest.raises(Conflict, match="already approved"):
        resolve(done, ResolutionStatus.REJECTED, "bob", "no", EXPIRES + 1)


def test_with_resolution_seq_fills_in_the_audit_sequence() -> None:
    done = resolve(pending_hold(), ResolutionStatus.APPROVED, "alice", "ok", CREATED)
    sealed = with_resolution_seq(done, 42)
    assert sealed.resolution is not None
    assert sealed.resolution.audit_seq == 42
    assert sealed.audit_seq == 7  # the hold's own entry is unchanged


# -- what the agent sees --------------------------------------------------------------------------


def test_pending_hold_verdict_is_hold_with_the_original_reason() -> None:
    hold = pending_hold()
    assert hold.final_verdict is Verdict.HOLD
    assert hold.decision() == Decision(
        action_id="act-1",
        session_id="sess-1",
        verdict=Verdict.HOLD,
        reason="suspicious_action: payment is a suspicious action type",
        findings=(FINDING,),
        matched_rules=("hold-large-payments",),
        hold_id="hold-1",
        expires_at=EXPIRES,
        resolution=None,
        audit_seq=7,
    )


def test_approved_hold_allows_and_says_who_and_why() -> None:
    done = resolve(pending_hold(), ResolutionStatus.APPROVED, "alice", "looks fine", CREATED)
    assert done.final_verdict is Verdict.ALLOW
    decision = done.decision()
    assert decision.verdict is Verdict.ALLOW
    assert decision.reason == "approved by alice: looks fine"
    assert decision.resolution == done.resolution
    assert decision.hold_id == "hold-1"


def test_rejected_hold_denies_and_says_who_and_why() -> None:
    done = resolve(pending_hold(), ResolutionStatus.REJECTED, "bob", "too much", CREATED)
    assert done.final_verdict is Verdict.DENY
    assert done.decision().verdict is Verdict.DENY
    assert done.decision().reason == "rejected by bob: too much"


def test_expired_hold_denies() -> None:
    done = resolve(
        pending_hold(), ResolutionStatus.EXPIRED, "system", "no decision in time", EXPIRES
    )
    assert done.final_verdict is Verdict.DENY
    assert done.decision().verdict is Verdict.DENY
    assert done.decision().reason == "expired by system: no decision in time"


# -- reasons ------------------------------------------------------------------------------------


def test_reason_is_trimmed() -> None:
    assert check_reason("  looks fine \n") == "looks fine"


@pytest.mark.parametrize("reason", ["", " ", "\n\t  "])
def test_blank_reason_is_required(reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_reason(reason)
    assert (caught.value.field, caught.value.why) == ("reason", "is required")


def test_reason_at_the_limit_passes() -> None:
    assert check_reason("r" * MAX_REASON_CHARS) == "r" * MAX_REASON_CHARS


def test_reason_limit_applies_after_trimming() -> None:
    assert check_reason("  " + "r" * MAX_REASON_CHARS + "  ") == "r" * MAX_REASON_CHARS


def test_reason_one_over_the_limit_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_reason("r" * (MAX_REASON_CHARS + 1))
    assert caught.value.field == "reason"
    assert caught.value.why == "length 2001 exceeds the limit of 2000"


def test_a_quorum_collects_distinct_approvals_then_resolves() -> None:
    hold = replace(pending_hold(), approvals_required=2)
    once = approve(hold, "ana", "ok", CREATED + 1)
    assert (once.status, [a.approver for a in once.approvals]) == (HoldStatus.PENDING, ["ana"])
    assert once.resolution is None
    with pytest.raises(Conflict, match="already has your approval; it needs 1 more"):
        approve(once, "ana", "again", CREATED + 2)
    twice = approve(once, "bo", "ok too", CREATED + 3)
    assert twice.status is HoldStatus.APPROVED and twice.resolution is not None
    assert twice.resolution.decided_by == "bo"
    assert [a.approver for a in twice.approvals] == ["ana", "bo"]
    # The commit's seq lands on what it added: the second approval and the resolution.
    sealed = with_resolution_seq(
        replace(twice, approvals=(replace(twice.approvals[0], audit_seq=8), twice.approvals[1])), 9
    )
    assert [a.audit_seq for a in sealed.approvals] == [8, 9]
    assert sealed.resolution is not None and sealed.resolution.audit_seq == 9


def test_an_approval_after_expiry_is_refused_even_towards_a_quorum() -> None:
    hold = replace(pending_hold(), approvals_required=3)
    with pytest.raises(Conflict, match="expired"):
        approve(hold, "ana", "late", EXPIRES + 1)

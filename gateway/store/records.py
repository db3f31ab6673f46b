"""The stored form of holds, decisions and requests: JSON objects, kept as strings.

How the store writes and reads these values in Redis; the domain never sees JSON.
Field names are the domain's (and the proto's): a hold's JSON says `status`,
`request.action_type`, `resolution.decided_by`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.domain.actions import (
    ActionRequest,
    Approval,
    Decision,
    Finding,
    Resolution,
    ResolutionStatus,
    Verdict,
)
from gateway.domain.holds import Hold, HoldStatus, Quarantine, SessionPause


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


def approval_to_json(a: Approval) -> dict[str, Any]:
    return {
        "approver": a.approver,
        "reason": a.reason,
        "approved_at": a.approved_at,
        "audit_seq": a.audit_seq,
    }


def approvals_from_json(items: Any) -> tuple[Approval, ...]:
    """A record's approvals (none in records written before quorums existed)."""
    return tuple(
        Approval(
            approver=str(a["approver"]),
            reason=str(a["reason"]),
            approved_at=float(a["approved_at"]),
            audit_seq=int(a["audit_seq"]),
        )
        for a in items or ()
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
        "approvals": [approval_to_json(a) for a in h.approvals],
        "approvals_required": h.approvals_required,
        "trace_id": h.trace_id,
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
        approvals=approvals_from_json(obj.get("approvals")),
        approvals_required=int(obj.get("approvals_required", 1)),
        trace_id=str(obj.get("trace_id", "")),
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
        "approvals_required": d.approvals_required,
        "trace_id": d.trace_id,
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
        approvals_required=int(obj.get("approvals_required", 1)),
        trace_id=str(obj.get("trace_id", "")),
    )


def pause_to_json(p: SessionPause) -> dict[str, Any]:
    return {"hold_id": p.hold_id, "reason": p.reason, "paused_at": p.paused_at}


def pause_from_json(obj: Mapping[str, Any]) -> SessionPause:
    return SessionPause(
        hold_id=str(obj.get("hold_id", "")),
        reason=str(obj.get("reason", "")),
        paused_at=float(obj.get("paused_at", 0.0)),
    )


def quarantine_to_json(q: Quarantine) -> dict[str, Any]:
    return {
        "agent_id": q.agent_id,
        "reason": q.reason,
        "quarantined_by": q.quarantined_by,
        "since": q.since,
        "audit_seq": q.audit_seq,
    }


def quarantine_from_json(obj: Mapping[str, Any]) -> Quarantine:
    return Quarantine(
        agent_id=str(obj["agent_id"]),
        reason=str(obj["reason"]),
        quarantined_by=str(obj["quarantined_by"]),
        since=float(obj["since"]),
        audit_seq=int(obj["audit_seq"]),
    )

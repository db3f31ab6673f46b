"""The server's conversions between protobuf messages and domain values. No rules here.

The Struct conversions and reading audit entries and reports back from protobuf are
in `clients/wire.py`, shared with the clients (protobuf and the audit format only).
"""

from __future__ import annotations

import base64

from google.protobuf import timestamp_pb2

from agentgw.v1 import alerts_pb2, approvals_pb2, audit_pb2, gateway_pb2
from clients.wire import python_to_struct, struct_to_python
from gateway.domain.actions import (
    ActionRequest,
    Approval,
    Decision,
    Finding,
    Resolution,
    ResolutionStatus,
    Verdict,
)
from gateway.domain.alerts.model import Alert, Severity
from gateway.domain.audit.chain import SignedCheckpoint
from gateway.domain.audit.entry import AuditEntry, parse_timestamp
from gateway.domain.audit.keys import TrustedKey
from gateway.domain.audit.note import note_verifier_key, split_note
from gateway.domain.audit.proofs import ConsistencyProof, InclusionProof
from gateway.domain.audit.query import EntryFilter, Report, micros_from_unix
from gateway.domain.holds import Hold, HoldStatus, Quarantine, SessionPause
from gateway.domain.outcomes import Outcome
from gateway.errors import InvalidRequest
from gateway.services.hold_watch import WatchEvent

VERDICT_TO_PROTO = {
    Verdict.ALLOW: gateway_pb2.VERDICT_ALLOW,
    Verdict.HOLD: gateway_pb2.VERDICT_HOLD,
    Verdict.DENY: gateway_pb2.VERDICT_DENY,
}
RESOLUTION_TO_PROTO = {
    ResolutionStatus.APPROVED: gateway_pb2.RESOLUTION_STATUS_APPROVED,
    ResolutionStatus.REJECTED: gateway_pb2.RESOLUTION_STATUS_REJECTED,
    ResolutionStatus.EXPIRED: gateway_pb2.RESOLUTION_STATUS_EXPIRED,
}
HOLD_STATUS_TO_PROTO = {
    HoldStatus.PENDING: approvals_pb2.HOLD_STATUS_PENDING,
    HoldStatus.APPROVED: approvals_pb2.HOLD_STATUS_APPROVED,
    HoldStatus.REJECTED: approvals_pb2.HOLD_STATUS_REJECTED,
    HoldStatus.EXPIRED: approvals_pb2.HOLD_STATUS_EXPIRED,
}


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def action_from_proto(msg: gateway_pb2.ActionRequest) -> ActionRequest:
    return ActionRequest(
        action_id=msg.action_id,
        agent_id=msg.agent_id,
        session_id=msg.session_id,
        action_type=msg.action_type,
        resource=msg.resource,
        parameters=struct_to_python(msg.parameters),
        reasoning=msg.reasoning,
        labels=dict(msg.labels),
    )


def outcome_from_proto(msg: gateway_pb2.Outcome) -> Outcome:
    duration = msg.duration.seconds + msg.duration.nanos / 1e9
    if msg.duration.seconds < 0 or msg.duration.nanos < 0:
        raise InvalidRequest("duration", "must not be negative")
    return Outcome(
        action_id=msg.action_id,
        agent_id=msg.agent_id,
        session_id=msg.session_id,
        success=msg.success,
        error_type=msg.error_type,
        error=msg.error,
        duration_seconds=duration,
        tokens=msg.tokens if msg.HasField("tokens") else None,
        cost=msg.cost,
    )


def action_to_proto(request: ActionRequest) -> gateway_pb2.ActionRequest:
    return gateway_pb2.ActionRequest(
        action_id=request.action_id,
        agent_id=request.agent_id,
        session_id=request.session_id,
        action_type=request.action_type,
        resource=request.resource,
        parameters=python_to_struct(request.parameters),
        reasoning=request.reasoning,
        labels=dict(request.labels),
    )


def finding_to_proto(f: Finding) -> gateway_pb2.Finding:
    return gateway_pb2.Finding(
        type=f.type,
        severity=f.severity,
        description=f.description,
        recommended_action=f.recommended_action,
    )


def resolution_to_proto(r: Resolution) -> gateway_pb2.Resolution:
    return gateway_pb2.Resolution(
        status=RESOLUTION_TO_PROTO[r.status],
        decided_by=r.decided_by,
        reason=r.reason,
        decided_at=timestamp(r.decided_at),
        audit_seq=r.audit_seq,
    )


def approval_to_proto(a: Approval) -> gateway_pb2.Approval:
    return gateway_pb2.Approval(
        approver=a.approver,
        reason=a.reason,
        approved_at=timestamp(a.approved_at),
        audit_seq=a.audit_seq,
    )


def decision_to_proto(d: Decision) -> gateway_pb2.Decision:
    msg = gateway_pb2.Decision(
        action_id=d.action_id,
        session_id=d.session_id,
        verdict=VERDICT_TO_PROTO[d.verdict],
        reason=d.reason,
        findings=[finding_to_proto(f) for f in d.findings],
        matched_rules=list(d.matched_rules),
        hold_id=d.hold_id,
        audit_seq=d.audit_seq,
        approvals=[approval_to_proto(a) for a in d.approvals],
        approvals_required=d.approvals_required if d.hold_id else 0,
        trace_id=d.trace_id,
    )
    if d.hold_id:
        msg.expires_at.CopyFrom(timestamp(d.expires_at))
    if d.resolution is not None:
        msg.resolution.CopyFrom(resolution_to_proto(d.resolution))
    return msg


def hold_to_proto(h: Hold) -> approvals_pb2.Hold:
    msg = approvals_pb2.Hold(
        hold_id=h.hold_id,
        action=action_to_proto(h.request),
        findings=[finding_to_proto(f) for f in h.findings],
        matched_rules=list(h.matched_rules),
        created_at=timestamp(h.created_at),
        expires_at=timestamp(h.expires_at),
        agent_id=h.request.agent_id,
        session_id=h.request.session_id,
        status=HOLD_STATUS_TO_PROTO[h.status],
        reason=h.reason,
        paused_session=h.paused_session,
        approvals=[approval_to_proto(a) for a in h.approvals],
        approvals_required=h.approvals_required,
    )
    if h.resolution is not None:
        msg.resolution.CopyFrom(resolution_to_proto(h.resolution))
    return msg


def entry_to_proto(e: AuditEntry) -> audit_pb2.AuditEntry:
    return audit_pb2.AuditEntry(
        seq=e.seq,
        timestamp=e.timestamp,
        event_type=e.event_type,
        actor=e.actor,
        actor_type=e.actor_type,
        action_id=e.action_id,
        action_type=e.action_type,
        resource=e.resource,
        details=python_to_struct(e.details),
        outcome=e.outcome,
        prev_hash=e.prev_hash,
        entry_hash=e.entry_hash,
        signature=e.signature,
        key_id=e.key_id,
    )


def _bound(field: str, present: bool, value: timestamp_pb2.Timestamp) -> int | None:
    """A time bound in microseconds (rounded up); None when the field is not set."""
    return micros_from_unix(field, value.seconds, value.nanos) if present else None


def query_filter_from_proto(msg: audit_pb2.QueryRequest) -> EntryFilter:
    return EntryFilter.create(
        start_micros=_bound("start_time", msg.HasField("start_time"), msg.start_time),
        end_micros=_bound("end_time", msg.HasField("end_time"), msg.end_time),
        actor=msg.actor,
        actor_type=msg.actor_type,
        event_type=msg.event_type,
        action_id=msg.action_id,
        outcome=msg.outcome,
        agent_id=msg.agent_id,
        session_id=msg.session_id,
        after_seq=msg.after_seq,
    )


def report_filter_from_proto(msg: audit_pb2.ReportRequest) -> EntryFilter:
    return EntryFilter.create(
        start_micros=_bound("start_time", msg.HasField("start_time"), msg.start_time),
        end_micros=_bound("end_time", msg.HasField("end_time"), msg.end_time),
    )


def report_to_proto(r: Report) -> audit_pb2.ReportResponse:
    return audit_pb2.ReportResponse(
        by_actor_type=r.by_actor_type,
        by_event_type=r.by_event_type,
        by_outcome=r.by_outcome,
        by_finding_type=r.by_finding_type,
        security_events=[entry_to_proto(e) for e in r.security_events],
        failures=[entry_to_proto(e) for e in r.failures],
        total=r.total,
        security_event_count=r.security_event_count,
        failure_count=r.failure_count,
        first_seq=r.first_seq,
        last_seq=r.last_seq,
    )


def checkpoint_to_proto(signed: SignedCheckpoint) -> audit_pb2.Checkpoint:
    """A signed checkpoint; `signature` is the gateway's own (the origin's) signature
    from the note, without the 4-byte key hash."""
    cp = signed.checkpoint
    _, signatures = split_note(signed.note)
    own = next(sig for name, _, sig in signatures if name == cp.origin)
    return audit_pb2.Checkpoint(
        note=signed.note,
        origin=cp.origin,
        size=cp.size,
        root_hash=cp.root_hash.hex(),
        head_hash=cp.head_hash,
        time=timestamp(parse_timestamp(cp.timestamp)),
        key_id=signed.key_id,
        signature=base64.b64encode(own).decode(),
    )


def public_key_to_proto(origin: str, key: TrustedKey) -> audit_pb2.PublicKey:
    return audit_pb2.PublicKey(
        key_id=key.key_id,
        public_key=base64.b64encode(key.public_key_raw).decode(),
        note_verifier_key=note_verifier_key(origin, key.public_key_raw),
        first_seq=key.first_seq,
        last_seq=key.last_seq or 0,
    )


def inclusion_proof_to_proto(proof: InclusionProof) -> audit_pb2.InclusionProof:
    return audit_pb2.InclusionProof(
        seq=proof.seq,
        leaf_index=proof.leaf_index,
        tree_size=proof.tree_size,
        hashes=[h.hex() for h in proof.hashes],
        root_hash=proof.root_hash.hex(),
        leaf_hash=proof.leaf_hash.hex(),
    )


def consistency_proof_to_proto(proof: ConsistencyProof) -> audit_pb2.ConsistencyProof:
    return audit_pb2.ConsistencyProof(
        old_size=proof.old_size,
        new_size=proof.new_size,
        hashes=[h.hex() for h in proof.hashes],
        old_root=proof.old_root.hex(),
        new_root=proof.new_root.hex(),
    )


HOLD_EVENT_TO_PROTO = {
    WatchEvent.PENDING: approvals_pb2.HoldEvent.KIND_PENDING,
    WatchEvent.SYNCED: approvals_pb2.HoldEvent.KIND_SYNCED,
    WatchEvent.HELD: approvals_pb2.HoldEvent.KIND_HELD,
    WatchEvent.APPROVED_PARTLY: approvals_pb2.HoldEvent.KIND_APPROVED_PARTLY,
    WatchEvent.RESOLVED: approvals_pb2.HoldEvent.KIND_RESOLVED,
}


def hold_event_to_proto(event: WatchEvent, hold: Hold | None) -> approvals_pb2.HoldEvent:
    msg = approvals_pb2.HoldEvent(kind=HOLD_EVENT_TO_PROTO[event])
    if hold is not None:
        msg.hold.CopyFrom(hold_to_proto(hold))
    return msg


def paused_session_to_proto(
    agent_id: str, session_id: str, pause: SessionPause
) -> approvals_pb2.PausedSession:
    return approvals_pb2.PausedSession(
        agent_id=agent_id,
        session_id=session_id,
        hold_id=pause.hold_id,
        reason=pause.reason,
        paused_at=timestamp(pause.paused_at),
    )


def quarantine_to_proto(q: Quarantine) -> approvals_pb2.Quarantine:
    return approvals_pb2.Quarantine(
        agent_id=q.agent_id,
        reason=q.reason,
        quarantined_by=q.quarantined_by,
        since=timestamp(q.since),
        audit_seq=q.audit_seq,
    )


SEVERITY_TO_PROTO = {
    Severity.LOW: alerts_pb2.SEVERITY_LOW,
    Severity.MEDIUM: alerts_pb2.SEVERITY_MEDIUM,
    Severity.HIGH: alerts_pb2.SEVERITY_HIGH,
    Severity.CRITICAL: alerts_pb2.SEVERITY_CRITICAL,
}
SEVERITY_FROM_PROTO = {v: k for k, v in SEVERITY_TO_PROTO.items()}


def severity_from_proto(value: int, field: str) -> Severity | None:
    """None for SEVERITY_UNSPECIFIED (no filter)."""
    if value == alerts_pb2.SEVERITY_UNSPECIFIED:
        return None
    try:
        return SEVERITY_FROM_PROTO[alerts_pb2.Severity.ValueType(value)]
    except KeyError:
        raise InvalidRequest(field, f"unknown severity {value}") from None


def alert_to_proto(a: Alert) -> alerts_pb2.Alert:
    msg = alerts_pb2.Alert(
        alert_id=a.alert_id,
        rule=a.rule,
        severity=SEVERITY_TO_PROTO[a.severity],
        message=a.message,
        subject=a.subject,
        acknowledged_by=a.acknowledged_by,
        acknowledgement_note=a.note,
        channels=list(a.channels),
        event_type=a.event_type,
        acknowledgement_audit_seq=a.acknowledgement_audit_seq,
        trace_id=a.trace_id,
    )
    msg.details.CopyFrom(python_to_struct(dict(a.data)))
    msg.fired_at.CopyFrom(timestamp(a.fired_at))
    if a.acknowledged:
        msg.acknowledged_at.CopyFrom(timestamp(a.acknowledged_at))
    return msg

"""What an alert is: one firing of a rule for one subject, and its JSON form.

The JSON form is what Redis keeps (`alert:<id>`), what the feed of `Alerts.Watch`
carries and what a delivery sends; `alert_to_json` and `alert_from_json` are its one
definition.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

GATEWAY_SUBJECT = "gateway"  # the subject of alerts about the gateway itself


class Severity(Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}


def new_alert_id() -> str:
    return "alert_" + secrets.token_hex(12)


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Alert:
    alert_id: str
    rule: str
    severity: Severity
    subject: str  # an agent_id, or GATEWAY_SUBJECT
    message: str  # the rule's template, rendered
    fired_at: float  # unix seconds
    event_type: str  # what it was evaluated on: decision, outcome, security, hold, audit
    data: Mapping[str, Any] = field(default_factory=_empty)  # redacted metrics and findings
    channels: tuple[str, ...] = ()
    trace_id: str = ""
    acknowledged_by: str = ""
    acknowledged_at: float = 0.0
    note: str = ""
    acknowledgement_audit_seq: int = 0

    @property
    def acknowledged(self) -> bool:
        return bool(self.acknowledged_by)


def alert_to_json(alert: Alert) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "severity": alert.severity.value,
        "subject": alert.subject,
        "message": alert.message,
        "fired_at": alert.fired_at,
        "event_type": alert.event_type,
        "data": dict(alert.data),
        "channels": list(alert.channels),
        "trace_id": alert.trace_id,
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": alert.acknowledged_at,
        "note": alert.note,
        "acknowledgement_audit_seq": alert.acknowledgement_audit_seq,
    }


def alert_from_json(value: Mapping[str, Any]) -> Alert:
    return Alert(
        alert_id=str(value["alert_id"]),
        rule=str(value["rule"]),
        severity=Severity(value["severity"]),
        subject=str(value["subject"]),
        message=str(value["message"]),
        fired_at=float(value["fired_at"]),
        event_type=str(value.get("event_type", "")),
        data=MappingProxyType(dict(value.get("data") or {})),
        channels=tuple(str(c) for c in value.get("channels") or ()),
        trace_id=str(value.get("trace_id", "")),
        acknowledged_by=str(value.get("acknowledged_by", "")),
        acknowledged_at=float(value.get("acknowledged_at", 0.0)),
        note=str(value.get("note", "")),
        acknowledgement_audit_seq=int(value.get("acknowledgement_audit_seq", 0)),
    )

"""The audit log's vocabulary: which events the gateway writes and who writes them.

One name per event, used by the services that write entries and by the queries and
reports that read them, so a query can only ask for events that exist. The v1
format allows any string (docs/audit-format.md); these are the ones this gateway
writes today (docs/audit-queries.md lists them with their outcomes).
"""

from __future__ import annotations

import enum
from typing import Final


class ActorType(enum.StrEnum):
    AGENT = "agent"
    USER = "user"  # a person: an approver, an admin
    SYSTEM = "system"  # the gateway itself (e.g. a hold expiring)


class EventType(enum.StrEnum):
    ACTION_DECIDED = "action_decided"
    ACTION_ID_REUSED = "security_action_id_reused"
    HOLD_APPROVED = "hold_approved"
    HOLD_REJECTED = "hold_rejected"
    HOLD_EXPIRED = "hold_expired"
    SESSION_RESUMED = "session_resumed"
    KEY_ROTATED = "key_rotated"
    OUTCOME_REPORTED = "outcome_reported"
    HOLD_APPROVAL_ADDED = "hold_approval_added"  # one approval of a quorum, still pending
    SEPARATION_OF_DUTIES = "security_separation_of_duties"  # an owner deciding its agent
    AGENT_QUARANTINED = "agent_quarantined"
    AGENT_RELEASED = "agent_released"
    ALERT_ACKNOWLEDGED = "alert_acknowledged"
    # Security refusals, coalesced per source and window (services/security_events.py)
    AUTHENTICATION_FAILED = "security_authentication_failed"
    PERMISSION_DENIED = "security_permission_denied"
    TAMPERING_DETECTED = "security_tampering_detected"  # the stored log failed verification


# Events that are security-relevant whatever their details say.
SECURITY_EVENT_TYPES: Final = frozenset(
    {
        EventType.ACTION_ID_REUSED,
        EventType.HOLD_REJECTED,
        EventType.HOLD_EXPIRED,
        EventType.SESSION_RESUMED,
        EventType.KEY_ROTATED,
        EventType.AGENT_QUARANTINED,
        EventType.AGENT_RELEASED,
    }
)
# Families of events that are all security-relevant, so that events added later
# (alerts, key changes, security refusals) are counted without a change here.
SECURITY_EVENT_PREFIXES: Final = ("alert_", "key_", "security_")

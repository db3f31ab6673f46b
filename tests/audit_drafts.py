"""An entry draft with a value of every JSON kind, for the audit format's unit tests."""

from __future__ import annotations

from typing import Any

from gateway.domain.audit.entry import EntryDraft


def sample_draft(**changes: Any) -> EntryDraft:
    """A typical draft; `changes` replace its fields."""
    fields: dict[str, Any] = {
        "timestamp": "2026-11-25T05:55:27.123456Z",
        "event_type": "decision",
        "actor": "agent-7",
        "actor_type": "agent",
        "action_id": "act-1",
        "action_type": "payments.transfer",
        "resource": "account:42",
        "details": {"amount": 12.5, "nested": {"b": [1, "x"], "a": None}},
        "outcome": "allow",
    }
    fields.update(changes)
    return EntryDraft(**fields)

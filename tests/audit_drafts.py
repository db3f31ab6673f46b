"""Entry drafts for tests: one with a value of every JSON kind (the audit format's unit
tests), and the plain note tests commit straight to the audit log."""

from __future__ import annotations

from typing import Any

from gateway.domain.audit.entry import EntryDraft, format_timestamp


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


def note_draft(n: int) -> EntryDraft:
    """A note by an admin, numbered `n`: an entry committed without a decision."""
    return EntryDraft(
        timestamp=format_timestamp(0),
        event_type="note",
        actor="admin-1",
        actor_type="user",
        action_id="",
        action_type="",
        resource="",
        details={"n": n},
        outcome="",
    )

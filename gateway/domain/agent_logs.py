"""An agent's own log records (`Gateway.Log`): what it may send, checked, and the
record it becomes. Agents log only as themselves, in decision, error or user, with
bounded sizes; their data is redacted then cut like the gateway's own
(`gateway.domain.log_records`), and filed under the logger "agent" with an event
type starting "agent.". Pure: no grpc, no redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.domain.log_records import (
    AGENT_CATEGORIES,
    AGENT_LOGGER,
    LEVELS,
    RESULT_CHARS,
    LogRecord,
    check_trace_id,
    cut,
    safe_data,
)
from gateway.domain.redaction import Redactor
from gateway.domain.validation import ACTION_TYPE, Limits, require_identifier
from gateway.errors import Forbidden, InvalidRequest, preview

# The `kind` oneof of a LogEvent names its category, and the default event type.
KIND_CATEGORY = MappingProxyType(
    {"decision": "decision", "error": "error", "user_interaction": "user"}
)
# Every event type an agent files starts with this, so that no agent record reads as
# one of the gateway's own (a `decision` record of the decision path, say).
AGENT_EVENT_PREFIX = "agent."
AGENT_EVENT_TYPE = MappingProxyType(
    {"decision": "agent.decision", "error": "agent.error", "user": "agent.user_interaction"}
)
# What an agent may send: a message this long (it is kept to RESULT_CHARS).
MAX_AGENT_MESSAGE_CHARS = 10_000

# --- an agent's own records (Gateway.Log) -------------------------------------------


@dataclass(frozen=True)
class AgentLogEvent:
    """A `LogEvent` as sent. `kind` is which of its oneof was set ("" when none) and
    `details` that part's values (for "error", `context` is a mapping)."""

    agent_id: str
    session_id: str = ""
    category: str = ""
    message: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    level: str = ""
    event_type: str = ""
    trace_id: str = ""
    kind: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


def agent_log_record(
    principal_name: str,
    event: AgentLogEvent,
    now: float,
    redactor: Redactor,
    default_trace_id: str = "",
    limits: Limits | None = None,
) -> LogRecord:
    """The record an agent files, checked: agents log only as themselves, in
    decision, error or user, with bounded sizes. Its data (`fields`, and the kind's
    values under the kind's name, e.g. `data.decision.reasoning`) is redacted then
    cut like the gateway's own; it is filed under the logger "agent"."""
    limits = limits or Limits()
    require_identifier("agent_id", event.agent_id, limits.max_id_chars)
    if event.agent_id != principal_name:  # as `authorize_agent` of services/decisions.py
        raise Forbidden(
            f"agent_id '{event.agent_id}' does not match the authenticated agent '{principal_name}'"
        )
    if event.session_id:
        require_identifier("session_id", event.session_id, limits.max_id_chars)
    category = _agent_category(event)
    level = event.level.lower() or "info"
    if level not in LEVELS:
        raise InvalidRequest(
            "level", f"unknown level '{preview(event.level)}' (expected {', '.join(LEVELS)})"
        )
    if event.event_type and (
        len(event.event_type) > limits.max_action_type_chars
        or not ACTION_TYPE.fullmatch(event.event_type)
    ):
        raise InvalidRequest(
            "event_type",
            f"must be at most {limits.max_action_type_chars} characters, starting with a"
            " letter or digit, of A-Z a-z 0-9 . _ : / -",
        )
    for name, value in (("session_id", event.session_id), ("event_type", event.event_type)):
        if value and redactor.looks_secret(value):  # as Submit's identifiers
            raise InvalidRequest(
                name,
                "looks like a credential (token, key or password); identifiers are "
                "recorded as they are, so they must not carry secrets",
            )
    if event.trace_id:
        check_trace_id(event.trace_id)
    if len(event.message) > MAX_AGENT_MESSAGE_CHARS:
        raise InvalidRequest(
            "message",
            f"length {len(event.message)} exceeds the limit of {MAX_AGENT_MESSAGE_CHARS}",
        )
    _check_details(event, limits)
    data: dict[str, Any] = dict(event.fields)
    if event.kind:
        data[event.kind] = dict(event.details)
    return LogRecord(
        timestamp=now,
        category=category,
        level=level,
        event_type=_agent_event_type(event.event_type) or AGENT_EVENT_TYPE[category],
        message=cut(redactor.text(event.message), RESULT_CHARS),
        agent_id=event.agent_id,
        session_id=event.session_id,
        trace_id=event.trace_id or default_trace_id,
        logger=AGENT_LOGGER,
        data=safe_data(data, redactor),
    )


def _agent_event_type(event_type: str) -> str:
    if not event_type or event_type.startswith(AGENT_EVENT_PREFIX):
        return event_type
    return AGENT_EVENT_PREFIX + event_type


def _agent_category(event: AgentLogEvent) -> str:
    from_kind = KIND_CATEGORY.get(event.kind, "")
    if event.category and event.category not in AGENT_CATEGORIES:
        raise InvalidRequest(
            "category",
            f"'{preview(event.category)}' is not one an agent may log"
            f" (expected {', '.join(AGENT_CATEGORIES)})",
        )
    if event.category and from_kind and event.category != from_kind:
        raise InvalidRequest(
            "category", f"'{event.category}' does not match {event.kind} (category {from_kind})"
        )
    category = event.category or from_kind
    if not category:
        raise InvalidRequest(
            "category", "is required (decision, error or user) unless a kind is set"
        )
    return category


def _check_details(event: AgentLogEvent, limits: Limits) -> None:
    _check_size("fields", event.fields, limits)
    _check_size(event.kind or "details", event.details, limits)
    confidence = event.details.get("confidence", 0.0)
    if event.kind == "decision" and not (
        isinstance(confidence, int | float) and 0.0 <= confidence <= 1.0
    ):
        raise InvalidRequest("decision.confidence", "must be a number from 0 to 1")
    reasoning = event.details.get("reasoning", "")
    if isinstance(reasoning, str) and len(reasoning) > limits.max_reasoning_chars:
        raise InvalidRequest(
            f"{event.kind}.reasoning",
            f"length {len(reasoning)} exceeds the limit of {limits.max_reasoning_chars}",
        )


def _check_size(path: str, value: Mapping[str, Any], limits: Limits) -> None:
    size = _size(path, value, 1, limits)
    if size > limits.max_parameters_bytes:
        raise InvalidRequest(
            path, f"size {size} bytes exceeds the limit of {limits.max_parameters_bytes}"
        )


def _size(path: str, value: Any, depth: int, limits: Limits) -> int:
    """An upper bound of the JSON size; checks depth and finiteness on the way."""
    if depth > limits.max_parameter_depth:
        raise InvalidRequest(
            path, f"depth {depth} exceeds the limit of {limits.max_parameter_depth}"
        )
    if isinstance(value, Mapping):
        return 2 + sum(
            len(str(k)) * 6 + 3 + _size(f"{path}.{preview(str(k), 32)}", v, depth + 1, limits)
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return 2 + sum(1 + _size(f"{path}[{i}]", v, depth + 1, limits) for i, v in enumerate(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(path, "must be a finite number")
    if isinstance(value, str):
        return len(value) * 6 + 2
    return 24

"""Alert rules and their evaluation over one event: pure.

An `AlertEvent` is what happened (a decision with its findings and counters, a
reported outcome with the agent's error rate, a security event, a hold escalated,
an audit append that failed). `evaluate` returns the rules that match it, each with
its message rendered, and the errors of rules that could not be evaluated: one
broken rule never stops the others. Cooldowns are the store's (they are shared by
every replica); a rule only says how long its cooldown is.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.domain.alerts.conditions import (
    MISSING,
    Comparisons,
    Condition,
    RuleError,
    check_comparison,
    lookup,
)
from gateway.domain.alerts.model import Severity

DEFAULT_CHANNELS = None  # a rule that names none: `log` and every configured channel


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class AlertEvent:
    event_type: str  # decision | outcome | security | hold | audit | store | tiles
    subject: str  # an agent_id, or "gateway"
    time: float
    agent_id: str = ""
    session_id: str = ""
    trace_id: str = ""
    metrics: Mapping[str, float] = field(default_factory=_empty)
    findings: tuple[Mapping[str, Any], ...] = ()  # {type, severity, recommended_action}
    data: Mapping[str, Any] = field(default_factory=_empty)  # redacted context

    def activation(self) -> dict[str, Any]:
        """What conditions and templates see."""
        return {
            "event_type": self.event_type,
            "subject": self.subject,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "trace_id": self.trace_id,
            "metrics": dict(self.metrics),
            "findings": [dict(f) for f in self.findings],
            "finding_types": [str(f.get("type", "")) for f in self.findings],
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class AlertRule:
    name: str
    condition: Condition
    severity: Severity
    cooldown_seconds: float
    message: str  # a template: {path} or {path:format}, e.g. {metrics.error_rate:.0%}
    channels: tuple[str, ...] | None = DEFAULT_CHANNELS
    category: str = "error"  # the log category of its log-channel record


@dataclass(frozen=True)
class Match:
    rule: AlertRule
    message: str


@dataclass(frozen=True)
class Evaluation:
    matches: tuple[Match, ...]
    errors: tuple[str, ...]  # "<rule>: <why>", one per broken rule or template


def evaluate(
    rules: Sequence[AlertRule],
    event: AlertEvent,
    skip: Callable[[AlertRule], bool] | None = None,
) -> Evaluation:
    """The rules `event` matches, with their messages. Rules for which `skip` holds
    (cooling down for the event's subject) are not evaluated at all."""
    activation = event.activation()
    matches: list[Match] = []
    errors: list[str] = []
    for rule in rules:
        if skip is not None and skip(rule):
            continue
        try:
            if not rule.condition.matches(activation):
                continue
        except RuleError as e:
            errors.append(f"{rule.name}: {e}")
            continue
        text, missing = render(rule.message, activation)
        if missing:
            errors.append(f"{rule.name}: template names missing field(s) {', '.join(missing)}")
        matches.append(Match(rule, text))
    return Evaluation(tuple(matches), tuple(errors))


_FORMATTER = string.Formatter()
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_template(template: str) -> None:
    """ValueError for a template that does not parse (unbalanced braces) or uses a
    conversion (`!r`) or positional field."""
    for _, name, spec, conversion in _FORMATTER.parse(template):
        if name is None:
            continue
        if conversion or not _FIELD.fullmatch(name):
            raise ValueError(
                f"field {{{name}}}: a field is {{path}} or {{path:format}} with a dotted "
                "path of names, e.g. {metrics.error_rate:.0%}"
            )
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"field {name}: nested fields are not supported")


def render(template: str, activation: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The template with its fields filled in from the activation. A field the event
    lacks (or whose format does not fit its value) renders as `<missing: name>`
    and is returned in the list. Fields are looked up in the activation only: no
    attribute access, no indexing, so a template cannot reach anything else."""
    out: list[str] = []
    missing: list[str] = []
    for literal, name, spec, _ in _FORMATTER.parse(template):
        out.append(literal)
        if name is None:
            continue
        value = lookup(activation, name)
        if value is MISSING or value is None:
            missing.append(name)
            out.append(f"<missing: {name}>")
            continue
        try:
            out.append(format(value, spec or ""))
        except (ValueError, TypeError):
            missing.append(name)
            out.append(f"<missing: {name}>")
    return "".join(out), missing


def _when(source: str, **comparisons: Any) -> Comparisons:
    parsed = []
    for path, test in comparisons.items():
        op, expected = next(iter(test.items())) if isinstance(test, dict) else ("==", test)
        parsed.append(check_comparison(path.replace("__", "."), op, expected))
    return Comparisons(source, tuple(parsed))


LOOP_FINDINGS = ["infinite_loop", "stuck_pattern", "cross_session_loop"]

DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        name="high_error_rate",
        condition=_when(
            "error rate over 10 %", event_type="outcome", metrics__error_rate={">": 0.10}
        ),
        severity=Severity.HIGH,
        cooldown_seconds=600,
        message="{subject}: error rate {metrics.error_rate:.0%} over its last "
        "{metrics.outcomes:.0f} outcomes",
    ),
    AlertRule(
        name="security_violation",
        condition=_when("any security event", event_type="security"),
        severity=Severity.CRITICAL,
        cooldown_seconds=0,
        message="{subject}: {data.kind}: {data.description}",
        category="security",
    ),
    AlertRule(
        name="resource_usage",
        condition=_when("a rate window over 80 % full", metrics__resource_usage={">": 0.80}),
        severity=Severity.MEDIUM,
        cooldown_seconds=1800,
        message="{subject}: {data.resource} at {metrics.resource_usage:.0%} of its limit",
        category="performance",
    ),
    AlertRule(
        name="agent_stuck_in_loop",
        condition=_when("a loop finding", finding_types={"contains_any": LOOP_FINDINGS}),
        severity=Severity.HIGH,
        cooldown_seconds=300,
        message="{subject}: stuck in a loop in session {session_id} ({data.loop})",
        category="decision",
    ),
    AlertRule(
        name="unusual_behaviour",
        condition=_when("a finding that recommends investigation", metrics__investigate={">": 0}),
        severity=Severity.MEDIUM,
        cooldown_seconds=900,
        message="{subject}: {data.unusual} in session {session_id}",
        category="decision",
    ),
    AlertRule(
        name="hold_escalated",
        condition=_when("a hold pending past its escalation time", event_type="hold"),
        severity=Severity.MEDIUM,
        cooldown_seconds=0,
        message="hold {data.hold_id} of {subject} ({data.action_type}) pending for "
        "{metrics.pending_seconds:.0f} s",
        category="decision",
    ),
    AlertRule(
        name="store_unavailable",
        condition=_when("Redis does not answer", event_type="store"),
        severity=Severity.CRITICAL,
        cooldown_seconds=300,
        message="Redis is unreachable ({data.error}); every decision fails closed",
    ),
    AlertRule(
        name="audit_append_failed",
        condition=_when("the audit log could not be written", event_type="audit"),
        severity=Severity.CRITICAL,
        cooldown_seconds=60,
        message="audit append failed: {data.error}; decisions fail closed until it recovers",
    ),
    AlertRule(
        name="audit_sealing_failed",
        condition=_when("the audit log could not be sealed into tiles", event_type="tiles"),
        severity=Severity.HIGH,
        cooldown_seconds=300,
        message="sealing the audit log into tiles failed: {data.error}; "
        "{metrics.unsealed:.0f} entries wait in Redis",
    ),
)

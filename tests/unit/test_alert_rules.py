"""Alert rules: conditions are data (CEL or comparisons), templates never fail a rule,
one broken rule never stops the others, and the built-in rules fire on what they name."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.domain.actions import ActionRequest, Decision, Finding, Verdict
from gateway.domain.alerts.conditions import CelCondition, RuleError, check_comparison
from gateway.domain.alerts.events import (
    audit_failure_event,
    decision_event,
    hold_escalated_event,
    outcome_event,
    security_event,
)
from gateway.domain.alerts.model import Alert, Severity, alert_from_json, alert_to_json
from gateway.domain.alerts.rules import (
    DEFAULT_RULES,
    AlertEvent,
    AlertRule,
    check_template,
    evaluate,
    render,
)
from gateway.domain.alerts.settings import AlertSettings, read_alerts
from gateway.domain.detect.rates import AgentLimits, Quota, RateCounts
from gateway.domain.yaml_reader import YamlReader
from gateway.errors import ConfigError


def fired(event: AlertEvent, rules: tuple[AlertRule, ...] = DEFAULT_RULES) -> dict[str, str]:
    return {m.rule.name: m.message for m in evaluate(rules, event).matches}


def a_decision(
    findings: tuple[Finding, ...] = (), counts: RateCounts | None = None, admitted: bool = True
) -> AlertEvent:
    request = ActionRequest("act-1", "agent-1", "sess-1", "db.query", "orders", {}, "", {})
    decision = Decision("act-1", "sess-1", Verdict.ALLOW, "ok", findings=findings)
    quota = Quota(AgentLimits(actions_per_minute=100), 0, 10)
    return decision_event(
        request, decision, quota, counts or RateCounts(agent_actions=1), admitted, 1.0, "t" * 32
    )


def loop_finding(kind: str = "infinite_loop") -> Finding:
    return Finding(kind, 0.8, "the same action 5 times in a row", "pause_and_review")


# --- the built-in rules --------------------------------------------------------------


def test_a_loop_finding_fires_the_loop_rule_with_its_description() -> None:
    for kind in ("infinite_loop", "stuck_pattern", "cross_session_loop"):
        messages = fired(a_decision((loop_finding(kind),)))
        assert set(messages) == {"agent_stuck_in_loop"}, kind
        assert messages["agent_stuck_in_loop"] == (
            "agent-1: stuck in a loop in session sess-1 (the same action 5 times in a row)"
        )


def test_a_plain_decision_fires_nothing() -> None:
    assert fired(a_decision()) == {}


def test_resource_usage_fires_above_80_percent_of_the_fullest_window() -> None:
    assert "resource_usage" not in fired(a_decision(counts=RateCounts(agent_actions=80)))
    messages = fired(a_decision(counts=RateCounts(agent_actions=81)))
    assert messages["resource_usage"] == (
        "agent-1: actions per minute by this agent at 81% of its limit"
    )
    # A refused action counts as one more than the window held.
    refused = fired(a_decision(counts=RateCounts(agent_actions=100), admitted=False))
    assert "101%" in refused["resource_usage"]


def test_high_error_rate_needs_a_rate_over_10_percent() -> None:
    assert fired(outcome_event("agent-1", "s", "a", False, None, 3, 1.0)) == {}
    assert fired(outcome_event("agent-1", "s", "a", False, 0.10, 20, 1.0)) == {}
    messages = fired(outcome_event("agent-1", "s", "a", False, 0.25, 20, 1.0))
    assert messages == {"high_error_rate": "agent-1: error rate 25% over its last 20 outcomes"}


def test_every_security_event_is_critical_and_has_no_cooldown() -> None:
    event = security_event("authentication_failed", "3 call(s) refused (unknown token)", 1.0)
    matches = evaluate(DEFAULT_RULES, event).matches
    assert [(m.rule.name, m.rule.severity, m.rule.cooldown_seconds) for m in matches] == [
        ("security_violation", Severity.CRITICAL, 0)
    ]
    assert matches[0].message == (
        "gateway: authentication_failed: 3 call(s) refused (unknown token)"
    )


def test_escalations_investigations_and_audit_failures_have_rules_too() -> None:
    held = hold_escalated_event("agent-1", "s", "hold_1", "payments.transfer", 700.0, 1.0)
    assert fired(held) == {
        "hold_escalated": "hold hold_1 of agent-1 (payments.transfer) pending for 700 s"
    }
    unusual = Finding("anomaly", 0.9, "3.4x the usual actions per minute", "investigate")
    assert "unusual_behaviour" in fired(a_decision((unusual,)))
    failed = fired(audit_failure_event("Redis is unreachable", 1.0))
    assert failed["audit_append_failed"].startswith("audit append failed: Redis is unreachable")


# --- conditions ---------------------------------------------------------------------


def test_cel_conditions_see_metrics_findings_and_data() -> None:
    condition = CelCondition.compile(
        'event_type == "decision" && "infinite_loop" in finding_types '
        '&& metrics.agent_actions_per_minute >= 1.0 && data.action_type.startsWith("db.")'
    )
    assert condition.matches(a_decision((loop_finding(),)).activation())
    assert not condition.matches(a_decision().activation())


def test_a_cel_expression_that_does_not_parse_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="invalid CEL expression"):
        CelCondition.compile("metrics.error_rate >")


def test_a_cel_error_at_evaluation_is_a_rule_error() -> None:
    with pytest.raises(RuleError, match="CEL evaluation failed"):
        CelCondition.compile("metrics.no_such_metric > 1.0").matches(a_decision().activation())
    with pytest.raises(RuleError, match="not a bool"):
        CelCondition.compile("1 + 1").matches(a_decision().activation())


def test_comparisons_of_a_missing_field_are_false_not_errors() -> None:
    comparison = check_comparison("metrics.error_rate", ">", 0.1)
    assert not comparison.holds(a_decision().activation())


@pytest.mark.parametrize(
    ("op", "expected", "why"),
    [
        ("~", 1, "unknown operator"),
        (">", "high", "compares numbers"),
        ("in", "a", "takes a list"),
        ("contains_any", 3, "takes a list"),
    ],
)
def test_bad_comparisons_say_why(op: str, expected: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_comparison("x", op, expected)


def test_ordered_comparisons_never_compare_a_string_or_a_bool() -> None:
    activation = {"metrics": {"a": "5", "b": True}}
    assert not check_comparison("metrics.a", ">", 1).holds(activation)
    assert not check_comparison("metrics.b", ">", 0).holds(activation)


# --- templates ------------------------------------------------------------------------


def test_a_template_naming_a_missing_field_renders_a_placeholder() -> None:
    text, missing = render("{subject} at {metrics.nope:.0%} ({data.x})", {"subject": "a1"})
    assert text == "a1 at <missing: metrics.nope> (<missing: data.x>)"
    assert missing == ["metrics.nope", "data.x"]


def test_a_format_that_does_not_fit_the_value_is_a_placeholder_too() -> None:
    text, missing = render("{subject:.0%}", {"subject": "agent-1"})
    assert text == "<missing: subject>" and missing == ["subject"]


def test_templates_reach_only_the_event() -> None:
    # No attribute access or indexing: "{subject.__class__}" is a missing field.
    text, missing = render("{subject.__class__}{data[0]}", {"subject": "a", "data": {}})
    assert text == "<missing: subject.__class__><missing: data[0]>"
    assert missing == ["subject.__class__", "data[0]"]


@pytest.mark.parametrize(
    "template", ["{", "{0}", "{x!r}", "{x:{y}}", "{a[0]}", "{a.__class__.b c}"]
)
def test_templates_that_cannot_work_are_refused_at_start(template: str) -> None:
    with pytest.raises(ValueError):
        check_template(template)


def test_one_broken_rule_never_stops_the_others() -> None:
    broken = AlertRule("broken", CelCondition.compile("metrics.nope > 1.0"), Severity.LOW, 0, "x")
    missing = AlertRule(
        "missing_field", CelCondition.compile("true"), Severity.LOW, 0, "{data.nothing}"
    )
    rules = (broken, missing, *DEFAULT_RULES)
    evaluation = evaluate(rules, a_decision((loop_finding(),)))
    assert [m.rule.name for m in evaluation.matches] == ["missing_field", "agent_stuck_in_loop"]
    assert evaluation.matches[0].message == "<missing: data.nothing>"
    assert [e.split(":")[0] for e in evaluation.errors] == ["broken", "missing_field"]


def test_skipped_rules_are_not_evaluated_at_all() -> None:
    """A rule cooling down for the subject is skipped before its condition runs: no
    match, no message rendered, and not even its evaluation error."""
    broken = AlertRule("broken", CelCondition.compile("metrics.nope > 1.0"), Severity.LOW, 0, "x")
    rules = (broken, *DEFAULT_RULES)
    event = a_decision((loop_finding(),))
    seen: list[str] = []

    def cooling(rule: AlertRule) -> bool:
        seen.append(rule.name)
        return rule.name in ("broken", "agent_stuck_in_loop")

    evaluation = evaluate(rules, event, skip=cooling)
    assert evaluation.matches == () and evaluation.errors == ()
    assert seen == [r.name for r in rules]
    assert [m.rule.name for m in evaluate(rules, event).matches] == ["agent_stuck_in_loop"]


# --- the alerts: section ------------------------------------------------------------------


def settings(text: str) -> AlertSettings:
    r = YamlReader("agentgw.yaml")
    node = r.compose(text)
    assert node is not None
    return read_alerts(r, node)


def test_rules_from_yaml_replace_extend_and_disable_the_built_ins() -> None:
    s = settings(
        """
channels:
  - {name: oncall, type: webhook, url: "http://127.0.0.1:9/hook"}
rules:
  - name: payments_denied
    cel: 'event_type == "decision" && data.verdict == "deny"'
    severity: high
    cooldown_seconds: 300
    channels: [oncall]
    message: "{subject} was denied {data.action_type}"
  - name: agent_stuck_in_loop
    when:
      finding_types: {contains: infinite_loop}
      metrics.findings: {">=": 1}
    severity: critical
    message: "{subject} loops"
  - {name: resource_usage, enabled: false}
"""
    )
    names = [r.name for r in s.rules]
    assert "resource_usage" not in names and "payments_denied" in names
    loop = next(r for r in s.rules if r.name == "agent_stuck_in_loop")
    assert loop.severity is Severity.CRITICAL and loop.cooldown_seconds == 0
    assert fired(a_decision((loop_finding(),)), s.rules)["agent_stuck_in_loop"] == "agent-1 loops"
    assert fired(a_decision((loop_finding("stuck_pattern"),)), s.rules) == {}
    payments = next(r for r in s.rules if r.name == "payments_denied")
    assert s.channels_of(payments) == ("oncall",)
    high = next(r for r in s.rules if r.name == "high_error_rate")
    assert s.channels_of(high) == ("log", "oncall")  # the default: log and every channel


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("rules: [{name: x, severity: high, message: m}]", "exactly one condition"),
        (
            "rules: [{name: x, cel: 'true', when: {a: 1}, severity: high, message: m}]",
            "exactly one",
        ),
        (
            "rules: [{name: x, cel: 'true', severity: urgent, message: m}]",
            "alerts.rules[0].severity",
        ),
        ("rules: [{name: x, cel: '1 +', severity: high, message: m}]", "invalid CEL"),
        (
            "rules: [{name: x, cel: 'true', severity: high, message: '{'}]",
            "alerts.rules[0].message",
        ),
        (
            "rules: [{name: x, cel: 'true', severity: high, message: m, channels: [pager]}]",
            "unknown channel 'pager'",
        ),
        (
            "rules: [{name: x, when: {a: {'>': high}}, severity: high, message: m}]",
            "compares numbers",
        ),
        (
            "rules: [{name: x, when: {a: {'>': 1, '<': 2}}, severity: high, message: m}]",
            "one operator per field",
        ),
        ("rules: [{name: 'a b', cel: 'true', severity: high, message: m}]", "expected 1-64"),
        ("rules: [{name: x, enabled: false, severity: high}]", "takes only name and enabled"),
        (
            "rules: [{name: x, cel: 'true', severity: high, message: m}, "
            "{name: x, cel: 'true', severity: low, message: m}]",
            "duplicate rule 'x'",
        ),
        (
            "rules: [{name: x, cel: 'true', severity: high, message: m, category: misc}]",
            "alerts.rules[0].category",
        ),
        ("retention_days: 0", "alerts.retention_days"),
    ],
)
def test_bad_rules_are_refused_at_start_naming_the_key(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        settings(text)


def test_the_alert_json_form_round_trips() -> None:
    alert = Alert(
        "alert_1",
        "r",
        Severity.HIGH,
        "agent-1",
        "m",
        1.5,
        "decision",
        {"a": [1]},
        ("log",),
        "t" * 32,
        "admin-1",
        2.5,
        "looked",
        7,
    )
    assert alert_from_json(alert_to_json(alert)) == alert

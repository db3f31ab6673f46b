"""The `alerts:` section of the config file, read into `AlertSettings`.

alerts:
  default_rules: true        # keep the built-in rules (docs/alerts.md)
  retention_days: 30         # how long an alert stays listable
  max_alerts: 10000          # alerts kept listable (the oldest go first)
  channels:                  # besides `log`, which always exists
    - {name: oncall, type: slack, url_env: SLACK_WEBHOOK_URL}
  rules:
    - name: payments_denied   # a rule named like a built-in one replaces it
      cel: 'event_type == "decision" && data.verdict == "deny"'   # or `when:`
      severity: high          # low | medium | high | critical
      cooldown_seconds: 300   # per rule and subject, shared by every replica
      channels: [log, oncall] # default: log and every configured channel
      message: "{subject} was denied {data.action_type}"
      category: decision      # the log category of its `log` record
    - {name: resource_usage, enabled: false}   # turn a built-in rule off
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yaml.nodes import MappingNode, Node, SequenceNode

from gateway.domain.alerts.channels import Channel, read_channels
from gateway.domain.alerts.conditions import CelCondition, Comparisons, Condition, check_comparison
from gateway.domain.alerts.model import Severity
from gateway.domain.alerts.rules import DEFAULT_RULES, AlertRule, check_template
from gateway.domain.yaml_reader import YamlReader, join

LOG_CHANNEL = "log"
RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LOG_CATEGORIES = ("action", "decision", "error", "security", "performance", "user")
RULE_KEYS = (
    "category",
    "cel",
    "channels",
    "cooldown_seconds",
    "enabled",
    "message",
    "name",
    "severity",
    "when",
)


@dataclass(frozen=True)
class AlertSettings:
    rules: tuple[AlertRule, ...] = DEFAULT_RULES
    channels: tuple[Channel, ...] = ()  # besides `log`
    retention_seconds: float = 30 * 86400.0
    max_alerts: int = 10_000

    def channels_of(self, rule: AlertRule) -> tuple[str, ...]:
        """The channels a rule's alert goes to."""
        if rule.channels is not None:
            return rule.channels
        return (LOG_CHANNEL, *(c.name for c in self.channels))

    @property
    def channel_map(self) -> Mapping[str, Channel]:
        return {c.name: c for c in self.channels}


def read_alerts(r: YamlReader, node: Node) -> AlertSettings:
    m = r.mapping(
        node, "alerts", ("channels", "default_rules", "max_alerts", "retention_days", "rules")
    )
    channels = read_channels(r, m["channels"]) if "channels" in m else ()
    known = {LOG_CHANNEL, *(c.name for c in channels)}
    keep_defaults = (
        r.boolean(m["default_rules"], "alerts.default_rules") if ("default_rules" in m) else True
    )
    rules = {rule.name: rule for rule in DEFAULT_RULES} if keep_defaults else {}
    if "rules" in m:
        seen: set[str] = set()
        for path, item in r.sequence(m["rules"], "alerts.rules"):
            name, rule = _rule(r, item, path, known)
            if name in seen:
                raise r.fail(item, join(path, "name"), f"duplicate rule '{name}'")
            seen.add(name)
            if rule is None:
                rules.pop(name, None)
            else:
                rules[name] = rule
    settings = AlertSettings(rules=tuple(rules.values()), channels=channels)
    if "retention_days" in m:
        days = r.number(m["retention_days"], "alerts.retention_days", 1)
        settings = AlertSettings(settings.rules, channels, days * 86400.0, settings.max_alerts)
    if "max_alerts" in m:
        most = r.integer(m["max_alerts"], "alerts.max_alerts", 10)
        settings = AlertSettings(settings.rules, channels, settings.retention_seconds, most)
    return settings


def _rule(r: YamlReader, node: Node, path: str, channels: set[str]) -> tuple[str, AlertRule | None]:
    m = r.mapping(node, path, RULE_KEYS)
    if "name" not in m:
        raise r.fail(node, join(path, "name"), "every rule needs a name")
    name = r.string(m["name"], join(path, "name"))
    if not RULE_NAME.fullmatch(name):
        raise r.fail(m["name"], join(path, "name"), "expected 1-64 of A-Z a-z 0-9 _ . -")
    if "enabled" in m and not r.boolean(m["enabled"], join(path, "enabled")):
        if set(m) - {"name", "enabled"}:
            raise r.fail(node, path, "a disabled rule takes only name and enabled")
        return name, None
    missing = [k for k in ("severity", "message") if k not in m]
    if ("cel" in m) == ("when" in m):
        raise r.fail(node, path, "a rule has exactly one condition: cel or when")
    if missing:
        raise r.fail(node, join(path, missing[0]), "required")
    severity_text = r.string(m["severity"], join(path, "severity"))
    try:
        severity = Severity(severity_text)
    except ValueError:
        raise r.fail(
            m["severity"], join(path, "severity"), "expected low, medium, high or critical"
        ) from None
    message = r.string(m["message"], join(path, "message"))
    try:
        check_template(message)
    except ValueError as e:
        raise r.fail(m["message"], join(path, "message"), str(e)) from None
    condition: Condition
    if "cel" in m:
        try:
            condition = CelCondition.compile(r.string(m["cel"], join(path, "cel")))
        except ValueError as e:
            raise r.fail(m["cel"], join(path, "cel"), str(e)) from None
    else:
        condition = _comparisons(r, m["when"], join(path, "when"))
    cooldown = 0.0
    if "cooldown_seconds" in m:
        cooldown = r.number(m["cooldown_seconds"], join(path, "cooldown_seconds"), 0)
    rule_channels: tuple[str, ...] | None = None
    if "channels" in m:
        listed = []
        for key, item in r.sequence(m["channels"], join(path, "channels")):
            channel = r.string(item, key)
            if channel not in channels:
                raise r.fail(
                    item, key, f"unknown channel '{channel}' (configure it under alerts.channels)"
                )
            listed.append(channel)
        rule_channels = tuple(dict.fromkeys(listed))
    category = "error"
    if "category" in m:
        category = r.string(m["category"], join(path, "category"))
        if category not in LOG_CATEGORIES:
            raise r.fail(
                m["category"],
                join(path, "category"),
                f"expected one of {', '.join(LOG_CATEGORIES)}",
            )
    return name, AlertRule(name, condition, severity, cooldown, message, rule_channels, category)


def _comparisons(r: YamlReader, node: Node, path: str) -> Comparisons:
    m = r.mapping(node, path)
    if not m:
        raise r.fail(node, path, "at least one comparison")
    out = []
    for field_path, test in m.items():
        key = join(path, field_path)
        if isinstance(test, MappingNode):
            tm = r.mapping(test, key)
            if len(tm) != 1:
                raise r.fail(test, key, 'one operator per field, e.g. {">": 0.1}')
            op, operand = next(iter(tm.items()))
            expected = _plain(r, operand, join(key, op))
        else:
            op, expected = "==", r.scalar(test, key)
        try:
            out.append(check_comparison(field_path, op, expected))
        except ValueError as e:
            raise r.fail(test, key, str(e)) from None
    return Comparisons(f"when {path}", tuple(out))


def _plain(r: YamlReader, node: Node, path: str) -> Any:
    if isinstance(node, SequenceNode):
        return [r.scalar(item, k) for k, item in r.sequence(node, path)]
    return r.scalar(node, path)

"""Where alerts go: the channels of `alerts.channels`, what each is sent, and when to retry.

    alerts:
      channels:
        - {name: ops-hook, type: webhook, url: https://hooks.example.com/agentgw}
        - {name: chat, type: slack, url_env: AGENTGW_SLACK_URL}
        - {name: pager, type: pagerduty, routing_key_env: AGENTGW_PD_KEY}

A channel is a value: its YAML form is checked here (errors name file:line and the
key), its secrets come from the environment through `resolve_secrets`, and
`channel_payload` is the one definition of the JSON each type of receiver gets. A
Slack or PagerDuty URL and a routing key are credentials, so no error message and no
`repr` of a channel ever shows them. Pure: no Redis, no HTTP; sending and durable
retries are `gateway/services/alert_delivery.py`'s.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from yaml.nodes import Node

from gateway.domain.alerts.model import Alert, Severity, alert_to_json
from gateway.domain.audit.entry import format_timestamp
from gateway.domain.redaction import Redactor
from gateway.domain.yaml_reader import YamlReader, join
from gateway.errors import ConfigError

PATH = "alerts.channels"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ENVIRONMENT_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYS = (
    "name",
    "type",
    "url",
    "url_env",
    "routing_key",
    "routing_key_env",
    "timeout_seconds",
    "max_attempts",
    "backoff_seconds",
    "max_backoff_seconds",
)
# Limits of the receivers' documented fields: PagerDuty's summary and dedup_key,
# Slack's header text and section text.
SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255
SLACK_HEADER_LIMIT = 150
SLACK_TEXT_LIMIT = 3000
PAGERDUTY_SEVERITIES = {
    Severity.CRITICAL: "critical",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "info",
}
_SLACK_MARKS = {
    Severity.CRITICAL: ":red_circle:",
    Severity.HIGH: ":large_orange_circle:",
    Severity.MEDIUM: ":large_yellow_circle:",
    Severity.LOW: ":large_blue_circle:",
}
_REDACTOR = Redactor()


class ChannelType(Enum):
    LOG = "log"
    WEBHOOK = "webhook"
    SLACK = "slack"
    PAGERDUTY = "pagerduty"


@dataclass(frozen=True)
class Channel:
    """One configured channel. `url` and `routing_key` are filled from `url_env` and
    `routing_key_env` by `resolve_secrets`; both are left out of the repr."""

    name: str
    type: ChannelType
    url: str = field(default="", repr=False)
    url_env: str = ""
    routing_key: str = field(default="", repr=False)
    routing_key_env: str = ""
    timeout_seconds: float = 5.0
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0


LOG_CHANNEL = Channel("log", ChannelType.LOG)


def read_channels(reader: YamlReader, node: Node) -> tuple[Channel, ...]:
    """The list under `alerts.channels`. The `log` channel always exists and is not
    in the tuple, also when the list declares it (as `{name: log, type: log}`)."""
    channels: list[Channel] = []
    seen: set[str] = set()
    for path, item in reader.sequence(node, PATH):
        channel = _channel(reader, item, path)
        if channel.name in seen:
            name_node = reader.mapping(item, path)["name"]
            raise reader.fail(name_node, join(path, "name"), f"duplicate channel '{channel.name}'")
        seen.add(channel.name)
        if channel.name != LOG_CHANNEL.name:
            channels.append(channel)
    return tuple(channels)


def _channel(r: YamlReader, node: Node, path: str) -> Channel:
    m = r.mapping(node, path, KEYS, required=("name", "type"))
    name = r.string(m["name"], join(path, "name"))
    if not NAME.fullmatch(name):
        raise r.fail(m["name"], join(path, "name"), "expected 1-64 of A-Z a-z 0-9 _ . -")
    type_text = r.string(m["type"], join(path, "type"))
    try:
        kind = ChannelType(type_text)
    except ValueError:
        names = ", ".join(t.value for t in ChannelType)
        raise r.fail(m["type"], join(path, "type"), f"expected one of {names}") from None
    if name == LOG_CHANNEL.name and kind is not ChannelType.LOG:
        raise r.fail(m["name"], join(path, "name"), "the name 'log' is the log channel's")
    values: dict[str, Any] = {"name": name, "type": kind}
    for key in ("url", "routing_key"):
        if key in m:
            values[key] = r.string(m[key], join(path, key))
    for key in ("url_env", "routing_key_env"):
        if key in m:
            values[key] = r.string(m[key], join(path, key))
            if not ENVIRONMENT_VARIABLE.fullmatch(values[key]):
                raise r.fail(m[key], join(path, key), "expected an environment variable name")
    for key, minimum in (("timeout_seconds", 0.001), ("backoff_seconds", 0.0)):
        if key in m:
            values[key] = r.number(m[key], join(path, key), minimum)
    if "max_backoff_seconds" in m:
        values["max_backoff_seconds"] = r.number(
            m["max_backoff_seconds"], join(path, "max_backoff_seconds"), 0.0
        )
    if "max_attempts" in m:
        values["max_attempts"] = r.integer(m["max_attempts"], join(path, "max_attempts"), 1)
    channel = Channel(**values)
    why = _problem(channel)
    if why is not None:
        key, message = why
        raise r.fail(m.get(key, node), join(path, key), message)
    return channel


def _problem(channel: Channel) -> tuple[str, str] | None:
    """The key and the rule a channel breaks, or None. Never quotes a value."""
    if channel.type is ChannelType.LOG:
        for key in ("url", "url_env", "routing_key", "routing_key_env"):
            if getattr(channel, key):
                return key, "a log channel takes no URL or routing key"
        return None
    if channel.url and channel.url_env:
        return "url_env", "give url or url_env, not both"
    if channel.url and not is_http_url(channel.url):
        return "url", "expected an http:// or https:// URL"
    if not (channel.url or channel.url_env) and channel.type is not ChannelType.PAGERDUTY:
        return "url", f"a {channel.type.value} channel needs url or url_env"
    if channel.type is ChannelType.PAGERDUTY:
        if channel.routing_key and channel.routing_key_env:
            return "routing_key_env", "give routing_key or routing_key_env, not both"
        if not (channel.routing_key or channel.routing_key_env):
            return "routing_key", "a pagerduty channel needs routing_key or routing_key_env"
    elif channel.routing_key or channel.routing_key_env:
        key = "routing_key" if channel.routing_key else "routing_key_env"
        return key, "only a pagerduty channel takes a routing key"
    if channel.max_backoff_seconds < channel.backoff_seconds:
        return "max_backoff_seconds", "expected a number >= backoff_seconds"
    return None


def is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def resolve_secrets(
    channels: tuple[Channel, ...], env: Mapping[str, str], source: str
) -> tuple[Channel, ...]:
    """The channels with `url` and `routing_key` read from the environment variables
    they name; a PagerDuty channel without a URL gets the Events API v2 endpoint.
    An unset or empty variable is a ConfigError naming it (never its value)."""
    resolved: list[Channel] = []
    for channel in channels:
        changes: dict[str, Any] = {}
        for key in ("url", "routing_key"):
            variable = getattr(channel, f"{key}_env")
            if not variable:
                continue
            value = env.get(variable, "")
            where = f"{source}: {PATH}.{channel.name}.{key}_env"
            if not value:
                raise ConfigError(f"{where}: environment variable {variable} is not set")
            if key == "url" and not is_http_url(value):
                raise ConfigError(
                    f"{where}: environment variable {variable} is not an http:// or https:// URL"
                )
            changes[key] = value
        if channel.type is ChannelType.PAGERDUTY and not (channel.url or "url" in changes):
            changes["url"] = PAGERDUTY_EVENTS_URL
        resolved.append(replace(channel, **changes))
    return tuple(resolved)


def retry_delay(attempt: int, channel: Channel, random: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 for the first):
    exponential backoff with full jitter, uniform in [0, min(cap, base * 2**(n-1))],
    so that receivers coming back up are not hit by every gateway at once."""
    exponent = min(max(attempt, 1) - 1, 60)  # 2**60 seconds is past any cap
    ceiling = min(channel.max_backoff_seconds, channel.backoff_seconds * 2.0**exponent)
    return min(max(random(), 0.0), 1.0) * ceiling


def dedup_key(alert: Alert) -> str:
    """PagerDuty's dedup_key: one incident per rule and subject, whichever alert_id
    fired it. Rule names and subjects hold no '|', so the text form is unambiguous;
    past PagerDuty's 255 characters it is a digest of the same text."""
    text = f"agentgw:{alert.rule}|{alert.subject}"
    if len(text) <= DEDUP_KEY_LIMIT:
        return text
    return "agentgw:" + hashlib.sha256(text.encode()).hexdigest()


def channel_payload(channel: Channel, alert: Alert) -> dict[str, Any]:
    """The JSON body a channel's receiver gets for `alert`. Strings go through the
    redactor once more (the alert's data was redacted when it fired); a log channel
    has no body and is an error here."""
    if channel.type is ChannelType.WEBHOOK:
        return _redacted(_webhook(alert))
    if channel.type is ChannelType.SLACK:
        return _redacted(_slack(alert))
    if channel.type is ChannelType.PAGERDUTY:
        # The envelope's routing_key and dedup_key are under names the redactor
        # treats as secrets, so only the event itself goes through it.
        return {
            "routing_key": channel.routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key(alert),
            "client": "agentgw",
            "payload": _redacted(_pagerduty_event(alert)),
        }
    raise ValueError(f"a {channel.type.value} channel is not sent over HTTP")


def _redacted(payload: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _REDACTOR.value(payload)
    return result


WEBHOOK_FIELDS = (
    "alert_id",
    "rule",
    "severity",
    "subject",
    "message",
    "event_type",
    "data",
    "trace_id",
)


def _webhook(alert: Alert) -> dict[str, Any]:
    """The alert's JSON form (the acknowledgement fields aside), its time as RFC 3339
    (`fired_at`) and unix seconds (`time`)."""
    document = alert_to_json(alert)
    return {
        **{name: document[name] for name in WEBHOOK_FIELDS},
        "fired_at": format_timestamp(alert.fired_at),
        "time": alert.fired_at,
    }


def _slack_escape(text: str) -> str:
    """Slack reads &, < and > as markup (`<!channel>` notifies everyone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack(alert: Alert) -> dict[str, Any]:
    severity = alert.severity.value.upper()
    fields = [
        ("Severity", severity),
        ("Rule", alert.rule),
        ("Subject", alert.subject),
        ("Event", alert.event_type or "-"),
    ]
    context = [f"alert {alert.alert_id}", format_timestamp(alert.fired_at)]
    if alert.trace_id:
        context.append(f"trace {alert.trace_id}")
    return {
        # The notification and fallback text; the blocks are what Slack shows.
        "text": _cut(
            _slack_escape(f"[{severity}] {alert.rule} on {alert.subject}: {alert.message}"),
            SLACK_TEXT_LIMIT,
        ),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": _cut(f"{severity} alert: {alert.rule}", SLACK_HEADER_LIMIT),
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _cut(
                        f"{_SLACK_MARKS[alert.severity]} {_slack_escape(alert.message)}",
                        SLACK_TEXT_LIMIT,
                    ),
                },
                "fields": [
                    {"type": "mrkdwn", "text": _cut(f"*{k}*\n{_slack_escape(v)}", 2000)}
                    for k, v in fields
                ],
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": _slack_escape(" · ".join(context))},
                ],
            },
        ],
    }


def _pagerduty_event(alert: Alert) -> dict[str, Any]:
    return {
        "summary": _cut(
            f"[{alert.severity.value}] {alert.rule} on {alert.subject}: {alert.message}",
            SUMMARY_LIMIT,
        ),
        "source": alert.subject,
        "severity": PAGERDUTY_SEVERITIES[alert.severity],
        "timestamp": format_timestamp(alert.fired_at),
        "component": "agentgw",
        "group": alert.rule,
        "class": alert.event_type or "alert",
        "custom_details": dict(alert.data),
    }

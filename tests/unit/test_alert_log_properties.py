"""Property: no value under a sensitive key, however deep, however the key is cased,
ever appears in a log record (an agent's `Gateway.Log` record, the gateway's own
records in the JSON and text formats), an alert's channel payloads or an audit entry's
details."""

from __future__ import annotations

import json
import logging
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.agent_logs import AgentLogEvent, agent_log_record
from gateway.domain.alerts.channels import Channel, ChannelType, channel_payload
from gateway.domain.alerts.model import Alert, Severity, new_alert_id
from gateway.domain.log_records import record_to_json
from gateway.domain.redaction import Redactor
from gateway.logs import JsonFormatter, TextFormatter

MARK = "QQ"  # every planted secret starts with it; no other generated string has it

# Substring rules: any casing, any surroundings.
SUBSTRING_KEYS = ("password", "token", "api_key", "secret", "credential", "passwd", "cookie")
# Word rules: the word must stay a word part.
WORD_KEYS = ("pin", "otp", "auth", "X-Auth-Token", "userPIN", "db_pass")

secrets_ = st.text("0123456789abcdefABCDEF_-", min_size=6, max_size=1200).map(lambda s: MARK + s)
plain = st.text("abcdefghijklmnopqrstuvwxyz ,.", max_size=30)
plain_key = st.sampled_from(["query", "items", "user", "path", "limit", "note", "author", "data"])


@st.composite
def cased(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(word, flips, strict=True))


@st.composite
def sensitive_key(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        core = draw(cased(draw(st.sampled_from(SUBSTRING_KEYS))))
        prefix = draw(st.sampled_from(["", "my_", "x-", "Client", "db."]))
        suffix = draw(st.sampled_from(["", "_value", "-2", "Hash", "s"]))
        return prefix + core + suffix
    return draw(st.sampled_from(WORD_KEYS))


def secret_value() -> st.SearchStrategy[Any]:
    """A secret, or a structure of them (the whole value under the key is secret)."""
    return st.recursive(
        secrets_,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_key, inner, max_size=3),
        max_leaves=4,
    )


@st.composite
def planted(draw: st.DrawFn) -> Any:
    """A sensitive entry in one of the forms the redactor reads as a key."""
    key, value = draw(sensitive_key()), draw(secret_value())
    form = draw(st.sampled_from(["mapping", "pair", "header"]))
    if form == "pair" and isinstance(value, str):
        return [key, value]
    if form == "header" and isinstance(value, str):
        return {"name": key, "value": value}
    return {key: value}


def structures() -> st.SearchStrategy[Any]:
    leaf = plain | st.integers() | st.booleans() | planted()
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(plain_key, inner, max_size=4),
        max_leaves=12,
    )


def has_secret(value: Any) -> bool:
    return MARK in json.dumps(value)


redactor = Redactor()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(plain_key, structures(), max_size=5), structures())
def test_an_agent_record_never_shows_a_value_under_a_sensitive_key(
    fields: dict[str, Any], context: Any
) -> None:
    event = AgentLogEvent(
        agent_id="agent-1",
        session_id="s",
        category="error",
        fields=fields,
        kind="error",
        details={"type": "E", "message": "m", "stack_trace": "", "context": {"c": context}},
    )
    record = agent_log_record("agent-1", event, 1.0, redactor)
    assert MARK not in record_to_json(record)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_the_gateways_own_records_never_show_one_in_either_format(value: Any) -> None:
    record = logging.LogRecord("agentgw.x", logging.WARNING, "x.py", 1, "msg", None, None)
    record.category = "decision"
    record.payload = value
    for formatter in (JsonFormatter(), TextFormatter()):
        assert MARK not in formatter.format(record)


CHANNELS = (
    Channel(name="w", type=ChannelType.WEBHOOK, url="http://127.0.0.1:1/w"),
    Channel(name="s", type=ChannelType.SLACK, url="http://127.0.0.1:1/s"),
    Channel(name="p", type=ChannelType.PAGERDUTY, url="http://127.0.0.1:1/p", routing_key="rk0123"),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_an_alert_payload_never_shows_one(value: Any) -> None:
    # What Alerting._alert does with an event's data, then every channel's body.
    data = redactor.value({"metrics": {}, "findings": [], "extra": value, "session_id": "s"})
    alert = Alert(
        alert_id=new_alert_id(),
        rule="r",
        severity=Severity.HIGH,
        subject="agent-1",
        message="m",
        fired_at=1.0,
        event_type="decision",
        data=data,
    )
    for channel in CHANNELS:
        assert MARK not in json.dumps(channel_payload(channel, alert))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(plain_key, structures(), max_size=5), structures())
def test_an_audit_entry_never_shows_one_in_its_details(
    parameters: dict[str, Any], labels_source: Any
) -> None:
    """The decision's audit entry is built from the redacted request (as the decision
    path does), and its signed bytes carry no planted secret."""
    from gateway.domain.actions import ActionRequest, Decision, Verdict
    from gateway.domain.verdicts import VerdictOutcome
    from gateway.services.decisions import decision_entry

    labels = {"note": json.dumps(labels_source)[:200], "session_token": MARK + "label"}
    request = ActionRequest(
        "a-1", "agent-1", "s-1", "db.query", "orders", parameters, "reasoning", labels
    )
    stored = redactor.request(request)
    decision = Decision("a-1", "s-1", Verdict.ALLOW, "ok", trace_id="f" * 32)
    draft = decision_entry(stored, decision, VerdictOutcome(Verdict.ALLOW, False, "ok"), 1.0)
    assert not has_secret(draft.details), draft.details

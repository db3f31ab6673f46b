"""Alert channels: the `alerts.channels` YAML, secrets from the environment, the
payload each receiver gets, and the retry backoff. No channel's URL or key ever
appears in an error message."""

from __future__ import annotations

import textwrap
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.alerts.channels import (
    PAGERDUTY_EVENTS_URL,
    Channel,
    ChannelType,
    channel_payload,
    dedup_key,
    read_channels,
    resolve_secrets,
    retry_delay,
)
from gateway.domain.alerts.model import Alert, Severity
from gateway.domain.yaml_reader import YamlReader
from gateway.errors import ConfigError

SOURCE = "agentgw.yaml"
SECRET_URL = "https://hooks.slack.com/services/T000/B000/sekr1tPathToken"
SECRET_KEY = "R0UT1NGKEYsekr1t0123456789abcdef"


def channels(text: str) -> tuple[Channel, ...]:
    reader = YamlReader(SOURCE)
    node = reader.compose(textwrap.dedent(text))
    assert node is not None
    return read_channels(reader, node)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        channels(text)
    return str(caught.value)


def alert(**changes: object) -> Alert:
    values: dict[str, object] = {
        "alert_id": "alert_0123456789abcdef01234567",
        "rule": "payments_denied",
        "severity": Severity.HIGH,
        "subject": "agent-7",
        "message": "agent-7 was denied <payments.send> & more",
        "fired_at": 1_800_000_000.25,
        "event_type": "decision",
        "data": MappingProxyType({"verdict": "deny", "count": 3}),
        "trace_id": "trace-1",
    }
    values.update(changes)
    return Alert(**values)  # type: ignore[arg-type]


# --- YAML ---------------------------------------------------------------------------


def test_channels_are_read_with_their_defaults() -> None:
    read = channels(
        """\
        - {name: hook, type: webhook, url: "https://example.com/in", timeout_seconds: 2}
        - {name: chat, type: slack, url_env: SLACK_URL}
        - {name: pager, type: pagerduty, routing_key_env: PD_KEY, max_attempts: 3}
        """
    )
    assert [(c.name, c.type) for c in read] == [
        ("hook", ChannelType.WEBHOOK),
        ("chat", ChannelType.SLACK),
        ("pager", ChannelType.PAGERDUTY),
    ]
    assert read[0].url == "https://example.com/in" and read[0].timeout_seconds == 2.0
    assert read[1].url_env == "SLACK_URL" and read[1].url == ""
    assert read[2].max_attempts == 3 and read[2].backoff_seconds == 1.0


def test_the_log_channel_is_implicit_and_may_be_declared() -> None:
    assert channels("[]") == ()
    assert channels("- {name: log, type: log}") == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", "agentgw.yaml:1: alerts.channels: expected a list, got a mapping"),
        ("- {type: webhook}", "alerts.channels[0]: missing required key 'name'"),
        ("- {name: a, type: email, url: 'https://x'}", "alerts.channels[0].type: expected one"),
        ("- {name: 'a b', type: log}", "alerts.channels[0].name: expected 1-64 of"),
        ("- {name: log, type: webhook, url: 'https://x'}", "alerts.channels[0].name: the name"),
        ("- {name: a, type: webhook}", "alerts.channels[0].url: a webhook channel needs url"),
        ("- {name: a, type: slack, url: ''}", "alerts.channels[0].url: expected a non-empty"),
        ("- {name: a, type: webhook, url: 'ftp://x/y'}", "alerts.channels[0].url: expected an"),
        ("- {name: a, type: pagerduty}", "alerts.channels[0].routing_key: a pagerduty channel"),
        ("- {name: a, type: webhook, url_env: 'A-B'}", "alerts.channels[0].url_env: expected an"),
        ("- {name: a, type: log, url: 'https://x'}", "alerts.channels[0].url: a log channel"),
        ("- {name: a, type: webhook, url: 'https://x', colour: red}", "colour: unknown key"),
        ("- {name: a, type: webhook, url: 'https://x', max_attempts: 0}", "max_attempts: expe"),
        ("- {name: a, type: webhook, url: 'https://x', timeout_seconds: 0}", "timeout_seconds"),
        (
            "- {name: a, type: webhook, url: 'https://x', routing_key: k}",
            "alerts.channels[0].routing_key: only a pagerduty channel",
        ),
        (
            "- {name: a, type: webhook, url: 'https://x', url_env: U}",
            "alerts.channels[0].url_env: give url or url_env, not both",
        ),
        (
            "- {name: a, type: webhook, url: 'https://x', backoff_seconds: 5, "
            "max_backoff_seconds: 1}",
            "alerts.channels[0].max_backoff_seconds: expected a number >= backoff_seconds",
        ),
    ],
)
def test_a_bad_channel_is_an_error_naming_its_key(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_duplicate_names_are_an_error_on_the_second_one() -> None:
    message = error_of(
        """\
        - {name: hook, type: webhook, url: "https://a.example"}
        - {name: hook, type: slack, url: "https://b.example"}
        """
    )
    assert message == "agentgw.yaml:2: alerts.channels[1].name: duplicate channel 'hook'"


@pytest.mark.parametrize(
    "text",
    [
        f"- {{name: a, type: webhook, url: 'ftp://{SECRET_URL[8:]}'}}",
        f"- {{name: a, type: webhook, url: '{SECRET_URL}', url_env: X}}",
        f"- {{name: a, type: webhook, url: '{SECRET_URL}', routing_key: '{SECRET_KEY}'}}",
        f"- {{name: a, type: pagerduty, routing_key: '{SECRET_KEY}', routing_key_env: X}}",
        f"- {{name: a, type: log, url: '{SECRET_URL}'}}",
        f"- {{name: a, type: webhook, url: '{SECRET_URL}', extra: '{SECRET_KEY}'}}",
        f"- {{name: a, type: webhook, url: !!int '{SECRET_URL}'}}",
    ],
)
def test_no_error_quotes_a_url_or_a_key(text: str) -> None:
    message = error_of(text)
    assert "sekr1t" not in message
    assert "hooks.slack.com" not in message


# --- secrets from the environment ---------------------------------------------------


def test_secrets_come_from_the_variables_named() -> None:
    read = channels(
        """\
        - {name: chat, type: slack, url_env: SLACK_URL}
        - {name: pager, type: pagerduty, routing_key_env: PD_KEY}
        - {name: hook, type: webhook, url: "https://example.com/in"}
        """
    )
    chat, pager, hook = resolve_secrets(
        read, {"SLACK_URL": SECRET_URL, "PD_KEY": SECRET_KEY}, "env"
    )
    assert chat.url == SECRET_URL
    assert pager.routing_key == SECRET_KEY and pager.url == PAGERDUTY_EVENTS_URL
    assert hook.url == "https://example.com/in"
    assert SECRET_URL not in repr(chat) and SECRET_KEY not in repr(pager)


def test_a_missing_variable_is_an_error_naming_it() -> None:
    read = channels("- {name: chat, type: slack, url_env: SLACK_URL}")
    with pytest.raises(ConfigError) as caught:
        resolve_secrets(read, {"OTHER": SECRET_URL}, SOURCE)
    assert str(caught.value) == (
        "agentgw.yaml: alerts.channels.chat.url_env: environment variable SLACK_URL is not set"
    )


def test_a_variable_that_is_not_a_url_is_an_error_without_its_value() -> None:
    read = channels("- {name: chat, type: slack, url_env: SLACK_URL}")
    with pytest.raises(ConfigError) as caught:
        resolve_secrets(read, {"SLACK_URL": "sekr1t-not-a-url"}, SOURCE)
    assert "SLACK_URL" in str(caught.value) and "sekr1t" not in str(caught.value)


# --- payloads -----------------------------------------------------------------------

WEBHOOK = Channel("hook", ChannelType.WEBHOOK, url="https://example.com/in")
SLACK = Channel("chat", ChannelType.SLACK, url=SECRET_URL)
PAGERDUTY = Channel(
    "pager", ChannelType.PAGERDUTY, url=PAGERDUTY_EVENTS_URL, routing_key=SECRET_KEY
)


def test_a_webhook_gets_the_alert_fields() -> None:
    body = channel_payload(WEBHOOK, alert())
    assert body == {
        "alert_id": "alert_0123456789abcdef01234567",
        "rule": "payments_denied",
        "severity": "high",
        "subject": "agent-7",
        "message": "agent-7 was denied <payments.send> & more",
        "fired_at": "2027-01-15T08:00:00.250000Z",
        "time": 1_800_000_000.25,
        "event_type": "decision",
        "data": {"verdict": "deny", "count": 3},
        "trace_id": "trace-1",
    }


def test_slack_gets_text_and_blocks_with_markup_escaped() -> None:
    body = channel_payload(SLACK, alert())
    assert set(body) == {"text", "blocks"}
    assert "&lt;payments.send&gt; &amp; more" in body["text"]
    header, section, context = body["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert "payments_denied" in header["text"]["text"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert "&lt;payments.send&gt;" in section["text"]["text"]
    shown = " ".join(f["text"] for f in section["fields"])
    for word in ("HIGH", "payments_denied", "agent-7", "decision"):
        assert word in shown
    assert context["type"] == "context"
    assert "alert_0123456789abcdef01234567" in context["elements"][0]["text"]


def test_slack_texts_stay_within_the_block_limits() -> None:
    body = channel_payload(SLACK, alert(message="m" * 10_000, rule="r" * 64))
    assert len(body["text"]) <= 3000
    header, section, _ = body["blocks"]
    assert len(header["text"]["text"]) <= 150
    assert len(section["text"]["text"]) <= 3000


def test_pagerduty_gets_an_events_v2_trigger() -> None:
    body = channel_payload(PAGERDUTY, alert())
    assert body["routing_key"] == SECRET_KEY
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == dedup_key(alert())
    event = body["payload"]
    assert event["summary"].startswith("[high] payments_denied on agent-7")
    assert event["source"] == "agent-7"
    assert event["severity"] == "error"
    assert event["timestamp"] == "2027-01-15T08:00:00.250000Z"
    assert event["component"] == "agentgw"
    assert event["group"] == "payments_denied"
    assert event["class"] == "decision"
    assert event["custom_details"] == {"verdict": "deny", "count": 3}


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        (Severity.CRITICAL, "critical"),
        (Severity.HIGH, "error"),
        (Severity.MEDIUM, "warning"),
        (Severity.LOW, "info"),
    ],
)
def test_pagerduty_severity_mapping(severity: Severity, expected: str) -> None:
    assert channel_payload(PAGERDUTY, alert(severity=severity))["payload"]["severity"] == expected


def test_pagerduty_summary_is_cut_to_1024_characters() -> None:
    summary = channel_payload(PAGERDUTY, alert(message="m" * 5000))["payload"]["summary"]
    assert len(summary) == 1024


def test_the_dedup_key_is_one_per_rule_and_subject() -> None:
    first = dedup_key(alert(alert_id="alert_1", fired_at=1.0, message="one"))
    assert first == dedup_key(alert(alert_id="alert_2", fired_at=2.0, message="two"))
    assert first != dedup_key(alert(subject="agent-8"))
    assert first != dedup_key(alert(rule="other_rule"))
    long = dedup_key(alert(subject="s" * 300))
    assert len(long) <= 255 and long == dedup_key(alert(subject="s" * 300))
    assert long != dedup_key(alert(subject="s" * 301))


def test_secrets_in_alert_strings_are_redacted_once_more() -> None:
    leaky = alert(
        message="used Bearer abcdefghijklmnopqrstuvwxyz0123",
        data=MappingProxyType({"password": "hunter2hunter2"}),
    )
    for channel in (WEBHOOK, SLACK, PAGERDUTY):
        text = str(channel_payload(channel, leaky))
        assert "abcdefghijklmnopqrstuvwxyz0123" not in text
        assert "hunter2hunter2" not in text
    assert channel_payload(PAGERDUTY, leaky)["routing_key"] == SECRET_KEY


def test_a_log_channel_has_no_payload() -> None:
    with pytest.raises(ValueError):
        channel_payload(Channel("log", ChannelType.LOG), alert())


# --- backoff ------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    channel = Channel("hook", ChannelType.WEBHOOK, backoff_seconds=1.0, max_backoff_seconds=10.0)
    ceilings = [retry_delay(n, channel, lambda: 1.0) for n in range(1, 7)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert retry_delay(3, channel, lambda: 0.0) == 0.0
    assert retry_delay(3, channel, lambda: 0.5) == 2.0


@given(attempt=st.integers(min_value=-5, max_value=10_000), draw=st.floats(0.0, 1.0))
def test_backoff_stays_within_zero_and_the_cap(attempt: int, draw: float) -> None:
    channel = Channel("hook", ChannelType.WEBHOOK, backoff_seconds=0.5, max_backoff_seconds=30.0)
    delay = retry_delay(attempt, channel, lambda: draw)
    assert 0.0 <= delay <= 30.0
    assert delay <= 0.5 * 2 ** min(max(attempt - 1, 0), 10)  # the exponential ceiling

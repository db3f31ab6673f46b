"""Log records, pure: how one is built from a logging call and from an agent's
event, cut to size, written as JSON and read back, filtered, and configured."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.agent_logs import MAX_AGENT_MESSAGE_CHARS, AgentLogEvent, agent_log_record
from gateway.domain.log_records import (
    CATEGORIES,
    LEVELS,
    REASONING_CHARS,
    RESULT_CHARS,
    LogRecord,
    event_type_of,
    level_name,
    log_filter,
    record_from_json,
    record_from_logging,
    record_to_json,
    truncate,
)
from gateway.domain.log_settings import DAY, LogSettings, read_log_settings
from gateway.domain.redaction import REDACTED, Redactor
from gateway.domain.yaml_reader import YamlReader
from gateway.errors import ConfigError, Forbidden, InvalidRequest

NOW = 1_800_000_000.0
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REDACTOR = Redactor()


def logged(message: str, *args: object, level: int = logging.INFO, **extra: object) -> LogRecord:
    made = logging.LogRecord("agentgw.test", level, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return record_from_logging(made, REDACTOR)


# --- truncate ---------------------------------------------------------------------------


def test_long_strings_are_cut_and_say_how_much() -> None:
    assert truncate("x" * (RESULT_CHARS + 5)) == "x" * RESULT_CHARS + "…[5 more characters]"
    assert truncate("x" * RESULT_CHARS) == "x" * RESULT_CHARS


def test_reasoning_is_cut_shorter_wherever_it_is_nested() -> None:
    value = {
        "result": "r" * 2000,
        "step": {"agentReasoning": "w" * 600, "list": ["l" * 1200]},
        "reasoning": ["a" * 600, {"inner": "b" * 600}],
    }
    out = truncate(value)
    assert out["result"].startswith("r" * RESULT_CHARS + "…[1000 more")
    assert out["step"]["agentReasoning"] == "w" * REASONING_CHARS + "…[100 more characters]"
    assert out["step"]["list"][0].startswith("l" * RESULT_CHARS + "…")
    assert out["reasoning"][0].startswith("a" * REASONING_CHARS + "…")
    assert out["reasoning"][1]["inner"].startswith("b" * REASONING_CHARS + "…")


@given(st.text(max_size=3000))
def test_a_cut_string_keeps_its_start(text: str) -> None:
    out = truncate(text)
    assert out.startswith(text[:RESULT_CHARS])
    assert out == text or len(text) > RESULT_CHARS


# --- from logging ----------------------------------------------------------------------------


def test_extras_that_are_fields_are_not_data() -> None:
    r = logged(
        "decision",
        category="decision",
        agent_id="agent-1",
        session_id="s-1",
        trace_id=TRACE,
        verdict="deny",
    )
    assert (r.category, r.agent_id, r.session_id, r.trace_id) == (
        "decision",
        "agent-1",
        "s-1",
        TRACE,
    )
    assert r.data == {"verdict": "deny"}
    assert r.logger == "agentgw.test"


def test_the_event_type_is_given_or_the_older_event_extra_or_the_template() -> None:
    assert logged("x", event_type="policy_reloaded").event_type == "policy_reloaded"
    assert logged("x", event="redis_started").event_type == "redis_started"
    assert logged("Gateway listening on %s:%d", "h", 1).event_type == "gateway_listening_on"
    assert event_type_of("%(name)s!") == ""
    assert logged("%s", "only args", category="user").event_type == "user"


def test_an_unknown_category_falls_back_and_is_kept_in_data() -> None:
    r = logged("x", level=logging.ERROR, category="actions")
    assert r.category == "error"
    assert r.data == {"category": "actions"}


def test_now_replaces_the_time_the_record_was_made() -> None:
    made = logging.LogRecord("agentgw.test", logging.INFO, __file__, 1, "x", None, None)
    assert record_from_logging(made, REDACTOR, now=NOW).timestamp == NOW


def test_levels_of_logging_numbers() -> None:
    assert [level_name(n) for n in (5, 10, 20, 25, 30, 40, 50, 60)] == [
        "debug",
        "debug",
        "info",
        "info",
        "warning",
        "error",
        "critical",
        "critical",
    ]


def test_a_message_whose_arguments_do_not_fit_is_kept_as_its_template() -> None:
    assert logged("needs %d", "not a number").message == "needs %d"


# --- JSON ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    ms=st.integers(0, 4_000_000_000_000),
    category=st.sampled_from(CATEGORIES),
    level=st.sampled_from(list(LEVELS)),
    text=st.text(max_size=50),
    data=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_json_reads_back_as_the_same_record(
    ms: int, category: str, level: str, text: str, data: dict[str, object]
) -> None:
    record = LogRecord(
        timestamp=ms / 1000,
        category=category,
        level=level,
        event_type="e",
        message=text,
        agent_id=text[:5],
        session_id="s",
        trace_id=TRACE,
        logger="agentgw.x",
        data=data,
    )
    back = record_from_json(record_to_json(record), id="1-0")
    assert back.id == "1-0"
    assert round(back.timestamp * 1000) == ms
    assert (back.category, back.level, back.message, back.data) == (category, level, text, data)


@pytest.mark.parametrize("text", ["[]", "{}", '{"timestamp": 1}', "nope", '{"data": 1}'])
def test_json_that_is_not_a_record_is_refused(text: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        record_from_json(text)


# --- filters -----------------------------------------------------------------------------------


def test_a_filter_checks_its_values() -> None:
    with pytest.raises(InvalidRequest, match="categories: unknown category 'actions'"):
        log_filter(categories=["actions"])
    with pytest.raises(InvalidRequest, match="min_level: unknown level 'loud'"):
        log_filter(min_level="loud")
    with pytest.raises(InvalidRequest, match="until: must be after since"):
        log_filter(since=NOW, until=NOW)
    with pytest.raises(InvalidRequest, match="trace_id"):
        log_filter(trace_id="0" * 32)
    assert log_filter(categories=["user", "action", "user"]).categories == ("action", "user")
    assert log_filter(min_level="WARNING").min_level == "warning"


def test_a_filter_matches_every_criterion() -> None:
    r = LogRecord(
        timestamp=NOW,
        category="decision",
        level="warning",
        event_type="e",
        message="m",
        agent_id="a",
        session_id="s",
        trace_id=TRACE,
    )
    assert log_filter().matches(r)
    assert log_filter(categories=["decision"], agent_id="a", session_id="s").matches(r)
    assert log_filter(min_level="warning", since=NOW, until=NOW + 1, trace_id=TRACE).matches(r)
    assert not log_filter(categories=["error"]).matches(r)
    assert not log_filter(agent_id="b").matches(r)
    assert not log_filter(session_id="t").matches(r)
    assert not log_filter(min_level="error").matches(r)
    assert not log_filter(since=NOW + 0.001).matches(r)
    assert not log_filter(until=NOW).matches(r)
    assert not log_filter(trace_id="1" * 32).matches(r)


# --- an agent's records ---------------------------------------------------------------------


def agent_event(**changes: object) -> AgentLogEvent:
    values: dict[str, object] = {"agent_id": "agent-1", "session_id": "s-1", "category": "user"}
    values.update(changes)
    return AgentLogEvent(**values)  # type: ignore[arg-type]


def filed(event: AgentLogEvent, principal: str = "agent-1") -> LogRecord:
    return agent_log_record(principal, event, NOW, REDACTOR, default_trace_id="f" * 32)


def test_an_agent_decision_is_redacted_cut_and_filed_as_the_agent() -> None:
    r = filed(
        agent_event(
            category="",
            kind="decision",
            message="chose search",
            fields={"api_key": "sk-live", "result": "r" * 3000},
            details={
                "options": ["search", "browse"],
                "choice": "search",
                "confidence": 0.8,
                "reasoning": "because " * 200,
            },
        )
    )
    assert (r.category, r.level, r.event_type, r.logger) == (
        "decision",
        "info",
        "agent.decision",  # never reads as the gateway's own `decision` record
        "agent",
    )
    assert (r.agent_id, r.session_id, r.timestamp, r.trace_id) == ("agent-1", "s-1", NOW, "f" * 32)
    assert r.data["api_key"] == REDACTED
    assert len(r.data["result"]) < RESULT_CHARS + 40
    assert r.data["decision"]["choice"] == "search"
    assert r.data["decision"]["reasoning"].startswith("because ")
    assert len(r.data["decision"]["reasoning"]) < REASONING_CHARS + 40


def test_an_agent_gives_its_own_trace_level_and_event_type() -> None:
    r = filed(
        agent_event(category="error", level="ERROR", event_type="tool_failed", trace_id=TRACE)
    )
    assert (r.level, r.event_type, r.trace_id) == ("error", "agent.tool_failed", TRACE)
    interaction = filed(agent_event(kind="user_interaction", category=""))
    assert interaction.event_type == "agent.user_interaction"


def test_an_agent_logs_only_as_itself() -> None:
    with pytest.raises(Forbidden, match="does not match the authenticated agent 'agent-2'"):
        filed(agent_event(), principal="agent-2")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"category": "security"}, "category"),
        ({"category": ""}, "category"),
        ({"category": "error", "kind": "decision"}, "category"),
        ({"level": "loud"}, "level"),
        ({"trace_id": TRACE.upper()}, "trace_id"),
        ({"trace_id": "0" * 32}, "trace_id"),
        ({"trace_id": "abc"}, "trace_id"),
        ({"event_type": "has space"}, "event_type"),
        ({"agent_id": ""}, "agent_id"),
        ({"session_id": "{slot}"}, "session_id"),
        ({"message": "m" * (MAX_AGENT_MESSAGE_CHARS + 1)}, "message"),
        (
            {"category": "", "kind": "decision", "details": {"confidence": 1.5}},
            "decision.confidence",
        ),
        (
            {"category": "", "kind": "decision", "details": {"reasoning": "r" * 9000}},
            "decision.reasoning",
        ),
        ({"fields": {"x": float("nan")}}, "fields.x"),
        ({"fields": {"big": "b" * 70_000}}, "fields"),
    ],
)
def test_an_agent_event_that_breaks_a_rule_names_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidRequest) as e:
        filed(agent_event(**changes))
    assert e.value.field == field


def test_an_agent_event_too_deep_is_refused() -> None:
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(40):
        inner["d"] = {}
        inner = inner["d"]  # type: ignore[assignment]
    with pytest.raises(InvalidRequest, match="depth 33 exceeds the limit of 32"):
        filed(agent_event(fields=deep))


# --- the logs: section -------------------------------------------------------------------------


def settings_of(text: str, base_dir: Path | None = None) -> LogSettings:
    reader = YamlReader("agentgw.yaml")
    node = reader.compose(text)
    assert node is not None
    return read_log_settings(reader, reader.mapping(node, "")["logs"], base_dir)


def test_the_defaults_are_the_contract() -> None:
    s = LogSettings()
    assert {c: s.retention_seconds[c] / DAY for c in CATEGORIES} == {
        "action": 30,
        "decision": 90,
        "error": 365,
        "security": 730,
        "performance": 30,
        "user": 90,
    }
    assert set(s.max_records.values()) == {1_000_000}
    assert (s.format, s.file, s.queue_size) == ("json", None, 10_000)


def test_a_logs_section_changes_what_it_names(tmp_path: Path) -> None:
    s = settings_of(
        "logs:\n"
        "  format: text\n"
        "  file: logs/gw.jsonl\n"
        "  retention_days: {action: 7, user: 0.5}\n"
        "  max_records: {decision: 500000}\n"
        "  queue_size: 2000\n"
        "  trim_interval_seconds: 60\n",
        tmp_path,
    )
    assert (s.format, s.file, s.queue_size, s.trim_interval_seconds) == (
        "text",
        tmp_path / "logs/gw.jsonl",
        2000,
        60,
    )
    assert s.retention_seconds["action"] == 7 * DAY
    assert s.retention_seconds["user"] == 0.5 * DAY
    assert s.retention_seconds["decision"] == 90 * DAY
    assert s.max_records["decision"] == 500_000
    assert s.max_records["action"] == 1_000_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("logs: {format: xml}", "agentgw.yaml:1: logs.format: expected json or text"),
        ("logs: {retention_days: {action: 0}}", "logs.retention_days.action: expected a number"),
        ("logs: {retention_days: {actions: 1}}", "logs.retention_days.actions: unknown key"),
        ("logs: {max_records: {error: 0}}", "logs.max_records.error: expected an integer >= 1"),
        ("logs: {queue_size: 5}", "logs.queue_size: expected an integer >= 100"),
        ("logs: {colour: red}", "logs.colour: unknown key"),
        ("logs: []", "logs: expected a mapping"),
    ],
)
def test_a_bad_logs_section_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        settings_of(text)

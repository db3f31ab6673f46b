"""Loop detection: one action type repeated, or a few identical inputs going round."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.actions import ActionRequest, Finding
from gateway.domain.detect.loops import (
    INFINITE_LOOP,
    STUCK_PATTERN,
    LoopSettings,
    detect_loops,
    fingerprint,
)

DEFAULTS = LoopSettings()


def request(action_type: str = "search", parameters: dict[str, Any] | None = None) -> ActionRequest:
    return ActionRequest(
        action_id="act-1",
        agent_id="agent-1",
        session_id="sess-1",
        action_type=action_type,
        parameters=parameters or {},
    )


def distinct_prints(n: int) -> list[str]:
    return [f"fp-{i}" for i in range(n)]


def of_type(findings: list[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.type == kind]


# -- settings ------------------------------------------------------------------------------


def test_default_settings_match_the_design() -> None:
    assert DEFAULTS.loop_window == 5
    assert DEFAULTS.stuck_window == 5
    assert DEFAULTS.stuck_max_distinct == 2
    assert DEFAULTS.fingerprint_chars == 50


def test_history_length_is_the_larger_window() -> None:
    assert DEFAULTS.history_length == 5
    assert LoopSettings(loop_window=3, stuck_window=8).history_length == 8
    assert LoopSettings(loop_window=9, stuck_window=4).history_length == 9


# -- infinite_loop --------------------------------------------------------------------------


def test_five_actions_of_the_same_type_are_an_infinite_loop() -> None:
    findings = detect_loops(["search"] * 5, distinct_prints(5), DEFAULTS)
    assert findings == [
        Finding(
            type=INFINITE_LOOP,
            severity=0.8,
            description="the last 5 actions of this session were all 'search'",
            recommended_action="pause_and_review",
        )
    ]


def test_four_actions_of_the_same_type_are_not_a_loop() -> None:
    assert detect_loops(["search"] * 4, distinct_prints(4), DEFAULTS) == []


def test_five_actions_with_one_different_type_are_not_a_loop() -> None:
    for position in range(5):
        types = ["search"] * 5
        types[position] = "read"
        assert detect_loops(types, distinct_prints(5), DEFAULTS) == [], position


def test_only_the_newest_loop_window_types_count() -> None:
    # newest first: five searches, then older actions that do not break the loop
    types = ["search"] * 5 + ["read", "write"]
    assert of_type(detect_loops(types, distinct_prints(7), DEFAULTS), INFINITE_LOOP)


def test_an_older_run_of_the_same_type_is_not_a_loop_now() -> None:
    types = ["read"] + ["search"] * 6
    assert detect_loops(types, distinct_prints(7), DEFAULTS) == []


def test_empty_history_finds_nothing() -> None:
    assert detect_loops([], [], DEFAULTS) == []


def test_custom_loop_window() -> None:
    settings = LoopSettings(loop_window=3)
    assert of_type(detect_loops(["a"] * 3, distinct_prints(3), settings), INFINITE_LOOP)
    assert detect_loops(["a"] * 2, distinct_prints(2), settings) == []
    settings = LoopSettings(loop_window=8)
    assert detect_loops(["a"] * 7, distinct_prints(7), settings) == []
    found = of_type(detect_loops(["a"] * 8, distinct_prints(8), settings), INFINITE_LOOP)
    assert found[0].description == "the last 8 actions of this session were all 'a'"


@given(
    types=st.lists(st.sampled_from(["a", "b", "c"]), max_size=10),
    loop_window=st.integers(min_value=1, max_value=8),
)
def test_infinite_loop_fires_iff_the_newest_window_exists_and_is_all_one_type(
    types: list[str], loop_window: int
) -> None:
    settings = LoopSettings(loop_window=loop_window, stuck_window=100)
    findings = detect_loops(types, distinct_prints(len(types)), settings)
    window = types[:loop_window]
    expected = len(window) == loop_window and all(t == window[0] for t in window)
    assert bool(of_type(findings, INFINITE_LOOP)) is expected
    assert of_type(findings, STUCK_PATTERN) == []


# -- stuck_pattern --------------------------------------------------------------------------


def test_five_identical_fingerprints_are_a_stuck_pattern() -> None:
    findings = detect_loops(["a", "b", "c", "d", "e"], ["fp"] * 5, DEFAULTS)
    assert findings == [
        Finding(
            type=STUCK_PATTERN,
            severity=0.6,
            description="the last 5 actions of this session repeat 1 distinct input(s)",
            recommended_action="inject_guidance",
        )
    ]


def test_two_distinct_fingerprints_over_five_are_a_stuck_pattern() -> None:
    prints = ["x", "y", "x", "y", "x"]
    findings = detect_loops(["a", "b", "c", "d", "e"], prints, DEFAULTS)
    assert [(f.type, f.severity, f.recommended_action) for f in findings] == [
        (STUCK_PATTERN, 0.6, "inject_guidance")
    ]
    assert "repeat 2 distinct input(s)" in findings[0].description


def test_three_distinct_fingerprints_over_five_are_not_stuck() -> None:
    prints = ["x", "y", "z", "x", "y"]
    assert detect_loops(["a", "b", "c", "d", "e"], prints, DEFAULTS) == []


def test_four_identical_fingerprints_are_not_yet_stuck() -> None:
    assert detect_loops(["a", "b", "c", "d"], ["fp"] * 4, DEFAULTS) == []


def test_only_the_newest_stuck_window_fingerprints_count() -> None:
    prints = ["x"] * 5 + ["y", "z", "w"]
    types = ["a", "b", "c", "d", "e", "f", "g", "h"]
    assert of_type(detect_loops(types, prints, DEFAULTS), STUCK_PATTERN)
    prints = ["x", "y", "z"] + ["x"] * 5
    assert detect_loops(types, prints, DEFAULTS) == []


def test_custom_stuck_window_and_distinct_limit() -> None:
    settings = LoopSettings(stuck_window=4, stuck_max_distinct=3)
    types = ["a", "b", "c", "d"]
    found = detect_loops(types, ["w", "x", "y", "w"], settings)
    assert of_type(found, STUCK_PATTERN)
    assert found[0].description == ("the last 4 actions of this session repeat 3 distinct input(s)")
    assert detect_loops(types, ["w", "x", "y", "z"], settings) == []
    assert detect_loops(types[:3], ["w", "w", "w"], settings) == []


def test_same_type_and_same_input_gives_both_findings_loop_first() -> None:
    findings = detect_loops(["search"] * 5, ["fp"] * 5, DEFAULTS)
    assert [f.type for f in findings] == [INFINITE_LOOP, STUCK_PATTERN]


@given(
    prints=st.lists(st.sampled_from(["p", "q", "r", "s"]), max_size=10),
    stuck_window=st.integers(min_value=1, max_value=8),
    max_distinct=st.integers(min_value=1, max_value=4),
)
def test_stuck_pattern_fires_iff_the_newest_window_has_few_distinct_inputs(
    prints: list[str], stuck_window: int, max_distinct: int
) -> None:
    settings = LoopSettings(
        loop_window=100, stuck_window=stuck_window, stuck_max_distinct=max_distinct
    )
    findings = detect_loops([f"t{i}" for i in range(len(prints))], prints, settings)
    window = prints[:stuck_window]
    expected = len(window) == stuck_window and len(set(window)) <= max_distinct
    assert bool(of_type(findings, STUCK_PATTERN)) is expected
    assert of_type(findings, INFINITE_LOOP) == []


# -- fingerprint ----------------------------------------------------------------------------


def test_fingerprint_is_the_type_and_the_canonical_json_prefix() -> None:
    fp = fingerprint(request("search", {"q": "weather", "n": 3.0}), DEFAULTS)
    assert fp == 'search\x1f{"n":3,"q":"weather"}'


def test_fingerprint_of_empty_parameters() -> None:
    assert fingerprint(request("noop"), DEFAULTS) == "noop\x1f{}"


def test_fingerprint_keeps_exactly_the_first_50_characters() -> None:
    fp = fingerprint(request("search", {"q": "x" * 200}), DEFAULTS)
    prefix = fp.split("\x1f", 1)[1]
    assert len(prefix) == 50
    assert prefix == '{"q":"' + "x" * 44


def test_parameters_differing_only_after_char_50_share_a_fingerprint() -> None:
    # '{"q":"' is 6 characters, so the strings below differ at character 61 of the JSON
    first = request("search", {"q": "a" * 55 + "first"})
    second = request("search", {"q": "a" * 55 + "second, and longer"})
    assert fingerprint(first, DEFAULTS) == fingerprint(second, DEFAULTS)


def test_parameters_differing_at_char_50_get_different_fingerprints() -> None:
    # character 50 (1-based) of '{"q":"' + text is text[43]
    first = request("search", {"q": "a" * 43 + "b" + "tail"})
    second = request("search", {"q": "a" * 43 + "c" + "tail"})
    assert fingerprint(first, DEFAULTS) != fingerprint(second, DEFAULTS)


def test_parameters_differing_just_after_char_50_share_a_fingerprint() -> None:
    first = request("search", {"q": "a" * 44 + "b"})
    second = request("search", {"q": "a" * 44 + "c"})
    assert fingerprint(first, DEFAULTS) == fingerprint(second, DEFAULTS)


def test_key_order_does_not_change_the_fingerprint() -> None:
    first = request("pay", {"amount": 10.0, "to": "bob", "memo": {"b": 1.0, "a": 2.0}})
    second = request("pay", {"memo": {"a": 2.0, "b": 1.0}, "to": "bob", "amount": 10.0})
    assert fingerprint(first, DEFAULTS) == fingerprint(second, DEFAULTS)


def test_different_action_types_with_equal_parameters_differ() -> None:
    params = {"path": "/tmp/a"}
    assert fingerprint(request("read", params), DEFAULTS) != fingerprint(
        request("write", params), DEFAULTS
    )


def test_fingerprint_chars_is_configurable() -> None:
    settings = LoopSettings(fingerprint_chars=5)
    assert fingerprint(request("a", {"q": "xyz"}), settings) == 'a\x1f{"q":'
    assert fingerprint(request("a", {"q": "1"}), settings) == fingerprint(
        request("a", {"q": "2"}), settings
    )


@given(
    params=st.dictionaries(
        st.text(max_size=5), st.integers(-1000, 1000) | st.text(max_size=10), max_size=6
    )
)
def test_fingerprint_does_not_depend_on_insertion_order(params: dict[str, Any]) -> None:
    reordered = dict(reversed(list(params.items())))
    assert fingerprint(request("t", params), DEFAULTS) == fingerprint(
        request("t", reordered), DEFAULTS
    )

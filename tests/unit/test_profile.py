"""Behaviour profiles: a session's mix of action types against its agent's, by total variation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.detect.profile import (
    OTHER,
    PROFILE_DEVIATION,
    ProfileSettings,
    detect_profile_deviation,
    total_variation,
)

DEFAULTS = ProfileSettings()
TYPES = ["read", "write", "search", "delete", "send_email", OTHER]
COUNTS = st.dictionaries(st.sampled_from(TYPES), st.integers(min_value=0, max_value=10_000))
NONEMPTY = COUNTS.filter(lambda c: sum(c.values()) > 0)


def reference_tv(a: dict[str, int], b: dict[str, int]) -> float:
    """1/2 * sum |p_t - q_t| over the union of types, in floats, the straightforward way."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if total_a == 0 or total_b == 0:
        return 0.0
    types = set(a) | set(b)
    return 0.5 * sum(abs(a.get(t, 0) / total_a - b.get(t, 0) / total_b) for t in types)


def scaled(counts: dict[str, int], k: int) -> dict[str, int]:
    return {t: c * k for t, c in counts.items()}


def plus(*maps: dict[str, int]) -> dict[str, int]:
    """The agent's counts including a session: the sum of count maps."""
    total: dict[str, int] = {}
    for m in maps:
        for t, c in m.items():
            total[t] = total.get(t, 0) + c
    return total


# -- settings ------------------------------------------------------------------------------


def test_default_settings_match_the_design() -> None:
    assert DEFAULTS.enabled
    assert DEFAULTS.threshold == 0.5
    assert DEFAULTS.min_session_actions == 10
    assert DEFAULTS.min_agent_actions == 50
    assert DEFAULTS.max_types == 64
    assert OTHER == "~other"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"min_session_actions": 0}, "min_session_actions"),
        ({"min_agent_actions": 0}, "min_agent_actions"),
        ({"max_types": 0}, "max_types"),
    ],
)
def test_settings_out_of_range_are_refused(changes: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        ProfileSettings(**changes)  # type: ignore[arg-type]


# -- total variation -------------------------------------------------------------------------


def test_total_variation_of_small_examples() -> None:
    assert total_variation({"a": 1}, {"a": 5}) == 0.0
    assert total_variation({"a": 1}, {"b": 1}) == 1.0
    assert total_variation({"a": 1}, {"a": 1, "b": 1}) == 0.5
    assert total_variation({"a": 3, "b": 1}, {"a": 1, "b": 3}) == 0.5
    assert total_variation({"a": 1, "b": 0}, {"a": 2}) == 0.0


def test_total_variation_is_zero_when_either_side_is_empty() -> None:
    assert total_variation({}, {"a": 3}) == 0.0
    assert total_variation({"a": 3}, {}) == 0.0
    assert total_variation({"a": 0}, {"a": 3}) == 0.0
    assert total_variation({}, {}) == 0.0


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        total_variation({"a": -1, "b": 2}, {"a": 1})


@given(COUNTS, COUNTS)
def test_total_variation_matches_the_reference(a: dict[str, int], b: dict[str, int]) -> None:
    assert total_variation(a, b) == pytest.approx(reference_tv(a, b), abs=1e-12)


@given(COUNTS, COUNTS)
def test_total_variation_is_symmetric_and_between_zero_and_one(
    a: dict[str, int], b: dict[str, int]
) -> None:
    distance = total_variation(a, b)
    assert distance == total_variation(b, a)
    assert 0.0 <= distance <= 1.0


@given(NONEMPTY, st.integers(min_value=1, max_value=1000))
def test_the_same_distribution_is_at_distance_zero(a: dict[str, int], k: int) -> None:
    assert total_variation(a, a) == 0.0
    assert total_variation(a, scaled(a, k)) == 0.0


@given(st.data())
def test_disjoint_types_are_at_distance_one(data: st.DataObject) -> None:
    split = data.draw(st.integers(min_value=1, max_value=len(TYPES) - 1))
    positive = st.integers(min_value=1, max_value=10_000)
    a = data.draw(st.dictionaries(st.sampled_from(TYPES[:split]), positive, min_size=1))
    b = data.draw(st.dictionaries(st.sampled_from(TYPES[split:]), positive, min_size=1))
    assert total_variation(a, b) == 1.0


@given(
    COUNTS,
    COUNTS,
    st.integers(min_value=1, max_value=1000),
    st.integers(min_value=1, max_value=1000),
)
def test_total_variation_does_not_change_when_counts_are_scaled(
    a: dict[str, int], b: dict[str, int], k: int, j: int
) -> None:
    assert total_variation(scaled(a, k), b) == total_variation(a, b)
    assert total_variation(scaled(a, k), scaled(b, j)) == total_variation(a, b)


# -- the detector ----------------------------------------------------------------------------


def test_a_session_exactly_at_the_threshold_is_not_flagged() -> None:
    session = {"read": 10}
    before = {"read": 50, "write": 50}
    assert total_variation(session, before) == 0.5
    assert detect_profile_deviation(session, plus(before, session), DEFAULTS) == []


def test_a_session_just_over_the_threshold_is_flagged() -> None:
    session = {"read": 10}
    before = {"read": 49, "write": 51}
    [finding] = detect_profile_deviation(session, plus(before, session), DEFAULTS)
    assert finding.type == PROFILE_DEVIATION
    assert finding.severity == 0.51
    assert finding.recommended_action == "investigate"
    assert finding.description == (
        "this session's mix of action types is 0.510 from the agent's (total variation)"
    )


def test_the_threshold_is_a_setting() -> None:
    session = {"read": 10}
    agent = plus({"read": 50, "write": 50}, session)
    assert detect_profile_deviation(session, agent, ProfileSettings(threshold=0.4)) != []


def test_a_session_one_action_short_is_not_judged() -> None:
    before = {"read": 100}
    short = {"delete": 9}
    assert detect_profile_deviation(short, plus(before, short), DEFAULTS) == []
    enough = {"delete": 10}
    assert detect_profile_deviation(enough, plus(before, enough), DEFAULTS) != []


def test_an_agent_one_action_short_of_a_profile_is_not_judged() -> None:
    session = {"delete": 10}
    young = {"read": 49}
    assert detect_profile_deviation(session, plus(young, session), DEFAULTS) == []
    mature = {"read": 50}
    assert detect_profile_deviation(session, plus(mature, session), DEFAULTS) != []


def test_the_session_is_compared_with_the_profile_before_it() -> None:
    session = {"delete": 1000}
    agent = plus({"read": 100}, session)
    # against the counts that include it, the long session looks almost normal
    assert total_variation(session, agent) < DEFAULTS.threshold
    [finding] = detect_profile_deviation(session, agent, DEFAULTS)
    assert finding.severity == 1.0
    assert finding.description.endswith("; never used before: delete")


def test_counts_the_agent_lacks_are_floored_at_zero() -> None:
    # the store's agent counts may lag the session's: the difference is never negative
    session = {"delete": 10}
    agent = {"read": 60, "delete": 3}
    [finding] = detect_profile_deviation(session, agent, DEFAULTS)
    assert finding.severity == 1.0
    assert "never used before: delete" in finding.description


def test_a_session_that_matches_the_profile_is_not_flagged() -> None:
    session = {"read": 6, "write": 3, "search": 1}
    agent = plus({"read": 60, "write": 30, "search": 10}, session)
    assert detect_profile_deviation(session, agent, DEFAULTS) == []


def test_a_session_using_part_of_the_profile_is_not_flagged() -> None:
    session = {"read": 10, "write": 5}
    agent = plus({"read": 60, "write": 30, "search": 10}, session)
    assert detect_profile_deviation(session, agent, DEFAULTS) == []


def test_nothing_is_detected_when_disabled() -> None:
    session = {"delete": 100}
    agent = plus({"read": 100}, session)
    assert detect_profile_deviation(session, agent, ProfileSettings(enabled=False)) == []


def test_new_types_are_named_sorted_and_five_at_most() -> None:
    session = {t: 2 for t in ("g", "f", "e", "d", "c", "b", "a")}
    session["read"] = 2
    agent = plus({"read": 100}, session)
    [finding] = detect_profile_deviation(session, agent, DEFAULTS)
    assert finding.description.endswith("; never used before: a, b, c, d, e +2 more")


def test_a_type_of_the_session_with_no_actions_is_not_named() -> None:
    session = {"delete": 10, "send_email": 0}
    agent = plus({"read": 100}, session)
    [finding] = detect_profile_deviation(session, agent, DEFAULTS)
    assert finding.description.endswith("; never used before: delete")


def test_no_types_are_named_when_the_agent_used_them_all_before() -> None:
    session = {"delete": 10}
    agent = plus({"read": 100, "delete": 1}, session)
    [finding] = detect_profile_deviation(session, agent, DEFAULTS)
    assert "never used" not in finding.description


def test_other_is_an_ordinary_type() -> None:
    session = {OTHER: 10}
    agent = plus({"read": 100}, session)
    [finding] = detect_profile_deviation(session, agent, DEFAULTS)
    assert finding.description.endswith(f"; never used before: {OTHER}")

    usual = {OTHER: 5, "read": 5}
    agent = plus({OTHER: 50, "read": 50}, usual)
    assert detect_profile_deviation(usual, agent, DEFAULTS) == []


def test_long_type_names_that_do_not_fit_are_counted() -> None:
    session = {("x" * 127) + str(i): 5 for i in range(3)}
    agent = plus({"read": 100}, session)
    [finding] = detect_profile_deviation(session, agent, DEFAULTS)
    assert finding.description.endswith("; 3 action type(s) never used before")
    assert len(finding.description) < 200


TYPE_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", fullmatch=True)


@given(
    st.dictionaries(TYPE_NAME, st.integers(min_value=1, max_value=100), min_size=1, max_size=20),
    st.dictionaries(TYPE_NAME, st.integers(min_value=0, max_value=1000), max_size=20),
)
def test_a_description_stays_under_200_characters(
    session: dict[str, int], before: dict[str, int]
) -> None:
    for finding in detect_profile_deviation(
        session,
        plus(before, session),
        ProfileSettings(threshold=0.0, min_session_actions=1, min_agent_actions=1),
    ):
        assert len(finding.description) < 200
        assert 0.0 <= finding.severity <= 1.0
        assert finding.severity == round(total_variation(session, before), 3)

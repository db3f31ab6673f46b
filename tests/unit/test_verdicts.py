"""Combining policy, findings and session state: the strictest source wins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.actions import Finding, Verdict
from gateway.domain.policy.evaluator import PolicyResult
from gateway.domain.verdicts import DEFAULT_RECOMMENDATIONS, Effect, VerdictOutcome, combine_verdict

PAUSED_REASON = "the session is paused for review; an approver must resume it"


def policy(
    verdict: Verdict = Verdict.ALLOW, reason: str = "no rule matched; default allow"
) -> PolicyResult:
    rules = () if verdict is Verdict.ALLOW else ("rule-1",)
    return PolicyResult(verdict=verdict, matched_rules=rules, reason=reason)


def finding(recommended_action: str, kind: str = "detector") -> Finding:
    return Finding(
        type=kind,
        severity=0.5,
        description=f"{kind} saw something",
        recommended_action=recommended_action,
    )


def combine(
    policy_result: PolicyResult,
    *findings: Finding,
    paused: bool = False,
    paused_verdict: Verdict = Verdict.HOLD,
) -> VerdictOutcome:
    return combine_verdict(policy_result, findings, DEFAULT_RECOMMENDATIONS, paused, paused_verdict)


# -- effects ----------------------------------------------------------------------------------


def test_default_effects_match_the_design() -> None:
    assert DEFAULT_RECOMMENDATIONS == {
        "require_approval": Effect.HOLD,
        "pause_and_review": Effect.HOLD_AND_PAUSE,
        "inject_guidance": Effect.ALLOW,
        "investigate": Effect.ALLOW,
        "rate_limit": Effect.DENY,
    }


@pytest.mark.parametrize(
    ("effect", "verdict"),
    [
        (Effect.ALLOW, Verdict.ALLOW),
        (Effect.HOLD, Verdict.HOLD),
        (Effect.DENY, Verdict.DENY),
        (Effect.HOLD_AND_PAUSE, Verdict.HOLD),
    ],
)
def test_each_effect_maps_to_a_verdict(effect: Effect, verdict: Verdict) -> None:
    assert effect.verdict is verdict


def test_verdicts_are_ordered_deny_over_hold_over_allow() -> None:
    assert Verdict.DENY > Verdict.HOLD > Verdict.ALLOW
    assert Verdict.strictest(Verdict.ALLOW, Verdict.DENY, Verdict.HOLD) is Verdict.DENY
    assert Verdict.strictest() is Verdict.ALLOW


# -- policy alone -------------------------------------------------------------------------------


@pytest.mark.parametrize("verdict", list(Verdict))
def test_without_findings_the_policy_verdict_and_reason_stand(verdict: Verdict) -> None:
    outcome = combine(policy(verdict, "because rule-1 says so"))
    assert outcome == VerdictOutcome(verdict, paused_session=False, reason="because rule-1 says so")


# -- findings -----------------------------------------------------------------------------------


def test_require_approval_holds_an_allowed_action() -> None:
    outcome = combine(policy(), finding("require_approval", "suspicious_action"))
    assert outcome.verdict is Verdict.HOLD
    assert outcome.paused_session is False
    assert outcome.reason == "suspicious_action: suspicious_action saw something"


def test_pause_and_review_holds_and_pauses_the_session() -> None:
    outcome = combine(policy(), finding("pause_and_review", "infinite_loop"))
    assert outcome.verdict is Verdict.HOLD
    assert outcome.paused_session is True
    assert outcome.reason == "infinite_loop: infinite_loop saw something"


@pytest.mark.parametrize("recommendation", ["inject_guidance", "investigate"])
def test_advisory_recommendations_allow(recommendation: str) -> None:
    outcome = combine(policy(), finding(recommendation, "stuck_pattern"))
    assert outcome == VerdictOutcome(
        Verdict.ALLOW, paused_session=False, reason="no rule matched; default allow"
    )


@pytest.mark.parametrize("recommendation", ["self_destruct", "", "ALLOW", "Inject_Guidance"])
def test_unknown_recommendation_holds_never_a_silent_allow(recommendation: str) -> None:
    outcome = combine(policy(), finding(recommendation, "mystery"))
    assert outcome.verdict is Verdict.HOLD
    assert outcome.paused_session is False
    assert outcome.reason == "mystery: mystery saw something"


def test_unknown_recommendation_holds_even_with_empty_effects() -> None:
    outcome = combine_verdict(policy(), [finding("investigate")], {}, False, Verdict.HOLD)
    assert outcome.verdict is Verdict.HOLD


def test_configured_effects_override_the_defaults() -> None:
    effects = {
        **DEFAULT_RECOMMENDATIONS,
        "investigate": Effect.DENY,
        "require_approval": Effect.ALLOW,
    }
    denied = combine_verdict(policy(), [finding("investigate")], effects, False, Verdict.HOLD)
    assert denied.verdict is Verdict.DENY
    allowed = combine_verdict(policy(), [finding("require_approval")], effects, False, Verdict.HOLD)
    assert allowed.verdict is Verdict.ALLOW


def test_policy_deny_beats_a_hold_finding_and_keeps_its_reason() -> None:
    outcome = combine(
        policy(Verdict.DENY, "no payments on weekends"), finding("require_approval", "suspicious")
    )
    assert outcome.verdict is Verdict.DENY
    assert outcome.reason == "no payments on weekends"


def test_policy_deny_with_pause_and_review_still_pauses_the_session() -> None:
    outcome = combine(policy(Verdict.DENY, "denied"), finding("pause_and_review", "loop"))
    assert outcome.verdict is Verdict.DENY
    assert outcome.paused_session is True
    assert outcome.reason == "denied"


def test_policy_hold_with_a_hold_finding_keeps_the_policy_reason() -> None:
    outcome = combine(policy(Verdict.HOLD, "large payment"), finding("require_approval", "x"))
    assert outcome.verdict is Verdict.HOLD
    assert outcome.reason == "large payment"


def test_deny_finding_beats_a_policy_hold() -> None:
    effects = {"block": Effect.DENY}
    outcome = combine_verdict(
        policy(Verdict.HOLD, "large payment"),
        [finding("block", "fraud")],
        effects,
        False,
        Verdict.HOLD,
    )
    assert outcome.verdict is Verdict.DENY
    assert outcome.reason == "fraud: fraud saw something"


def test_strictest_finding_wins_regardless_of_order() -> None:
    effects = {**DEFAULT_RECOMMENDATIONS, "block": Effect.DENY}
    findings = [
        finding("investigate", "a"),
        finding("block", "b"),
        finding("require_approval", "c"),
    ]
    for ordering in (findings, list(reversed(findings))):
        outcome = combine_verdict(policy(), ordering, effects, False, Verdict.HOLD)
        assert outcome.verdict is Verdict.DENY
        assert outcome.reason == "b: b saw something"


def test_first_finding_of_the_winning_strictness_gives_the_reason() -> None:
    outcome = combine(
        policy(), finding("require_approval", "first"), finding("pause_and_review", "second")
    )
    assert outcome.verdict is Verdict.HOLD
    assert outcome.reason == "first: first saw something"
    assert outcome.paused_session is True


def test_advisory_finding_does_not_replace_the_policy_reason() -> None:
    outcome = combine(policy(Verdict.ALLOW, "allowed by rule-x"), finding("investigate", "z"))
    assert outcome.reason == "allowed by rule-x"


# -- paused sessions ----------------------------------------------------------------------------


def test_paused_session_holds_an_allowed_action() -> None:
    outcome = combine(policy(), paused=True, paused_verdict=Verdict.HOLD)
    assert outcome == VerdictOutcome(Verdict.HOLD, paused_session=False, reason=PAUSED_REASON)


def test_paused_session_denies_when_configured_to_deny() -> None:
    outcome = combine(
        policy(Verdict.HOLD, "held by rule"), paused=True, paused_verdict=Verdict.DENY
    )
    assert outcome.verdict is Verdict.DENY
    assert outcome.reason == PAUSED_REASON


def test_paused_session_reason_replaces_an_equal_hold() -> None:
    outcome = combine(
        policy(),
        finding("require_approval", "suspicious"),
        paused=True,
        paused_verdict=Verdict.HOLD,
    )
    assert outcome.verdict is Verdict.HOLD
    assert outcome.reason == PAUSED_REASON


def test_policy_deny_beats_a_paused_session_hold() -> None:
    outcome = combine(policy(Verdict.DENY, "never"), paused=True, paused_verdict=Verdict.HOLD)
    assert outcome.verdict is Verdict.DENY
    assert outcome.reason == "never"


def test_paused_session_deny_equals_a_policy_deny_and_explains_the_pause() -> None:
    outcome = combine(policy(Verdict.DENY, "never"), paused=True, paused_verdict=Verdict.DENY)
    assert outcome.verdict is Verdict.DENY
    assert outcome.reason == PAUSED_REASON


def test_unpaused_session_ignores_the_paused_verdict() -> None:
    outcome = combine(policy(), paused=False, paused_verdict=Verdict.DENY)
    assert outcome.verdict is Verdict.ALLOW


# -- properties ---------------------------------------------------------------------------------

recommendations = st.sampled_from([*DEFAULT_RECOMMENDATIONS, "unknown", "block"])
EFFECTS = {**DEFAULT_RECOMMENDATIONS, "block": Effect.DENY}


@given(
    policy_verdict=st.sampled_from(list(Verdict)),
    recs=st.lists(recommendations, max_size=6),
    paused=st.booleans(),
    paused_verdict=st.sampled_from([Verdict.HOLD, Verdict.DENY]),
)
def test_verdict_is_the_strictest_of_all_sources(
    policy_verdict: Verdict, recs: list[str], paused: bool, paused_verdict: Verdict
) -> None:
    outcome = combine_verdict(
        policy(policy_verdict, "policy"),
        [finding(r, f"f{i}") for i, r in enumerate(recs)],
        EFFECTS,
        paused,
        paused_verdict,
    )
    sources = [policy_verdict]
    sources += [EFFECTS.get(r, Effect.HOLD).verdict for r in recs]
    if paused:
        sources.append(paused_verdict)
    assert outcome.verdict is max(sources)
    assert outcome.verdict >= policy_verdict  # a finding never loosens policy
    assert outcome.paused_session is ("pause_and_review" in recs)

"""The verdict step: combines policy, findings and session state into one answer.

Pure. The strictest source wins (deny > hold > allow). Findings carry a recommended
action; configuration maps each recommendation to an effect.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.domain.actions import Finding, Verdict
from gateway.domain.policy.evaluator import PolicyResult


class Effect(enum.Enum):
    ALLOW = "allow"
    HOLD = "hold"
    DENY = "deny"
    HOLD_AND_PAUSE = "hold_and_pause"

    @property
    def verdict(self) -> Verdict:
        return {
            Effect.ALLOW: Verdict.ALLOW,
            Effect.HOLD: Verdict.HOLD,
            Effect.DENY: Verdict.DENY,
            Effect.HOLD_AND_PAUSE: Verdict.HOLD,
        }[self]


DEFAULT_RECOMMENDATIONS: Mapping[str, Effect] = {
    "require_approval": Effect.HOLD,
    "pause_and_review": Effect.HOLD_AND_PAUSE,
    "inject_guidance": Effect.ALLOW,
    "investigate": Effect.ALLOW,  # and, once alerts exist, an alert
    "rate_limit": Effect.DENY,
}


@dataclass(frozen=True)
class VerdictOutcome:
    verdict: Verdict
    paused_session: bool
    reason: str


def combine_verdict(
    policy: PolicyResult,
    findings: Sequence[Finding],
    recommendations: Mapping[str, Effect],
    in_paused_session: bool,
    paused_session_verdict: Verdict,
    quarantine_reason: str | None = None,
    quarantine_verdict: Verdict = Verdict.HOLD,
) -> VerdictOutcome:
    verdict, reason = policy.verdict, policy.reason
    pause = False
    for finding in findings:
        # An unknown recommendation is treated as a hold: never a silent allow.
        effect = recommendations.get(finding.recommended_action, Effect.HOLD)
        if effect is Effect.HOLD_AND_PAUSE:
            pause = True
        if effect.verdict > verdict:
            verdict = effect.verdict
            reason = f"{finding.type}: {finding.description}"
    if in_paused_session and paused_session_verdict >= verdict:
        verdict = paused_session_verdict
        reason = "the session is paused for review; an approver must resume it"
    if quarantine_reason is not None and quarantine_verdict >= verdict:
        verdict = quarantine_verdict
        reason = f"the agent is quarantined: {quarantine_reason}"
    return VerdictOutcome(verdict=verdict, paused_session=pause, reason=reason)

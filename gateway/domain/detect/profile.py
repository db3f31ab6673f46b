"""Behaviour profiles: a session whose mix of action types is unlike its agent's.

The store counts, per agent and per session, the actions of each type (at most
`max_types` distinct types per agent; the rest are counted under `OTHER`, and a
session's counts must be folded the same way, so that a type the agent's profile
keeps under `OTHER` is under `OTHER` in the session too). A session is compared with
the agent's profile as it was before the session: the agent's counts minus the
session's, so a long deviating session cannot make itself the norm. The distance is
the total variation between the two distributions of action types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.domain.actions import Finding

PROFILE_DEVIATION = "profile_deviation"
OTHER = "~other"
_MAX_DESCRIPTION_CHARS = 199
_MAX_NAMED_TYPES = 5


@dataclass(frozen=True)
class ProfileSettings:
    enabled: bool = True
    # total-variation distance strictly above which a session deviates
    threshold: float = 0.5
    # the session must have at least this many actions
    min_session_actions: int = 10
    # the agent's profile, this session excluded, must have at least this many
    min_agent_actions: int = 50
    # distinct action types kept per agent; the store folds the rest into OTHER
    max_types: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold: {self.threshold} is not between 0 and 1")
        for name in ("min_session_actions", "min_agent_actions", "max_types"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} is not at least 1")


def total_variation(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """The total-variation distance between the distributions of two count maps:

        TV = 1/2 * sum over types t of | a_t / A - b_t / B |
           = sum over t of | a_t * B - b_t * A |  /  (2 * A * B)

    with A = sum of a's counts, B = sum of b's (a missing type counts 0). In [0, 1]:
    0 for the same proportions, 1 for disjoint types. 0.0 when A or B is 0. Computed
    in the second form, in integers up to the one division, so it is exact up to that
    rounding: symmetric, and unchanged when every count is multiplied by the same k.
    Counts must not be negative.
    """
    for counts in (a, b):
        for t, c in counts.items():
            if c < 0:
                raise ValueError(f"counts[{t!r}]: {c} is negative")
    total_a, total_b = sum(a.values()), sum(b.values())
    if total_a == 0 or total_b == 0:
        return 0.0
    numerator = sum(abs(a.get(t, 0) * total_b - b.get(t, 0) * total_a) for t in a.keys() | b.keys())
    return numerator / (2 * total_a * total_b)


def detect_profile_deviation(
    session: Mapping[str, int], agent: Mapping[str, int], settings: ProfileSettings
) -> list[Finding]:
    """A finding when this session's mix of action types is far from the agent's.

    `session` is this session's counts per action type; `agent` the agent's learned
    counts, this session's actions included. The session is compared with

        before_t = max(agent_t - session_t, 0)

    and flagged when the settings are enabled, sum(session) >= min_session_actions,
    sum(before) >= min_agent_actions and total_variation(session, before) > threshold:

        severity = round(distance, 3)

    The description names the distance and the types of this session the agent had
    never used before it (before_t == 0): sorted, at most 5 and as many as fit in 200
    characters, the rest counted as "+N more".
    """
    if not settings.enabled:
        return []
    before = {t: max(c - session.get(t, 0), 0) for t, c in agent.items()}
    if sum(session.values()) < settings.min_session_actions:
        return []
    if sum(before.values()) < settings.min_agent_actions:
        return []
    distance = total_variation(session, before)
    if distance <= settings.threshold:
        return []
    new_types = sorted(t for t, c in session.items() if c > 0 and before.get(t, 0) == 0)
    return [
        Finding(
            type=PROFILE_DEVIATION,
            severity=round(distance, 3),
            description=_description(distance, new_types),
            recommended_action="investigate",
        )
    ]


def _description(distance: float, new_types: list[str]) -> str:
    text = (
        f"this session's mix of action types is {distance:.3f} from the agent's (total variation)"
    )
    if not new_types:
        return text
    # room for the longest "+N more" the list can need
    suffix_room = len(f" +{len(new_types)} more")
    named: list[str] = []
    for t in new_types[:_MAX_NAMED_TYPES]:
        candidate = f"{text}; never used before: {', '.join([*named, t])}"
        if len(candidate) + suffix_room > _MAX_DESCRIPTION_CHARS:
            break
        named.append(t)
    rest = len(new_types) - len(named)
    if not named:
        return f"{text}; {rest} action type(s) never used before"
    more = f" +{rest} more" if rest else ""
    return f"{text}; never used before: {', '.join(named)}{more}"

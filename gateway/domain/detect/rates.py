"""Rates and quotas: actions and request bytes per minute, over true sliding windows.

The store keeps, per agent, a log of the last minute's admitted actions (a sorted
set by time: one member per action, with its size) and one per session and per
rate-limited action type, so a count is exact at any instant: no fixed buckets
that let twice the limit through across a minute boundary. `Quota` is what one
Submit is checked against; the store admits the action (counts it) only if every
window stays within its limit, so a flood is refused without growing the windows.

Limits apply per agent: `actions_per_minute` (default for every agent),
`session_actions_per_minute`, `request_bytes_per_minute`, per action type (an
agent's actions of that type per minute), with per-agent overrides. A gateway-wide
total over all agents is not offered: it would make every agent's Submit write
one shared key, one Redis slot for the whole cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.domain.actions import Finding

RATE_LIMIT = "rate_limit"
WINDOW_SECONDS = 60


@dataclass(frozen=True)
class AgentLimits:
    """One agent's limits per sliding minute; 0 means no limit."""

    actions_per_minute: int = 300
    session_actions_per_minute: int = 120
    request_bytes_per_minute: int = 2_000_000


@dataclass(frozen=True)
class RateSettings:
    defaults: AgentLimits = field(default_factory=AgentLimits)
    agents: Mapping[str, AgentLimits] = field(default_factory=lambda: MappingProxyType({}))
    # action type (exact) -> an agent's actions of that type per minute
    action_types: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def quota(self, agent_id: str, action_type: str, request_bytes: int) -> Quota:
        limits = self.agents.get(agent_id, self.defaults)
        return Quota(limits, self.action_types.get(action_type, 0), request_bytes)


@dataclass(frozen=True)
class Quota:
    """The limits one Submit is checked against, and its size."""

    limits: AgentLimits
    type_per_minute: int  # 0: no limit for this action type
    request_bytes: int


@dataclass(frozen=True)
class RateCounts:
    """The windows at the time of a Submit, this action included if admitted."""

    agent_actions: int = 0
    session_actions: int = 0
    type_actions: int = 0
    agent_bytes: int = 0


@dataclass(frozen=True)
class Refusal:
    """Which window a Submit would have taken over its limit (it was not counted)."""

    window: str  # agent | session | type | bytes
    counts: RateCounts


def over_limit(quota: Quota, counts: RateCounts) -> str | None:
    """The first window that one more action (of `quota.request_bytes`) would take over
    its limit, given the counts before it; None if it fits. The store applies the
    same rule in observe.lua before it counts the action."""
    limits = quota.limits
    checks = (
        ("agent", counts.agent_actions + 1, limits.actions_per_minute),
        ("session", counts.session_actions + 1, limits.session_actions_per_minute),
        ("type", counts.type_actions + 1, quota.type_per_minute),
        ("bytes", counts.agent_bytes + quota.request_bytes, limits.request_bytes_per_minute),
    )
    for window, value, limit in checks:
        if limit > 0 and value > limit:
            return window
    return None


WINDOW_LABELS = {
    "agent": "actions per minute by this agent",
    "session": "actions per minute in this session",
    "type": "actions per minute of this type",
    "bytes": "request bytes per minute by this agent",
}


def usage(quota: Quota, counts: RateCounts, admitted: bool = True) -> tuple[str, float]:
    """The fullest window (as `over_limit` names it) and how full it is (1.0: at its
    limit). `counts` include the action if it was admitted, else one more is added,
    so that a refused action shows the window over its limit."""
    extra = 0 if admitted else 1
    limits = quota.limits
    windows = (
        ("agent", counts.agent_actions + extra, limits.actions_per_minute),
        ("session", counts.session_actions + extra, limits.session_actions_per_minute),
        ("type", counts.type_actions + extra, quota.type_per_minute),
        (
            "bytes",
            counts.agent_bytes + extra * quota.request_bytes,
            limits.request_bytes_per_minute,
        ),
    )
    fullest, ratio = "agent", 0.0
    for window, used, limit in windows:
        if limit > 0 and used / limit > ratio:
            fullest, ratio = window, used / limit
    return fullest, ratio


def rate_limit_finding(refusal: Refusal, quota: Quota, action_type: str) -> Finding:
    limits, counts = quota.limits, refusal.counts
    what = {
        "agent": ("actions by this agent", counts.agent_actions, limits.actions_per_minute),
        "session": (
            "actions in this session",
            counts.session_actions,
            limits.session_actions_per_minute,
        ),
        "type": (
            f"'{action_type}' actions by this agent",
            counts.type_actions,
            quota.type_per_minute,
        ),
        "bytes": (
            "request bytes by this agent",
            counts.agent_bytes,
            limits.request_bytes_per_minute,
        ),
    }[refusal.window]
    label, used, limit = what
    return Finding(
        type=RATE_LIMIT,
        severity=1.0,
        description=f"{used} {label} in the last {WINDOW_SECONDS} s; the limit is {limit}",
        recommended_action=RATE_LIMIT,
    )

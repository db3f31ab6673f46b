"""The detection engine: every detector over one Submit's request and counters.

Pure. The store counts the action (observe.lua, one call in the agent's slot) and
returns `Counters`; `detect` runs the detectors over them and the request, in a
fixed order, and returns every finding. How findings become a verdict is
`gateway/domain/verdicts.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.domain.actions import ActionRequest, Finding
from gateway.domain.detect.anomaly import AnomalySettings, Stats, detect_anomalies
from gateway.domain.detect.loops import LoopSettings, detect_cross_session_loop, detect_loops
from gateway.domain.detect.profile import ProfileSettings, detect_profile_deviation
from gateway.domain.detect.rates import RateCounts, RateSettings
from gateway.domain.detect.suspicious import SuspiciousSettings, detect_suspicious


@dataclass(frozen=True)
class DetectionSettings:
    loops: LoopSettings = field(default_factory=LoopSettings)
    rates: RateSettings = field(default_factory=RateSettings)
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    suspicious: SuspiciousSettings = field(default_factory=SuspiciousSettings)
    # A session with no action for this long is a finished task: its calls become a
    # calls_per_task sample.
    task_idle_seconds: float = 1800.0
    # An agent's baselines and profile live this long after its last action.
    baseline_ttl_seconds: float = 30 * 86400.0


def _empty() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Counters:
    """What the store counted for one Submit (the current action included)."""

    recent_types: tuple[str, ...] = ()  # the session's, newest first
    recent_fingerprints: tuple[str, ...] = ()
    agent_marks: tuple[str, ...] = ()  # the agent's over all sessions, newest first
    rates: RateCounts = field(default_factory=RateCounts)
    stats: Mapping[str, Stats] = field(default_factory=lambda: MappingProxyType({}))
    samples: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    session_mix: Mapping[str, int] = field(default_factory=_empty)  # empty: not returned
    agent_profile: Mapping[str, int] = field(default_factory=_empty)


def detect(
    request: ActionRequest, counters: Counters, settings: DetectionSettings
) -> list[Finding]:
    findings: list[Finding] = []
    if settings.suspicious.enabled:
        findings += detect_suspicious(request.action_type, settings.suspicious)
    findings += detect_loops(counters.recent_types, counters.recent_fingerprints, settings.loops)
    findings += detect_cross_session_loop(counters.agent_marks, settings.loops)
    findings += detect_anomalies(counters.samples, counters.stats, settings.anomaly)
    if counters.session_mix:
        findings += detect_profile_deviation(
            counters.session_mix, counters.agent_profile, settings.profile
        )
    return findings

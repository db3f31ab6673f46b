"""Statistical anomalies: an agent's metric far above the baseline learned for that agent.

The store keeps, per agent and metric, Welford's running count, mean and sum of
squared deviations (`Stats`), and updates them with the same rule as `learn` (a Lua
script mirrors the formulas written in the docstrings here). Until a metric has
`min_samples` learned samples it is judged against a configured prior; after that,
against what was learned, with the standard deviation floored so that a near-constant
baseline cannot turn a tiny deviation into a huge z-score.

Only the upper tail counts: an agent doing much more than usual (more actions, more
errors, more tokens, more calls) is flagged; one doing much less is not. A sample
judged anomalous is not learned, so a burst cannot poison the baseline it is judged
against and the next burst is flagged as well. Everything else is learned, samples
far below the mean included; a slow drift moves the baseline with it. The price: a
lasting step up is flagged until the agent's stats are reset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.domain.actions import Finding

METRICS = ("actions_per_minute", "error_rate", "tokens_per_action", "calls_per_task")
STATISTICAL_ANOMALY = "statistical_anomaly"


@dataclass(frozen=True)
class Prior:
    """The assumed distribution of a metric before enough samples are learned."""

    mean: float
    std: float


DEFAULT_PRIORS: Mapping[str, Prior] = MappingProxyType(
    {
        "actions_per_minute": Prior(5.0, 2.0),
        "calls_per_task": Prior(10.0, 5.0),
        "tokens_per_action": Prior(1000.0, 500.0),
        "error_rate": Prior(0.05, 0.02),
    }
)


@dataclass(frozen=True)
class AnomalySettings:
    enabled: bool = True
    # below this many learned samples, a metric is judged against its prior
    min_samples: int = 30
    # a sample is anomalous when its z-score is strictly above this
    z_threshold: float = 3.0
    # the learned std is floored at this fraction of the prior's std
    min_std_fraction: float = 0.1
    # one prior per metric of METRICS, no other keys
    priors: Mapping[str, Prior] = field(default_factory=lambda: DEFAULT_PRIORS)

    def __post_init__(self) -> None:
        if self.min_samples < 1:
            raise ValueError(f"min_samples: {self.min_samples} is not at least 1")
        if not (math.isfinite(self.z_threshold) and self.z_threshold > 0):
            raise ValueError(f"z_threshold: {self.z_threshold} is not a positive number")
        if not (math.isfinite(self.min_std_fraction) and self.min_std_fraction > 0):
            raise ValueError(f"min_std_fraction: {self.min_std_fraction} is not a positive number")
        unknown = sorted(set(self.priors) - set(METRICS))
        if unknown:
            raise ValueError(f"priors: {', '.join(unknown)} not among {', '.join(METRICS)}")
        for metric in METRICS:
            prior = self.priors.get(metric)
            if prior is None:
                raise ValueError(f"priors.{metric}: is required")
            if not math.isfinite(prior.mean):
                raise ValueError(f"priors.{metric}.mean: {prior.mean} is not a finite number")
            if not (math.isfinite(prior.std) and prior.std > 0):
                raise ValueError(f"priors.{metric}.std: {prior.std} is not a positive number")


@dataclass(frozen=True)
class Stats:
    """Welford's running statistics of the samples learned so far."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    @property
    def variance(self) -> float:
        """The sample variance m2 / (n - 1); 0.0 when n < 2."""
        return self.m2 / (self.n - 1) if self.n >= 2 else 0.0


def welford(stats: Stats, x: float) -> Stats:
    """`stats` with one more sample `x` (Welford's update):

        n'    = n + 1
        d     = x - mean
        mean' = mean + d / n'
        m2'   = m2 + d * (x - mean')

    d and (x - mean') = d * n / n' have the same sign, so m2 never decreases.
    """
    n = stats.n + 1
    d = x - stats.mean
    mean = stats.mean + d / n
    return Stats(n=n, mean=mean, m2=stats.m2 + d * (x - mean))


def reference(stats: Stats, prior: Prior, settings: AnomalySettings) -> tuple[float, float]:
    """The (mean, std) a sample is judged against:

        n <  min_samples:  (prior.mean, prior.std)
        n >= min_samples:  (mean, max(sqrt(m2 / (n - 1)), prior.std * min_std_fraction))

    std > 0 in both cases, as the settings require prior.std > 0 and
    min_std_fraction > 0 (with n = 1 the variance is 0 and the floor applies).
    """
    if stats.n < settings.min_samples:
        return prior.mean, prior.std
    return stats.mean, max(math.sqrt(stats.variance), prior.std * settings.min_std_fraction)


def z_score(x: float, mean: float, std: float) -> float:
    """(x - mean) / std, signed; std > 0. Only a large positive value is anomalous."""
    return (x - mean) / std


def learn(stats: Stats, x: float, prior: Prior, settings: AnomalySettings) -> tuple[Stats, float]:
    """Judge `x` against `reference(stats, prior, settings)` and learn it if it is normal.

        z = (x - ref_mean) / ref_std
        z >  z_threshold:  (stats, z)             anomalous: not learned
        z <= z_threshold:  (welford(stats, x), z)

    `x` must be finite: a NaN or an infinity would corrupt the stats for good.
    """
    _require_finite(x)
    z = z_score(x, *reference(stats, prior, settings))
    if z > settings.z_threshold:
        return stats, z
    return welford(stats, x), z


def anomaly_finding(
    metric: str, x: float, stats: Stats, settings: AnomalySettings
) -> Finding | None:
    """A finding when `x` is anomalous for `metric` (z > z_threshold, judged as in
    `learn` against the metric's prior in `settings`), else None.

        severity = min(z / 5, 1)
    """
    _require_finite(x)
    mean, std = reference(stats, settings.priors[metric], settings)
    z = z_score(x, mean, std)
    if z <= settings.z_threshold:
        return None
    shown = f"{z:.1f}" if z < 1e6 else f"{z:.3g}"
    return Finding(
        type=STATISTICAL_ANOMALY,
        severity=min(z / 5, 1.0),
        description=(f"{metric} is {shown} std devs from normal ({x:.4g} vs {mean:.4g}±{std:.4g})"),
        recommended_action="investigate",
    )


def detect_anomalies(
    current: Mapping[str, float], stats: Mapping[str, Stats], settings: AnomalySettings
) -> list[Finding]:
    """One finding per metric of METRICS present in `current` and anomalous, in METRICS
    order; a metric without stats is judged against its prior. None when disabled."""
    if not settings.enabled:
        return []
    findings: list[Finding] = []
    for metric in METRICS:
        if metric not in current:
            continue
        finding = anomaly_finding(metric, current[metric], stats.get(metric, Stats()), settings)
        if finding is not None:
            findings.append(finding)
    return findings


def _require_finite(x: float) -> None:
    if not math.isfinite(x):
        raise ValueError(f"sample: {x} is not a finite number")

"""Statistical anomalies: Welford baselines per agent and metric, judged on the upper tail."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.domain.detect.anomaly import (
    DEFAULT_PRIORS,
    METRICS,
    STATISTICAL_ANOMALY,
    AnomalySettings,
    Prior,
    Stats,
    anomaly_finding,
    detect_anomalies,
    learn,
    reference,
    welford,
    z_score,
)

DEFAULTS = AnomalySettings()
APM = "actions_per_minute"
APM_PRIOR = DEFAULT_PRIORS[APM]  # 5 ± 2
# 40 samples around 5 ± 1 actions per minute: mean 5, m2 50, std ~1.13
AROUND_FIVE = [3.5, 4.5, 5.5, 6.5] * 10


def welford_all(samples: Iterable[float]) -> Stats:
    stats = Stats()
    for x in samples:
        stats = welford(stats, x)
    return stats


def learn_all(
    stats: Stats, samples: Iterable[float], settings: AnomalySettings = DEFAULTS
) -> Stats:
    for x in samples:
        stats, _ = learn(stats, x, APM_PRIOR, settings)
    return stats


def with_n(n: int, mean: float = 100.0, std: float = 4.0) -> Stats:
    """Stats of n samples with the given mean and sample standard deviation."""
    return Stats(n=n, mean=mean, m2=std * std * (n - 1))


# -- settings ------------------------------------------------------------------------------


def test_default_settings_match_the_design() -> None:
    assert DEFAULTS.enabled
    assert DEFAULTS.min_samples == 30
    assert DEFAULTS.z_threshold == 3.0
    assert DEFAULTS.min_std_fraction == 0.1
    assert dict(DEFAULTS.priors) == {
        "actions_per_minute": Prior(5, 2),
        "calls_per_task": Prior(10, 5),
        "tokens_per_action": Prior(1000, 500),
        "error_rate": Prior(0.05, 0.02),
    }
    assert set(DEFAULT_PRIORS) == set(METRICS)


def test_default_priors_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        DEFAULT_PRIORS[APM] = Prior(1, 1)  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_samples": 0}, "min_samples"),
        ({"z_threshold": 0.0}, "z_threshold"),
        ({"z_threshold": math.inf}, "z_threshold"),
        ({"min_std_fraction": 0.0}, "min_std_fraction"),
        ({"min_std_fraction": math.nan}, "min_std_fraction"),
        ({"priors": {m: Prior(1, 1) for m in METRICS[1:]}}, f"priors.{METRICS[0]}"),
        ({"priors": {**DEFAULT_PRIORS, "latency": Prior(1, 1)}}, "priors: latency"),
        ({"priors": {**DEFAULT_PRIORS, APM: Prior(5, 0)}}, f"priors.{APM}.std"),
        ({"priors": {**DEFAULT_PRIORS, APM: Prior(math.nan, 1)}}, f"priors.{APM}.mean"),
    ],
)
def test_settings_that_would_break_the_maths_are_refused(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(field)}"):
        AnomalySettings(**changes)  # type: ignore[arg-type]


# -- Welford ---------------------------------------------------------------------------------


def test_variance_is_zero_below_two_samples() -> None:
    assert Stats().variance == 0.0
    assert welford(Stats(), 7.0) == Stats(n=1, mean=7.0, m2=0.0)
    assert welford(Stats(), 7.0).variance == 0.0


def test_welford_of_a_small_list_is_exact() -> None:
    stats = welford_all([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert stats == Stats(n=8, mean=5.0, m2=32.0)
    assert stats.variance == 32.0 / 7


FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(FINITE, min_size=1, max_size=200))
def test_welford_matches_the_statistics_module(xs: list[float]) -> None:
    stats = welford_all(xs)
    scale = max(1.0, *(abs(x) for x in xs))
    assert stats.n == len(xs)
    assert math.isclose(stats.mean, statistics.fmean(xs), rel_tol=1e-9, abs_tol=1e-12 * scale)
    if len(xs) >= 2:
        assert math.isclose(
            stats.variance, statistics.variance(xs), rel_tol=1e-9, abs_tol=1e-12 * scale**2
        )
    assert stats.m2 >= 0.0


# -- the reference a sample is judged against ------------------------------------------------


def test_one_sample_short_of_min_samples_is_judged_against_the_prior() -> None:
    assert reference(with_n(29), APM_PRIOR, DEFAULTS) == (5.0, 2.0)
    assert reference(Stats(), APM_PRIOR, DEFAULTS) == (5.0, 2.0)


def test_min_samples_learned_are_judged_against_what_was_learned() -> None:
    mean, std = reference(with_n(30), APM_PRIOR, DEFAULTS)
    assert mean == 100.0
    assert math.isclose(std, 4.0)


def test_a_constant_baseline_has_its_std_floored_at_a_fraction_of_the_prior() -> None:
    constant = welford_all([5.0] * 30)
    assert constant.variance == 0.0
    assert reference(constant, APM_PRIOR, DEFAULTS) == (5.0, 0.2)  # 2 * 0.1
    assert anomaly_finding(APM, 5.5, constant, DEFAULTS) is None  # z = 2.5
    finding = anomaly_finding(APM, 5.7, constant, DEFAULTS)  # z = 3.5
    assert finding is not None
    assert z_score(5.7, *reference(constant, APM_PRIOR, DEFAULTS)) == pytest.approx(3.5)


def test_the_floor_does_not_apply_to_a_learned_std_above_it() -> None:
    assert reference(with_n(30, std=0.21), APM_PRIOR, DEFAULTS)[1] == pytest.approx(0.21)
    assert reference(with_n(30, std=0.19), APM_PRIOR, DEFAULTS)[1] == 0.2


def test_a_single_learned_sample_has_the_floored_std() -> None:
    settings = AnomalySettings(min_samples=1)
    assert reference(Stats(n=1, mean=8.0), APM_PRIOR, settings) == (8.0, 0.2)


# -- the threshold ---------------------------------------------------------------------------


def test_a_z_score_exactly_at_the_threshold_is_not_anomalous() -> None:
    x = 11.0  # (11 - 5) / 2 = 3.0
    assert z_score(x, *reference(Stats(), APM_PRIOR, DEFAULTS)) == 3.0
    assert anomaly_finding(APM, x, Stats(), DEFAULTS) is None
    stats, z = learn(Stats(), x, APM_PRIOR, DEFAULTS)
    assert z == 3.0
    assert stats == Stats(n=1, mean=11.0, m2=0.0)


def test_a_z_score_just_above_the_threshold_is_anomalous() -> None:
    x = math.nextafter(11.0, math.inf)
    assert z_score(x, 5.0, 2.0) > 3.0
    assert anomaly_finding(APM, x, Stats(), DEFAULTS) is not None
    stats, z = learn(Stats(), x, APM_PRIOR, DEFAULTS)
    assert z > 3.0
    assert stats == Stats()


def test_the_threshold_is_a_setting() -> None:
    settings = AnomalySettings(z_threshold=2.0)
    assert anomaly_finding(APM, 9.5, Stats(), settings) is not None  # z = 2.25
    assert anomaly_finding(APM, 9.5, Stats(), DEFAULTS) is None


def test_doing_much_less_than_usual_is_not_anomalous_and_is_learned() -> None:
    baseline = learn_all(Stats(), AROUND_FIVE)
    stats, z = learn(baseline, 0.0, APM_PRIOR, DEFAULTS)
    assert z < -3.0
    assert anomaly_finding(APM, 0.0, baseline, DEFAULTS) is None
    assert stats == welford(baseline, 0.0)


def test_a_sample_that_is_not_finite_is_refused() -> None:
    for x in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"^sample:"):
            learn(Stats(), x, APM_PRIOR, DEFAULTS)
        with pytest.raises(ValueError, match=r"^sample:"):
            anomaly_finding(APM, x, Stats(), DEFAULTS)


# -- the finding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "severity"),
    [(11.5, 0.65), (13.0, 0.8), (15.0, 1.0), (25.0, 1.0), (1e9, 1.0)],
)
def test_severity_is_z_over_five_capped_at_one(x: float, severity: float) -> None:
    finding = anomaly_finding(APM, x, Stats(), DEFAULTS)
    assert finding is not None
    assert finding.severity == pytest.approx(severity)
    assert finding.severity <= 1.0


def test_the_finding_names_the_metric_the_z_score_the_value_and_the_baseline() -> None:
    finding = anomaly_finding(APM, 13.0, Stats(), DEFAULTS)
    assert finding is not None
    assert finding.type == STATISTICAL_ANOMALY
    assert finding.recommended_action == "investigate"
    assert finding.description == "actions_per_minute is 4.0 std devs from normal (13 vs 5±2)"


def test_a_small_metric_keeps_its_digits_in_the_description() -> None:
    finding = anomaly_finding("error_rate", 0.2, Stats(), DEFAULTS)
    assert finding is not None
    assert finding.description == "error_rate is 7.5 std devs from normal (0.2 vs 0.05±0.02)"


def test_a_learned_baseline_is_shown_in_the_description() -> None:
    finding = anomaly_finding("tokens_per_action", 4000.0, with_n(30, 1200.0, 400.0), DEFAULTS)
    assert finding is not None
    assert finding.description == "tokens_per_action is 7.0 std devs from normal (4000 vs 1200±400)"


ANY_FINITE = st.floats(allow_nan=False, allow_infinity=False)


@given(
    st.sampled_from(METRICS),
    ANY_FINITE,
    st.integers(min_value=0, max_value=10**12),
    ANY_FINITE,
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
)
def test_a_description_stays_under_200_characters(
    metric: str, x: float, n: int, mean: float, m2: float
) -> None:
    finding = anomaly_finding(metric, x, Stats(n=n, mean=mean, m2=m2), DEFAULTS)
    if finding is not None:
        assert len(finding.description) < 200
        assert 0.0 < finding.severity <= 1.0


# -- detect_anomalies ------------------------------------------------------------------------


def test_one_finding_per_anomalous_metric_in_metrics_order() -> None:
    current = {
        "calls_per_task": 100.0,  # anomalous
        "tokens_per_action": 1100.0,  # normal
        "error_rate": 0.5,  # anomalous
        "actions_per_minute": 40.0,  # anomalous
        "latency": 1e9,  # not a metric: ignored
    }
    findings = detect_anomalies(current, {}, DEFAULTS)
    assert [f.description.split()[0] for f in findings] == [
        "actions_per_minute",
        "error_rate",
        "calls_per_task",
    ]


def test_a_metric_absent_from_current_is_not_judged() -> None:
    assert detect_anomalies({}, {APM: with_n(40)}, DEFAULTS) == []


def test_a_metric_with_stats_is_judged_against_them() -> None:
    learned = {APM: with_n(40, mean=50.0, std=5.0)}
    assert detect_anomalies({APM: 40.0}, learned, DEFAULTS) == []
    assert len(detect_anomalies({APM: 40.0}, {}, DEFAULTS)) == 1


def test_nothing_is_detected_when_disabled() -> None:
    settings = AnomalySettings(enabled=False)
    assert detect_anomalies({APM: 1e6, "error_rate": 1.0}, {}, settings) == []


# -- learning --------------------------------------------------------------------------------


SMALL = AnomalySettings(min_samples=5)
SAMPLE = st.floats(min_value=0.0, max_value=40.0, allow_nan=False)


@given(st.lists(FINITE, max_size=50), FINITE)
def test_learn_never_changes_the_stats_on_a_sample_it_judged_anomalous(
    history: list[float], x: float
) -> None:
    stats = welford_all(history)
    new, z = learn(stats, x, APM_PRIOR, SMALL)
    assert z == z_score(x, *reference(stats, APM_PRIOR, SMALL))
    if z > SMALL.z_threshold:
        assert new == stats
        assert anomaly_finding(APM, x, stats, SMALL) is not None
    else:
        assert new == welford(stats, x)
        assert anomaly_finding(APM, x, stats, SMALL) is None


def reference_model(
    samples: list[float], prior: Prior, settings: AnomalySettings
) -> tuple[list[float], list[float]]:
    """The accepted samples and each sample's z-score, the straightforward way."""
    accepted: list[float] = []
    zs: list[float] = []
    for x in samples:
        if len(accepted) < settings.min_samples:
            mean, std = prior.mean, prior.std
        else:
            mean = sum(accepted) / len(accepted)
            squares = sum((a - mean) ** 2 for a in accepted)
            variance = squares / (len(accepted) - 1) if len(accepted) >= 2 else 0.0
            std = max(math.sqrt(variance), prior.std * settings.min_std_fraction)
        z = (x - mean) / std
        zs.append(z)
        if z <= settings.z_threshold:
            accepted.append(x)
    return accepted, zs


@given(st.lists(SAMPLE, max_size=80))
def test_learning_a_sequence_matches_a_reference_model(samples: list[float]) -> None:
    accepted, expected_zs = reference_model(samples, APM_PRIOR, SMALL)
    # two ways of rounding may disagree on a sample within rounding of the threshold
    assume(all(abs(z - SMALL.z_threshold) > 1e-6 for z in expected_zs))
    stats = Stats()
    zs = []
    for x in samples:
        stats, z = learn(stats, x, APM_PRIOR, SMALL)
        zs.append(z)
    assert stats.n == len(accepted)
    assert [z > 3.0 for z in zs] == [z > 3.0 for z in expected_zs]
    assert all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(zs, expected_zs, strict=True)
    )
    if accepted:
        assert math.isclose(stats.mean, statistics.fmean(accepted), rel_tol=1e-9, abs_tol=1e-9)
    if len(accepted) >= 2:
        assert math.isclose(
            stats.variance, statistics.variance(accepted), rel_tol=1e-9, abs_tol=1e-9
        )


def test_a_burst_does_not_poison_the_baseline_and_the_next_burst_is_flagged_too() -> None:
    baseline = learn_all(Stats(), AROUND_FIVE)
    assert baseline.n == 40
    mean, std = reference(baseline, APM_PRIOR, DEFAULTS)
    assert 4.0 <= mean <= 6.0 and 0.5 <= std <= 1.5

    stats = baseline
    for _burst in range(2):
        for _minute in range(10):
            assert detect_anomalies({APM: 40.0}, {APM: stats}, DEFAULTS) != []
            stats, z = learn(stats, 40.0, APM_PRIOR, DEFAULTS)
            assert z > DEFAULTS.z_threshold
        assert stats == baseline
        assert 4.0 <= stats.mean <= 6.0

    # without the gate, the first burst would have become the baseline and hidden the second
    poisoned = welford_all([*AROUND_FIVE, *[40.0] * 10])
    assert poisoned.mean > 10.0
    assert anomaly_finding(APM, 40.0, poisoned, DEFAULTS) is None


def test_a_slow_drift_is_learned_and_moves_the_baseline() -> None:
    baseline = learn_all(Stats(), AROUND_FIVE)
    stats = baseline
    for minute in range(1, 81):  # 5.05, 5.10, ... 9.00 actions per minute
        stats, z = learn(stats, 5.0 + 0.05 * minute, APM_PRIOR, DEFAULTS)
        assert z <= DEFAULTS.z_threshold
    assert stats.n == 120
    assert stats.mean > baseline.mean + 1.0
    # what the original baseline would have flagged is now normal
    assert anomaly_finding(APM, 9.5, baseline, DEFAULTS) is not None
    assert anomaly_finding(APM, 9.5, stats, DEFAULTS) is None

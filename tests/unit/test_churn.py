"""The churn drill's pure parts: manifests and edits, the /metrics reading, the RSS slope fit."""

from __future__ import annotations

import random

import pytest
from benchmarks.churn import (
    UPDATES,
    SlopeFit,
    first_variant,
    fit_slope,
    lingering,
    make_up,
    manifest,
    pools_by_service,
    series_by_service,
    updated,
)

from tokenscale.api.service import InferenceServiceSpec

METRICS = """\
# HELP tokenscale_service_desired_replicas Replicas the operator wants per pool.
# TYPE tokenscale_service_desired_replicas gauge
tokenscale_service_desired_replicas{namespace="a",pool="p",service="one"} 1.0
tokenscale_service_desired_replicas{namespace="a",pool="q",service="one"} 0.0
tokenscale_service_desired_replicas{namespace="b",pool="p",service="other"} 1.0
# HELP tokenscale_scrape_errors_total Failed scrapes of engine /metrics.
# TYPE tokenscale_scrape_errors_total counter
tokenscale_scrape_errors_total{namespace="a",service="two"} 3.0
tokenscale_scrape_errors_created{namespace="a",service="two"} 1.7e+09
# HELP tokenscale_reconciles_total Reconcile passes by kind and result.
# TYPE tokenscale_reconciles_total counter
tokenscale_reconciles_total{kind="InferenceService",result="ok"} 9.0
"""


def test_every_variant_an_edit_can_reach_is_a_valid_spec() -> None:
    rng = random.Random(1)
    variant = first_variant(rng)
    for _ in range(200):
        doc = manifest("c-00001", "ns", variant)
        InferenceServiceSpec.model_validate(doc["spec"])
        new = updated(variant, rng.choice(UPDATES))
        assert new != variant
        variant = new


def test_an_unknown_edit_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'resize'"):
        updated(first_variant(random.Random(0)), "resize")


def test_series_are_read_per_service_of_the_namespace_only() -> None:
    assert series_by_service(METRICS, "a") == {
        "one": {"tokenscale_service_desired_replicas"},
        # the parser reads a counter's _created line as a family of its own: a series still
        "two": {"tokenscale_scrape_errors", "tokenscale_scrape_errors_created"},
    }
    assert pools_by_service(METRICS, "a") == {"one": {"p", "q"}}
    assert series_by_service(METRICS, "c") == {}


def test_a_leak_is_a_deleted_name_seen_after_the_grace() -> None:
    deleted = {"old": 100.0, "recent": 125.0}
    assert lingering({"old", "recent", "live"}, deleted, now=140.0, grace=30.0) == {"old": 40.0}
    assert lingering({"live"}, deleted, now=140.0, grace=30.0) == {}


def test_the_slope_fit_recovers_a_known_leak_after_the_warm_up() -> None:
    # Warm-up: a steep rise to 150 MiB in the first 300 s; then 4 MiB/hour plus a sawtooth.
    samples = [(float(t), 100 + t / 6.0) for t in range(0, 300, 5)]
    samples += [
        (float(t), 150 + 4.0 * (t - 300) / 3600 + (0.5 if t % 10 else -0.5))
        for t in range(300, 2100, 5)
    ]
    fit = fit_slope(samples, warmup_seconds=300)
    assert isinstance(fit, SlopeFit)
    assert fit.mib_per_hour == pytest.approx(4.0, abs=0.05)
    assert fit.rss_start_mib == pytest.approx(150.0, abs=0.1)
    assert fit.residual_stdev_mib == pytest.approx(0.5, abs=0.01)
    assert fit.samples == 360
    assert fit_slope([(float(t), 80.0) for t in range(0, 100, 5)], 10).mib_per_hour == 0.0


def test_the_fit_refuses_too_few_samples() -> None:
    with pytest.raises(ValueError, match="need 3"):
        fit_slope([(0.0, 1.0), (10.0, 2.0), (20.0, 3.0)], warmup_seconds=15)
    with pytest.raises(ValueError, match="no RSS samples"):
        fit_slope([], warmup_seconds=0)


def test_the_fleet_make_up_stays_steady_under_churn() -> None:
    """New services are drawn from the mix the edits converge to, so the autoscaled share, the
    second pools and the pods do not drift while the drill measures the RSS slope."""
    rng = random.Random(5)
    live = {i: first_variant(rng) for i in range(1000)}
    start = make_up(live.values())
    serial = len(live)
    for _ in range(3000):  # the long form's steps, three times over
        del live[rng.choice(sorted(live))]
        live[serial] = first_variant(rng)
        serial += 1
        for name in rng.sample(sorted(live), 2):
            live[name] = updated(live[name], rng.choice(UPDATES))
    end = make_up(live.values())
    for key in ("autoscaled", "second_pools", "min_replicas"):
        # binomial noise of the difference ~22 (seeded, so fixed); the old draw drifted +44 %
        assert abs(end[key] - start[key]) < 0.1 * start[key], (key, start, end)
    assert 400 < start["autoscaled"] < 600 and 400 < start["second_pools"] < 600

"""The load signal the autoscaling decision works on (rule 1 of :mod:`.decision`), and its trend.

Pure arithmetic over scraped :class:`~tokenscale.autoscale.rates.Sample` windows, apart from
the decision so that "what is the load" and "what to do about it" can be read and tested one at a
time. Served tokens/s saturates at capacity and would hide an overload, so token metrics add the
queue's hidden demand (:func:`window_load`).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenscale.api.service import ScalingMetric
from tokenscale.autoscale.rates import PoolSignal, Sample
from tokenscale.autoscale.state import PoolInput

TOKEN_METRICS = ("generationTokensPerSecond", "totalTokensPerSecond", "promptTokensPerSecond")
TREND_SECONDS = 300.0
"""Span of the load-trend fit; long enough that noise does not look like a ramp."""


def signal_value(signal: PoolSignal, metric: ScalingMetric) -> float:
    """One pool's instantaneous value of the policy metric (no queue term)."""
    if metric == "generationTokensPerSecond":
        return signal.generation_tps
    if metric == "totalTokensPerSecond":
        return signal.generation_tps + signal.prompt_tps
    if metric == "promptTokensPerSecond":
        return signal.prompt_tps
    if metric == "requestsInFlight":
        return signal.requests_running + signal.requests_waiting
    return signal.kv_cache_usage_sum


def _load(sample: Sample, names: Sequence[str], metric: ScalingMetric) -> float:
    return sum(signal_value(sample.pools[n], metric) for n in names if n in sample.pools)


def _queue_term(
    samples: Sequence[Sample], names: Sequence[str], metric: ScalingMetric, drain_seconds: float
) -> float:
    """Token demand that saturation hides: queue growth plus draining the queue.

    Served tokens/s stops at capacity, so an overload shows up only as waiting requests. Each
    waiting request stands for ``tokens/s / finished requests/s`` tokens (the window's mean
    tokens per request), so demand = served + growth of the queue (in tokens/s) + the queue
    itself spread over ``drain_seconds``. Zero when nothing waits; a shrinking queue adds no
    growth (it does not lower the estimate below what is served).
    """
    if metric not in TOKEN_METRICS or not samples:
        return 0.0
    first, last = samples[0], samples[-1]
    span = last.time - first.time
    extra = 0.0
    for name in names:
        end = last.pools.get(name)
        if end is None or end.requests_waiting <= 0:
            continue
        signals = [s.pools[name] for s in samples if name in s.pools]
        finished = sum(p.finished_per_s for p in signals)
        if finished <= 0:
            continue
        per_request = sum(signal_value(p, metric) for p in signals) / finished
        start = first.pools.get(name)
        growth = (end.requests_waiting - start.requests_waiting) / span if start and span else 0.0
        extra += per_request * (max(0.0, growth) + end.requests_waiting / drain_seconds)
    return extra


def trend(samples: Sequence[Sample], names: Sequence[str], metric: ScalingMetric) -> float:
    """Least-squares slope of the load (units per second) over ``samples``; 0 if too few."""
    points = [(s.time, _load(s, names, metric)) for s in samples]
    if len(points) < 3:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var


def window_load(
    samples: Sequence[Sample], names: Sequence[str], metric: ScalingMetric, drain_seconds: float
) -> float:
    """Mean load over ``samples`` plus, for token metrics, the hidden queue demand."""
    if not samples:
        return 0.0
    mean = sum(_load(s, names, metric) for s in samples) / len(samples)
    return mean + _queue_term(samples, names, metric, drain_seconds)


def has_data(sample: Sample, names: Sequence[str]) -> bool:
    """At least one pod of the named pools reported in ``sample``."""
    return any(sample.pools[n].pods_reporting > 0 for n in names if n in sample.pools)


def all_reported(sample: Sample, pools: Sequence[PoolInput]) -> bool:
    """Every ready pod of every pool reported: the load is exact, not a lower bound."""
    for pool in pools:
        signal = sample.pools.get(pool.name)
        if signal is None:
            if pool.ready_replicas > 0:
                return False
        elif not signal.complete or signal.pods_reporting < pool.ready_replicas:
            return False
    return True

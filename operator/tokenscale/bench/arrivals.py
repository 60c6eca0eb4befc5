"""Arrival schedules: when each request is planned to leave, relative to the run start.

Server scenario follows MLPerf LoadGen: one sample per query, inter-arrival times drawn from an
exponential distribution with rate ``qps`` (``std::exponential_distribution<>(qps)``), seeded so
a run is reproducible. Offline plans everything at t = 0. Shards of an Indexed Job each draw an
independent Poisson stream at ``qps / shard_count``: the superposition of independent Poisson
processes is a Poisson process at the summed rate, so the cluster offers the same load.
"""

from __future__ import annotations

import random


def poisson(n: int | None, qps: float, seed: int, duration_s: float | None = None) -> list[float]:
    """Planned send offsets (s) of a Poisson process at ``qps``: ``n`` of them, or all that fall
    within ``duration_s`` when ``n`` is None. The first request leaves after one gap, not at 0."""
    if qps <= 0:
        raise ValueError("qps must be > 0")
    if n is None and duration_s is None:
        raise ValueError("need a request count or a duration")
    rng = random.Random(seed)
    t, out = 0.0, list[float]()
    while True:
        t += rng.expovariate(qps)
        if (n is not None and len(out) >= n) or (duration_s is not None and t > duration_s):
            return out
        out.append(t)


def offline(n: int) -> list[float]:
    """Every request planned at t = 0 (MLPerf Offline: one query holding all samples)."""
    return [0.0] * n


def shard_seed(seed: int, shard_index: int) -> int:
    """Distinct, reproducible seed per shard (shard 0 keeps the user's seed)."""
    return seed + 7919 * shard_index

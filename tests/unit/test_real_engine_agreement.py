"""The P5 arithmetic: Prometheus-style histogram quantiles and pooling ABBA rounds.

Why: P5's verdict rests on these few functions; a wrong interpolation or a pooled figure that is
not what one long run would have measured would pass or fail the target for the wrong reason.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from benchmarks.real_engine_agreement import (
    DEFAULT_TTFT_BUCKETS,
    fine_ttft_buckets,
    histogram_quantile,
    pool,
    public,
    restrict,
)

INF = math.inf


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 10 observations: 2 in (0, 0.01], 6 in (0.01, 0.02], 2 in (0.02, +Inf)
    buckets = [(0.01, 2.0), (0.02, 8.0), (INF, 10.0)]
    p50, width = histogram_quantile(0.5, buckets)
    # rank 5 lies 3 of the 6 observations into the (0.01, 0.02] bucket
    assert p50 == pytest.approx(0.015)
    assert width == pytest.approx(0.01)
    assert histogram_quantile(0.1, buckets)[0] == pytest.approx(0.005)  # first bucket from 0
    assert histogram_quantile(0.95, buckets) == (0.02, INF)  # +Inf: largest finite bound
    assert histogram_quantile(0.5, [(0.01, 0.0), (INF, 0.0)]) == (None, None)


def test_restrict_keeps_only_the_coarser_edges() -> None:
    fine = [(le, float(i)) for i, le in enumerate(fine_ttft_buckets(), start=1)] + [(INF, 1e4)]
    coarse = restrict(fine, DEFAULT_TTFT_BUCKETS)
    assert [le for le, _ in coarse] == [*DEFAULT_TTFT_BUCKETS, INF]
    # cumulative counts are carried over unchanged at the shared edges
    assert dict(coarse)[0.01] == dict(fine)[0.01]


def _round(ttfts: list[float], buckets: list[tuple[float, float]], window: float) -> dict[str, Any]:
    tokens = 10 * len(ttfts)
    ttft_sum = sum(ttfts)
    client = {
        "duration_s": window,
        "output_tokens": tokens,
        "requests_ok": len(ttfts),
        "e2e_mean_s": 2 * ttft_sum / len(ttfts),
        "ttft_p50_s": sorted(ttfts)[len(ttfts) // 2],
        "_ttfts": ttfts,
    }
    engine = {
        "generation_tokens": tokens,
        "requests_finished": len(ttfts),
        "ttft_observations": len(ttfts),
        "ttft_p50_s": None,
        "_ttft_buckets": buckets,
        "_ttft_sum": ttft_sum - 0.001 * len(ttfts),
        "_e2e_sum": 2 * ttft_sum - 0.001 * len(ttfts),
    }
    return {"client": client, "engine": engine}


def test_pooled_rounds_equal_one_run_over_all_requests() -> None:
    a = _round([0.10, 0.12, 0.14], [(0.1, 1.0), (0.2, 3.0), (INF, 3.0)], window=10.0)
    b = _round([0.11, 0.30], [(0.1, 0.0), (0.2, 1.0), (INF, 2.0)], window=30.0)
    pooled = pool([a, b])
    client, engine = pooled["client"], pooled["engine"]
    assert client["tokens_per_s"] == pytest.approx(50 / 40.0)  # tokens over summed windows
    assert client["ttft_p50_s"] == pytest.approx(0.12)  # median of all five requests
    assert client["ttft_mean_s"] == pytest.approx(sum([0.10, 0.12, 0.14, 0.11, 0.30]) / 5)
    assert client["e2e_mean_s"] == pytest.approx(2 * client["ttft_mean_s"])  # weighted by count
    assert client["ttft_p50_per_round_s"] == [0.12, 0.30]
    # the engine's buckets are added edge by edge: 1 in (0, 0.1], 3 in (0.1, 0.2], 1 above
    p50 = 0.1 + 0.1 * (2.5 - 1.0) / 3.0
    assert engine["ttft_p50_s"] == pytest.approx(p50, abs=1e-6)
    assert engine["ttft_mean_s"] == pytest.approx(client["ttft_mean_s"] - 0.001, abs=1e-6)
    assert engine["tokens_per_s"] == pytest.approx(client["tokens_per_s"])


def test_public_drops_the_per_request_lists() -> None:
    report = {"runs": [{"client": {"_ttfts": [1.0], "ttft_p50_s": 1.0}}], "_x": 1}
    assert public(report) == {"runs": [{"client": {"ttft_p50_s": 1.0}}]}

"""Metric arithmetic against hand-computed cases: if these drift, every published figure lies.

TPOT follows MLPerf/vLLM ((E2E - TTFT) / (out - 1), per request); reported percentiles
interpolate linearly like numpy (both definitions are pinned in test_percentiles.py); throughput
counts output tokens only.
"""

from __future__ import annotations

import math
import random

import pytest

from tokenscale.bench import metrics
from tokenscale.bench.models import BenchSLA, RequestRecord
from tokenscale.percentiles import percentile_linear


def rec(
    i: int,
    ttft: float,
    e2e: float,
    out: int,
    *,
    sent: float = 0.0,
    error: str | None = None,
    planned: float | None = None,
) -> RequestRecord:
    return RequestRecord(
        i=i,
        planned_s=sent if planned is None else planned,
        sent_s=sent,
        ttft_s=ttft,
        e2e_s=e2e,
        input_tokens=10,
        output_tokens=out,
        from_usage=True,
        chunks=out,
        error=error,
    )


def test_tpot_is_decode_time_over_tokens_minus_one() -> None:
    assert metrics.tpot(rec(0, ttft=0.5, e2e=2.5, out=11)) == pytest.approx(0.2)
    assert metrics.tpot(rec(0, ttft=0.5, e2e=0.5, out=1)) is None  # undefined, excluded
    assert metrics.tpot(rec(0, ttft=0.5, e2e=2.5, out=11, error="http_500")) is None


def test_compute_hand_case() -> None:
    records = [
        rec(0, ttft=0.1, e2e=1.1, out=11, sent=0.0),  # TPOT 0.1
        rec(1, ttft=0.2, e2e=2.2, out=21, sent=0.5),  # TPOT 0.1
        rec(2, ttft=0.3, e2e=3.3, out=11, sent=1.0),  # TPOT 0.3
        rec(3, ttft=9.0, e2e=9.0, out=0, sent=1.5, error="timeout"),
    ]
    itl = metrics.ITLSketch()
    duration = metrics.run_duration(records)
    assert duration == pytest.approx(10.5)  # record 3 ends at 1.5 + 9.0
    m = metrics.compute(records, itl, duration, BenchSLA(ttft_s=0.25, tpot_s=0.2))
    assert (m.requests_total, m.requests_ok, m.requests_failed) == (4, 3, 1)
    assert m.errors == {"timeout": 1}
    assert m.output_tokens == 43
    assert m.tokens_per_s == pytest.approx(43 / 10.5)
    assert m.requests_per_s == pytest.approx(3 / 10.5)
    assert m.ttft.p50 == pytest.approx(0.2)
    assert m.ttft.mean == pytest.approx(0.2)
    assert m.tpot.p50 == pytest.approx(0.1)
    assert m.tpot.max == pytest.approx(0.3)
    assert m.e2e.p90 == pytest.approx(2.2 + 0.8 * 1.1)
    # goodput: records 0 and 1 meet TTFT<=0.25 and TPOT<=0.2; record 2 fails TTFT and TPOT
    assert m.goodput_requests_per_s == pytest.approx(2 / 10.5)
    assert m.goodput_fraction == pytest.approx(0.5)


def test_itl_sketch_relative_accuracy_and_exact_merge() -> None:
    rng = random.Random(1)
    values = [rng.lognormvariate(math.log(0.02), 0.6) for _ in range(20_000)] + [0.0] * 100
    whole = metrics.ITLSketch()
    whole.add_many(values)
    exact = sorted(values)
    for q in (50, 90, 99, 99.9):
        want = percentile_linear(exact, q)
        got = whole.quantile(q)
        assert got is not None
        assert abs(got - want) <= 0.011 * want  # bucket width plus rank rounding
    a, b = metrics.ITLSketch(), metrics.ITLSketch()
    a.add_many(values[::2])
    b.add_many(values[1::2])
    a.merge(b)
    assert a.to_model() == whole.to_model().model_copy(update={"sum": a.total})
    assert a.total == pytest.approx(whole.total)
    assert metrics.ITLSketch.from_model(whole.to_model()).quantile(99) == whole.quantile(99)


def test_spread_and_replica_efficiency() -> None:
    s = metrics.spread([100.0, 104.0, 96.0])
    assert s.mean == pytest.approx(100.0)
    assert s.rel_range == pytest.approx(0.08)
    assert s.cv == pytest.approx(math.sqrt(32 / 3) / 100)
    pts = metrics.replica_points({1: 100.0, 2: 190.0, 4: 372.0})
    assert [p.scaling_efficiency for p in pts] == pytest.approx([1.0, 0.95, 0.93])
    assert pts[2].tokens_per_s_per_replica == pytest.approx(93.0)
    # AMD MLPerf v6.0 Llama2-70B Server, per node: 1,016,380 / (11 * 100,282) = 92.1 %
    eff = metrics.replica_points({1: 100_282.0, 11: 1_016_380.0})[1].scaling_efficiency
    assert eff == pytest.approx(0.921, abs=5e-4)
    assert metrics.replica_points({2: 10.0})[0].scaling_efficiency is None


def test_summarize_empty_is_count_zero() -> None:
    p = metrics.summarize([])
    assert p.count == 0 and p.p99 is None

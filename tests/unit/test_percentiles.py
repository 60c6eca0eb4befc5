"""Both percentile definitions pinned on inputs small enough to check by hand.

"p99" is a verdict in one place and a figure in another (tokenscale.percentiles says which uses
which). If either definition drifts, verdicts stop agreeing with MLPerf LoadGen or figures stop
agreeing with numpy / ``vllm bench serve``, silently; these values are what each tool gives.
"""

from __future__ import annotations

import math

import pytest

from tokenscale.percentiles import percentile_linear, percentile_nearest_rank
from tokenscale.sim.summary import RunSummary

FOUR = [1.0, 2.0, 3.0, 4.0]
HUNDRED = [float(i) for i in range(1, 101)]


def test_linear_interpolates_like_numpy() -> None:
    # numpy.percentile(FOUR, q) with the default method="linear": rank (n - 1) * q / 100.
    assert percentile_linear(FOUR, 50) == 2.5
    assert percentile_linear(FOUR, 0) == 1.0
    assert percentile_linear(FOUR, 100) == 4.0
    assert percentile_linear(FOUR, 90) == pytest.approx(3.7)  # rank 2.7
    assert percentile_linear([5.0], 99) == 5.0
    assert percentile_linear(HUNDRED, 99) == pytest.approx(99.01)
    assert percentile_linear(HUNDRED, 99.9) == pytest.approx(99.901)


def test_nearest_rank_indexes_like_loadgen() -> None:
    # LoadGen: sorted[floor(n * p)], p a fraction; always an observed value.
    assert percentile_nearest_rank(FOUR, 50) == 3.0  # index 2: LoadGen's median of 4 is the upper
    assert percentile_nearest_rank(FOUR, 0) == 1.0
    assert percentile_nearest_rank(FOUR, 100) == 4.0  # clamped to the last sample
    assert percentile_nearest_rank(FOUR, 90) == 4.0  # index floor(3.6) = 3
    assert percentile_nearest_rank(FOUR, 70) == 3.0  # index floor(2.8) = 2 = ceil(2.8) - 1
    assert percentile_nearest_rank([5.0], 99) == 5.0
    assert percentile_nearest_rank(HUNDRED, 99) == 100.0  # n * p = 99 exactly: the next one up
    assert percentile_nearest_rank(HUNDRED, 99.9) == 100.0
    assert percentile_nearest_rank(HUNDRED[:99], 99) == 99.0  # floor(98.01) = 98


def test_one_slow_request_in_a_hundred_separates_the_definitions() -> None:
    values = sorted([0.1] * 99 + [10.0])
    assert percentile_nearest_rank(values, 99) == 10.0  # a p99 limit of 2 s fails, as in LoadGen
    assert percentile_linear(values, 99) == pytest.approx(0.1 + 0.01 * 9.9)  # would pass


@pytest.mark.parametrize("fn", [percentile_linear, percentile_nearest_rank])
def test_no_values_is_an_error_not_a_number(fn: object) -> None:
    with pytest.raises(ValueError, match="no values"):
        fn([], 99)  # type: ignore[operator]


def test_sim_summaries_use_loadgen_nearest_rank_and_errors_never_meet() -> None:
    # The virtual-time driver and the HTTP client share RunSummary, so their p99s compare.
    s = RunSummary.of(
        requests=101,
        completed=100,
        output_tokens=1000,
        duration_s=10.0,
        tokens_per_s=100.0,
        ttfts=[0.1] * 99 + [10.0],
        tpots=HUNDRED,
        errors=1,
        issue_lags=[0.0, 0.5],
    )
    assert (s.ttft_p99_s, s.tpot_p99_s, s.tpot_p50_s, s.issue_lag_p99_s) == (10.0, 100.0, 51.0, 0.5)
    assert not s.meets(20.0, 200.0)  # one error: never MLPerf VALID
    ok = RunSummary.of(
        requests=1,
        completed=1,
        output_tokens=5,
        duration_s=1.0,
        tokens_per_s=5.0,
        ttfts=[0.2],
        tpots=[0.01],
    )
    assert ok.meets(2.0, 0.2) and not ok.meets(0.1, 0.2) and ok.issue_lag_p99_s == 0.0
    empty = RunSummary.of(
        requests=1,
        completed=0,
        output_tokens=0,
        duration_s=0.0,
        tokens_per_s=0.0,
        ttfts=[],
        tpots=[],
    )
    assert math.isnan(empty.ttft_p99_s) and not empty.meets(2.0, 0.2)

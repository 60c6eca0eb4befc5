"""One MLPerf-style summary of a simulated run, whether driven in virtual time or over HTTP.

Why one type: the virtual-time driver (:mod:`.replay`) and the HTTP load generator
(:mod:`.loadgen`) are compared figure by figure (``benchmarks/sim_calibration.py``), so their
p99s must be the same statistic with the same verdict. Percentiles are MLPerf LoadGen's nearest
rank (:func:`tokenscale.percentiles.percentile_nearest_rank`), because :meth:`RunSummary.meets`
is an MLPerf Server verdict. ``tokenscale bench``'s own result model is ``bench.models``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tokenscale.percentiles import percentile_nearest_rank


def nearest_rank_or_nan(values: Iterable[float], q: float) -> float:
    """LoadGen's percentile of unsorted ``values``; NaN when there are none (a run in which
    nothing completed has no latency, which the verdict then fails)."""
    ordered = sorted(values)
    return percentile_nearest_rank(ordered, q) if ordered else math.nan


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Figures of one run in simulated seconds; tokens/s as LoadGen's Server formula."""

    requests: int
    completed: int
    output_tokens: int
    duration_s: float
    tokens_per_s: float
    ttft_p99_s: float
    tpot_p99_s: float
    ttft_p50_s: float
    tpot_p50_s: float
    errors: int = 0
    preemptions: int = 0
    """Engine preemptions (virtual-time driver only; the HTTP client cannot see them)."""
    issue_lag_p99_s: float = 0.0
    """Actual minus planned send time (HTTP client only; virtual time never lags)."""

    def meets(self, ttft_s: float, tpot_s: float) -> bool:
        """No errors and both p99 limits hold (MLPerf Server VALID, ignoring duration and early
        stopping). NaN percentiles (nothing completed) never meet a limit."""
        return self.errors == 0 and self.ttft_p99_s <= ttft_s and self.tpot_p99_s <= tpot_s

    @classmethod
    def of(
        cls,
        *,
        requests: int,
        completed: int,
        output_tokens: int,
        duration_s: float,
        tokens_per_s: float,
        ttfts: Iterable[float],
        tpots: Iterable[float],
        errors: int = 0,
        preemptions: int = 0,
        issue_lags: Iterable[float] | None = None,
    ) -> RunSummary:
        """Summarise per-request TTFTs and TPOTs (seconds) with LoadGen's percentiles."""
        ttft, tpot = sorted(ttfts), sorted(tpots)
        return cls(
            requests=requests,
            completed=completed,
            output_tokens=output_tokens,
            duration_s=duration_s,
            tokens_per_s=tokens_per_s,
            ttft_p99_s=nearest_rank_or_nan(ttft, 99),
            tpot_p99_s=nearest_rank_or_nan(tpot, 99),
            ttft_p50_s=nearest_rank_or_nan(ttft, 50),
            tpot_p50_s=nearest_rank_or_nan(tpot, 50),
            errors=errors,
            preemptions=preemptions,
            issue_lag_p99_s=0.0 if issue_lags is None else nearest_rank_or_nan(issue_lags, 99),
        )

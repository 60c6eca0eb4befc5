"""The highest request rate whose Server run meets the SLA, by bisection (shared by the
simulator calibration and the P/D comparison, so both search the same way).

MLPerf's Server result is the highest QPS that stays valid; between a valid ``lo`` and an
invalid ``hi`` the run's validity is monotone enough in practice that bisection finds it in a
handful of simulated runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenscale.sim.summary import RunSummary


def highest_valid_qps(
    run: Callable[[float], RunSummary],
    lo: float,
    hi: float,
    iters: int,
    valid: Callable[[RunSummary], bool],
    label: str = "",
) -> tuple[tuple[float, RunSummary] | None, list[dict[str, Any]]]:
    """Bisect QPS in (lo, hi] for ``iters`` runs; the best valid (qps, run) and every trial."""
    best: tuple[float, RunSummary] | None = None
    trials: list[dict[str, Any]] = []
    for _ in range(iters):
        qps = (lo + hi) / 2
        stats = run(qps)
        ok = valid(stats)
        trials.append(
            {
                "qps": round(qps, 2),
                "tokens_per_s": round(stats.tokens_per_s),
                "ttft_p99_s": round(stats.ttft_p99_s, 3),
                "tpot_p99_s": round(stats.tpot_p99_s, 4),
                "valid": ok,
            }
        )
        print(
            f"  {label:10} qps={qps:7.2f} tok/s={stats.tokens_per_s:8.0f} "
            f"p99 ttft={stats.ttft_p99_s:7.3f} tpot={stats.tpot_p99_s:6.3f} "
            f"{'VALID' if ok else 'invalid'}",
            flush=True,
        )
        if ok:
            lo, best = qps, (qps, stats)
        else:
            hi = qps
    return best, trials

"""Drive simulated engines in virtual time, without HTTP or wall-clock sleeps.

Why: the unit tests and the calibration search need thousands of simulated seconds in well under
a second of CPU. This driver replays an arrival list against N engines with MLPerf-harness-like
dispatch (round robin, or shortest queue), steps each engine up to every arrival, and drains.
Results are MLPerf-style: p99 TTFT / p99 TPOT over requests, tokens/s = output tokens / time of
the last completion (LoadGen's ``result_completed_tokens_per_second``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import Engine, Seq
from .workload import Request


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (LoadGen sorts latencies and indexes; no interpolation)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True, slots=True)
class RunStats:
    """Summary of one run, simulated seconds."""

    requests: int
    completed: int
    output_tokens: int
    duration_s: float
    tokens_per_s: float
    ttft_p99_s: float
    tpot_p99_s: float
    ttft_p50_s: float
    tpot_p50_s: float
    preemptions: int

    def meets(self, ttft_s: float, tpot_s: float) -> bool:
        """Both p99 limits hold (MLPerf Server VALID, ignoring duration/early stopping)."""
        return self.ttft_p99_s <= ttft_s and self.tpot_p99_s <= tpot_s


def _advance(engine: Engine, until: float) -> None:
    while engine.has_work() and engine.clock < until:
        engine.step(engine.clock)


def replay(
    engines: Sequence[Engine], requests: Iterable[Request], dispatch: str = "round_robin"
) -> list[Seq]:
    """Submit ``requests`` (ignore_eos, exact output lengths) and run until all finish."""
    seqs: list[Seq] = []
    for i, req in enumerate(requests):
        for engine in engines:
            _advance(engine, req.at)
        if dispatch == "round_robin":
            target = engines[i % len(engines)]
        elif dispatch == "shortest_queue":
            target = min(engines, key=lambda e: len(e.running) + len(e.waiting))
        else:
            raise ValueError(f"unknown dispatch {dispatch!r}")
        seqs.append(target.submit(req.prompt_tokens, req.output_tokens, req.at, ignore_eos=True))
    for engine in engines:
        _advance(engine, math.inf)
    return seqs


def summarise(seqs: Sequence[Seq], start: float = 0.0) -> RunStats:
    """MLPerf-style figures over finished sequences."""
    done = [s for s in seqs if s.done and s.first_token_at >= 0]
    ttft = [s.first_token_at - s.arrival for s in done]
    tpot = [(s.finished_at - s.first_token_at) / (s.generated - 1) for s in done if s.generated > 1]
    tokens = sum(s.generated for s in done)
    end = max((s.finished_at for s in done), default=start)
    duration = max(end - start, 1e-9)
    return RunStats(
        requests=len(seqs),
        completed=len(done),
        output_tokens=tokens,
        duration_s=duration,
        tokens_per_s=tokens / duration,
        ttft_p99_s=percentile(ttft, 99),
        tpot_p99_s=percentile(tpot, 99),
        ttft_p50_s=percentile(ttft, 50),
        tpot_p50_s=percentile(tpot, 50),
        preemptions=sum(s.preemptions for s in seqs),
    )

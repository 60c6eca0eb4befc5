"""Drive simulated engines in virtual time, without HTTP or wall-clock sleeps.

Why: the unit tests and the calibration search need thousands of simulated seconds in well under
a second of CPU. This driver replays an arrival list against N engines with MLPerf-harness-like
dispatch (round robin, or shortest queue), steps each engine up to every arrival, and drains.
Results are MLPerf-style (:class:`~.summary.RunSummary`): p99 TTFT / p99 TPOT over requests by
LoadGen's nearest rank, tokens/s = output tokens / time of the last completion (LoadGen's
``result_completed_tokens_per_second``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .model import Engine, Seq
from .summary import RunSummary
from .workload import Request


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


def summarise(seqs: Sequence[Seq], start: float = 0.0) -> RunSummary:
    """MLPerf-style figures over finished sequences."""
    done = [s for s in seqs if s.done and s.first_token_at >= 0]
    tokens = sum(s.generated for s in done)
    end = max((s.finished_at for s in done), default=start)
    duration = max(end - start, 1e-9)
    return RunSummary.of(
        requests=len(seqs),
        completed=len(done),
        output_tokens=tokens,
        duration_s=duration,
        tokens_per_s=tokens / duration,
        ttfts=[s.first_token_at - s.arrival for s in done],
        tpots=[
            (s.finished_at - s.first_token_at) / (s.generated - 1) for s in done if s.generated > 1
        ],
        preemptions=sum(s.preemptions for s in seqs),
    )

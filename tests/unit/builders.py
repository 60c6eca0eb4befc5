"""Bench results built from seeded per-request records, for tests that need a realistic one.

Shared by the merge test and the benchmark controller's tests; a module of its own so that no
test module imports another's tests.
"""

from __future__ import annotations

import random

from tokenscale.bench import metrics, scenarios
from tokenscale.bench.models import BenchConfig, BenchResult, RequestRecord, Thresholds
from tokenscale.bench.runner import RunOutput


def make_records(n: int, seed: int) -> list[RequestRecord]:
    """``n`` seeded Poisson-timed records with lognormal TTFTs and about 2 % timeouts."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(40.0)
        ttft = rng.lognormvariate(-2.0, 0.5)
        tokens = rng.randint(1, 300)
        e2e = ttft + rng.uniform(0.005, 0.05) * max(0, tokens - 1)
        err = "timeout" if rng.random() < 0.02 else None
        out.append(
            RequestRecord(
                i=i,
                planned_s=t,
                sent_s=t + rng.uniform(0, 0.002),
                ttft_s=ttft,
                e2e_s=e2e,
                input_tokens=100,
                output_tokens=tokens,
                from_usage=True,
                chunks=tokens,
                error=err,
            )
        )
    return out


def config(shards: int = 1, index: int = 0) -> BenchConfig:
    """A server-scenario config for shard ``index`` of ``shards``."""
    return BenchConfig(
        url="http://127.0.0.1:1",
        model="m",
        api="completions",
        scenario="server",
        qps=40.0,
        dataset="synthetic",
        ignore_eos=True,
        thresholds=Thresholds(),
        seed=0,
        timeout_s=10.0,
        shard_count=shards,
        shard_index=index,
        sla=None,
    )


def as_result(
    recs: list[RequestRecord], itl_values: list[float], start: float, shards: int, k: int
) -> BenchResult:
    """The result shard ``k`` of ``shards`` reports for ``recs`` (client figures are fixed)."""
    itl = metrics.ITLSketch()
    itl.add_many(itl_values)
    out = RunOutput(
        started_at_unix=start,
        records=recs,
        itl=itl,
        cpu_seconds=1.0,
        wall_seconds=max(r.sent_s + (r.e2e_s or 0) for r in recs),
        max_in_flight=5,
        mean_in_flight=2.0,
        connections_opened=5,
        open_loop=True,
    )
    return scenarios.assemble(config(shards, k), [(out, None)])

"""Shards of an Indexed Job must merge into exactly the result one big client would report.

Records are split across shards with different start clocks; the merged percentiles, counts and
throughput must equal those computed over the union in one piece.
"""

from __future__ import annotations

import random

import pytest

from tokenscale.bench import metrics, scenarios
from tokenscale.bench.models import BenchConfig, RequestRecord, Thresholds
from tokenscale.bench.runner import RunOutput


def make_records(n: int, seed: int) -> list[RequestRecord]:
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
):  # type: ignore[no-untyped-def]
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


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_merged_shards_equal_single_run(shards: int) -> None:
    allrecs = make_records(3000, seed=11)
    rng = random.Random(5)
    itl_all = [rng.uniform(0.001, 0.08) for _ in range(20_000)]
    single = as_result(allrecs, itl_all, 1_000.0, 1, 0)
    # Shard k owns records k, k+S, ...; each shard's clock starts 0.25 s * k later, so its
    # offsets are shifted back by that much; merge must put them on one clock again.
    parts = []
    for k in range(shards):
        shift = 0.25 * k
        mine = [
            r.model_copy(
                update={"i": j, "planned_s": r.planned_s - shift, "sent_s": r.sent_s - shift}
            )
            for j, r in enumerate(allrecs[k::shards])
        ]
        parts.append(as_result(mine, itl_all[k::shards], 1_000.0 + shift, shards, k))
    merged = scenarios.merge(parts)
    a, b = single.metrics, merged.metrics
    for fig in ("ttft", "tpot", "e2e", "itl"):
        pa, pb = getattr(a, fig), getattr(b, fig)
        assert pb.count == pa.count
        for q in ("p50", "p90", "p95", "p99", "p99_9", "min", "max"):
            assert getattr(pb, q) == pytest.approx(getattr(pa, q), rel=1e-12, abs=1e-12), (fig, q)
    assert (b.requests_total, b.requests_ok, b.errors) == (
        a.requests_total,
        a.requests_ok,
        a.errors,
    )
    assert b.output_tokens == a.output_tokens
    assert b.duration_s == pytest.approx(a.duration_s, rel=1e-9)
    assert b.tokens_per_s == pytest.approx(a.tokens_per_s, rel=1e-9)
    assert merged.shards_merged == shards and merged.config.shard_count == shards
    assert merged.self_check.cpu_seconds == pytest.approx(shards * 1.0)
    # a round trip through JSON (how shards really travel) changes nothing
    again = scenarios.merge([type(p).model_validate_json(p.model_dump_json()) for p in parts])
    assert again.metrics == merged.metrics

"""Shards of an Indexed Job must merge into exactly the result one big client would report.

Records are split across shards with different start clocks; the merged percentiles, counts and
throughput must equal those computed over the union in one piece.
"""

from __future__ import annotations

import random

import pytest

from tests.unit.builders import as_result, make_records
from tokenscale.bench import scenarios


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

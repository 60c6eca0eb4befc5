"""Poisson arrivals must have the statistics MLPerf's Server scenario assumes, reproducibly.

Exponential inter-arrivals at rate λ have mean 1/λ and variance 1/λ²; the same seed must give
the same schedule (a repeat re-offers the identical load) and shards get distinct streams.
"""

from __future__ import annotations

import itertools
import statistics

import pytest

from tokenscale.bench import arrivals, datasets


def test_poisson_interarrival_mean_and_variance() -> None:
    qps = 50.0
    t = arrivals.poisson(40_000, qps, seed=42)
    gaps = [t[0], *(b - a for a, b in itertools.pairwise(t))]
    assert len(t) == 40_000
    assert statistics.fmean(gaps) == pytest.approx(1 / qps, rel=0.02)
    assert statistics.pvariance(gaps) == pytest.approx(1 / qps**2, rel=0.05)
    # coefficient of variation of an exponential is 1
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.03)
    assert all(g > 0 for g in gaps)


def test_poisson_counts_per_second_are_poisson() -> None:
    t = arrivals.poisson(None, 20.0, seed=7, duration_s=2000.0)
    counts = [0] * 2000
    for x in t:
        counts[min(1999, int(x))] += 1
    assert statistics.fmean(counts) == pytest.approx(20.0, rel=0.02)
    assert statistics.pvariance(counts) == pytest.approx(20.0, rel=0.1)  # index of dispersion 1
    assert max(t) <= 2000.0


def test_seeded_and_sharded() -> None:
    assert arrivals.poisson(100, 5.0, seed=3) == arrivals.poisson(100, 5.0, seed=3)
    assert arrivals.poisson(100, 5.0, seed=3) != arrivals.poisson(100, 5.0, seed=4)
    assert arrivals.shard_seed(3, 0) == 3
    assert arrivals.shard_seed(3, 1) != arrivals.shard_seed(3, 2)
    assert arrivals.offline(3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        arrivals.poisson(10, 0.0, seed=1)


def test_openorca_shape_matches_published_output_mean() -> None:
    inp, out = datasets.preset("openorca-llama2-70b")
    assert out.expected() == pytest.approx(294.45, abs=0.01)
    assert out.edges is not None and inp.edges is not None
    assert out.edges[0] == 3 and out.edges[-1] == 1024 and inp.edges[-1] == 1024
    import random

    rng = random.Random(0)
    draws = [out.sample(rng) for _ in range(50_000)]
    assert statistics.fmean(draws) == pytest.approx(294.45, rel=0.02)
    assert min(draws) >= 3 and max(draws) < 1024


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("128", "fixed"),
        ("fixed:64", "fixed"),
        ("uniform:10:20", "uniform"),
        ("normal:300:50", "normal"),
        ("normal:300:50:1:1024", "normal"),
    ],
)
def test_length_dist_parse(text: str, kind: str) -> None:
    assert datasets.LengthDist.parse(text).kind == kind


def test_length_dist_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        datasets.LengthDist.parse("zipf:3")


def test_synthetic_and_jsonl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fixed = datasets.LengthDist(kind="fixed", value=5)
    prompts = datasets.synthetic(3, fixed, fixed, seed=1)
    assert [len((p.text or "").split()) for p in prompts] == [5, 5, 5]
    assert prompts == datasets.synthetic(3, fixed, fixed, seed=1)
    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"prompt": "hi", "max_tokens": 7}\n\n{"messages": [{"role": "user", "content": "yo"}]}\n'
    )
    rows = datasets.from_jsonl(f, 5, fixed, seed=0)
    assert [r.max_tokens for r in rows] == [7, 5, 7, 5, 7]
    body = datasets.encode(rows[1], api="completions", model="m", ignore_eos=True)
    assert (
        b'"prompt":"yo"' in body
        and b'"include_usage":true' in body
        and b'"ignore_eos":true' in body
    )
    chat = datasets.encode(rows[0], api="chat", model="m", ignore_eos=False)
    assert b'"messages":[{"role":"user","content":"hi"}]' in chat and b"ignore_eos" not in chat

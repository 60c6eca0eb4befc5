"""The engine model must degrade the way a vLLM engine does, in virtual time (no HTTP, no sleeps).

Why: the autoscaler is tuned against the simulator, so saturation, queueing and preemption are
the behaviours that matter. A simulator that only added fixed latency per token would let a bad
scaling policy look good.
"""

from __future__ import annotations

import statistics

import pytest

from tokenscale.sim import workload
from tokenscale.sim.model import Engine, RequestError, Seq
from tokenscale.sim.profiles import Profile, get_profile, load_profiles
from tokenscale.sim.replay import replay, summarise

PROFILE = get_profile("MI355X", "llama-2-70b")


def closed_loop(concurrency: int, duration: float = 60.0, **overrides: int) -> float:
    """Output tokens/s with ``concurrency`` clients that resubmit as soon as they finish."""
    engine = Engine(PROFILE, **overrides)
    for _ in range(concurrency):
        engine.submit(600, 300, 0.0, ignore_eos=True)
    tokens = 0
    while engine.clock < duration:
        result = engine.step(engine.clock)
        assert result is not None
        for seq in result.finished:
            tokens += seq.generated
            engine.submit(600, 300, result.end, ignore_eos=True)
    return tokens / engine.clock


def test_throughput_rises_then_saturates_with_concurrency() -> None:
    rates = {c: closed_loop(c, max_num_seqs=128) for c in (1, 8, 32, 128, 256, 512)}
    assert rates[8] > 4 * rates[1]
    assert rates[32] > 2 * rates[8]
    assert rates[128] > rates[32]
    # Past max_num_seqs extra clients only queue: no more throughput.
    assert rates[512] == pytest.approx(rates[128], rel=0.05)
    assert rates[256] == pytest.approx(rates[128], rel=0.05)


def test_ttft_explodes_past_saturation() -> None:
    def p99_ttft(qps: float) -> float:
        engine = Engine(PROFILE, max_num_seqs=128)
        return summarise(replay([engine], workload.poisson(qps, int(qps * 120), seed=3))).ttft_p99_s

    capacity_qps = closed_loop(512, max_num_seqs=128) / 296
    light, heavy = p99_ttft(0.5 * capacity_qps), p99_ttft(1.3 * capacity_qps)
    assert light < 0.5
    assert heavy > 20 * light
    assert heavy > 10.0


def test_preemption_when_kv_is_short() -> None:
    short = Engine(PROFILE, max_num_seqs=64, max_model_len=2048, kv_cache_tokens=8192)
    seqs = [short.submit(500, 1000, 0.0, ignore_eos=True) for _ in range(32)]
    while short.has_work():
        short.step(short.clock)
    assert short.metrics.num_preemptions > 0
    assert all(s.done and s.generated == 1000 for s in seqs)
    assert short.kv_used == 0
    assert short.metrics.generation_tokens == 32 * 1000

    roomy = Engine(PROFILE, max_num_seqs=64, max_model_len=2048)
    for _ in range(32):
        roomy.submit(500, 1000, 0.0, ignore_eos=True)
    while roomy.has_work():
        roomy.step(roomy.clock)
    assert roomy.metrics.num_preemptions == 0
    assert roomy.clock < short.clock  # recomputation costs time


def test_kv_usage_gauge_tracks_resident_tokens() -> None:
    engine = Engine(PROFILE, kv_cache_tokens=100_000)
    engine.submit(1000, 100, 0.0, ignore_eos=True)
    engine.step(0.0)
    running, waiting, usage = engine.gauges()
    assert (running, waiting) == (1, 0)
    assert usage == pytest.approx(1000 / 100_000)


def _trace(seed: int) -> list[tuple[int, float, float]]:
    engines = [Engine(PROFILE, seed=seed * 10 + i) for i in range(2)]
    seqs: list[Seq] = []
    for i, req in enumerate(workload.poisson(20, 400, seed=seed)):
        for engine in engines:
            while engine.has_work() and engine.clock < req.at:
                engine.step(engine.clock)
        seqs.append(engines[i % 2].submit(req.prompt_tokens, 1000, req.at))
    for engine in engines:
        while engine.has_work():
            engine.step(engine.clock)
    return [(s.generated, s.first_token_at, s.finished_at) for s in seqs]


def test_same_seed_same_results() -> None:
    assert _trace(7) == _trace(7)
    assert _trace(7) != _trace(8)


def test_output_length_rules() -> None:
    engine = Engine(PROFILE, seed=1)
    fixed = engine.submit(10, 77, 0.0, ignore_eos=True)
    natural = [engine.submit(10, 1000, 0.0) for _ in range(300)]
    capped = [engine.submit(10, 5, 0.0) for _ in range(50)]
    floored = [engine.submit(10, 1000, 0.0, min_tokens=900) for _ in range(20)]
    assert (fixed.output_tokens, fixed.finish_reason) == (77, "length")
    assert 200 < statistics.mean(s.output_tokens for s in natural) < 400
    assert "stop" in {s.finish_reason for s in natural}
    assert all(s.output_tokens <= 5 for s in capped)
    assert all(s.output_tokens >= 900 for s in floored)
    with pytest.raises(RequestError):
        engine.submit(4096, 10, 0.0)
    with pytest.raises(RequestError):
        engine.submit(4000, 200, 0.0)


def test_abort_frees_kv_and_counts() -> None:
    engine = Engine(PROFILE)
    seq = engine.submit(500, 100, 0.0, ignore_eos=True)
    engine.step(0.0)
    engine.step(engine.clock)
    engine.abort(seq, engine.clock)
    assert seq.done and engine.kv_used == 0 and not engine.has_work()
    assert engine.metrics.request_success["abort"] == 1


def test_openorca_like_lengths() -> None:
    reqs = list(workload.offline(50_000, seed=1))
    assert statistics.mean(r.output_tokens for r in reqs) == pytest.approx(294.45, rel=0.03)
    assert statistics.mean(r.prompt_tokens for r in reqs) == pytest.approx(600, rel=0.03)
    assert max(max(r.prompt_tokens, r.output_tokens) for r in reqs) <= 1023


def test_packaged_profiles_load_and_tp_scales() -> None:
    profiles = load_profiles()
    assert {(p.gpu, p.model) for p in profiles} >= {
        ("MI355X", "llama-2-70b"), ("MI325X", "llama-2-70b"), ("MI300X", "llama-2-70b")
    }  # fmt: skip
    tp2: Profile = PROFILE.scaled(2)
    assert tp2.kv_cache_tokens == 2 * PROFILE.kv_cache_tokens
    assert tp2.step_base_s < PROFILE.step_base_s

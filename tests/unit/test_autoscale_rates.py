"""Parsing real vLLM /metrics text and turning counters into rates.

Why: the autoscaler's input is only as good as this step. Counter resets (engine restarts), pods
that appear and disappear, and pods that have not answered yet are the classic ways a tokens/s
autoscaler reads zero load and scales a busy service down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenscale.autoscale.rates import (
    MetricsParseError,
    PodRates,
    PodScrape,
    RateTracker,
    aggregate,
    parse_metrics,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAMPLE = FIXTURES / "vllm-0.32-metrics-shared.txt"  # the shared reference sample, in-repo


def real_text() -> str:
    return SAMPLE.read_text()


def synthetic(gen: float, prompt: float = 0.0, running: float = 0, waiting: float = 0,
              kv: float = 0.0, engines: int = 1, finished: float = 0.0) -> str:  # fmt: skip
    """A minimal vLLM exposition with ``engines`` DP ranks sharing the totals equally."""
    lines = [
        "# TYPE vllm:generation_tokens_total counter",
        "# TYPE vllm:prompt_tokens_total counter",
        "# TYPE vllm:num_requests_running gauge",
        "# TYPE vllm:num_requests_waiting gauge",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        "# TYPE vllm:request_success_total counter",
    ]
    for e in range(engines):
        lbl = f'engine="{e}",model_name="m"'
        lines += [
            f"vllm:generation_tokens_total{{{lbl}}} {gen / engines}",
            f"vllm:prompt_tokens_total{{{lbl}}} {prompt / engines}",
            f"vllm:num_requests_running{{{lbl}}} {running / engines}",
            f"vllm:num_requests_waiting{{{lbl}}} {waiting / engines}",
            f"vllm:kv_cache_usage_perc{{{lbl}}} {kv}",
            f'vllm:request_success_total{{{lbl},finished_reason="length"}} {finished / engines}',
        ]
    return "\n".join(lines) + "\n"


def test_parse_real_vllm_sample() -> None:
    scrape = parse_metrics(real_text())
    assert scrape.generation_tokens == 31471.0
    assert scrape.prompt_tokens == 18117.0
    assert scrape.requests_running == 16.0
    assert scrape.requests_waiting == 16.0
    assert scrape.kv_cache_usage == pytest.approx(0.25396825396825395)
    assert scrape.requests_finished == 281.0
    assert scrape.engines == 1


def test_parse_our_own_capture() -> None:
    scrape = parse_metrics((FIXTURES / "vllm-metrics-under-load.txt").read_text())
    assert scrape.generation_tokens == 2633.0
    assert scrape.requests_finished == 32.0
    assert (scrape.requests_running, scrape.requests_waiting) == (16.0, 16.0)


def test_parse_sums_counters_over_engines_and_averages_kv() -> None:
    scrape = parse_metrics(synthetic(1000, 400, running=8, waiting=2, kv=0.5, engines=4))
    assert scrape.generation_tokens == pytest.approx(1000)
    assert scrape.requests_running == pytest.approx(8)
    assert scrape.kv_cache_usage == pytest.approx(0.5)
    assert scrape.engines == 4


@pytest.mark.parametrize("body", ["not prometheus {{{", "# TYPE x counter\nx_total 1\n", ""])
def test_parse_rejects_non_vllm(body: str) -> None:
    with pytest.raises(MetricsParseError):
        parse_metrics(body)


def scrape(gen: float, prompt: float = 0.0, running: float = 1, waiting: float = 0) -> PodScrape:
    return parse_metrics(synthetic(gen, prompt, running, waiting, finished=gen / 100))


def test_rates_from_deltas_first_scrape_is_warming() -> None:
    tracker = RateTracker()
    first = tracker.update(0.0, {"a": ("p", scrape(1000))})
    assert first[0].state == "warming" and first[0].generation_tps is None
    assert first[0].requests_running == 1
    second = tracker.update(5.0, {"a": ("p", scrape(6000, prompt=500))})
    assert second[0].state == "ok"
    assert second[0].generation_tps == pytest.approx(1000)
    assert second[0].prompt_tps == pytest.approx(100)
    assert second[0].finished_per_s == pytest.approx(10)


def test_counter_reset_takes_new_value_as_increase() -> None:
    """Engine restart: counters restart at 0, so the new value is the increase (like rate())."""
    tracker = RateTracker()
    tracker.update(0.0, {"a": ("p", scrape(50_000))})
    rates = tracker.update(10.0, {"a": ("p", scrape(2_000))})
    assert rates[0].counter_reset
    assert rates[0].generation_tps == pytest.approx(200)
    after = tracker.update(20.0, {"a": ("p", scrape(4_000))})
    assert not after[0].counter_reset
    assert after[0].generation_tps == pytest.approx(200)


def test_pods_come_and_go() -> None:
    tracker = RateTracker()
    tracker.update(0.0, {"a": ("p", scrape(0)), "b": ("p", scrape(0))})
    rates = tracker.update(5.0, {"a": ("p", scrape(500)), "c": ("p", scrape(10_000))})
    by_pod = {r.pod: r for r in rates}
    assert by_pod["a"].state == "ok"
    assert by_pod["c"].state == "warming"  # new pod: no rate, never a huge fake delta
    # b is forgotten: if it comes back its first scrape is warming again
    again = tracker.update(10.0, {"b": ("p", scrape(99_999))})
    assert again[0].state == "warming"


def test_starting_and_errors_are_missing_not_zero() -> None:
    tracker = RateTracker()
    tracker.update(0.0, {"a": ("p", scrape(0))})
    rates = tracker.update(5.0, {"a": ("p", scrape(5000)), "s": ("p", None), "e": ("p", "timeout")})
    signals = aggregate(rates, ["p", "q"])
    p = signals["p"]
    assert p.generation_tps == pytest.approx(1000)
    assert p.pods_reporting == 1
    assert p.pods_missing == 2
    assert p.scrape_errors == 1
    assert not p.complete
    assert signals["q"].pods_reporting == 0 and signals["q"].complete


def test_aggregate_sums_per_pool_and_means_kv() -> None:
    rates = [
        PodRates("a", "x", "ok", 100.0, 10.0, 0.0, 1.0, 4, 1, 0.2),
        PodRates("b", "x", "ok", 300.0, 30.0, 0.5, 3.0, 6, 0, 0.6),
    ]
    x = aggregate(rates, ["x"])["x"]
    assert x.generation_tps == 400 and x.prompt_tps == 40
    assert x.requests_running == 10 and x.requests_waiting == 1
    assert x.kv_cache_usage == pytest.approx(0.4)
    assert x.finished_per_s == 4

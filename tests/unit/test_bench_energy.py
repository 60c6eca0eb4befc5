"""Benchmark energy: joules from counter differences (resets included), tokens per joule, the
power plot in the HTML report, and an exporter that fails leaving the benchmark intact.

Why: the benchmark's tokens/J is a published number next to throughput; it must be the
exporter's counter over the measured window, and an exporter problem must say so, not crash.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.unit.test_bench_merge import as_result, make_records
from tokenscale.bench import report, scenarios
from tokenscale.bench.cli import with_energy
from tokenscale.bench.energy import EnergyRecorder, EnergyResult, summarise
from tokenscale.bench.models import BenchResult
from tokenscale.power import GpuReading


def _r(gpu: str, watts: float, uj: float, pod: str = "llm-0") -> GpuReading:
    return GpuReading("n0", gpu, pod, "ns", watts, uj)


def test_summarise_integrates_counter_differences_with_a_reset() -> None:
    samples = [
        (100.0, [_r("0", 300.0, 0.0), _r("1", 500.0, 1e9)]),
        (101.0, [_r("0", 700.0, 600e6), _r("1", 700.0, 1.7e9)]),
        (102.0, [_r("0", 700.0, 50e6), _r("1", 900.0, 2.5e9)]),  # GPU 0 reset: 50 J since
    ]
    e = summarise(samples, output_tokens=3300, errors=[])
    assert e.reason == "" and e.gpus == 2 and e.window_s == 2.0
    assert e.joules == pytest.approx(600 + 50 + 700 + 800)
    assert e.tokens_per_joule == pytest.approx(3300 / 2150, rel=1e-4)
    assert e.joules_per_token == pytest.approx(2150 / 3300, rel=1e-4)
    assert e.peak_watts_per_gpu == 900.0
    assert e.avg_watts_per_gpu == pytest.approx((400 + 700 + 800) / 3, abs=0.1)
    assert e.power_t_s == [0.0, 1.0, 2.0] and e.power_w_per_gpu == [400.0, 700.0, 800.0]


def test_summarise_says_why_when_unknown() -> None:
    assert "fewer than two" in summarise([(0.0, [_r("0", 1, 1)])], 10, []).reason
    assert "no exporter series" in summarise([(0.0, []), (1.0, [])], 10, []).reason
    err = summarise([(0.0, [_r("0", 1, 1)])] * 3, 10, ["http://x/metrics: ConnectError: no"])
    assert err.reason.startswith("exporter: http://x/metrics") and err.tokens_per_joule is None


def _exposition(readings: list[tuple[str, str, float, float]]) -> str:
    """(gpu_id, pod, watts, microjoules) per GPU in the exporter's text format."""
    power = ["# TYPE gpu_power_usage gauge"]
    energy = ["# TYPE gpu_energy_consumed gauge"]
    for gpu, pod, watts, uj in readings:
        labels = f'gpu_id="{gpu}",hostname="n0",namespace="ns",pod="{pod}"'
        power.append(f"gpu_power_usage{{{labels}}} {watts}")
        energy.append(f"gpu_energy_consumed{{{labels}}} {uj}")
    return "\n".join(power + energy) + "\n"


async def test_with_energy_attaches_figures_and_filters_pods() -> None:
    state = {"uj": 0.0}

    def handle(request: httpx.Request) -> httpx.Response:
        state["uj"] += 100e6  # 100 J per reading
        body = _exposition([("0", "llm-0", 650.0, state["uj"]), ("1", "other", 90.0, 5e12)])
        return httpx.Response(200, text=body)

    result = as_result(make_records(50, seed=2), [0.01] * 10, 1.7e9, 1, 0)

    async def bench() -> BenchResult:
        await asyncio.sleep(0.35)
        return result

    out = await with_energy(
        bench(), ["http://exp/metrics"], frozenset({"llm-0"}), 0.1, httpx.MockTransport(handle)
    )
    energy = out.energy
    assert energy is not None and energy.reason == ""
    readings = len(energy.power_t_s)
    assert readings >= 3
    assert energy.gpus == 1  # the other pod's GPU is not counted
    assert energy.joules == pytest.approx(100.0 * (readings - 1))
    assert energy.output_tokens == result.metrics.output_tokens
    html = report.render(out)
    assert "GPU power over time" in html and "<polyline" in html
    assert "output tokens per joule" in html


async def test_recorder_notes_garbage_and_down_exporters() -> None:
    answers = iter([httpx.Response(200, text="<html>oops</html>")])

    def handle(request: httpx.Request) -> httpx.Response:
        try:
            return next(answers)
        except StopIteration:
            raise httpx.ConnectError("refused") from None

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        recorder = EnergyRecorder(client, ["http://exp/metrics"])
        await recorder.sample()
        await recorder.sample()
    assert len(recorder.errors) == 2 and not recorder.samples
    assert "EnergyParseError" in recorder.errors[0] and "ConnectError" in recorder.errors[1]
    result = as_result(make_records(20, seed=3), [0.01] * 5, 1.7e9, 1, 0)
    energy = summarise(recorder.samples, 100, recorder.errors)
    html = report.render(result.model_copy(update={"energy": energy}))
    assert "Energy unknown: exporter: http://exp/metrics" in html


def _energy(joules: float, tokens: int, times: list[float], watts: list[float]) -> EnergyResult:
    return EnergyResult(
        gpus=2, window_s=times[-1], joules=joules, output_tokens=tokens,
        tokens_per_joule=tokens / joules, joules_per_token=joules / tokens,
        avg_watts_per_gpu=sum(watts) / len(watts), peak_watts_per_gpu=max(watts),
        power_t_s=times, power_w_per_gpu=watts,
    )  # fmt: skip


def _shard(k: int, start: float, energy: EnergyResult | None) -> BenchResult:
    result = as_result(make_records(20, seed=10 + k), [0.01] * 5, start, 2, k)
    return result.model_copy(update={"energy": energy})


def test_merge_keeps_energy_counting_shared_gpus_once() -> None:
    """Shards of one benchmark read the same GPUs: concurrent shards' joules are one measurement
    of those GPUs (adding them would double the joules), sequential shards' joules add; the
    tokens of every shard add, the power samples go on one clock in time order."""
    a = _energy(1000.0, 400, [0.0, 1.0, 2.0], [500.0, 700.0, 600.0])
    b = _energy(1100.0, 600, [0.0, 1.0, 2.0], [550.0, 800.0, 650.0])
    together = scenarios.merge([_shard(0, 1.7e9, a), _shard(1, 1.7e9 + 0.5, b)]).energy
    assert together is not None and together.reason == ""
    assert together.joules == 1100.0 and together.output_tokens == 1000
    assert together.tokens_per_joule == pytest.approx(1000 / 1100, rel=1e-4)
    assert together.window_s == 2.5 and together.peak_watts_per_gpu == 800.0
    assert together.power_t_s == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert together.power_w_per_gpu == [500.0, 550.0, 700.0, 800.0, 600.0, 650.0]
    assert together.avg_watts_per_gpu == pytest.approx(3800 / 6, abs=0.1)
    apart = scenarios.merge([_shard(1, 1.7e9 + 100, b), _shard(0, 1.7e9, a)]).energy
    assert apart is not None and apart.joules == 2100.0 and apart.output_tokens == 1000
    assert apart.window_s == 102.0 and apart.power_t_s[-1] == 102.0


def test_merge_says_which_shard_lacks_energy() -> None:
    a = _energy(1000.0, 400, [0.0, 1.0], [500.0, 700.0])
    missing = scenarios.merge([_shard(0, 1.7e9, a), _shard(1, 1.7e9, None)]).energy
    assert missing is not None and missing.joules is None and missing.output_tokens == 400
    assert missing.reason == "shard 1: no energy recorded"
    down = EnergyResult(output_tokens=300, reason="exporter: http://x/metrics: ConnectError")
    failed = scenarios.merge([_shard(0, 1.7e9, down), _shard(1, 1.7e9, a)]).energy
    assert failed is not None and failed.reason.startswith("shard 0: exporter: http://x")
    assert failed.tokens_per_joule is None
    assert scenarios.merge([_shard(0, 1.7e9, None), _shard(1, 1.7e9, None)]).energy is None

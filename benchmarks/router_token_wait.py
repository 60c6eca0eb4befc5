"""How long vllm-router's cache_aware waits for an engine's token IDs before routing blind.

Why: cache_aware asks an engine to render (or tokenize) every request before choosing; when
that answer is late the router gives up and routes without prefix information
(``vllm_router_prefix_routing_decisions_total{outcome="missing_tokens"}``). How long it waits
decides what an overloaded engine frontend costs every request (docs/routing.md).

Method: a stub worker on loopback (aiohttp) whose ``POST /tokenize`` answers after a set delay
(``/v1/chat/completions/render`` is absent, 404, as on the simulator, so the router falls back
to ``/tokenize``) and whose chat completions answer at once; two such workers behind one real
``vllm-router`` (cache_aware). Per delay, 16 concurrent chat requests with distinct system
prompts; recorded: their wall latencies and the router's decision counters.

    .venv/bin/python -m benchmarks.router_token_wait     # ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from tests.testbed import vllm_router

from benchmarks.routing import _free_ports, _router_decisions, _start_router, _stop, _wait_http

RESULT = Path(__file__).resolve().parent / "results" / "router-token-wait.json"


async def _tokenize(request: web.Request) -> web.Response:
    body = await request.json()
    await asyncio.sleep(request.app["delay"])
    tokens = [ord(ch) % 1000 for ch in json.dumps(body.get("messages"))]
    return web.json_response({"count": len(tokens), "max_model_len": 4096, "tokens": tokens})


async def _chat(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(
        {"id": "stub", "object": "chat.completion",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    )  # fmt: skip


async def _health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def _one(url: str, i: int) -> float:
    system = f"tenant {i} " * 200
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]
    body = {"model": "stub", "max_tokens": 1, "messages": messages}
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
    return time.perf_counter() - t0


async def measure(delay: float, clients: int, work: Path) -> dict[str, Any]:
    app = web.Application()
    app["delay"] = delay
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/health", _health)
    runner = web.AppRunner(app)
    await runner.setup()
    w1, w2, port, metrics_port = _free_ports(4)
    for p in (w1, w2):
        await web.TCPSite(runner, "127.0.0.1", p).start()
    loop = asyncio.get_running_loop()
    with (work / f"router-{delay}.log").open("wb") as log:
        urls = [f"http://127.0.0.1:{w1}", f"http://127.0.0.1:{w2}"]
        proc = _start_router(
            vllm_router.ensure(), "cache_aware", urls, (port, metrics_port), [], log
        )
        try:
            await loop.run_in_executor(None, _wait_http, f"http://127.0.0.1:{port}/readiness")
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                lat = await asyncio.gather(
                    *[loop.run_in_executor(pool, _one, url, i) for i in range(clients)]
                )
            decisions = _router_decisions(metrics_port)
        finally:
            _stop(proc)
            await runner.cleanup()
    ordered = sorted(lat)
    return {
        "tokenize_delay_s": delay,
        "requests": clients,
        "latency_s_min_p50_max": [
            round(ordered[0], 3),
            round(ordered[len(ordered) // 2], 3),
            round(ordered[-1], 3),
        ],
        "router_decisions": decisions,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", default="0.2,0.6,0.9,1.2,2.5")
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="router-token-wait-") as tmp:
        runs = [
            asyncio.run(measure(float(d), args.concurrent, Path(tmp)))
            for d in args.delays.split(",")
        ]
    doc = {
        "router": f"vllm-router {vllm_router.VERSION}, cache_aware, 2 stub workers",
        "runs": runs,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "command": "python -m benchmarks.router_token_wait " + " ".join(argv or []),
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

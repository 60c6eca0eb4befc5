"""The simulator's automatic prefix caching: what vLLM caches, how a hit shortens prefill, what
the KV budget evicts, and the counters under vLLM's own names."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tokenscale.sim.model import Engine
from tokenscale.sim.prefix_cache import PrefixCache, block_hashes
from tokenscale.sim.profiles import get_profile
from tokenscale.sim.server import Endpoint, EngineHost, SimClock

PROFILE = get_profile("MI355X", "llama-2-70b")
# A real vLLM 0.32 /metrics capture (the same families as ../shared/data's sample).
REAL = (Path(__file__).parents[1] / "fixtures" / "vllm-0.32-metrics-shared.txt").read_text()
SYSTEM = "You are a careful assistant. " * 280  # ~ 2,000 tokens of shared system prompt


def test_hashes_chain_and_skip_the_partial_block() -> None:
    a = block_hashes("x" * 64 * 3 + "tail", 16)
    assert len(a) == 3  # 4 chars/token, 16 tokens/block; the 4-char tail is no full block
    b = block_hashes("x" * 64 * 2 + "y" * 64, 16)
    assert a[:2] == b[:2] and a[2] != b[2]
    c = block_hashes("y" * 64 + "x" * 128, 16)
    assert c[1] != a[1]  # same block text after a different prefix: a different block


def test_lru_evicts_least_recently_used_and_counts_tokens() -> None:
    cache = PrefixCache(capacity_blocks=2, block_size=16)
    a, b, c = (block_hashes(ch * 64, 16) for ch in "abc")
    cache.insert(a)
    cache.insert(b)
    assert cache.lookup(a, 100) == 16  # touches a: b is now the oldest
    cache.insert(c)
    assert cache.lookup(b, 100) == 0 and cache.lookup(a, 100) == 16
    assert (cache.queries, cache.hits) == (300, 32)


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    cache = PrefixCache(capacity_blocks=8, block_size=16)
    hashes = block_hashes("z" * 128, 16)
    cache.insert(hashes)
    assert cache.lookup(hashes, 32) == 31


def _ttft(engine: Engine, text: str, at: float) -> float:
    tokens = len(text) // 4
    seq = engine.submit(tokens, 8, at, ignore_eos=True, block_hashes=engine.prompt_blocks(text))
    while not seq.done:
        engine.step(at)
    return seq.first_token_at - seq.arrival


def test_a_shared_system_prompt_hits_and_shortens_prefill() -> None:
    engine = Engine(PROFILE, seed=1)
    first = _ttft(engine, SYSTEM + "question one?", 0.0)
    second = _ttft(engine, SYSTEM + "question two, another user?", 10.0)
    m = engine.metrics
    assert m.prefix_cache_hits >= 0.95 * len(SYSTEM) // 4  # the system prompt's full blocks
    assert m.prefix_cache_queries == (len(SYSTEM) + 13) // 4 + (len(SYSTEM) + 27) // 4
    assert second < 0.5 * first, (first, second)

    off = Engine(PROFILE, seed=1, enable_prefix_caching=False)
    base_first = _ttft(off, SYSTEM + "question one?", 0.0)
    base_second = _ttft(off, SYSTEM + "question two, another user?", 10.0)
    assert base_second == pytest.approx(base_first, rel=0.05)
    assert off.metrics.prefix_cache_queries == 0


def test_the_kv_budget_evicts_old_prefixes() -> None:
    engine = Engine(PROFILE, seed=1, kv_cache_tokens=PROFILE.max_model_len)
    assert engine.prefix_cache is not None
    capacity_tokens = engine.prefix_cache.capacity_blocks * 16
    _ttft(engine, "A" * 4 * 2000, 0.0)
    t = 10.0
    for ch in "BCDEFG":  # enough other prompts to overflow the budget
        _ttft(engine, ch * 4 * 2000, t)
        t += 10.0
    assert capacity_tokens < 6 * 2000
    before = engine.metrics.prefix_cache_hits
    _ttft(engine, "A" * 4 * 2000, t)
    assert engine.metrics.prefix_cache_hits == before  # A was evicted


@pytest.fixture
async def client() -> AsyncIterator[TestClient[object, object]]:
    engine = Engine(PROFILE, seed=1)
    host = EngineHost(
        engine, SimClock(50.0), Endpoint("127.0.0.1", 0, "sim-70b", "llama-2-70b"), 0.01
    )
    task = asyncio.create_task(host.run())
    async with TestClient(TestServer(host.app, host="127.0.0.1")) as c:
        yield c
    task.cancel()


async def test_counters_have_vllms_names_and_count_over_http(
    client: TestClient[object, object],
) -> None:
    for question in ("one?", "two?"):
        resp = await client.post(
            "/v1/chat/completions",
            json={
                "model": "sim-70b",
                "max_tokens": 2,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": question},
                ],
            },
        )
        assert resp.status == 200
    text = await (await client.get("/metrics")).text()
    values = {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("vllm:prefix_cache")
    }
    assert values["vllm:prefix_cache_hits_total"] > 0.4 * values["vllm:prefix_cache_queries_total"]
    for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
        assert re.search(rf"^{re.escape(name)}\{{", REAL, re.M)  # the real sample's names
        help_line = f"# HELP {name.removesuffix('_total')}"
        ours = next(line for line in text.splitlines() if line.startswith(help_line))
        assert ours in REAL  # and help texts


async def test_tokenize_gives_shared_prefixes_shared_ids(
    client: TestClient[object, object],
) -> None:
    a = await (await client.post("/tokenize", json={"prompt": SYSTEM + "a?"})).json()
    b = await (await client.post("/tokenize", json={"prompt": SYSTEM + "b, longer?"})).json()
    n = len(SYSTEM) // 4
    assert a["tokens"][:n] == b["tokens"][:n] and a["tokens"] != b["tokens"]
    assert a["count"] == len(a["tokens"]) and a["max_model_len"] == PROFILE.max_model_len
    bad = await client.post("/tokenize", json={"nothing": 1})
    assert bad.status == 400

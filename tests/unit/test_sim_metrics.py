"""The simulator's /metrics must be indistinguishable, family by family, from a real vLLM's.

Why: the autoscaler and the benchmark job parse these families; if a name, type, label or bucket
edge drifted, tests against the simulator would pass while production against vLLM would break.
We diff our exposition against real vLLM 0.32 captures (the shared sample and our own capture).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tokenscale.sim.metrics import (
    CLAIMED_FAMILIES,
    EngineCollector,
    WeightedHistogram,
    build_1_2_5_buckets,
    exposition,
    new_registry,
)
from tokenscale.sim.model import Engine
from tokenscale.sim.profiles import get_profile

FIXTURES = Path(__file__).parent.parent / "fixtures"
REAL_SAMPLES = ["vllm-0.32-metrics-shared.txt", "vllm-metrics-under-load.txt"]


def _families(text: str) -> dict[str, tuple[str, list[Sample]]]:
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def _label_names(samples: list[Sample]) -> set[str]:
    return {k for s in samples for k in s.labels if k != "le"}


def _edges(samples: list[Sample]) -> list[str]:
    return [s.labels["le"] for s in samples if s.name.endswith("_bucket")]


def _suffixes(name: str, samples: list[Sample]) -> set[str]:
    return {s.name[len(name) :] for s in samples}


def _ours(max_model_len: int = 512) -> str:
    """A busy engine's exposition, with the fixture's max_model_len (token buckets depend on it)."""
    engine = Engine(get_profile("MI355X", "llama-2-70b"), max_model_len=max_model_len)
    for i in range(40):
        engine.submit(20 + i, 100, 0.0, ignore_eos=True)
    for _ in range(50):
        engine.step(engine.clock)
    registry = new_registry(EngineCollector(engine.metrics, engine, "tiny-llama"))
    return exposition(registry).decode()


@pytest.mark.parametrize("fixture", REAL_SAMPLES)
@pytest.mark.parametrize("family", CLAIMED_FAMILIES)
def test_family_matches_real_vllm(fixture: str, family: str) -> None:
    path = FIXTURES / fixture
    if not path.exists():
        pytest.skip(f"{fixture} not captured yet")
    real = _families(path.read_text())
    ours = _families(_ours())
    assert family in real, f"{family} missing from the real sample: fix CLAIMED_FAMILIES"
    assert family in ours
    real_type, real_samples = real[family]
    our_type, our_samples = ours[family]
    assert our_type == real_type
    assert _label_names(our_samples) == _label_names(real_samples)
    assert _suffixes(family, our_samples) == _suffixes(family, real_samples)
    assert _edges(our_samples) == _edges(real_samples)
    if family == "vllm:request_success":
        reasons = [s.labels["finished_reason"] for s in our_samples if s.name.endswith("_total")]
        real_reasons = [
            s.labels["finished_reason"] for s in real_samples if s.name.endswith("_total")
        ]
        assert reasons == real_reasons
    created = [s for s in ours.get(f"{family}_created", ("", []))[1]]
    real_created = [s for s in real.get(f"{family}_created", ("", []))[1]]
    assert bool(created) == bool(real_created), "_created series presence differs"


def test_token_buckets_follow_max_model_len() -> None:
    assert build_1_2_5_buckets(512) == (1, 2, 5, 10, 20, 50, 100, 200, 500)
    assert build_1_2_5_buckets(4096)[-1] == 2000


def test_weighted_histogram_equals_repeated_observations() -> None:
    edges = (0.1, 0.2, 0.5)
    one, many = WeightedHistogram(edges), WeightedHistogram(edges)
    one.observe(0.2, 5)
    for _ in range(5):
        many.observe(0.2)
    assert one.cumulative() == many.cumulative() == [
        ("0.1", 0.0), ("0.2", 5.0), ("0.5", 5.0), ("+Inf", 5.0)
    ]  # fmt: skip
    assert one.sum == pytest.approx(many.sum)


def test_counters_agree_with_the_model() -> None:
    engine = Engine(get_profile("MI355X", "llama-2-70b"))
    seqs = [engine.submit(100, 50, 0.0, ignore_eos=True) for _ in range(10)]
    while engine.has_work():
        engine.step(engine.clock)
    fams = _families(
        exposition(new_registry(EngineCollector(engine.metrics, engine, "m"))).decode()
    )
    value = {
        s.name: s.value for _, samples in fams.values() for s in samples if "le" not in s.labels
    }
    assert value["vllm:generation_tokens_total"] == sum(s.generated for s in seqs) == 500
    assert value["vllm:prompt_tokens_total"] == 1000
    assert value["vllm:time_to_first_token_seconds_count"] == 10
    assert value["vllm:num_requests_running"] == 0

"""The capacity planner's answers, with the arithmetic that justifies each expected number.

Why: the plan decides how many GPUs a replica gets and whether pods are created at all, so each
rule (weights, KV per token, usable HBM, TP validity, dtype support, partitions) is pinned by a
case whose docstring redoes the sum by hand. Constants (docs/capacity-planning.md): usable HBM
per device = HBM x 0.9 - min(4 GiB, 10 % of HBM), so MI300X = 168.8 GiB, MI355X = 255.2 GiB,
CPU profile = 12.8 GiB, MI300X CPX partition = 19.2 GiB; the automatic layout wants 4
full-length sequences and accepts 1.
"""

from __future__ import annotations

from typing import Any

import pytest

from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.api.status import PoolPlan
from tokenscale.plan import catalog, planner

GIB = 2**30


def service(model: dict[str, Any], pools: list[dict[str, Any]], **spec: Any) -> InferenceService:
    return InferenceService.model_validate(
        {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "svc"},
            "spec": {"model": model, "pools": pools, **spec},
        }
    )


def plan_one(
    model: dict[str, Any], pool: dict[str, Any], config: OperatorConfig | None = None, **spec: Any
) -> PoolPlan:
    svc = service(model, [{"name": "p", **pool}], **spec)
    plans = planner.plan_service(svc, config or OperatorConfig())
    assert len(plans) == 1
    return plans[0]


def hf(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": "m", "source": {"huggingFace": model_id}, **extra}


def test_usable_hbm_constants() -> None:
    """MI300X: 192 x 0.9 - min(4, 19.2) = 168.8; CPX partition: 24 x 0.9 - min(4, 2.4) = 19.2."""
    assert planner.Device("MI300X", 192, 8, False).usable_gib == pytest.approx(168.8)
    assert planner.Device("MI300X cpx", 24, 64, False).usable_gib == pytest.approx(19.2)
    assert planner.Device("CPU", 16, 1, True).usable_gib == pytest.approx(12.8)


def test_llama2_70b_fp8_mi300x_one_gpu() -> None:
    """As in AMD's MLPerf setup, one FP8 replica per MI300X.

    weights = 68.98e9 x 1 B = 64.24 GiB; KV/token (fp8) = 2 x 80 x 8 x 128 x 1 = 163,840 B, so
    a 4096-token sequence is 0.625 GiB; (168.8 - 64.24) / 0.625 = 167 sequences >= 4 at TP 1.
    """
    plan = plan_one(
        hf("meta-llama/Llama-2-70b-chat-hf", dtype="fp8", kvCacheDtype="fp8"), {"gpu": "MI300X"}
    )
    assert plan.fits
    assert (plan.tensor_parallel, plan.pipeline_parallel, plan.gpus_per_replica) == (1, 1, 1)
    assert plan.nodes_per_replica == 1
    assert plan.weights_gib == pytest.approx(64.24, abs=0.01)
    assert plan.hbm_gib == pytest.approx(168.8)
    assert plan.max_concurrent_sequences == 167
    assert plan.kv_cache_gib == pytest.approx(4 * 0.625)


def test_llama31_405b_bf16_mi300x_tp8_one_node() -> None:
    """weights = 405.85e9 x 2 B = 755.95 GiB. TP 4 gives 4 x 168.8 = 675.2 GiB (< weights);
    TP 8 gives 1350.4 GiB. KV/token at TP 8 = 2 x 126 x 8 x 128 x 2 = 516,096 B = 1.97 GiB per
    4096 tokens, (1350.4 - 755.95) / 1.97 = 301 sequences. 8 GPUs = one 8-GPU node.
    """
    plan = plan_one(hf("meta-llama/Llama-3.1-405B-Instruct"), {"gpu": "MI300X"})
    assert plan.fits
    assert (plan.tensor_parallel, plan.pipeline_parallel) == (8, 1)
    assert (plan.gpus_per_replica, plan.nodes_per_replica) == (8, 1)
    assert plan.weights_gib == pytest.approx(755.95, abs=0.01)
    assert plan.max_concurrent_sequences == 301


def test_llama31_405b_bf16_four_gpu_nodes_spans_two_nodes() -> None:
    """With 4 GPUs per node TP stays inside a node (TP 4: 675.2 GiB < 755.95 GiB), so the
    planner adds pipeline stages across nodes: TP 4 x PP 2 = 8 GPUs = 1350.4 GiB, 2 nodes.
    """
    config = OperatorConfig()
    config.gpus["MI300X"] = config.gpus["MI300X"].model_copy(update={"gpus_per_node": 4})
    plan = plan_one(hf("meta-llama/Llama-3.1-405B-Instruct"), {"gpu": "MI300X"}, config)
    assert plan.fits
    assert (plan.tensor_parallel, plan.pipeline_parallel) == (4, 2)
    assert (plan.gpus_per_replica, plan.nodes_per_replica) == (8, 2)
    assert "over 2 nodes" in plan.message


def test_mxfp4_emulated_on_mi300x_with_a_note_native_on_mi355x() -> None:
    """MXFP4 counts its block scales: 4 bits + one E8M0 byte per 32 = 0.53125 B/param.
    405.85e9 x 0.53125 B = 200.80 GiB. MI355X: fits one GPU (255.2 GiB usable; 54.4 GiB left,
    1.97 GiB per 4096-token sequence -> 27 sequences). MI300X (gfx942) plans it too (vLLM serves
    MXFP4 there without native FP4), and the plan says so."""
    svc = service(
        hf("amd/Llama-3.1-405B-Instruct-MXFP4-Preview", dtype="mxfp4"),
        [{"name": "old", "gpu": "MI300X"}, {"name": "new", "gpu": "MI355X"}],
    )
    old, new = planner.plan_service(svc, OperatorConfig())
    assert old.fits
    assert "no native FP4" in old.message
    assert new.fits and new.tensor_parallel == 1
    assert "native FP4" not in new.message
    assert new.weights_gib == pytest.approx(200.80, abs=0.01)
    assert new.max_concurrent_sequences == 27


def test_mxfp4_refused_on_cdna2() -> None:
    plan = plan_one(hf("openai/gpt-oss-120b", dtype="mxfp4"), {"gpu": "MI250X"})
    assert not plan.fits
    assert "mxfp4" in plan.message and "MI355X" in plan.message and "fix" in plan.message


def test_mi250x_is_64_gib_per_gcd_8_per_node() -> None:
    """One allocatable MI250X is one GCD (64 GiB); 4 OAMs x 2 GCDs = 8 per node."""
    gpu = OperatorConfig().gpus["MI250X"]
    assert (gpu.hbm_gib, gpu.gpus_per_node) == (64, 8)
    assert "dpx_nps2" not in OperatorConfig().gpus["MI300X"].partitions


@pytest.mark.parametrize(
    ("ref", "arch", "limit"),
    [
        ("meta-llama/Llama-2-70b-chat-hf", "llama-2-70b", 4096),
        ("openai/gpt-oss-120b", None, 131072),
    ],
)
def test_max_model_len_above_the_context_is_refused(ref: str, arch: str | None, limit: int) -> None:
    model = hf(ref, maxModelLen=limit * 2)
    if arch:
        model["architecture"] = arch
    plan = plan_one(model, {"gpu": "MI355X"})
    assert not plan.fits
    assert "context length" in plan.message and str(limit) in plan.message
    assert f"maxModelLen to at most {limit}" in plan.message
    assert plan_one(hf(ref, maxModelLen=limit), {"gpu": "MI355X"}).fits


@pytest.mark.parametrize(
    ("gpu", "model"),
    [
        ("MI250X", hf("meta-llama/Llama-3.1-8B", dtype="fp8")),
        ("MI210", hf("meta-llama/Llama-3.1-8B", kvCacheDtype="fp8")),
        ("MI300X", hf("meta-llama/Llama-3.1-8B", dtype="fp6")),
        ("CPU", hf("meta-llama/Llama-3.1-8B", dtype="fp8")),
    ],
)
def test_unsupported_precisions_rejected(gpu: str, model: dict[str, Any]) -> None:
    """FP8 needs CDNA3+, FP6/FP4 CDNA4; the CPU profile has no FP8 weights either."""
    plan = plan_one(model, {"gpu": gpu})
    assert not plan.fits
    assert "needs native" in plan.message and gpu in plan.message


def test_gpt_oss_120b_mi300x_explicit_tp8() -> None:
    """weights = 116.83e9 x 2 B = 217.61 GiB on 8 x 168.8 = 1350.4 GiB. KV/token =
    2 x 36 x 8 x 64 x 2 = 73,728 B = 0.5625 GiB per 8192 tokens -> 2013 sequences."""
    plan = plan_one(
        {**hf("openai/gpt-oss-120b"), "maxModelLen": 8192},
        {"gpu": "MI300X", "gpusPerReplica": 8},
        parallelism={"tensor": 8},
    )
    assert plan.fits
    assert (plan.tensor_parallel, plan.gpus_per_replica, plan.nodes_per_replica) == (8, 8, 1)
    assert plan.weights_gib == pytest.approx(217.61, abs=0.01)
    assert plan.max_concurrent_sequences == 2013


def test_tiny_model_on_cpu() -> None:
    """0.85e6 params x 4 B (fp32) = 3.4 MB; KV/token = 2 x 2 x 4 x 32 x 4 = 2048 B, 1 MiB per
    512-token sequence; 12.8 GiB usable -> 13,103 sequences. CPU pools: TP 1 and 0 GPUs."""
    plan = plan_one(
        {
            "name": "tiny-llama",
            "architecture": "tiny-llama",
            "source": {"pvc": {"claimName": "models", "path": "tiny-llama"}},
            "dtype": "fp32",
            "maxModelLen": 512,
        },
        {"gpu": "CPU"},
    )
    assert plan.fits
    assert (plan.tensor_parallel, plan.gpus_per_replica, plan.nodes_per_replica) == (1, 0, 1)
    assert plan.max_concurrent_sequences == 13103


def test_long_context_grows_tp() -> None:
    """Llama-3.1-70B bf16 at 131,072 tokens: a sequence is 2 x 80 x 8 x 128 x 2 B x 131072 =
    40 GiB. TP 1: 168.8 - 131.41 = 37.4 GiB free < 40 -> no room; TP 2: 337.6 - 131.41 =
    206.2 GiB -> 5 sequences >= 4."""
    plan = plan_one(hf("meta-llama/Llama-3.3-70B-Instruct", maxModelLen=131072), {"gpu": "MI300X"})
    assert plan.fits
    assert plan.tensor_parallel == 2
    assert plan.max_concurrent_sequences == 5


def test_shortfall_names_pool_and_gib() -> None:
    """405B bf16 pinned to 4 GPUs: needs 755.95 + 1.97 (one 4096-token sequence) = 757.9 GiB,
    has 4 x 168.8 = 675.2 GiB -> short by 82.7 GiB."""
    plan = plan_one(hf("meta-llama/Llama-3.1-405B"), {"gpu": "MI300X", "gpusPerReplica": 4})
    assert not plan.fits
    assert plan.tensor_parallel == 4 and plan.gpus_per_replica == 4
    assert "pool p (MI300X) does not fit" in plan.message
    assert "short by 82.7 GiB" in plan.message


@pytest.mark.parametrize(
    ("pool", "parallelism", "says"),
    [
        ({"gpu": "MI300X"}, {"tensor": 3}, "64 attention heads are not divisible by TP 3"),
        ({"gpu": "MI300X", "gpusPerReplica": 4}, {"tensor": 8}, "gpusPerReplica 4 != tensor 8"),
        ({"gpu": "MI300X"}, {"tensor": 8, "nodes": 3}, "cannot be split evenly over 3"),
        ({"gpu": "MI300X", "gpusPerReplica": 6}, {"pipeline": 4}, "not a multiple of pipeline 4"),
        ({"gpu": "CPU"}, {"tensor": 2}, "CPU pools run TP 1"),
        ({"gpu": "MI355X", "partition": "cpx_nps4"}, {}, "no partition profile cpx_nps4"),
    ],
)
def test_invalid_explicit_layouts(
    pool: dict[str, Any], parallelism: dict[str, Any], says: str
) -> None:
    plan = plan_one(hf("meta-llama/Llama-3.1-70B"), pool, parallelism=parallelism)
    assert not plan.fits
    assert says in plan.message
    assert plan.message.startswith("pool p")


def test_explicit_multinode_layout() -> None:
    """TP 8 x PP 2 on 2 nodes: 16 GPUs, 8 per pod."""
    plan = plan_one(
        hf("meta-llama/Llama-3.1-405B-Instruct", maxModelLen=16384),
        {"gpu": "MI300X"},
        parallelism={"tensor": 8, "pipeline": 2, "nodes": 2},
    )
    assert plan.fits
    assert (plan.gpus_per_replica, plan.nodes_per_replica) == (16, 2)


def test_partition_uses_partition_hbm() -> None:
    """Llama-3.1-8B bf16 on an MI300X CPX partition (24 GiB): 19.2 usable - 14.96 GiB weights
    (8.03e9 x 2 B) = 4.24 GiB; KV/token 2 x 32 x 8 x 128 x 2 = 131,072 B = 0.5 GiB per 4096
    tokens -> 8 sequences on one partition."""
    plan = plan_one(hf("meta-llama/Llama-3.1-8B"), {"gpu": "MI300X", "partition": "cpx_nps4"})
    assert plan.fits
    assert (plan.tensor_parallel, plan.gpus_per_replica) == (1, 1)
    assert plan.hbm_gib == pytest.approx(19.2)
    assert plan.max_concurrent_sequences == 8


def test_gpus_per_replica_beyond_a_node_becomes_pipeline() -> None:
    """16 GPUs requested on 8-GPU nodes: TP 8 inside each node, PP 2 across the two."""
    plan = plan_one(hf("meta-llama/Llama-3.1-405B"), {"gpu": "MI300X", "gpusPerReplica": 16})
    assert (plan.tensor_parallel, plan.pipeline_parallel, plan.nodes_per_replica) == (8, 2, 2)


def test_unknown_model() -> None:
    """Without catalogue entry or parametersBillions nothing can be sized; with parameters the
    weights are (10e9 x 2 B = 18.63 GiB) and the KV cache is reported as unsized."""
    plan = plan_one(hf("acme/mystery-model"), {"gpu": "MI300X"})
    assert not plan.fits and "parametersBillions" in plan.message
    plan = plan_one(hf("acme/mystery-model", parametersBillions=10), {"gpu": "MI300X"})
    assert plan.fits and plan.tensor_parallel == 1
    assert plan.weights_gib == pytest.approx(18.63, abs=0.01)
    assert "KV cache not sized" in plan.message


def test_unknown_gpu_in_config() -> None:
    config = OperatorConfig()
    del config.gpus["MI325X"]
    plan = plan_one(hf("meta-llama/Llama-3.1-8B"), {"gpu": "MI325X"}, config)
    assert not plan.fits and "not in the operator config" in plan.message


def test_parameters_override_catalogue() -> None:
    """parametersBillions 100 replaces Llama-2-70B's 68.98: 100e9 x 2 B = 186.26 GiB."""
    plan = plan_one(
        {**hf("meta-llama/Llama-2-70b-hf"), "parametersBillions": 100}, {"gpu": "MI300X"}
    )
    assert plan.weights_gib == pytest.approx(186.26, abs=0.01)
    assert plan.tensor_parallel == 2


@pytest.mark.parametrize(
    ("model", "key"),
    [
        (hf("amd/Llama-3.3-70B-Instruct-FP8-KV"), "llama-3.1-70b"),
        (hf("meta-llama/Llama-2-70b-chat-hf"), "llama-2-70b"),
        (hf("meta-llama/Llama-3.1-405B-Instruct"), "llama-3.1-405b"),
        (hf("openai/gpt-oss-120b"), "gpt-oss-120b"),
        (hf("mistralai/Mixtral-8x7B-Instruct-v0.1"), "mixtral-8x7b"),
        (hf("deepseek-ai/DeepSeek-R1"), "deepseek-r1"),
        ({**hf("x/y"), "name": "llama3.1-8b"}, "llama-3.1-8b"),
        ({**hf("meta-llama/Llama-2-70b-hf"), "architecture": "Llama-3.1-8B"}, "llama-3.1-8b"),
        ({**hf("meta-llama/Llama-2-70b-hf"), "architecture": "unknown-arch"}, None),
        (hf("TinyLlama/TinyLlama-1.1B-Chat-v1.0"), None),
    ],
)
def test_catalogue_resolution(model: dict[str, Any], key: str | None) -> None:
    svc = service(model, [{"name": "p", "gpu": "MI300X"}])
    arch = catalog.resolve(svc.spec.model)
    assert (arch.key if arch else None) == key


def test_kv_replication_and_mla() -> None:
    """Llama-2-70B at TP 16 holds 16 KV-head copies, not 8: 2 x 80 x 16 x 128 x 2 B. DeepSeek-R1
    (MLA) caches 576 values per layer: 2 x 61 x 1 x 288 x 2 B = 70,272 B at TP 1, x8 at TP 8."""
    llama = catalog.CATALOG["llama-2-70b"]
    assert llama.kv_bytes_per_token(2, 1) == 2 * 80 * 8 * 128 * 2
    assert llama.kv_bytes_per_token(2, 16) == 2 * 80 * 16 * 128 * 2
    r1 = catalog.CATALOG["deepseek-r1"]
    assert r1.kv_bytes_per_token(2, 1) == 70_272 == 61 * 576 * 2
    assert r1.kv_bytes_per_token(2, 8) == 8 * 70_272


def test_auto_tp_is_power_of_two_dividing_heads() -> None:
    """Mixtral has 32 heads and 8 KV heads: 1, 2, 4, 8 are valid on an 8-GPU node."""
    device = planner.Device("MI300X", 192, 8, False)
    assert planner.auto_tps(catalog.CATALOG["mixtral-8x7b"], device) == [1, 2, 4, 8]
    assert planner.tp_problem(catalog.CATALOG["tiny-llama"], 8) is not None
    assert planner.tp_problem(catalog.CATALOG["llama-2-70b"], 16) is None  # KV heads replicate


def test_plan_is_deterministic() -> None:
    svc = service(hf("meta-llama/Llama-3.1-70B"), [{"name": "a", "gpu": "MI355X"}])
    assert planner.plan_service(svc, OperatorConfig()) == planner.plan_service(
        svc, OperatorConfig()
    )


def test_pinned_nodes_prefer_pipeline_across_nodes() -> None:
    """nodes: 2 without tensor/pipeline: one pipeline stage per node, the smallest TP that
    holds 4 sequences: 405B bf16 needs > 675.2 GiB (TP 4 x PP 2 = 8 GPUs = 1350.4 GiB)."""
    plan = plan_one(hf("meta-llama/Llama-3.1-405B"), {"gpu": "MI300X"}, parallelism={"nodes": 2})
    assert plan.fits
    assert (plan.tensor_parallel, plan.pipeline_parallel, plan.nodes_per_replica) == (4, 2, 2)

"""A small built-in model catalogue: the shape facts the capacity planner needs.

Why built in: KV-cache sizing needs layers, KV heads and head dim, and tensor-parallel validity
needs the attention-head counts. Users rarely know these, and fetching ``config.json`` from the
hub would put I/O into a pure planner, so the common models ship here (numbers from each model's
published ``config.json``). Anything else can still be planned from ``parametersBillions``, with
the KV cache left unsized (the plan says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokenscale.api.service import ModelSpec


@dataclass(frozen=True, slots=True)
class ModelArch:
    """Shape of one model family member."""

    key: str
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    params_billions: float
    #: ``max_position_embeddings`` of the published config: vLLM refuses a longer maxModelLen.
    max_context: int
    moe: bool = False
    aliases: tuple[str, ...] = ()
    note: str = ""

    def kv_bytes_per_token(self, kv_dtype_bytes: float, tensor_parallel: int = 1) -> float:
        """Bytes of K and V one token occupies in one replica.

        ``2 x layers x kv_heads x head_dim x bytes``; when the tensor-parallel size exceeds the
        KV-head count vLLM replicates KV heads so every rank holds one, hence
        ``max(kv_heads, tp)`` heads in total.
        """
        heads = max(self.kv_heads, tensor_parallel)
        return 2 * self.layers * heads * self.head_dim * kv_dtype_bytes


CATALOG: dict[str, ModelArch] = {
    m.key: m
    for m in (
        ModelArch(
            "llama-2-70b", 80, 64, 8, 128, 68.98, 4096, aliases=("llama2-70b", "llama-2-70b")
        ),
        ModelArch(
            "llama-3.1-8b",
            32,
            32,
            8,
            128,
            8.03,
            131072,
            aliases=("llama-3.1-8b", "llama3.1-8b", "llama-3-8b", "llama3-8b"),
        ),
        ModelArch(
            "llama-3.1-70b",
            80,
            64,
            8,
            128,
            70.55,
            131072,
            aliases=(
                "llama-3.1-70b",
                "llama3.1-70b",
                "llama-3.3-70b",
                "llama3.3-70b",
                "llama-3-70b",
                "llama3-70b",
            ),
        ),
        ModelArch(
            "llama-3.1-405b",
            126,
            128,
            8,
            128,
            405.85,
            131072,
            aliases=("llama-3.1-405b", "llama3.1-405b"),
        ),
        ModelArch(
            "gpt-oss-120b",
            36,
            64,
            8,
            64,
            116.83,
            131072,
            moe=True,
            aliases=("gpt-oss-120b",),
            note="MoE (128 experts, 4 active); the published checkpoint is MXFP4 on the experts",
        ),
        ModelArch(
            "mixtral-8x7b",
            32,
            32,
            8,
            128,
            46.7,
            32768,
            moe=True,
            aliases=("mixtral-8x7b",),
        ),
        ModelArch(
            "deepseek-r1",
            61,
            128,
            1,
            288,
            671.0,
            163840,
            moe=True,
            aliases=("deepseek-r1", "deepseek-v3"),
            note=(
                "MLA: the cache holds one 576-wide latent per layer and token (kv_lora_rank 512 "
                "+ rope 64), modelled as kv_heads 1 x head_dim 288 so 2 x 288 = 576; vLLM keeps "
                "the latent on every TP rank, which max(kv_heads, tp) reproduces"
            ),
        ),
        ModelArch(
            "tiny-llama",
            2,
            4,
            4,
            32,
            0.00085,
            2048,
            aliases=("tiny-llama",),
            note="2-layer, hidden-128 random Llama of the test bed (tests/testbed/tiny_model.py)",
        ),
    )
}


def _normalise(text: str) -> str:
    return re.sub(r"[\s_]+", "-", text.strip().lower())


def _by_alias(text: str) -> ModelArch | None:
    """Longest alias contained in ``text`` wins (so llama-3.1-405b beats a shorter match)."""
    norm = _normalise(text)
    best: tuple[int, ModelArch] | None = None
    for arch in CATALOG.values():
        for alias in (arch.key, *arch.aliases):
            if alias in norm and (best is None or len(alias) > best[0]):
                best = (len(alias), arch)
    return best[1] if best else None


def lookup(key: str) -> ModelArch | None:
    """An exact key or alias (case- and separator-insensitive)."""
    norm = _normalise(key)
    for arch in CATALOG.values():
        if norm == arch.key or norm in arch.aliases:
            return arch
    return None


def model_reference(model: ModelSpec) -> str:
    """The string that names the weights: HF id, PVC path or S3 URI."""
    src = model.source
    if src.hugging_face is not None:
        return src.hugging_face
    if src.pvc is not None:
        return src.pvc.path
    return src.s3.uri if src.s3 is not None else ""


def resolve(model: ModelSpec) -> ModelArch | None:
    """Catalogue entry for a model: ``architecture`` if set, else inferred from name/source.

    An explicit but unknown ``architecture`` returns None rather than guessing from the name,
    because the user told us what it is.
    """
    if model.architecture:
        return lookup(model.architecture)
    return _by_alias(model.name) or _by_alias(model_reference(model))


def parameters_billions(model: ModelSpec, arch: ModelArch | None) -> float | None:
    """The user's ``parametersBillions`` overrides the catalogue."""
    if model.parameters_billions is not None:
        return model.parameters_billions
    return arch.params_billions if arch else None

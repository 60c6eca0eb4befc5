"""Capacity planner: how many GPUs one replica needs, and whether the model fits at all.

Pure arithmetic on the spec, the model catalogue and the operator's GPU catalogue, so an
impossible spec is explained (pool, GPU, shortfall in GiB) before any pod exists. The rules and
constants are documented in docs/capacity-planning.md; in short, per replica:

* weights   = parameters x bytes per dtype (spread evenly over TP x PP devices)
* KV/token  = 2 x layers x max(kv_heads, TP) x head_dim x KV bytes (KV heads are replicated
  when TP exceeds them)
* usable    = per device HBM x 0.90 - min(4 GiB, 10 % of HBM) (activations, graphs, RCCL)
* fits      = usable x devices - weights ≥ KV of one max-length sequence (vLLM refuses to start
  otherwise); the automatic choice aims for 4 such sequences and accepts 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from tokenscale.api.config import GPUSpec, OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService, InferenceServiceSpec, ModelSpec
from tokenscale.api.status import PoolPlan
from tokenscale.plan import catalog

GIB = float(2**30)
#: Fraction of device memory vLLM may use (vLLM's own default is 0.92; ROCm's guide says 0.9).
GPU_MEMORY_UTILIZATION = 0.90
#: Held back per device for activations, graph capture and collective buffers.
OVERHEAD_FRACTION = 0.10
OVERHEAD_CAP_GIB = 4.0
#: Full-length sequences the automatic layout aims to hold; 1 is the hard minimum.
TARGET_CONCURRENT_SEQUENCES = 4
MAX_PIPELINE = 16
DTYPE_BYTES: dict[str, float] = {
    "bf16": 2,
    "fp16": 2,
    "fp32": 4,
    "fp8": 1,
    # OCP MX formats: 4 or 6 bits per element plus one E8M0 scale byte per 32-element block.
    "mxfp4": 0.53125,
    "fp6": 0.78125,
}
#: Precisions allowed without native support: vLLM serves MXFP4 checkpoints on gfx942 through
#: its Triton MXFP4 MoE (gpt-oss) or the emulated Quark W4A4 kernels, slowly.
EMULATED: dict[tuple[str, str], str] = {
    ("mxfp4", "gfx942"): (
        "mxfp4 on gfx942 has no native FP4: gpt-oss runs its MXFP4 experts through vLLM's "
        "Triton MoE kernels and Quark W4A4 checkpoints run emulated (slow)"
    ),
}


class PlanError(ValueError):
    """A spec the planner rejects; the message names the pool and the fix."""


@dataclass(frozen=True, slots=True)
class Device:
    """What one allocatable unit (whole GPU or partition) of a pool offers."""

    label: str
    hbm_gib: float
    per_node: int
    cpu: bool

    @property
    def usable_gib(self) -> float:
        return self.hbm_gib * GPU_MEMORY_UTILIZATION - min(
            OVERHEAD_CAP_GIB, OVERHEAD_FRACTION * self.hbm_gib
        )


@dataclass(frozen=True, slots=True)
class Layout:
    """Tensor x pipeline parallelism and the nodes one replica spans."""

    tp: int
    pp: int
    nodes: int

    @property
    def devices(self) -> int:
        return self.tp * self.pp


def human_gib(gib: float) -> str:
    """GiB with sensible precision; sub-0.01 GiB amounts (tiny test models) in MiB."""
    if gib >= 10:
        return f"{gib:.1f} GiB"
    if gib >= 0.01 or gib == 0:
        return f"{gib:.2f} GiB"
    return f"{gib * 1024:.2f} MiB"


def kv_dtype_bytes(model: ModelSpec) -> float:
    """``fp8`` is 1 byte; ``auto`` follows the activation dtype (fp32 → 4, otherwise 2)."""
    if model.kv_cache_dtype == "fp8":
        return 1
    return 4 if model.dtype == "fp32" else 2


def device_for(pool: GPUPool, gpu: GPUSpec) -> Device:
    """Whole GPU, or one partition (per-partition HBM, partitions per node) of it."""
    if pool.partition is None:
        return Device(pool.gpu, gpu.hbm_gib, gpu.gpus_per_node, gpu.arch == "cpu")
    part = gpu.partitions.get(pool.partition)
    if part is None:
        known = ", ".join(sorted(gpu.partitions)) or "none"
        raise PlanError(
            f"pool {pool.name}: {pool.gpu} has no partition profile {pool.partition} in the "
            f"operator config (known: {known}); fix: choose a listed profile or drop partition"
        )
    return Device(
        f"{pool.gpu} {pool.partition}", part.hbm_gib, gpu.gpus_per_node * part.per_gpu, False
    )


def check_dtypes(
    pool: GPUPool, model: ModelSpec, gpu: GPUSpec, config: OperatorConfig
) -> list[str]:
    """Refuse precisions the GPU has no kernels for (FP4/FP6 only on CDNA4, no FP8 on CDNA2).

    Returns notes for precisions vLLM only emulates on this GPU (see ``EMULATED``)."""
    needs = {"mxfp4": "fp4", "fp6": "fp6", "fp8": "fp8"}
    wanted = [(model.dtype, "dtype")]
    if model.kv_cache_dtype == "fp8" and gpu.arch != "cpu":
        wanted.append(("fp8", "kvCacheDtype"))
    notes: list[str] = []
    for dtype, field in wanted:
        feature = needs.get(dtype)
        if feature is None or getattr(gpu, feature):
            continue
        if (dtype, gpu.arch) in EMULATED:
            notes.append(EMULATED[(dtype, gpu.arch)])
            continue
        able = sorted(n for n, g in config.gpus.items() if getattr(g, feature))
        raise PlanError(
            f"pool {pool.name}: {field} {dtype} needs native {feature.upper()} support, which "
            f"{pool.gpu} ({gpu.arch}) lacks; fix: use "
            f"{'bf16' if field == 'dtype' else 'kvCacheDtype auto'} or a pool on "
            f"{', '.join(able) or 'a GPU that has it'}"
        )
    return notes


def context_problem(pool: GPUPool, model: ModelSpec, arch: catalog.ModelArch | None) -> str | None:
    """vLLM refuses a maxModelLen above the model's max_position_embeddings (crash loop)."""
    if arch is None or model.max_model_len <= arch.max_context:
        return None
    return (
        f"pool {pool.name}: maxModelLen {model.max_model_len} exceeds the context length of "
        f"{arch.key} ({arch.max_context} tokens); vLLM refuses to start with it; fix: set "
        f"spec.model.maxModelLen to at most {arch.max_context}"
    )


def tp_problem(arch: catalog.ModelArch | None, tp: int) -> str | None:
    """vLLM's rule: TP divides the attention heads, and KV heads divide TP or TP divides them."""
    if arch is None:
        return None
    if arch.attention_heads % tp:
        return f"{arch.attention_heads} attention heads are not divisible by TP {tp}"
    if arch.kv_heads % tp and tp % arch.kv_heads:
        return f"{arch.kv_heads} KV heads and TP {tp} do not divide one another"
    return None


def auto_tps(arch: catalog.ModelArch | None, device: Device) -> list[int]:
    """Powers of two up to one node's devices (TP stays inside one XGMI island) that are valid."""
    if device.cpu:
        return [1]
    tps, tp = [], 1
    while tp <= min(device.per_node, 64):
        if tp_problem(arch, tp) is None:
            tps.append(tp)
        tp *= 2
    return tps or [1]


def _nodes(devices: int, device: Device, explicit: int | None) -> int:
    return explicit if explicit is not None else max(1, math.ceil(devices / device.per_node))


def _validate(pool: GPUPool, arch: catalog.ModelArch | None, dev: Device, lay: Layout) -> None:
    problem = tp_problem(arch, lay.tp)
    if problem:
        raise PlanError(
            f"pool {pool.name}: tensor parallel {lay.tp} is invalid: {problem}; fix: "
            f"use one of {auto_tps(arch, dev)} or omit parallelism.tensor"
        )
    if dev.cpu and lay.devices != 1:
        raise PlanError(f"pool {pool.name}: CPU pools run TP 1 x PP 1; fix: drop parallelism")
    if arch is not None and lay.pp > arch.layers:
        raise PlanError(f"pool {pool.name}: pipeline {lay.pp} exceeds {arch.layers} layers")
    if lay.devices % lay.nodes or lay.devices // lay.nodes > dev.per_node:
        raise PlanError(
            f"pool {pool.name}: {lay.devices} devices cannot be split evenly over {lay.nodes} "
            f"node(s) of {dev.per_node} {dev.label}; fix: adjust parallelism.nodes or TP x PP"
        )


def _explicit_layout(spec: InferenceServiceSpec, pool: GPUPool, dev: Device) -> Layout | None:
    """The layout the user pinned (gpusPerReplica and/or parallelism), or None for auto."""
    par = spec.parallelism
    gpus = pool.gpus_per_replica if isinstance(pool.gpus_per_replica, int) else None
    if gpus is None and par.tensor is None:
        return None
    if gpus is not None and par.tensor is not None and gpus != par.tensor * par.pipeline:
        raise PlanError(
            f"pool {pool.name}: gpusPerReplica {gpus} != tensor {par.tensor} x pipeline "
            f"{par.pipeline}; fix: make them agree or set gpusPerReplica: auto"
        )
    if par.tensor is not None:
        tp, pp = par.tensor, par.pipeline
    else:
        assert gpus is not None
        pp = par.pipeline
        if pp == 1 and gpus > dev.per_node and gpus % dev.per_node == 0:
            pp = gpus // dev.per_node  # TP inside a node, PP across nodes (ROCm guidance)
        if gpus % pp:
            raise PlanError(
                f"pool {pool.name}: gpusPerReplica {gpus} is not a multiple of "
                f"pipeline {pp}; fix: change one of them"
            )
        tp = gpus // pp
    return Layout(tp, pp, _nodes(tp * pp, dev, par.nodes))


def _auto_layouts(
    spec: InferenceServiceSpec, arch: catalog.ModelArch | None, dev: Device
) -> Iterator[Layout]:
    """Smallest first: TP 1, 2, 4… on one node, then the widest TP with PP 2, 3… across nodes.

    With ``parallelism.nodes`` pinned and PP free, PP = nodes comes first (TP inside a node,
    one pipeline stage per node) rather than TP stretched over the network.
    """
    par = spec.parallelism
    tps = auto_tps(arch, dev)
    if par.nodes is not None and par.nodes > 1 and par.pipeline == 1 and not dev.cpu:
        for tp in tps:
            yield Layout(tp, par.nodes, par.nodes)
    for tp in tps:
        yield Layout(tp, par.pipeline, _nodes(tp * par.pipeline, dev, par.nodes))
    if par.pipeline == 1 and not dev.cpu:
        max_pp = min(MAX_PIPELINE, arch.layers if arch else MAX_PIPELINE)
        for pp in range(2, max_pp + 1):
            yield Layout(tps[-1], pp, _nodes(tps[-1] * pp, dev, par.nodes))


def _evaluate(
    pool: GPUPool,
    model: ModelSpec,
    arch: catalog.ModelArch | None,
    dev: Device,
    lay: Layout,
    params_b: float,
) -> PoolPlan:
    weights = params_b * 1e9 * DTYPE_BYTES[model.dtype] / GIB
    hbm = dev.usable_gib * lay.devices
    seq = (
        arch.kv_bytes_per_token(kv_dtype_bytes(model), lay.tp) * model.max_model_len / GIB
        if arch
        else 0.0
    )
    free = hbm - weights
    seqs = math.floor(free / seq) if seq > 0 and free > 0 else 0
    fits = free >= seq and free > 0
    where = f"TP {lay.tp} x PP {lay.pp} on {lay.devices} {dev.label}"
    if lay.nodes > 1:
        where += f" over {lay.nodes} nodes"
    if fits:
        kv = (
            f"{seqs} sequences of {model.max_model_len} tokens ({human_gib(seq)} each)"
            if arch
            else "KV cache not sized (architecture unknown; set spec.model.architecture)"
        )
        message = f"{where}: weights {human_gib(weights)} of {human_gib(hbm)} usable; KV holds {kv}"
        if arch and seqs < TARGET_CONCURRENT_SEQUENCES:
            message += f" (below the target of {TARGET_CONCURRENT_SEQUENCES})"
    else:
        need = weights + seq
        message = (
            f"pool {pool.name} ({pool.gpu}) does not fit: needs {need:.1f} GiB per replica "
            f"(weights {weights:.1f} + one {model.max_model_len}-token sequence {seq:.2f}) but "
            f"{where} give {hbm:.1f} GiB usable, short by {need - hbm:.1f} GiB; fix: more GPUs "
            "per replica, a smaller dtype, kvCacheDtype fp8 or a lower maxModelLen"
        )
    return PoolPlan(
        pool=pool.name,
        gpu=pool.gpu,
        fits=fits,
        gpus_per_replica=0 if dev.cpu else lay.devices,
        tensor_parallel=lay.tp,
        pipeline_parallel=lay.pp,
        nodes_per_replica=lay.nodes,
        weights_gib=round(weights, 2),
        kv_cache_gib=round(seq * TARGET_CONCURRENT_SEQUENCES, 2),
        hbm_gib=round(hbm, 2),
        max_concurrent_sequences=seqs,
        message=message,
    )


def _refused(pool: GPUPool, message: str) -> PoolPlan:
    return PoolPlan(pool=pool.name, gpu=pool.gpu, fits=False, message=message)


def plan_pool(spec: InferenceServiceSpec, pool: GPUPool, config: OperatorConfig) -> PoolPlan:
    """The plan for one pool; never raises for a bad spec — ``fits=False`` with a message."""
    gpu = config.gpus.get(pool.gpu)
    if gpu is None:
        return _refused(
            pool,
            f"pool {pool.name}: GPU {pool.gpu} is not in the operator config "
            f"(known: {', '.join(sorted(config.gpus))})",
        )
    model = spec.model
    arch = catalog.resolve(model)
    params_b = catalog.parameters_billions(model, arch)
    if params_b is None:
        known = ", ".join(sorted(catalog.CATALOG))
        return _refused(
            pool,
            f"pool {pool.name}: model {model.name} is not in the catalogue "
            f"and has no parametersBillions; fix: set spec.model.architecture "
            f"to one of {known}, or parametersBillions",
        )
    too_long = context_problem(pool, model, arch)
    if too_long:
        return _refused(pool, too_long)
    try:
        notes = check_dtypes(pool, model, gpu, config)
        return _with_notes(_choose(spec, pool, model, arch, gpu, params_b), notes)
    except PlanError as exc:
        return _refused(pool, str(exc))


def _with_notes(plan: PoolPlan, notes: list[str]) -> PoolPlan:
    if not notes or not plan.fits:
        return plan
    return plan.model_copy(update={"message": f"{plan.message}; note: {'; '.join(notes)}"})


def _choose(
    spec: InferenceServiceSpec,
    pool: GPUPool,
    model: ModelSpec,
    arch: catalog.ModelArch | None,
    gpu: GPUSpec,
    params_b: float,
) -> PoolPlan:
    """The pinned layout, or the smallest automatic one that holds the target sequences."""
    dev = device_for(pool, gpu)
    fixed = _explicit_layout(spec, pool, dev)
    if fixed is not None:
        _validate(pool, arch, dev, fixed)
        return _evaluate(pool, model, arch, dev, fixed, params_b)
    candidates = [lay for lay in _auto_layouts(spec, arch, dev) if _is_valid(pool, arch, dev, lay)]
    if not candidates:
        raise PlanError(
            f"pool {pool.name}: no valid tensor/pipeline layout on {dev.label} "
            "for the given parallelism; fix: relax parallelism.nodes/pipeline"
        )
    plans = [_evaluate(pool, model, arch, dev, lay, params_b) for lay in candidates]
    for want in (TARGET_CONCURRENT_SEQUENCES, 1):
        for plan in plans:
            if plan.fits and (arch is None or plan.max_concurrent_sequences >= want):
                return plan
    single_node = [p for p in plans if p.nodes_per_replica == 1]
    return (single_node or plans)[-1]


def _is_valid(pool: GPUPool, arch: catalog.ModelArch | None, dev: Device, lay: Layout) -> bool:
    try:
        _validate(pool, arch, dev, lay)
    except PlanError:
        return False
    return True


def plan_service(service: InferenceService, config: OperatorConfig) -> list[PoolPlan]:
    """One plan per pool, in spec order."""
    return [plan_pool(service.spec, pool, config) for pool in service.spec.pools]

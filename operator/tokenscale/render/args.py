"""Engine command lines: vLLM (ROCm or CPU backend) or tokenscale's simulator, from the plan.

Our flags come first and ``spec.engine.args`` last, so a user flag overrides ours (vLLM's
argument parser keeps the last value). ``vllm serve`` gets the model positionally (``--model``
is deprecated there); module entry points (``python -m vllm.entrypoints...``), which CPU images
and the test bed use, only understand ``--model``. Quantization is not guessed from the model
name: vLLM reads ``quant_method`` from the checkpoint, and a wrong ``--quantization`` crashes a
compressed-tensors or Quark checkpoint; users who want on-the-fly FP8 say so in
``spec.engine.args``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService, ModelSpec
from tokenscale.api.status import PoolPlan
from tokenscale.plan import catalog, planner
from tokenscale.render import router

#: Mount point of a PVC holding the weights.
MODELS_MOUNT = "/models"
#: vLLM's default port for the multi-node rendezvous (``--master-port``).
MASTER_PORT = 29501
#: Env vars the multi-node flags reference; NODE_RANK comes from the LWS worker-index label.
ENV_NODE_RANK = "NODE_RANK"
ENV_LEADER_ADDRESS = "LWS_LEADER_ADDRESS"
SIM_COMMAND = ["tokenscale", "sim", "engine"]
#: First vLLM release with ``--shutdown-timeout`` (vllm-project/vllm#34730); older engines exit
#: with "unrecognized arguments" when given it.
SHUTDOWN_TIMEOUT_SINCE = (0, 18)
_VLLM_VERSION_IN_TAG = (re.compile(r"vllm[_-]v?(\d+)\.(\d+)"), re.compile(r":v(\d+)\.(\d+)"))

_DTYPE_FLAG = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
#: What names a pre-quantized checkpoint (only used to warn, never to add flags).
_PREQUANTIZED_MARKERS = {
    "fp8": ("fp8",),
    "mxfp4": ("mxfp4", "fp4", "gpt-oss"),
    "fp6": ("fp6", "mxfp6"),
}


@dataclass
class EngineCommand:
    """Container command, args, and non-blocking notes."""

    command: list[str]
    args: list[str]
    warnings: list[str] = field(default_factory=list)


def image_vllm_version(image: str) -> tuple[int, int] | None:
    """vLLM (major, minor) from tags like ``…_vllm_0.16.0`` or ``…:v0.32.0``; None if unknown."""
    for pattern in _VLLM_VERSION_IN_TAG:
        match = pattern.search(image)
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


def model_path(model: ModelSpec) -> str:
    """What vLLM loads: the HF id, the directory on the mounted PVC, or the S3 URI."""
    src = model.source
    if src.pvc is not None:
        return f"{MODELS_MOUNT}/{src.pvc.path}".rstrip("/")
    return catalog.model_reference(model)


def is_prequantized(model: ModelSpec) -> bool:
    """Whether the model reference names the requested quantization.

    AMD's published checkpoints do (``amd/Llama-3.1-70B-Instruct-FP8-KV``, ``*-MXFP4-*``);
    gpt-oss ships MXFP4. Used only for a warning: the checkpoint's own config decides.
    """
    ref = catalog.model_reference(model).lower()
    return any(marker in ref for marker in _PREQUANTIZED_MARKERS.get(model.dtype, ()))


def user_quantization(engine_args: Sequence[str]) -> bool:
    """The user passed ``--quantization``/``-q`` in spec.engine.args."""
    return any(
        a in ("--quantization", "-q") or a.startswith("--quantization=") for a in engine_args
    )


def precision_args(
    model: ModelSpec, engine_args: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """``--dtype`` for bf16/fp16/fp32, plus warnings; quantized dtypes add no flag.

    fp8/mxfp4/fp6 are what the planner sizes the weights with; vLLM follows the checkpoint's
    ``quant_method``. When the reference does not look quantized and the user gave no
    ``--quantization``, a warning says that a BF16 checkpoint would load at twice the planned size.
    """
    if model.dtype in _DTYPE_FLAG:
        return ["--dtype", _DTYPE_FLAG[model.dtype]], []
    if is_prequantized(model) or user_quantization(engine_args):
        return [], []
    ref = catalog.model_reference(model)
    if model.dtype == "fp8":
        fix = "add --quantization fp8 to spec.engine.args to quantize a BF16 checkpoint on load"
    else:
        fix = f"vLLM cannot quantize to {model.dtype} on load; use a pre-quantized checkpoint"
    return [], [
        f"dtype {model.dtype}: {ref} does not look pre-quantized; vLLM follows the "
        f"checkpoint's quant_method; if it is not {model.dtype}: {fix}"
    ]


def model_args(command: list[str], model: ModelSpec) -> list[str]:
    """The model positionally for ``vllm serve``, as ``--model`` for module entry points."""
    if command[-2:] == ["vllm", "serve"] or command[-1:] == ["serve"]:
        return [model_path(model)]
    return ["--model", model_path(model)]


def _common(service: InferenceService, plan: PoolPlan, config: OperatorConfig) -> list[str]:
    spec = service.spec
    args = [
        "--served-model-name",
        spec.model.name,
        "--host",
        config.pods.bind_address,
        "--port",
        str(c.ENGINE_PORT),
        "--tensor-parallel-size",
        str(plan.tensor_parallel),
    ]
    if plan.pipeline_parallel > 1:
        args += ["--pipeline-parallel-size", str(plan.pipeline_parallel)]
    return args


def multinode_args(plan: PoolPlan, leader: bool) -> list[str]:
    """vLLM's own multi-node launch (mp backend, no Ray): one process group per node.

    Every pod gets ``--nnodes/--node-rank/--master-addr``; workers run ``--headless`` (no API
    server). The rank comes from the LeaderWorkerSet worker-index label via NODE_RANK.
    """
    args = [
        "--distributed-executor-backend",
        "mp",
        "--nnodes",
        str(plan.nodes_per_replica),
        "--node-rank",
        f"$({ENV_NODE_RANK})",
        "--master-addr",
        f"$({ENV_LEADER_ADDRESS})",
        "--master-port",
        str(MASTER_PORT),
    ]
    return args if leader else [*args, "--headless"]


def vllm_command(
    service: InferenceService,
    pool: GPUPool,
    plan: PoolPlan,
    config: OperatorConfig,
    image: str,
    role: str = c.ROLE_ENGINE,
) -> EngineCommand:
    """The real engine: ``gpu_command`` (or ``cpu_command`` for the CPU profile) plus flags.

    ``--shutdown-timeout`` is left out, with a warning, when the image tag names a vLLM older
    than 0.18: such an engine would refuse to start, and aborting in-flight requests on SIGTERM
    (its only behaviour) is the lesser evil. Untagged or unknown versions get the flag.
    """
    model = service.spec.model
    command = list(config.images.cpu_command if pool.gpu == "CPU" else config.images.gpu_command)
    args = [*model_args(command, model), *_common(service, plan, config)]
    precision, warnings = precision_args(model, service.spec.engine.args)
    gpu = config.gpus.get(pool.gpu)
    emulated = planner.EMULATED.get((model.dtype, gpu.arch)) if gpu else None
    if emulated:
        warnings.append(emulated)
    args += precision
    args += ["--max-model-len", str(model.max_model_len)]
    if model.kv_cache_dtype == "fp8":
        args += ["--kv-cache-dtype", "fp8"]
    if model.source.s3 is not None:
        args += ["--load-format", "runai_streamer"]
    version = image_vllm_version(image)
    if version is None or version >= SHUTDOWN_TIMEOUT_SINCE:
        args += ["--shutdown-timeout", str(service.spec.engine.shutdown_timeout_seconds)]
    else:
        warnings.append(
            f"image {image} runs vLLM {version[0]}.{version[1]}, which has no "
            "--shutdown-timeout (vLLM >= 0.18): in-flight requests are aborted on SIGTERM; "
            "fix: use a newer engine image to drain them"
        )
    if role in (c.ROLE_LEADER, c.ROLE_WORKER):
        args += multinode_args(plan, leader=role == c.ROLE_LEADER)
    args += router.engine_args(service, version)
    args += service.spec.engine.args
    return EngineCommand(command, args, warnings)


def simulated_command(
    service: InferenceService, pool: GPUPool, plan: PoolPlan, config: OperatorConfig
) -> EngineCommand:
    """``tokenscale sim engine``: vLLM's HTTP API and metrics from a per-GPU performance model."""
    model = service.spec.model
    arch = catalog.resolve(model)
    args = [
        "--gpu",
        pool.gpu,
        "--model",
        arch.key if arch else (model.architecture or model.name),
        *_common(service, plan, config),
        "--max-model-len",
        str(model.max_model_len),
        # drains like vLLM on SIGTERM, so rollouts and scale-downs on simulated engines show
        # what the real engine does (docs/rollouts.md)
        "--shutdown-timeout",
        str(service.spec.engine.shutdown_timeout_seconds),
        *service.spec.engine.args,
    ]
    return EngineCommand(list(SIM_COMMAND), args)

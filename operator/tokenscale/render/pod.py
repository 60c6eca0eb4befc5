"""The engine pod template: a plain base container, then one patch per cross-cutting concern.

Shared by the Deployment (role engine) and the LeaderWorkerSet (leader and worker templates),
so single- and multi-node pods can only differ where a role really requires it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tokenscale import constants as c
from tokenscale.api.config import GPUSpec, OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.api.status import PoolPlan
from tokenscale.plan import planner
from tokenscale.render import args as vargs
from tokenscale.render import gpuplacement, names, patches, pd

Obj = dict[str, Any]

#: Data-plane interface of a pod on common CNIs; collectives bind to it across nodes.
POD_INTERFACE = "eth0"


@dataclass
class PodTemplate:
    """A rendered pod template and non-blocking notes about it."""

    template: Obj
    warnings: list[str] = field(default_factory=list)


def spec_hash(template: Obj) -> str:
    """Stable hash of a pod template (sorted-key JSON), so a spec change is visible at a glance."""
    blob = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_for(
    service: InferenceService, pool: GPUPool, gpu: GPUSpec, config: OperatorConfig
) -> str:
    """``spec.engine.image``, else the simulator image, else the image of the GPU's gfx target."""
    engine = service.spec.engine
    if engine.image:
        return engine.image
    if engine.mode == "simulated":
        return config.images.operator
    image: str = getattr(config.images, gpu.arch)
    return image


#: gfx targets whose vLLM builds ship AITER kernels (AMD's vLLM guide enables them there).
AITER_ARCHES = ("gfx942", "gfx950")


def _builtin_env(
    service: InferenceService, role: str, gpu: GPUSpec, config: OperatorConfig
) -> dict[str, Obj]:
    env: dict[str, Obj] = {
        "POD_IP": {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    }
    if service.spec.engine.mode == "vllm" and config.pods.rocm_aiter and gpu.arch in AITER_ARCHES:
        env["VLLM_ROCM_USE_AITER"] = {"name": "VLLM_ROCM_USE_AITER", "value": "1"}
    if service.spec.engine.mode == "vllm":
        # vLLM's own engine-start timeout (600 s) would fire before the startup-probe budget.
        timeout = str(service.spec.engine.startup_timeout_seconds)
        env["VLLM_ENGINE_READY_TIMEOUT_S"] = {
            "name": "VLLM_ENGINE_READY_TIMEOUT_S",
            "value": timeout,
        }
    if role in (c.ROLE_LEADER, c.ROLE_WORKER):
        label = f"metadata.labels['{c.LWS_LABEL_WORKER_INDEX}']"
        env[vargs.ENV_NODE_RANK] = {
            "name": vargs.ENV_NODE_RANK,
            "valueFrom": {"fieldRef": {"fieldPath": label}},
        }
        for name, value in (
            ("VLLM_HOST_IP", "$(POD_IP)"),
            ("NCCL_SOCKET_IFNAME", POD_INTERFACE),
            ("GLOO_SOCKET_IFNAME", POD_INTERFACE),
        ):
            env[name] = {"name": name, "value": value}
    return env


def _with_role_args(args: list[str], role_args: list[str], user: list[str]) -> list[str]:
    """``role_args`` before the user's ``spec.engine.args`` (the tail of ``args``), so a user
    flag still overrides ours (vLLM's last-wins parsing)."""
    cut = len(args) - len(user) if user and args[len(args) - len(user) :] == user else len(args)
    return [*args[:cut], *role_args, *args[cut:]]


def checkpoint_size_gib(service: InferenceService, plan: PoolPlan) -> float:
    """What the engine downloads: the planned weights, or BF16 (2 B/param) when the user
    quantizes on load (``--quantization`` in spec.engine.args)."""
    dtype = service.spec.model.dtype
    if vargs.user_quantization(service.spec.engine.args) and dtype in planner.DTYPE_BYTES:
        return plan.weights_gib * 2 / planner.DTYPE_BYTES[dtype]
    return plan.weights_gib


def pod_template(
    service: InferenceService,
    pool: GPUPool,
    plan: PoolPlan,
    config: OperatorConfig,
    role: str = c.ROLE_ENGINE,
    cluster: gpuplacement.ClusterGPUs | None = None,
) -> PodTemplate:
    """The pod template of one pool and role, with the spec-hash annotation.

    ``cluster`` (the nodes' GPUs, read by the controller) lets ``auto`` resource naming see
    what the nodes advertise; offline rendering passes None."""
    spec = service.spec
    gpu = config.gpus[pool.gpu]
    is_gpu = pool.gpu != "CPU"
    image = image_for(service, pool, gpu, config)
    if spec.engine.mode == "simulated":
        cmd = vargs.simulated_command(service, pool, plan, config)
    else:
        cmd = vargs.vllm_command(service, pool, plan, config, image, role)
    container: Obj = {
        "name": c.ENGINE_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": cmd.command,
        "args": _with_role_args(cmd.args, pd.engine_args(service, pool, role), spec.engine.args),
        "ports": [
            {"name": c.ENGINE_PORT_NAME, "containerPort": c.ENGINE_PORT, "protocol": "TCP"},
            *pd.engine_ports(service, pool, role),
        ],
    }
    pod: Obj = {"containers": [container], "restartPolicy": "Always"}
    env = _builtin_env(service, role, gpu, config) | pd.engine_env(service, pool, role)
    checkpoint_gib: float | None = None
    if spec.engine.mode == "vllm":  # the simulator reads no weights: no volume to wait for
        patches.model_source(pod, container, env, spec.model, config)
        patches.hf_token(env, spec.model)
        patches.non_root_cache(pod, container, env, config)
        if spec.model.source.hugging_face is not None and not config.pods.hf_cache_pvc:
            checkpoint_gib = checkpoint_size_gib(service, plan)
    container["env"], env_warnings = patches.merge_env(env, spec.engine.env)
    devices_per_pod = plan.gpus_per_replica // max(1, plan.nodes_per_replica)
    request = gpuplacement.gpu_request(pool, gpu, config, cluster) if is_gpu else None
    patches.resources(container, request, devices_per_pod, config, checkpoint_gib)
    if role != c.ROLE_WORKER:  # headless workers serve no HTTP
        patches.probes(container, spec.engine)
    patches.drain(pod, container, spec.engine, config)
    patches.rocm_security(pod, container, config, gpu=is_gpu)
    patches.shared_memory(pod, container, config)
    patches.placement(pod, pool, request, config)
    if role == c.ROLE_WORKER:
        del container["ports"]
    annotations = dict(sorted(config.pods.annotations.items()))
    annotations[c.ANNOTATION_GPU] = pool.gpu
    template: Obj = {
        "metadata": {
            "labels": names.pod_labels(
                service.metadata.name,
                pool.name,
                role,
                {**config.pods.labels, **pd.pod_labels(service, pool)},
            ),
            "annotations": annotations,
        },
        "spec": pod,
    }
    template["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH] = spec_hash(template)
    template["metadata"]["annotations"] = dict(sorted(template["metadata"]["annotations"].items()))
    warnings = [f"pool {pool.name}: {w}" for w in (*cmd.warnings, *env_warnings)]
    return PodTemplate(template, warnings)

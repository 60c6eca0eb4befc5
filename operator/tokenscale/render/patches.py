"""Small patch functions for cross-cutting pieces of an engine pod.

Each takes the pod spec and/or the engine container (plain dicts, mutated in place) and adds one
concern, so a concern is reviewed, tested and changed in one place: the ROCm security context,
/dev/shm, the model volume, the HF token, probes, drain timing, GPU resources and placement.
The rules and their sources are in docs/rendering.md.
"""

from __future__ import annotations

import math
from typing import Any

from tokenscale import constants as c
from tokenscale.api.config import GPUSpec, OperatorConfig
from tokenscale.api.service import EngineSpec, EnvVar, GPUPool, ModelSpec
from tokenscale.render.args import MODELS_MOUNT

Obj = dict[str, Any]

HF_CACHE_PATH = "/root/.cache/huggingface"
SHM_PATH = "/dev/shm"
#: vLLM on ROCm waits this long for worker teardown so VRAM is released (vllm.md §6).
ROCM_TEARDOWN_SECONDS = 15
#: Slack on top of preStop + drain + teardown before the kubelet sends SIGKILL.
GRACE_MARGIN_SECONDS = 10
PROBE_PATH = "/health"


def _mount(container: Obj, name: str, path: str, read_only: bool = False) -> None:
    mount: Obj = {"name": name, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    container.setdefault("volumeMounts", []).append(mount)


def _volume(pod: Obj, volume: Obj) -> None:
    pod.setdefault("volumes", []).append(volume)


def rocm_security(pod: Obj, container: Obj, config: OperatorConfig, gpu: bool) -> None:
    """seccomp Unconfined + SYS_PTRACE for ROCm, never privileged; GIDs when non-root.

    The device plugin injects /dev/kfd and /dev/dri nodes, so no privilege is needed; non-root
    engines need the host's video/render GIDs to open them.
    """
    ctx: Obj = {"allowPrivilegeEscalation": False, "privileged": False}
    if gpu:
        ctx["capabilities"] = {"add": ["SYS_PTRACE"]}
        ctx["seccompProfile"] = {"type": "Unconfined"}
    container["securityContext"] = ctx
    if config.pods.run_as_non_root:
        pod_ctx: Obj = {"runAsNonRoot": True}
        if gpu and config.pods.supplemental_groups:
            pod_ctx["supplementalGroups"] = list(config.pods.supplemental_groups)
        pod["securityContext"] = pod_ctx


def shared_memory(pod: Obj, container: Obj, config: OperatorConfig) -> None:
    """vLLM's worker processes talk through /dev/shm: a memory emptyDir, or the host's IPC."""
    if config.pods.host_ipc:
        pod["hostIPC"] = True
        return
    _volume(
        pod, {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": config.pods.shm_size}}
    )
    _mount(container, "shm", SHM_PATH)


def model_source(
    pod: Obj, container: Obj, env: dict[str, Obj], model: ModelSpec, config: OperatorConfig
) -> None:
    """Weights: HF cache (shared PVC or emptyDir), a read-only PVC, or S3 credentials."""
    src = model.source
    if src.hugging_face is not None:
        cache: Obj = (
            {"persistentVolumeClaim": {"claimName": config.pods.hf_cache_pvc}}
            if config.pods.hf_cache_pvc
            else {"emptyDir": {}}
        )
        _volume(pod, {"name": "hf-cache", **cache})
        _mount(container, "hf-cache", HF_CACHE_PATH)
        env["HF_HOME"] = {"name": "HF_HOME", "value": HF_CACHE_PATH}
    elif src.pvc is not None:
        _volume(
            pod,
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": src.pvc.claim_name, "readOnly": True},
            },
        )
        _mount(container, "model", MODELS_MOUNT, read_only=True)
    elif src.s3 is not None and src.s3.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": src.s3.credentials_secret}}]


def hf_token(env: dict[str, Obj], model: ModelSpec) -> None:
    """HF_TOKEN from the referenced Secret; the token itself never enters an object."""
    ref = model.hf_token_secret
    if ref is not None:
        env["HF_TOKEN"] = {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }


def startup_failure_threshold(engine: EngineSpec) -> int:
    """Startup probe attempts (every 10 s) that cover the model-load budget."""
    return math.ceil(engine.startup_timeout_seconds / 10)


def probes(container: Obj, engine: EngineSpec) -> None:
    """HTTP probes on /health: vLLM only listens once weights are loaded (vllm.md §2).

    The startup probe carries the whole load budget; liveness restarts a dead engine (503);
    readiness takes a pod out of the Service while it is not serving.
    """
    get = {"path": PROBE_PATH, "port": c.ENGINE_PORT_NAME}
    container["startupProbe"] = {
        "httpGet": dict(get),
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": startup_failure_threshold(engine),
    }
    container["readinessProbe"] = {
        "httpGet": dict(get),
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    container["livenessProbe"] = {
        "httpGet": dict(get),
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def grace_period_seconds(engine: EngineSpec, config: OperatorConfig) -> int:
    """preStop sleep + vLLM drain (--shutdown-timeout) + ROCm teardown + margin."""
    return (
        config.pods.prestop_sleep_seconds
        + engine.shutdown_timeout_seconds
        + ROCM_TEARDOWN_SECONDS
        + GRACE_MARGIN_SECONDS
    )


def drain(pod: Obj, container: Obj, engine: EngineSpec, config: OperatorConfig) -> None:
    """Leave the endpoints first (preStop sleep), then drain, then let ROCm tear down."""
    if config.pods.prestop_sleep_seconds > 0:
        container["lifecycle"] = {
            "preStop": {"sleep": {"seconds": config.pods.prestop_sleep_seconds}}
        }
    pod["terminationGracePeriodSeconds"] = grace_period_seconds(engine, config)


def merge_env(builtin: dict[str, Obj], user: list[EnvVar]) -> tuple[list[Obj], list[str]]:
    """Built-in env overridden by the user's, minus *_VISIBLE_DEVICES; POD_IP first, rest sorted.

    POD_IP leads because Kubernetes expands ``$(VAR)`` only from variables defined earlier in
    the list, and other values (VLLM_HOST_IP) refer to it.
    """
    env = dict(builtin)
    warnings = []
    for var in user:
        if var.name in c.VISIBLE_DEVICES_ENV:
            warnings.append(
                f"removed {var.name} from spec.engine.env: the device plugin already limits "
                "the container to its GPUs and vLLM rejects inconsistent visibility variables"
            )
            continue
        env[var.name] = {"name": var.name, "value": var.value}
    first = [env.pop(n) for n in ("POD_IP",) if n in env]
    return first + [env[k] for k in sorted(env)], warnings


def resource_name(pool: GPUPool) -> str:
    """amd.com/gpu, or amd.com/<profile> for partitioned GPUs (mixed naming strategy)."""
    return c.RESOURCE_PREFIX + pool.partition if pool.partition else c.RESOURCE_GPU


def resources(container: Obj, pool: GPUPool, devices_per_pod: int, config: OperatorConfig) -> None:
    """CPU/memory requests; GPUs as limits (= requests, as extended resources require)."""
    requests: Obj = {"cpu": config.pods.cpu_request, "memory": config.pods.memory_request}
    res: Obj = {"requests": requests}
    if pool.gpu != "CPU" and devices_per_pod > 0:
        requests[resource_name(pool)] = str(devices_per_pod)
        res["limits"] = {resource_name(pool): str(devices_per_pod)}
    container["resources"] = res


def gpu_node_terms(pool: GPUPool, gpu: GPUSpec) -> list[Obj]:
    """OR'ed node-selector terms on the labels AMD's node labeller really publishes.

    Homogeneous nodes carry ``amd.com/gpu.device-id=<id>`` (and product-name); heterogeneous
    ones only ``amd.com/gpu.device-id.<id>=<count>``; old labellers the ``beta.`` forms. For a
    partitioned pool every term also requires the partition label, in both spellings.
    """
    ids = sorted(gpu.device_ids)
    gpu_terms: list[list[Obj]] = []
    if ids:
        gpu_terms.append([{"key": c.NODE_LABEL_DEVICE_ID, "operator": "In", "values": ids}])
    if gpu.product_names:
        gpu_terms.append(
            [
                {
                    "key": c.NODE_LABEL_PRODUCT_NAME,
                    "operator": "In",
                    "values": sorted(gpu.product_names),
                }
            ]
        )
    gpu_terms += [[{"key": f"{c.NODE_LABEL_DEVICE_ID}.{i}", "operator": "Exists"}] for i in ids]
    if ids:
        gpu_terms.append([{"key": c.NODE_LABEL_DEVICE_ID_LEGACY, "operator": "In", "values": ids}])
    gpu_terms += [
        [{"key": f"{c.NODE_LABEL_DEVICE_ID_LEGACY}.{i}", "operator": "Exists"}] for i in ids
    ]
    if not pool.partition:
        return [{"matchExpressions": t} for t in gpu_terms]
    return [
        {"matchExpressions": [*t, {"key": key, "operator": "In", "values": [pool.partition]}]}
        for t in gpu_terms
        for key in (c.NODE_LABEL_PARTITION, c.NODE_LABEL_PARTITION_DOCS)
    ]


def placement(pod: Obj, pool: GPUPool, gpu: GPUSpec, config: OperatorConfig) -> None:
    """Node affinity for the pool's GPU (CPU pools stay off GPU nodes), plus config extras."""
    if pool.gpu == "CPU":
        terms = [
            {"matchExpressions": [{"key": c.NODE_LABEL_NFD_AMD_GPU, "operator": "DoesNotExist"}]}
        ]
    else:
        terms = gpu_node_terms(pool, gpu)
    pod["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }
    if config.pods.node_selector:
        pod["nodeSelector"] = dict(sorted(config.pods.node_selector.items()))
    if config.pods.tolerations:
        pod["tolerations"] = [t.to_k8s() for t in config.pods.tolerations]

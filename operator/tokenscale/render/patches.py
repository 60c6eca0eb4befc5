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
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import EngineSpec, EnvVar, GPUPool, ModelSpec
from tokenscale.render import quantity
from tokenscale.render.args import MODELS_MOUNT
from tokenscale.render.gpuplacement import GpuRequest

Obj = dict[str, Any]

HF_CACHE_PATH = "/root/.cache/huggingface"
HF_CACHE_PATH_NON_ROOT = "/var/cache/huggingface"
#: HOME of a non-root engine (an emptyDir) and the caches placed in it.
ENGINE_HOME = "/home/engine"
NON_ROOT_CACHE_ENV = {
    "HOME": "",
    "VLLM_CACHE_ROOT": ".cache/vllm",
    "TRITON_CACHE_DIR": ".cache/triton",
    "AITER_JIT_DIR": ".cache/aiter-jit",
}
SHM_PATH = "/dev/shm"
#: vLLM on ROCm waits this long for worker teardown so VRAM is released (vllm.md §6).
ROCM_TEARDOWN_SECONDS = 15
#: Slack on top of preStop + drain + teardown before the kubelet sends SIGKILL.
GRACE_MARGIN_SECONDS = 10
PROBE_PATH = "/health"
#: Probe budgets for a saturated engine (docs/rendering.md "Probes").
PROBE_TIMEOUT_SECONDS = 10
READINESS_FAILURES = 6
LIVENESS_TIMEOUT_SECONDS = 15
LIVENESS_FAILURES = 6


def _mount(container: Obj, name: str, path: str, read_only: bool = False) -> None:
    mount: Obj = {"name": name, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    container.setdefault("volumeMounts", []).append(mount)


def _volume(pod: Obj, volume: Obj) -> None:
    pod.setdefault("volumes", []).append(volume)


def rocm_security(pod: Obj, container: Obj, config: OperatorConfig, gpu: bool) -> None:
    """Never privileged; seccomp Unconfined + SYS_PTRACE for ROCm when enabled; a real UID
    when non-root.

    The device plugin injects /dev/kfd and /dev/dri nodes, so no privilege is needed. Both
    ROCm extras are switchable because the Baseline Pod Security Standard refuses them (see
    docs/rendering.md for what is lost). ``runAsNonRoot`` alone stops a ROCm vLLM image (it
    runs as root, and the kubelet refuses UID 0), so a non-root engine gets runAsUser/
    runAsGroup/fsGroup, the host's video/render GIDs and writable cache dirs
    (:func:`non_root_cache`).
    """
    ctx: Obj = {"allowPrivilegeEscalation": False, "privileged": False}
    if gpu and config.pods.sys_ptrace:
        ctx["capabilities"] = {"add": ["SYS_PTRACE"]}
    if gpu and config.pods.seccomp_unconfined:
        ctx["seccompProfile"] = {"type": "Unconfined"}
    container["securityContext"] = ctx
    if config.pods.run_as_non_root:
        pods = config.pods
        pod_ctx: Obj = {
            "runAsNonRoot": True,
            "runAsUser": pods.run_as_user,
            "runAsGroup": pods.run_as_group,
            "fsGroup": pods.fs_group,
        }
        if gpu and pods.supplemental_groups:
            pod_ctx["supplementalGroups"] = list(pods.supplemental_groups)
        pod["securityContext"] = pod_ctx


def non_root_cache(pod: Obj, container: Obj, env: dict[str, Obj], config: OperatorConfig) -> None:
    """Writable HOME and compile caches on an emptyDir for a non-root engine.

    vLLM, Triton and AITER write under $HOME or their package dirs at start (AITER JIT-compiles
    kernels there), which a non-root user cannot; each gets a directory on one emptyDir.
    """
    if not config.pods.run_as_non_root:
        return
    _volume(pod, {"name": "engine-home", "emptyDir": {}})
    _mount(container, "engine-home", ENGINE_HOME)
    for name, sub in NON_ROOT_CACHE_ENV.items():
        value = f"{ENGINE_HOME}/{sub}".rstrip("/")
        env[name] = {"name": name, "value": value}


def hf_cache_path(config: OperatorConfig) -> str:
    """Under /root for root engines (the image's default); outside it for non-root ones,
    which cannot traverse /root."""
    return HF_CACHE_PATH_NON_ROOT if config.pods.run_as_non_root else HF_CACHE_PATH


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
        _mount(container, "hf-cache", hf_cache_path(config))
        env["HF_HOME"] = {"name": "HF_HOME", "value": hf_cache_path(config)}
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
    readiness takes a pod out of the Service while it is not serving. A saturated API server
    answers /health slowly, so timeouts and thresholds leave room for it: readiness would
    otherwise flap under peak load and shed capacity exactly when it is needed (llm-d-benchmark
    #1734 raised vLLM's probes to 15 s / 10 after endpoints flapped). A dead engine answers 503
    at once, so it still leaves the endpoints within READINESS_FAILURES x 5 s.
    """
    get = {"path": PROBE_PATH, "port": c.ENGINE_PORT_NAME}
    container["startupProbe"] = {
        "httpGet": dict(get),
        "periodSeconds": 10,
        "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        "failureThreshold": startup_failure_threshold(engine),
    }
    container["readinessProbe"] = {
        "httpGet": dict(get),
        "periodSeconds": 5,
        "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        "failureThreshold": READINESS_FAILURES,
    }
    container["livenessProbe"] = {
        "httpGet": dict(get),
        "periodSeconds": 10,
        "timeoutSeconds": LIVENESS_TIMEOUT_SECONDS,
        "failureThreshold": LIVENESS_FAILURES,
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


def resources(
    container: Obj,
    request: GpuRequest | None,
    devices_per_pod: int,
    config: OperatorConfig,
    checkpoint_gib: float | None = None,
) -> None:
    """CPU/memory requests that scale with the pod's GPUs; GPUs as limits (= requests).

    An engine runs one worker process per GPU besides its API server and engine core, so CPU
    and memory grow with GPUs per pod; a memory-backed /dev/shm is charged to the pod's memory,
    so its size is added. ``checkpoint_gib`` (weights downloaded to an emptyDir) becomes an
    ``ephemeral-storage`` request, so the scheduler only picks nodes with the disk for it.
    """
    pods = config.pods
    gpus = devices_per_pod if request is not None else 0
    cpu = quantity.parse(pods.cpu_request) + gpus * quantity.parse(pods.cpu_request_per_gpu)
    memory = quantity.parse(pods.memory_request) + gpus * quantity.parse(
        pods.memory_request_per_gpu
    )
    if not pods.host_ipc:
        memory += quantity.parse(pods.shm_size)
    requests: Obj = {"cpu": quantity.cpu(cpu), "memory": quantity.binary(memory)}
    if checkpoint_gib is not None:
        requests["ephemeral-storage"] = quantity.binary(ephemeral_bytes(checkpoint_gib))
    res: Obj = {"requests": requests}
    if request is not None and devices_per_pod > 0:
        requests[request.resource] = str(devices_per_pod)
        res["limits"] = {request.resource: str(devices_per_pod)}
    container["resources"] = res


def ephemeral_bytes(checkpoint_gib: float) -> int:
    """Room for a checkpoint in the HF cache: +10 % and 1 GiB (tokenizer, configs, partial
    downloads), rounded up to GiB."""
    return math.ceil(checkpoint_gib * 1.1 + 1) * 2**30


def placement(pod: Obj, pool: GPUPool, request: GpuRequest | None, config: OperatorConfig) -> None:
    """Node affinity for the pool's GPU (CPU pools stay off GPU nodes), plus config extras."""
    if request is None:
        terms = [
            {"matchExpressions": [{"key": c.NODE_LABEL_NFD_AMD_GPU, "operator": "DoesNotExist"}]}
        ]
    else:
        terms = request.node_terms
    pod["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }
    if config.pods.node_selector:
        pod["nodeSelector"] = dict(sorted(config.pods.node_selector.items()))
    if config.pods.tolerations:
        pod["tolerations"] = [t.to_k8s() for t in config.pods.tolerations]

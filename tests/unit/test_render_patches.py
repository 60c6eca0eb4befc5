"""The cross-cutting pieces of an engine pod, one concern per test.

Why: golden files show *that* output changed; these tests pin *why* it must look the way it does
— the ROCm pod requirements (seccomp, SYS_PTRACE, no privilege, no *_VISIBLE_DEVICES), drain
arithmetic, AMD node-label affinity (checked against the test bed's real label sets), partition
resources, secrets by reference, vLLM/simulator arguments and stable names/hashes.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.testbed import nodes as tb_nodes
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.plan import plan_service
from tokenscale.render import args as vargs
from tokenscale.render import names, patches, pod, render_all
from tokenscale.sim import cli as sim_cli

Obj = dict[str, Any]

#: vLLM >= 0.18, so every flag (--shutdown-timeout) is rendered; the 0.16 defaults are tested
#: separately.
NEW_IMAGE = "rocm/vllm:rocm7.14.0_cdna_ubuntu24.04_py3.14_pytorch_2.11.0_vllm_0.23.0"


def config(**fields: Any) -> OperatorConfig:
    """Operator config whose ROCm images are new enough for every flag we render."""
    images = {"gfx942": NEW_IMAGE, "gfx950": NEW_IMAGE}
    return OperatorConfig.model_validate({"images": images, **fields})


def make(model: Obj | None = None, pools: list[Obj] | None = None, **spec: Any) -> InferenceService:
    return InferenceService.model_validate(
        {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "svc"},
            "spec": {
                "model": model
                or {
                    "name": "llama",
                    "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"},
                    "dtype": "fp8",
                },
                "pools": pools or [{"name": "a", "gpu": "MI300X"}],
                **spec,
            },
        }
    )


def objects(svc: InferenceService, cfg: OperatorConfig | None = None, **kw: Any) -> list[Obj]:
    cfg = cfg or config()
    return render_all(svc, cfg, plan_service(svc, cfg), **kw).objects


def workloads(svc: InferenceService, cfg: OperatorConfig | None = None) -> list[Obj]:
    return [o for o in objects(svc, cfg) if o["kind"] in ("Deployment", "LeaderWorkerSet")]


def engine(obj: Obj) -> Obj:
    container: Obj = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def env_names(container: Obj) -> list[str]:
    return [e["name"] for e in container["env"]]


def test_rocm_security_context() -> None:
    ctr = engine(workloads(make())[0])
    sc = ctr["securityContext"]
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    assert sc["capabilities"] == {"add": ["SYS_PTRACE"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    pod_spec = workloads(make())[0]["spec"]["template"]["spec"]
    assert "securityContext" not in pod_spec  # root by default: no GIDs needed
    assert not any(v.get("hostPath") for v in pod_spec["volumes"])


def test_non_root_gets_a_uid_groups_and_writable_caches() -> None:
    cfg = config(pods={"runAsNonRoot": True})
    obj = workloads(make(), cfg)[0]
    pod_spec = obj["spec"]["template"]["spec"]
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "supplementalGroups": [44, 110],
    }
    ctr = engine(obj)
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for name in ("HOME", "HF_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "AITER_JIT_DIR"):
        path = env[name]
        assert path and not path.startswith("/root"), name  # /root is 0700: not traversable
        mount = next(m for m in mounts if path == m or path.startswith(m + "/"))
        assert "emptyDir" in volumes[mounts[mount]], name


@pytest.mark.parametrize(("seccomp", "ptrace"), [(True, False), (False, True), (False, False)])
def test_seccomp_and_ptrace_switchable(seccomp: bool, ptrace: bool) -> None:
    cfg = config(pods={"seccompUnconfined": seccomp, "sysPtrace": ptrace})
    sc = engine(workloads(make(), cfg)[0])["securityContext"]
    assert ("seccompProfile" in sc) is seccomp
    assert ("capabilities" in sc) is ptrace
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(("gpu", "aiter"), [("MI300X", True), ("MI355X", True), ("MI250X", False)])
def test_aiter_on_gfx942_and_gfx950_by_default(gpu: str, aiter: bool) -> None:
    svc = make(
        model={"name": "m", "source": {"huggingFace": "meta-llama/Llama-3.1-8B"}},
        pools=[{"name": "a", "gpu": gpu}],
    )
    env = {e["name"]: e.get("value") for e in engine(workloads(svc)[0])["env"]}
    assert env.get("VLLM_ROCM_USE_AITER") == ("1" if aiter else None)
    off = config(pods={"rocmAiter": False})
    env = {e["name"]: e.get("value") for e in engine(workloads(svc, off)[0])["env"]}
    assert "VLLM_ROCM_USE_AITER" not in env


def test_visible_devices_stripped_with_problem() -> None:
    svc = make(
        engine={
            "env": [
                {"name": n, "value": "0"} for n in (*c.VISIBLE_DEVICES_ENV, "VLLM_ROCM_USE_AITER")
            ]
        }
    )
    cfg = config()
    result = render_all(svc, cfg, plan_service(svc, cfg))
    ctr = engine(result.objects[-1])
    assert not set(c.VISIBLE_DEVICES_ENV) & set(env_names(ctr))
    assert "VLLM_ROCM_USE_AITER" in env_names(ctr)
    assert {e["name"]: e.get("value") for e in ctr["env"]}["VLLM_ROCM_USE_AITER"] == "0"
    assert result.problems == []
    removed = [w for w in result.warnings if "removed" in w]
    assert len(removed) == 3 and all("pool a" in w for w in removed)


def test_env_order_pod_ip_first_then_sorted() -> None:
    svc = make(engine={"env": [{"name": "ZED", "value": "1"}, {"name": "ALPHA", "value": "2"}]})
    names_ = env_names(engine(workloads(svc)[0]))
    assert names_[0] == "POD_IP"
    assert names_[1:] == sorted(names_[1:])
    pod_ip = engine(workloads(svc)[0])["env"][0]
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_user_env_overrides_builtin() -> None:
    svc = make(engine={"env": [{"name": "VLLM_ENGINE_READY_TIMEOUT_S", "value": "42"}]})
    env = {e["name"]: e for e in engine(workloads(svc)[0])["env"]}
    assert env["VLLM_ENGINE_READY_TIMEOUT_S"]["value"] == "42"


@pytest.mark.parametrize(
    ("prestop", "shutdown", "grace"), [(10, 30, 65), (0, 0, 25), (5, 600, 630)]
)
def test_grace_period_arithmetic(prestop: int, shutdown: int, grace: int) -> None:
    """grace = preStop sleep + --shutdown-timeout + 15 s ROCm teardown + 10 s margin."""
    cfg = config(pods={"prestopSleepSeconds": prestop})
    svc = make(engine={"shutdownTimeoutSeconds": shutdown})
    obj = workloads(svc, cfg)[0]
    spec = obj["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == grace == prestop + shutdown + 15 + 10
    ctr = engine(obj)
    assert ctr["args"][ctr["args"].index("--shutdown-timeout") + 1] == str(shutdown)
    if prestop:
        assert ctr["lifecycle"] == {"preStop": {"sleep": {"seconds": prestop}}}
    else:
        assert "lifecycle" not in ctr


@pytest.mark.parametrize("budget", [60, 605, 1800, 14400])
def test_startup_probe_budget(budget: int) -> None:
    ctr = engine(workloads(make(engine={"startupTimeoutSeconds": budget}))[0])
    startup = ctr["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] == 10
    assert startup["failureThreshold"] == math.ceil(budget / 10)
    assert startup["periodSeconds"] * startup["failureThreshold"] >= budget
    ready, live = ctr["readinessProbe"], ctr["livenessProbe"]
    assert ready["periodSeconds"] == 5 and 10 <= ready["timeoutSeconds"] <= 15
    assert ready["failureThreshold"] >= 6
    assert live["periodSeconds"] == 10 and live["failureThreshold"] >= 6
    # a probe must time out before the next one is due, or the kubelet queues them
    assert live["timeoutSeconds"] <= live["periodSeconds"] * live["failureThreshold"]


def _matches(terms: list[Obj], labels: dict[str, str]) -> bool:
    """Kubernetes node-affinity semantics: terms are OR'ed, expressions AND'ed."""

    def expr_ok(e: Obj) -> bool:
        op, key = e["operator"], e["key"]
        if op == "In":
            return labels.get(key) in e["values"]
        if op == "Exists":
            return key in labels
        if op == "DoesNotExist":
            return key not in labels
        raise AssertionError(op)

    return any(all(expr_ok(e) for e in t["matchExpressions"]) for t in terms)


def _terms(obj: Obj) -> list[Obj]:
    aff = obj["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms: list[Obj] = aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return terms


def test_affinity_terms_mi355x() -> None:
    terms = _terms(workloads(make(pools=[{"name": "a", "gpu": "MI355X"}]))[0])
    flat = [t["matchExpressions"] for t in terms]
    assert flat == [
        [
            {"key": "amd.com/gpu.device-id", "operator": "In", "values": ["75a3", "75b3"]},
            {"key": "amd.com/gpu.vram", "operator": "In", "values": ["288G"]},
        ],
        [
            {
                "key": "amd.com/gpu.product-name",
                "operator": "In",
                "values": ["AMD_Instinct_MI355X_OAM", "AMD_Instinct_MI355_OAM"],
            },
            {"key": "amd.com/gpu.vram", "operator": "In", "values": ["288G"]},
        ],
        [
            {"key": "amd.com/gpu.device-id.75a3", "operator": "Exists"},
            {"key": "amd.com/gpu.vram.288G", "operator": "Exists"},
        ],
        [
            {"key": "amd.com/gpu.device-id.75b3", "operator": "Exists"},
            {"key": "amd.com/gpu.vram.288G", "operator": "Exists"},
        ],
        [
            {"key": "beta.amd.com/gpu.device-id", "operator": "In", "values": ["75a3", "75b3"]},
            {"key": "beta.amd.com/gpu.vram", "operator": "In", "values": ["288G"]},
        ],
        [
            {"key": "beta.amd.com/gpu.device-id.75a3", "operator": "Exists"},
            {"key": "beta.amd.com/gpu.vram.288G", "operator": "Exists"},
        ],
        [
            {"key": "beta.amd.com/gpu.device-id.75b3", "operator": "Exists"},
            {"key": "beta.amd.com/gpu.vram.288G", "operator": "Exists"},
        ],
    ]


def test_affinity_matches_real_label_sets() -> None:
    """Against the test bed's labeller output: right GPU yes, other GPU no, every form works."""
    mi300x = _terms(workloads(make())[0])
    assert _matches(mi300x, tb_nodes.gpu_labels(tb_nodes.MI300X, 8))
    assert not _matches(mi300x, tb_nodes.gpu_labels(tb_nodes.MI355X, 8))
    hetero = {
        "amd.com/gpu.device-id.74a1": "4",
        "amd.com/gpu.device-id.75a3": "4",
        "amd.com/gpu.vram.192G": "4",
        "amd.com/gpu.vram.288G": "4",
    }
    assert _matches(mi300x, hetero)
    assert _matches(
        mi300x, {"beta.amd.com/gpu.device-id.74a1": "8", "beta.amd.com/gpu.vram.192G": "8"}
    )
    assert _matches(
        mi300x, {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM", "amd.com/gpu.vram": "192G"}
    )
    assert not _matches(mi300x, {"feature.node.kubernetes.io/amd-gpu": "true"})
    # single naming on a CPX node: same device id, 24 GiB partitions; a whole GPU never lands there
    cpx = tb_nodes.gpu_labels(tb_nodes.MI300X, 64, vram="24G")
    assert not _matches(mi300x, cpx)


def test_mi355x_product_name_spellings() -> None:
    terms = _terms(workloads(make(pools=[{"name": "a", "gpu": "MI355X"}]))[0])
    for name in ("AMD_Instinct_MI355_OAM", "AMD_Instinct_MI355X_OAM"):
        assert _matches(terms, {"amd.com/gpu.product-name": name, "amd.com/gpu.vram": "288G"})


def test_partition_pool_mixed_naming_needs_no_partition_label() -> None:
    """Stock installs never emit the partition label: under mixed the resource pins the type."""
    svc = make(
        model={"name": "l8", "source": {"huggingFace": "meta-llama/Llama-3.1-8B"}},
        pools=[{"name": "cpx", "gpu": "MI300X", "partition": "cpx_nps4"}],
    )
    obj = workloads(svc, config(pods={"resourceNaming": "mixed"}))[0]
    terms = _terms(obj)
    assert _matches(terms, tb_nodes.gpu_labels(tb_nodes.MI300X, 64, "cpx_nps4"))
    assert _matches(terms, {"amd.com/gpu.device-id": "74a1", "amd.com/gpu.vram": "24G"})
    res = engine(obj)["resources"]
    assert res["limits"] == {"amd.com/cpx_nps4": "1"}
    assert res["requests"]["amd.com/cpx_nps4"] == "1"


def test_partition_pool_single_naming_selects_by_partition_vram() -> None:
    svc = make(
        model={"name": "l8", "source": {"huggingFace": "meta-llama/Llama-3.1-8B"}},
        pools=[{"name": "cpx", "gpu": "MI300X", "partition": "cpx_nps4"}],
    )
    obj = workloads(svc, config(pods={"resourceNaming": "single"}))[0]
    terms = _terms(obj)
    assert _matches(terms, {"amd.com/gpu.device-id": "74a1", "amd.com/gpu.vram": "24G"})
    assert not _matches(terms, {"amd.com/gpu.device-id": "74a1", "amd.com/gpu.vram": "192G"})
    assert engine(obj)["resources"]["limits"] == {"amd.com/gpu": "1"}


@pytest.mark.parametrize(
    ("naming", "resource"), [("single", "amd.com/gpu"), ("mixed", "amd.com/spx_nps1")]
)
def test_whole_gpu_resource_per_naming(naming: str, resource: str) -> None:
    obj = workloads(make(), config(pods={"resourceNaming": naming}))[0]
    assert engine(obj)["resources"]["limits"] == {resource: "1"}


def test_cpu_pool_avoids_gpu_nodes_and_requests_no_gpu() -> None:
    svc = make(
        model={
            "name": "tiny",
            "architecture": "tiny-llama",
            "source": {"pvc": {"claimName": "models", "path": "tiny-llama"}},
            "dtype": "fp32",
            "maxModelLen": 512,
        },
        pools=[{"name": "cpu", "gpu": "CPU"}],
    )
    obj = workloads(svc)[0]
    assert not _matches(_terms(obj), tb_nodes.gpu_labels(tb_nodes.MI300X, 8))
    assert _matches(_terms(obj), {"kubernetes.io/os": "linux"})
    ctr = engine(obj)
    assert set(ctr["resources"]) == {"requests"}
    assert set(ctr["resources"]["requests"]) == {"cpu", "memory"}  # PVC: no ephemeral-storage
    assert "capabilities" not in ctr["securityContext"]
    assert ctr["image"] == config().images.cpu
    assert ctr["args"][0] == "/models/tiny-llama"  # `vllm serve MODEL`
    module = config(images={"cpuCommand": ["python3", "-m", "vllm.entrypoints.openai.api_server"]})
    assert engine(workloads(svc, module)[0])["args"][:2] == ["--model", "/models/tiny-llama"]
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    assert mounts["model"] == {"name": "model", "mountPath": "/models", "readOnly": True}


def test_gpu_count_and_limits_equal_requests() -> None:
    svc = make(
        model={"name": "g", "source": {"huggingFace": "openai/gpt-oss-120b"}},
        pools=[{"name": "a", "gpu": "MI300X", "gpusPerReplica": 8}],
    )
    res = engine(workloads(svc)[0])["resources"]
    assert res["limits"] == {"amd.com/gpu": "8"}
    assert res["requests"]["amd.com/gpu"] == "8"


def test_hf_token_by_reference_and_cache() -> None:
    svc = make(
        model={
            "name": "l",
            "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"},
            "hfTokenSecret": {"name": "hf", "key": "token"},
        }
    )
    ctr = engine(workloads(svc)[0])
    env = {e["name"]: e for e in ctr["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    assert env["HF_HOME"]["value"] == patches.HF_CACHE_PATH
    assert {"name": "hf-cache", "mountPath": patches.HF_CACHE_PATH} in ctr["volumeMounts"]
    cfg = config(pods={"hfCachePvc": "hf-cache"})
    vols = workloads(svc, cfg)[0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in vols


def test_shm_volume_or_host_ipc() -> None:
    spec = workloads(make())[0]["spec"]["template"]["spec"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in spec["volumes"]
    cfg = config(pods={"hostIpc": True})
    spec = workloads(make(), cfg)[0]["spec"]["template"]["spec"]
    assert spec["hostIPC"] is True
    assert not any(v["name"] == "shm" for v in spec.get("volumes", []))


def _arg(ctr: Obj, flag: str) -> str | None:
    args: list[str] = ctr["args"]
    return args[args.index(flag) + 1] if flag in args else None


@pytest.mark.parametrize(
    ("model_id", "dtype", "quant", "dtype_flag"),
    [
        ("meta-llama/Llama-2-70b-chat-hf", "fp8", None, None),  # vLLM reads quant_method
        ("amd/Llama-3.1-70B-Instruct-FP8-KV", "fp8", None, None),
        ("meta-llama/Llama-2-70b-chat-hf", "bf16", None, "bfloat16"),
        ("meta-llama/Llama-2-70b-chat-hf", "fp16", None, "float16"),
    ],
)
def test_precision_flags(
    model_id: str, dtype: str, quant: str | None, dtype_flag: str | None
) -> None:
    svc = make(model={"name": "m", "source": {"huggingFace": model_id}, "dtype": dtype})
    ctr = engine(workloads(svc)[0])
    assert _arg(ctr, "--quantization") == quant
    assert _arg(ctr, "--dtype") == dtype_flag


def test_mxfp4_needs_prequantized_checkpoint() -> None:
    svc = make(
        model={
            "name": "m",
            "source": {"huggingFace": "meta-llama/Llama-2-70b-hf"},
            "dtype": "mxfp4",
        },
        pools=[{"name": "a", "gpu": "MI355X"}],
    )
    cfg = config()
    result = render_all(svc, cfg, plan_service(svc, cfg))
    assert any("pre-quantized" in w for w in result.warnings)
    assert "--quantization" not in engine(result.objects[-1])["args"]
    assert result.problems == []
    ok = make(
        model={
            "name": "m",
            "source": {"huggingFace": "amd/Llama-3.3-70B-Instruct-MXFP4-Preview"},
            "dtype": "mxfp4",
        },
        pools=[{"name": "a", "gpu": "MI355X"}],
    )
    assert render_all(ok, cfg, plan_service(ok, cfg)).warnings == []


def test_vllm_args_order_and_user_args_last() -> None:
    svc = make(
        model={
            "name": "llama",
            "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"},
            "dtype": "fp8",
            "kvCacheDtype": "fp8",
            "maxModelLen": 2048,
        },
        engine={"args": ["--max-num-seqs", "256"]},
    )
    ctr = engine(workloads(svc)[0])
    assert ctr["command"] == ["vllm", "serve"]
    assert ctr["args"] == [
        "meta-llama/Llama-2-70b-chat-hf",
        "--served-model-name", "llama",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--tensor-parallel-size", "1",
        "--max-model-len", "2048",
        "--kv-cache-dtype", "fp8",
        "--shutdown-timeout", "30",
        "--max-num-seqs", "256",
    ]  # fmt: skip
    assert ctr["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_bind_address_from_config() -> None:
    cfg = config(pods={"bindAddress": "$(POD_IP)"})
    assert _arg(engine(workloads(make(), cfg)[0]), "--host") == "$(POD_IP)"


def test_s3_source() -> None:
    svc = make(
        model={
            "name": "m",
            "architecture": "llama-3.1-8b",
            "source": {"s3": {"uri": "s3://b/llama", "credentialsSecret": "creds"}},
        }
    )
    ctr = engine(workloads(svc)[0])
    assert ctr["args"][0] == "s3://b/llama"  # positional for `vllm serve`
    assert _arg(ctr, "--load-format") == "runai_streamer"
    assert ctr["envFrom"] == [{"secretRef": {"name": "creds"}}]


@pytest.mark.parametrize(
    ("gpu", "arch"), [("MI300X", "gfx942"), ("MI325X", "gfx942"), ("MI355X", "gfx950")]
)
def test_image_per_gfx_target(gpu: str, arch: str) -> None:
    svc = make(pools=[{"name": "a", "gpu": gpu}])
    assert engine(workloads(svc)[0])["image"] == getattr(config().images, arch)
    custom = make(pools=[{"name": "a", "gpu": gpu}], engine={"image": "my/vllm:1"})
    assert engine(workloads(custom)[0])["image"] == "my/vllm:1"


def test_simulated_engine_matches_simulator_cli() -> None:
    svc = make(
        model={
            "name": "llama-2-70b",
            "architecture": "llama-2-70b",
            "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"},
            "dtype": "fp8",
            "maxModelLen": 2048,
        },
        engine={"mode": "simulated"},
    )
    ctr = engine(workloads(svc)[0])
    assert ctr["image"] == config().images.operator
    assert ctr["command"] == vargs.SIM_COMMAND == ["tokenscale", "sim", "engine"]
    assert _arg(ctr, "--gpu") == "MI300X" and _arg(ctr, "--model") == "llama-2-70b"
    assert ctr["resources"]["limits"] == {"amd.com/gpu": "1"}  # placement stays real
    ctx = sim_cli.engine_command.make_context("engine", list(ctr["args"]))
    assert ctx.args == [], f"flags the simulator does not know: {ctx.args}"
    assert ctx.params["served_model_name"] == "llama-2-70b"
    assert ctx.params["max_model_len"] == 2048


def test_replicas_from_caller_default_min() -> None:
    svc = make(
        pools=[{"name": "a", "gpu": "MI300X", "minReplicas": 2}, {"name": "b", "gpu": "MI355X"}]
    )
    deps = {
        o["metadata"]["name"]: o["spec"]["replicas"]
        for o in objects(svc, replicas={"b": 5})
        if o["kind"] == "Deployment"
    }
    assert deps == {"svc-a": 2, "svc-b": 5}


def test_spec_hash_stable_and_changes_with_spec() -> None:
    first = workloads(make())[0]["spec"]["template"]["metadata"]["annotations"]
    again = workloads(make())[0]["spec"]["template"]["metadata"]["annotations"]
    changed = workloads(make(engine={"args": ["--x"]}))[0]["spec"]["template"]["metadata"]
    assert first[c.ANNOTATION_SPEC_HASH] == again[c.ANNOTATION_SPEC_HASH]
    assert changed["annotations"][c.ANNOTATION_SPEC_HASH] != first[c.ANNOTATION_SPEC_HASH]
    tpl = workloads(make())[0]["spec"]["template"]
    annotations = dict(tpl["metadata"]["annotations"])
    del annotations[c.ANNOTATION_SPEC_HASH]
    without = {**tpl, "metadata": {**tpl["metadata"], "annotations": annotations}}
    assert pod.spec_hash(without) == first[c.ANNOTATION_SPEC_HASH]


def test_selectors_use_stable_labels_only() -> None:
    objs = objects(make(pools=[{"name": "a", "gpu": "MI300X"}, {"name": "b", "gpu": "MI355X"}]))
    svc_obj = next(o for o in objs if o["kind"] == "Service")
    assert svc_obj["spec"]["selector"] == {c.LABEL_SERVICE: "svc", c.LABEL_ENDPOINT: "true"}
    assert svc_obj["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    pdb = next(o for o in objs if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {c.LABEL_SERVICE: "svc"}},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",  # a stuck rollout never blocks drains
    }
    for dep in (o for o in objs if o["kind"] == "Deployment"):
        sel = dep["spec"]["selector"]["matchLabels"]
        assert set(sel) == {c.LABEL_SERVICE, c.LABEL_POOL}
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in sel.items())
        assert all(labels.get(k) == v for k, v in svc_obj["spec"]["selector"].items())


def test_multinode_without_lws_is_a_problem() -> None:
    svc = make(
        model={"name": "l", "source": {"huggingFace": "meta-llama/Llama-3.1-405B"}},
        parallelism={"tensor": 8, "pipeline": 2, "nodes": 2},
    )
    cfg = config()
    result = render_all(svc, cfg, plan_service(svc, cfg))
    assert [o["kind"] for o in result.objects] == ["Service", "PodDisruptionBudget"]
    assert result.problems == [
        "pool a needs 2 nodes per replica; install LeaderWorkerSet and set leaderWorkerSet: "
        "true in operator config"
    ]


def test_multinode_leader_and_workers() -> None:
    svc = make(
        model={"name": "l", "source": {"huggingFace": "meta-llama/Llama-3.1-405B"}},
        parallelism={"tensor": 8, "pipeline": 2, "nodes": 2},
    )
    cfg = config(leaderWorkerSet=True)
    lws = workloads(svc, cfg)[0]
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2
    leader = lwt["leaderTemplate"]["spec"]["containers"][0]
    worker = lwt["workerTemplate"]["spec"]["containers"][0]
    for ctr in (leader, worker):
        assert _arg(ctr, "--nnodes") == "2"
        assert _arg(ctr, "--node-rank") == "$(NODE_RANK)"
        assert _arg(ctr, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
        assert ctr["resources"]["limits"] == {"amd.com/gpu": "8"}  # 16 GPUs over 2 pods
        env = {e["name"]: e for e in ctr["env"]}
        assert env["VLLM_HOST_IP"]["value"] == "$(POD_IP)"
        assert "NCCL_SOCKET_IFNAME" in env
    assert "--headless" in worker["args"] and "--headless" not in leader["args"]
    assert "readinessProbe" in leader and "readinessProbe" not in worker
    leader_labels = lwt["leaderTemplate"]["metadata"]["labels"]
    worker_labels = lwt["workerTemplate"]["metadata"]["labels"]
    assert leader_labels[c.LABEL_ENDPOINT] == "true" and c.LABEL_ENDPOINT not in worker_labels


def test_not_fitting_pool_renders_no_workload() -> None:
    svc = make(
        model={"name": "m", "source": {"huggingFace": "x/y"}, "dtype": "fp6",
               "architecture": "llama-2-70b"},
        pools=[{"name": "a", "gpu": "MI300X"}, {"name": "b", "gpu": "MI355X"}],
    )  # fmt: skip
    cfg = config()
    result = render_all(svc, cfg, plan_service(svc, cfg))
    assert [o["metadata"]["name"] for o in result.objects if o["kind"] == "Deployment"] == ["svc-b"]
    assert result.problems == []  # the plan carries the reason


def test_names_respect_length_budget() -> None:
    assert names.pool_workload("s" * 40, "p" * 12) == "s" * 40 + "-" + "p" * 12
    with pytest.raises(ValueError, match="longer than 53"):
        names.pool_workload("s" * 41, "p" * 12)


def test_render_is_deterministic_and_unshared() -> None:
    svc = make(pools=[{"name": "a", "gpu": "MI300X"}, {"name": "b", "gpu": "MI355X"}])
    first, second = objects(svc), objects(svc)
    assert first == second
    first[-1]["spec"]["template"]["spec"]["affinity"]["nodeAffinity"].clear()
    assert objects(svc) == second


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("rocm/vllm:rocm7.12.0_gfx94X-dcgpu_ubuntu24.04_py3.12_pytorch_2.9.1_vllm_0.16.0", (0, 16)),
        (NEW_IMAGE, (0, 23)),
        ("vllm/vllm-openai-rocm:v0.14.1", (0, 14)),
        ("public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0", (0, 32)),
        ("rocm/vllm:latest", None),
        ("my/vllm:1", None),
    ],
)
def test_vllm_version_from_image_tag(image: str, version: tuple[int, int] | None) -> None:
    assert vargs.image_vllm_version(image) == version


def test_old_vllm_image_gets_no_shutdown_timeout() -> None:
    """vLLM < 0.18 rejects --shutdown-timeout: leave it out and warn (e.g. the 0.16 images)."""
    cfg = OperatorConfig()
    old = "rocm/vllm:rocm7.12.0_gfx950-dcgpu_ubuntu24.04_py3.12_pytorch_2.9.1_vllm_0.16.0"
    svc = make(engine={"image": old})
    result = render_all(svc, cfg, plan_service(svc, cfg))
    ctr = engine(result.objects[-1])
    assert "--shutdown-timeout" not in ctr["args"]
    assert any("no --shutdown-timeout" in w for w in result.warnings)
    assert result.problems == []
    unknown = make(engine={"image": "my/vllm:1"})
    assert _arg(engine(render_all(unknown, cfg, plan_service(unknown, cfg)).objects[-1]),
                "--shutdown-timeout") == "30"  # fmt: skip


@pytest.mark.parametrize(("gpus", "cpu", "memory"), [(1, "4", "48Gi"), (8, "18", "160Gi")])
def test_requests_scale_with_gpus_and_count_shm(gpus: int, cpu: str, memory: str) -> None:
    """cpu 2 + 2/GPU; memory 16Gi + 16Gi/GPU + the 16Gi /dev/shm memory volume."""
    svc = make(
        model={"name": "l", "source": {"huggingFace": "meta-llama/Llama-3.1-8B"}},
        pools=[{"name": "a", "gpu": "MI300X", "gpusPerReplica": gpus}],
    )
    req = engine(workloads(svc)[0])["resources"]["requests"]
    assert (req["cpu"], req["memory"], req["amd.com/gpu"]) == (cpu, memory, str(gpus))
    host_ipc = engine(workloads(svc, config(pods={"hostIpc": True}))[0])["resources"]["requests"]
    assert host_ipc["memory"] == f"{int(memory[:-2]) - 16}Gi"  # no shm volume to charge


def test_checkpoint_in_an_emptydir_requests_ephemeral_storage() -> None:
    """Llama-3.1-8B bf16: 8.03e9 x 2 B = 14.96 GiB -> ceil(14.96 x 1.1 + 1) = 18 GiB; quantized
    on load to fp8 it is still the BF16 download; a cache PVC needs no request."""
    model = {"name": "l", "source": {"huggingFace": "meta-llama/Llama-3.1-8B"}}
    req = engine(workloads(make(model=model))[0])["resources"]["requests"]
    assert req["ephemeral-storage"] == "18Gi"
    fp8 = make(model={**model, "dtype": "fp8"}, engine={"args": ["--quantization", "fp8"]})
    assert engine(workloads(fp8)[0])["resources"]["requests"]["ephemeral-storage"] == "18Gi"
    pvc = config(pods={"hfCachePvc": "hf-cache"})
    assert (
        "ephemeral-storage"
        not in engine(workloads(make(model=model), pvc)[0])["resources"]["requests"]
    )

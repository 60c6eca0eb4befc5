"""Pure builders for a benchmark run: the Indexed Job and the narrow RBAC its pods use.

Shards start together (parallelism = completions) and each draws its own seeded Poisson
stream at qps/shards, so the merged arrivals are still Poisson at the full rate.
"""

from __future__ import annotations

from typing import Any

from tokenscale import constants as c
from tokenscale.api.benchmark import InferenceBenchmarkSpec, LengthDistribution
from tokenscale.api.config import OperatorConfig
from tokenscale.api.sla import SLASpec


def target_url(spec: InferenceBenchmarkSpec, namespace: str) -> str:
    """The Service DNS name of the target (no test-only overrides: DNS resolves in-cluster)."""
    if spec.target.url:
        return spec.target.url.rstrip("/")
    return f"http://{spec.target.service}.{namespace}.svc:{c.ENGINE_PORT}"


def _length(dist: LengthDistribution) -> str:
    if dist.kind == "fixed":
        return str(dist.mean)
    if dist.kind == "uniform":
        return f"uniform:{dist.min}:{dist.max}"
    return f"normal:{dist.mean}:{dist.stddev}:{dist.min}:{dist.max}"


def _ms(value: float) -> str:
    return f"{value:g}ms"


def bench_args(
    spec: InferenceBenchmarkSpec,
    url: str,
    model: str,
    sla: SLASpec | None,
    replicas: int | None = None,
) -> list[str]:
    """Arguments of ``tokenscale bench`` for this spec."""
    scenario = {"concurrencySweep": "sweep", "replicaSweep": "server"}.get(
        spec.scenario, spec.scenario
    )
    if spec.scenario == "replicaSweep" and spec.load.qps is None:
        scenario = "offline"
    args = ["--url", url, "--model", model, "--api", spec.api, "--scenario", scenario]
    args += ["--duration", str(spec.load.duration_seconds), "--seed", str(spec.seed)]
    if spec.load.qps is not None and scenario in ("server", "interactive"):
        args += ["--qps", f"{spec.load.qps:g}"]
    if spec.load.requests is not None:
        args += ["--requests", str(spec.load.requests)]
    if scenario == "sweep":
        levels = spec.load.concurrencies or [1, 4, 16, 64]
        args += ["--concurrency", ",".join(str(x) for x in levels)]
    elif spec.load.concurrency is not None:
        args += ["--concurrency", str(spec.load.concurrency)]
    if spec.dataset.config_map:
        args += ["--dataset", "/etc/tokenscale/prompts/prompts.jsonl"]
    elif spec.dataset.input.kind == "openorca" or spec.dataset.output.kind == "openorca":
        args += ["--dataset", "openorca-llama2-70b"]
    else:
        args += ["--input-len", _length(spec.dataset.input)]
    if spec.dataset.output.kind != "openorca":
        args += ["--output-len", _length(spec.dataset.output)]
    if sla is not None:
        if sla.preset:
            args += ["--sla", sla.preset]
        else:
            assert sla.ttft_p99_ms is not None and sla.tpot_p99_ms is not None
            args += ["--ttft-p99", _ms(sla.ttft_p99_ms), "--tpot-p99", _ms(sla.tpot_p99_ms)]
        if sla.min_tokens_per_second:
            args += ["--min-tokens-per-s", f"{sla.min_tokens_per_second:g}"]
    args += ["--repeats", str(spec.repeats), "--stability-margin", f"{spec.stability_margin:g}"]
    if replicas is not None:
        args += ["--replicas", str(replicas)]
    return [*args, "--no-progress"]


def job(
    name: str,
    bench: dict[str, Any],
    spec: InferenceBenchmarkSpec,
    cfg: OperatorConfig,
    args: list[str],
) -> dict[str, Any]:
    """The Indexed Job that runs the load and publishes results."""
    meta = bench["metadata"]
    labels = {
        c.LABEL_BENCHMARK: meta["name"],
        c.LABEL_ROLE: "benchmark",
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_COMPONENT: "benchmark",
    }
    env = [
        {"name": "TOKENSCALE_BENCH_SHARDS", "value": str(spec.shards)},
        {"name": "TOKENSCALE_BENCHMARK", "value": meta["name"]},
        {"name": "TOKENSCALE_BENCHMARK_UID", "value": meta["uid"]},
        {"name": "TOKENSCALE_BENCH_RUN", "value": name},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.dataset.config_map:
        volumes.append({"name": "prompts", "configMap": {"name": spec.dataset.config_map}})
        mounts.append({"name": "prompts", "mountPath": "/etc/tokenscale/prompts"})
    container = {
        "name": "bench",
        "image": spec.image or cfg.images.operator,
        "command": ["tokenscale", "bench-job", "--"],
        "args": args,
        "env": env,
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.shards,
            "parallelism": spec.shards,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {**labels, **cfg.benchmark.labels}},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": cfg.benchmark.service_account,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def rbac(namespace: str, cfg: OperatorConfig) -> list[dict[str, Any]]:
    """ServiceAccount + Role + RoleBinding: benchmark pods may only write result ConfigMaps."""
    name = cfg.benchmark.service_account
    labels = {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_COMPONENT: "benchmark"}
    meta = {"name": name, "namespace": namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "create", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]

"""The table of invalid manifests, shared by the unit test of ``tokenscale validate`` and the
e2e test that sends the same objects to a real API server.

Each case names the field that must appear in the error and whether the CRD schema (OpenAPI +
CEL) can reject it on its own (``server``) — the rest are judged by the operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.factories import benchmark, service


def _pool(**changes: Any) -> list[dict[str, Any]]:
    return [{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 2, **changes}]


def _long_name() -> dict[str, Any]:
    doc = service()
    doc["metadata"]["name"] = "a" * 41
    return doc


@dataclass(frozen=True)
class Case:
    """One invalid manifest and what the error must say."""

    id: str
    manifest: dict[str, Any]
    field: str
    says: str
    server: bool = True


HF = {"huggingFace": "meta-llama/Llama-2-70b-hf"}
CASES: list[Case] = [
    Case("unknown-spec-field", service(replica=3), "spec.replica", "unknown field"),
    Case(
        "unknown-nested-field",
        service(pools=_pool(gpuCount=8)),
        "spec.pools[0].gpuCount",
        "unknown field",
    ),
    Case(
        "wrong-type-replicas",
        service(pools=_pool(maxReplicas="many")),
        "spec.pools[0].maxReplicas",
        "wrong type",
    ),
    Case(
        "min-greater-than-max",
        service(pools=_pool(minReplicas=5, maxReplicas=2)),
        "spec.pools[0]",
        "minReplicas",
    ),
    Case(
        "alternative-repeats-gpu",
        service(pools=_pool(alternatives=["MI325X", "MI300X"])),
        "spec.pools[0]",
        "alternatives",
    ),
    Case(
        "alternative-cpu",
        service(pools=_pool(alternatives=["CPU"])),
        "spec.pools[0]",
        "alternatives",
    ),
    Case(
        "unknown-gpu-model",
        service(pools=_pool(gpu="H100")),
        "spec.pools[0].gpu",
        "MI300X",
    ),
    Case(
        "two-model-sources",
        service(model={"name": "m", "source": {**HF, "s3": {"uri": "s3://b/m"}}}),
        "spec.model.source",
        "exactly one",
    ),
    Case(
        "no-model-source",
        service(model={"name": "m", "source": {}}),
        "spec.model.source",
        "exactly one",
    ),
    Case(
        "negative-target",
        service(scaling={"mode": "builtin", "targetPerReplica": -5}),
        "spec.scaling.targetPerReplica",
        "greater than 0",
    ),
    Case("name-too-long", _long_name(), "metadata.name", "at most 40"),
    Case(
        "pool-name-too-long",
        service(pools=_pool(name="a-very-long-pool-name")),
        "spec.pools[0].name",
        "shorten",
    ),
    Case(
        "pool-name-not-dns",
        service(pools=_pool(name="MI300X_Pool")),
        "spec.pools[0].name",
        "invalid format",
    ),
    Case("no-pools", service(pools=[]), "spec.pools", "at least 1"),
    Case(
        "duplicate-pools",
        service(pools=[*_pool(), *_pool()]),
        "spec",
        "unique",
    ),
    Case(
        "unknown-dtype",
        service(model={"name": "m", "source": HF, "dtype": "int3"}),
        "spec.model.dtype",
        "bf16",
    ),
    Case(
        "preset-and-explicit-limits",
        service(sla={"preset": "llama2-70b-server", "ttftP99Ms": 100}),
        "spec.sla",
        "not both",
    ),
    Case("unknown-preset", service(sla={"preset": "llama9-server"}), "spec.sla.preset", "one of"),
    Case(
        "unknown-rollout-strategy",
        service(rollout={"strategy": "recreate"}),
        "spec.rollout.strategy",
        "one of",
    ),
    Case("half-explicit-sla", service(sla={"ttftP99Ms": 500}), "spec.sla", "tpotP99Ms"),
    Case(
        "builtin-without-target",
        service(scaling={"mode": "builtin"}),
        "spec.scaling",
        "targetPerReplica",
    ),
    Case(
        "bad-gpus-per-replica",
        service(pools=_pool(gpusPerReplica="lots")),
        "spec.pools[0].gpusPerReplica",
        "auto",
    ),
    Case(
        "zero-gpus-per-replica",
        service(pools=_pool(gpusPerReplica=0)),
        "spec.pools[0]",
        "gpusPerReplica",
    ),
    Case(
        "unknown-pool-preference",
        service(scaling={"mode": "builtin", "targetPerReplica": 10, "poolPreference": "watts"}),
        "spec.scaling.poolPreference",
        "costAndEnergy",
    ),
    Case(
        "headroom-above-one",
        service(scaling={"mode": "builtin", "targetPerReplica": 10, "headroom": 1.5}),
        "spec.scaling.headroom",
        "less than or equal to 1",
    ),
    Case(
        "bad-hf-id",
        service(model={"name": "m", "source": {"huggingFace": "not an id"}}),
        "spec.model.source.huggingFace",
        "invalid format",
    ),
    Case(
        "bench-server-without-qps",
        benchmark(load={"durationSeconds": 60}),
        "spec",
        "load.qps",
    ),
    Case(
        "bench-two-targets",
        benchmark(target={"service": "a", "url": "http://127.0.0.1:8000"}),
        "spec.target",
        "exactly one",
    ),
    Case(
        "bench-unknown-scenario",
        benchmark(scenario="singlestream"),
        "spec.scenario",
        "offline",
    ),
    Case(
        "rollout-benchmark-too-short",
        service(benchmarkOnRollout={"enabled": True, "durationSeconds": 5}),
        "spec.benchmarkOnRollout.durationSeconds",
        "greater than or equal to 10",
    ),
    Case("bench-zero-shards", benchmark(shards=0), "spec.shards", "greater than or equal to 1"),
    Case(
        "sweep-zero-replicas",
        benchmark(scenario="replicaSweep", load={"replicas": [0, 2]}),
        "spec.load.replicas[0]",
        "greater than or equal to 1",
    ),
    Case(
        "sweep-too-many-levels",
        benchmark(scenario="replicaSweep", load={"replicas": list(range(1, 18))}),
        "spec.load.replicas",
        "at most 16",
    ),
]


def _pod(**fields: Any) -> dict[str, Any]:
    """A service whose spec.podTemplate holds ``fields``."""
    return service(podTemplate=fields)


SECRET_ENV = {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "api"}}}
CERTS = {"name": "certs", "secret": {"secretName": "certs"}}
#: spec.podTemplate: each field the operator owns, and Kubernetes shapes gone wrong.
CASES += [
    Case(
        "pod-template-gpu-limit",
        _pod(resources={"limits": {"amd.com/gpu": 8}}),
        "spec.podTemplate.resources.limits.amd.com/gpu",
        "GPU resources (amd.com/*) are set by the operator",
    ),
    Case(
        "pod-template-gpu-request-partition",
        _pod(resources={"requests": {"amd.com/cpx_nps4": "2"}}),
        "spec.podTemplate.resources.requests.amd.com/cpx_nps4",
        "GPU resources",
    ),
    Case(
        "pod-template-bad-quantity",
        _pod(resources={"requests": {"memory": "lots"}}),
        "spec.podTemplate.resources.requests.memory",
        "not a Kubernetes quantity",
        server=False,
    ),
    Case(
        "pod-template-selector-label",
        _pod(labels={"tokenscale.dev/pool": "other"}),
        "spec.podTemplate.labels.tokenscale.dev/pool",
        "set by the operator",
    ),
    Case(
        "pod-template-app-label",
        _pod(labels={"app.kubernetes.io/instance": "x"}),
        "spec.podTemplate.labels.app.kubernetes.io/instance",
        "set by the operator",
    ),
    Case(
        "pod-template-owned-annotation",
        _pod(annotations={"tokenscale.dev/spec-hash": "0"}),
        "spec.podTemplate.annotations.tokenscale.dev/spec-hash",
        "written by the operator",
    ),
    Case(
        "pod-template-owned-env",
        _pod(env=[{"name": "POD_IP", "value": "1.2.3.4"}]),
        "spec.podTemplate.env[0].name",
        "the operator sets this variable",
    ),
    Case(
        "pod-template-visible-devices",
        _pod(env=[SECRET_ENV, {"name": "HIP_VISIBLE_DEVICES", "value": "0"}]),
        "spec.podTemplate.env[1].name",
        "VISIBLE_DEVICES",
    ),
    Case(
        "pod-template-duplicate-env",
        _pod(env=[SECRET_ENV, SECRET_ENV]),
        "spec.podTemplate.env[1].name",
        "unique",
    ),
    Case(
        "pod-template-secret-ref-without-key",
        _pod(env=[{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys"}}}]),
        "spec.podTemplate.env[0].valueFrom.secretKeyRef.key",
        "required",
    ),
    Case(
        "pod-template-owned-volume",
        _pod(volumes=[{"name": "shm", "emptyDir": {}}]),
        "spec.podTemplate.volumes[0].name",
        "are the operator's",
    ),
    Case(
        "pod-template-volume-typo",
        _pod(volumes=[{"name": "certs", "secret": {"secretNam": "certs"}}]),
        "spec.podTemplate.volumes[0].secret.secretNam",
        "unknown field",
    ),
    Case(
        "pod-template-mount-without-volume",
        _pod(volumeMounts=[{"name": "certs", "mountPath": "/etc/certs"}]),
        "spec.podTemplate.volumeMounts[0].name",
        "must be a volume in podTemplate.volumes",
    ),
    Case(
        "pod-template-mount-path-twice",
        _pod(
            volumes=[CERTS],
            volumeMounts=[
                {"name": "certs", "mountPath": "/etc/certs"},
                {"name": "certs", "mountPath": "/etc/certs"},
            ],
        ),
        "spec.podTemplate.volumeMounts[1].mountPath",
        "unique",
    ),
    Case(
        "pod-template-toleration-seconds-text",
        _pod(tolerations=[{"key": "k", "operator": "Exists", "tolerationSeconds": "forever"}]),
        "spec.podTemplate.tolerations[0].tolerationSeconds",
        "wrong type",
    ),
    Case(
        "pod-template-affinity-typo",
        _pod(affinity={"nodeAffinity": {"requiredDuringScheduling": {}}}),
        "spec.podTemplate.affinity.nodeAffinity.requiredDuringScheduling",
        "unknown field",
    ),
    Case(
        "pod-template-priority-class-not-a-name",
        _pod(priorityClassName="High Priority"),
        "spec.podTemplate.priorityClassName",
        "invalid format",
    ),
    Case(
        "pod-template-engine-command",
        _pod(command=["bash"]),
        "spec.podTemplate.command",
        "unknown field",
    ),
]


def _pool_pod(service_fields: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A service whose only pool has ``fields`` as its podTemplate."""
    doc = service(pools=_pool(podTemplate=fields))
    if service_fields is not None:
        doc["spec"]["podTemplate"] = service_fields
    return doc


#: spec.pools[].podTemplate: the same refusals, the service-wide-only fields, contradictions.
CASES += [
    Case(
        "pool-pod-template-gpu-limit",
        _pool_pod(resources={"limits": {"amd.com/gpu": 2}}),
        "spec.pools[0].podTemplate.resources.limits.amd.com/gpu",
        "GPU resources",
        server=False,  # no CEL under the pools list (cost budget): the operator refuses it
    ),
    Case(
        "pool-pod-template-selector-label",
        _pool_pod(labels={"tokenscale.dev/service": "other"}),
        "spec.pools[0].podTemplate.labels.tokenscale.dev/service",
        "set by the operator",
        server=False,
    ),
    Case(
        "pool-pod-template-volumes-are-service-wide",
        _pool_pod(volumes=[CERTS]),
        "spec.pools[0].podTemplate.volumes",
        "unknown field",
    ),
    Case(
        "pool-pod-template-contradicts-node-selector",
        _pool_pod({"nodeSelector": {"pool": "a"}}, nodeSelector={"pool": "b"}),
        "spec.pools[0].podTemplate.nodeSelector.pool",
        "spec.podTemplate.nodeSelector requires pool=a",
        server=False,
    ),
    Case(
        "pool-pod-template-other-priority",
        _pool_pod({"priorityClassName": "high"}, priorityClassName="low"),
        "spec.pools[0].podTemplate.priorityClassName",
        "spec.podTemplate.priorityClassName is high",
        server=False,
    ),
    Case(
        "pool-pod-template-env-set-twice",
        _pool_pod({"env": [SECRET_ENV]}, env=[SECRET_ENV]),
        "spec.pools[0].podTemplate.env[0].name",
        "already sets API_KEY",
        server=False,
    ),
    Case(
        "simulated-unsupported-model",
        service(
            model={"name": "gpt-oss-120b", "source": {"huggingFace": "openai/gpt-oss-120b"}},
            engine={"mode": "simulated"},
        ),
        "spec.model.name",
        "the simulator has no profile for model 'gpt-oss-120b'",
        server=False,  # the model key is inferred from name/source (catalogue), not in CEL
    ),
    Case(
        "simulated-unsupported-gpu",
        service(engine={"mode": "simulated"}, pools=_pool(gpu="MI250X")),
        "spec.pools[0].gpu",
        "fix: use one of MI300X, MI325X, MI355X",
        server=False,
    ),
    Case(
        "benchmark-target-timeout-too-short",
        benchmark(targetTimeoutSeconds=0),
        "spec.targetTimeoutSeconds",
        "greater than or equal to 10",
    ),
    Case(
        "routing-unknown-mode",
        service(routing={"mode": "envoy"}),
        "spec.routing.mode",
        "inferencePool",
    ),
    Case(
        "routing-unknown-policy",
        service(routing={"mode": "router", "router": {"policy": "least_request"}}),
        "spec.routing.router.policy",
        "cache_aware",
    ),
    Case(
        "routing-single-router-replica",
        service(routing={"mode": "router", "router": {"replicas": 1}}),
        "spec.routing.router.replicas",
        "2",
    ),
    Case(
        "routing-cache-threshold-above-one",
        service(routing={"mode": "router", "router": {"cacheThreshold": 1.5}}),
        "spec.routing.router.cacheThreshold",
        "1",
    ),
    Case(
        "routing-router-settings-without-mode",
        service(routing={"router": {"policy": "round_robin"}}),
        "spec.routing",
        "router settings need mode: router",
    ),
    Case(
        "routing-pool-mode-without-settings",
        service(routing={"mode": "inferencePool"}),
        "spec.routing",
        "needs inferencePool",
    ),
    Case(
        "routing-pool-gateway-not-a-name",
        service(
            routing={
                "mode": "inferencePool",
                "inferencePool": {"gatewayName": "My_Gateway", "endpointPickerImage": "epp:1"},
            }
        ),
        "spec.routing.inferencePool.gatewayName",
        "must match",
    ),
    Case(
        "routing-router-with-scale-to-zero",
        service(
            routing={"mode": "router"},
            scaling={"mode": "builtin", "targetPerReplica": 2500, "scaleToZero": True},
            pools=_pool(minReplicas=0),
        ),
        "spec",
        "cannot be combined with scaling.scaleToZero",
    ),
]


def pd_service(**changes: Any) -> dict[str, Any]:
    """A valid disaggregated service (router mode, one prefill and one decode pool) with
    ``changes`` merged into spec.disaggregation (None removes a key)."""
    pd: dict[str, Any] = {
        "prefill": {"pools": ["prefill"], "targetPerReplica": 20000},
        "decode": {"pools": ["decode"], "targetPerReplica": 5000},
    }
    for key, value in changes.items():
        if value is None:
            pd.pop(key, None)
        else:
            pd[key] = value
    return service(
        pools=[
            {"name": "prefill", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": 4},
            {"name": "decode", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": 8},
        ],
        routing={"mode": "router"},
        disaggregation=pd,
    )


def _pd_without_router() -> dict[str, Any]:
    doc = pd_service()
    del doc["spec"]["routing"]
    return doc


def _pd_extra_pool() -> dict[str, Any]:
    doc = pd_service()
    doc["spec"]["pools"].append({"name": "spare", "gpu": "MI355X", "maxReplicas": 2})
    return doc


def _pd_cpu() -> dict[str, Any]:
    doc = pd_service()
    doc["spec"]["pools"][0]["gpu"] = "CPU"
    return doc


#: spec.disaggregation (prefill/decode roles).
CASES += [
    Case("pd-without-router", _pd_without_router(), "spec.disaggregation", "routing.mode"),
    Case(
        "pd-unknown-pool",
        pd_service(prefill={"pools": ["nope"], "targetPerReplica": 1}),
        "spec.disaggregation.prefill.pools[0]",
        "no pool named",
    ),
    Case(
        "pd-pool-in-both-roles",
        pd_service(decode={"pools": ["decode", "prefill"], "targetPerReplica": 1}),
        "spec.disaggregation",
        "both roles",
    ),
    Case("pd-pool-without-role", _pd_extra_pool(), "spec.pools[2]", "neither"),
    Case(
        "pd-role-without-target",
        pd_service(decode={"pools": ["decode"]}),
        "spec.disaggregation.decode.targetPerReplica",
        "generation tokens/s",
    ),
    Case(
        "pd-unknown-connector",
        pd_service(kvConnector="mooncake"),
        "spec.disaggregation.kvConnector",
        "one of",
    ),
    Case("pd-cpu-pool", _pd_cpu(), "spec.pools[0].gpu", "KV connectors", server=False),
    Case(
        "pd-pool-twice-in-role",
        pd_service(prefill={"pools": ["prefill", "prefill"], "targetPerReplica": 1}),
        "spec.disaggregation.prefill",
        "listed twice",
    ),
]

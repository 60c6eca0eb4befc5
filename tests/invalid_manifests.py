"""The table of invalid manifests, shared by the unit test of ``tokenscale validate`` and the
e2e test that sends the same objects to a real API server.

Each case names the field that must appear in the error and whether the CRD schema (OpenAPI +
CEL) can reject it on its own (``server``) — the rest are judged by the operator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


def service(**spec_changes: Any) -> dict[str, Any]:
    """A valid InferenceService; keyword arguments replace top-level spec keys."""
    spec: dict[str, Any] = {
        "model": {"name": "llama-2-70b", "source": {"huggingFace": "meta-llama/Llama-2-70b-hf"}},
        "pools": [{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 2}],
        "scaling": {"mode": "builtin", "targetPerReplica": 2500},
        "sla": {"preset": "llama2-70b-server"},
    }
    spec.update(copy.deepcopy(spec_changes))
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "bad"},
        "spec": spec,
    }


def benchmark(**spec_changes: Any) -> dict[str, Any]:
    """A valid InferenceBenchmark; keyword arguments replace top-level spec keys."""
    spec: dict[str, Any] = {
        "target": {"service": "llama2-70b"},
        "scenario": "server",
        "load": {"qps": 10, "durationSeconds": 60},
        "sla": {"preset": "llama2-70b-server"},
    }
    spec.update(copy.deepcopy(spec_changes))
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceBenchmark",
        "metadata": {"name": "bad-bench"},
        "spec": spec,
    }


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

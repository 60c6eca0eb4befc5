"""Allocatable GPUs, replicas that fit, pod-deletion costs, and where the target comes from.

Why: capacity-aware scale-up is what turns "Pending pods" into an ``InsufficientGPU`` condition,
and deletion costs are what make a scale-down drain the least-loaded engine; both read Node and
Pod dicts exactly as the API returns them, so they are tested on such dicts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tokenscale.api.config import DEFAULT_GPUS
from tokenscale.api.service import ScalingSpec
from tokenscale.api.status import BenchmarkSummary
from tokenscale.autoscale.capacity import (
    deletion_cost_patches,
    deletion_costs,
    free_per_node,
    node_matches,
    parse_count,
    placement_fields,
    pod_request,
    replicas_that_fit,
    resource_name,
)
from tokenscale.autoscale.targets import latest_passing, resolve_target
from tokenscale.constants import ANNOTATION_POD_DELETION_COST

MI355X = DEFAULT_GPUS["MI355X"]
MI300X = DEFAULT_GPUS["MI300X"]


def node(name: str, labels: dict[str, str], gpus: str = "8", **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": extra.get("spec", {}),
        "status": {
            "allocatable": {"amd.com/gpu": gpus, "cpu": "128"},
            "conditions": [{"type": "Ready", "status": extra.get("ready", "True")}],
        },
    }


def pod(node_name: str, gpus: int, phase: str = "Running", init: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node_name,
        "containers": [{"resources": {"limits": {"amd.com/gpu": str(gpus)}}}],
    }
    if init:
        spec["initContainers"] = [{"resources": {"requests": {"amd.com/gpu": str(init)}}}]
    return {"spec": spec, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("labels", "matches"),
    [
        ({"amd.com/gpu.device-id": "75a3"}, True),
        ({"amd.com/gpu.device-id": "75A3"}, True),
        ({"amd.com/gpu.device-id.75b3": "8"}, True),  # heterogeneous node key
        ({"amd.com/gpu.device-id.74a1": "4", "amd.com/gpu.device-id.75a3": "4"}, True),
        ({"amd.com/gpu.product-name": "AMD_Instinct_MI355X_OAM"}, True),
        ({"beta.amd.com/gpu.device-id": "75a3"}, True),
        ({"amd.com/gpu.device-id": "74a1"}, False),
        ({"feature.node.kubernetes.io/amd-gpu": "true"}, False),
        ({}, False),
    ],
)
def test_node_matches_gpu_model(labels: dict[str, str], matches: bool) -> None:
    assert node_matches(labels, MI355X) is matches


def test_free_gpus_subtract_bound_non_terminated_pods() -> None:
    mi355 = {"amd.com/gpu.device-id": "75a3"}
    nodes = [
        node("n1", mi355),
        node("n2", mi355),
        node("cordoned", mi355, spec={"unschedulable": True}),
        node("notready", mi355, ready="False"),
        node("mi300", {"amd.com/gpu.device-id": "74a1"}),
    ]
    pods = [
        pod("n1", 2),
        pod("n1", 1, init=4),  # init container needs 4 > 1
        pod("n2", 8, phase="Succeeded"),  # finished: frees its GPUs
        pod("mi300", 8),
        pod("elsewhere", 8),
    ]
    free = free_per_node(nodes, pods, MI355X)
    assert free == {"n1": 2, "n2": 8}
    assert replicas_that_fit(free, 1) == 10
    assert replicas_that_fit(free, 2) == 5
    assert replicas_that_fit(free, 4) == 2  # n1's 2 free GPUs cannot host a 4-GPU replica
    assert replicas_that_fit(free, 8) == 1
    assert replicas_that_fit({"a": 8, "b": 8, "c": 4}, 16, nodes_per_replica=2) == 1
    assert replicas_that_fit({"a": 8, "b": 8, "c": 8, "d": 8}, 16, nodes_per_replica=2) == 2
    assert replicas_that_fit(free, 0) == 0


def _whole(reduced: dict[str, Any], name: str) -> dict[str, Any]:
    """A pod as the API returns it: the fields capacity reads plus the bulk it does not."""
    whole = {
        "metadata": {"name": name, "labels": {"app": name}, "managedFields": [{"f": "x" * 500}]},
        "spec": {**reduced["spec"], "volumes": [{"name": "cache"}], "tolerations": []},
        "status": {**reduced["status"], "conditions": [{"type": "Ready", "status": "True"}]},
    }
    for container in whole["spec"]["containers"]:
        container.update(name="vllm", image="rocm/vllm", env=[{"name": "HF_TOKEN", "value": "s"}])
    return whole


def test_capacity_counts_the_same_on_pods_reduced_to_placement_fields() -> None:
    """The cluster-wide pod list behind a count keeps only ``placement_fields``: the count must
    not change, and what is kept must not carry the pod's bulk (or a secret in its env)."""
    mi355 = {"amd.com/gpu.device-id": "75a3"}
    nodes = [node("n1", mi355), node("n2", mi355), node("n3", mi355, gpus="4")]
    shapes = [
        pod("n1", 2),
        pod("n1", 1, init=4),
        pod("n2", 8, phase="Succeeded"),
        pod("n2", 3, phase="Pending"),
        pod("n3", 1),
        {"spec": {"nodeName": "n3", "containers": [{}]}, "status": {}},  # no resources
        {"spec": {"containers": [{"resources": {"requests": {"amd.com/gpu": "2"}}}]}, "status": {}},
    ]
    whole = [_whole(shape, f"p{i}") for i, shape in enumerate(shapes)]
    reduced = [placement_fields(p) for p in whole]
    assert free_per_node(nodes, reduced, MI355X) == free_per_node(nodes, whole, MI355X)
    assert free_per_node(nodes, reduced, MI355X) == {"n1": 2, "n2": 5, "n3": 3}
    assert all(
        pod_request(r, "amd.com/gpu") == pod_request(w, "amd.com/gpu")
        for r, w in zip(reduced, whole, strict=True)
    )
    kept = str(reduced)
    assert "managedFields" not in kept and "HF_TOKEN" not in kept and "image" not in kept


def test_partition_resources_and_quantities() -> None:
    assert resource_name(None) == "amd.com/gpu"
    assert resource_name("cpx_nps4") == "amd.com/cpx_nps4"
    assert parse_count("8") == 8 and parse_count(4) == 4 and parse_count("1k") == 1000
    assert parse_count("garbage") == 0
    cpx = node("p", {"amd.com/gpu.device-id": "74a1"})
    cpx["status"]["allocatable"]["amd.com/cpx_nps4"] = "64"
    free = free_per_node([cpx], [], MI300X, resource="amd.com/cpx_nps4")
    assert free == {"p": 64}
    assert pod_request(pod("p", 3), "amd.com/gpu") == 3


def test_deletion_costs_put_least_loaded_first() -> None:
    costs = deletion_costs({"busy": 120.0, "idle": 0.0, "starting": None, "some": 7.4})
    assert costs == {"busy": 120, "idle": 0, "some": 7, "starting": 0}
    assert min(costs, key=lambda k: (costs[k], k)) == "idle"
    assert deletion_costs({"huge": 1e12})["huge"] == 2**31 - 1
    pods: list[dict[str, Any]] = [
        {"metadata": {"name": "busy", "annotations": {ANNOTATION_POD_DELETION_COST: "120"}}},
        {"metadata": {"name": "idle", "annotations": {ANNOTATION_POD_DELETION_COST: "5"}}},
        {"metadata": {"name": "some"}},
        {"metadata": {"name": "other"}},
    ]
    assert deletion_cost_patches(pods, costs) == {"idle": "0", "some": "7"}


def bench(name: str, verdict: str, capacity: float | None, day: int) -> BenchmarkSummary:
    return BenchmarkSummary(
        name=name,
        verdict=verdict,
        capacity_per_replica=capacity,
        completed_at=datetime(2026, 11, day, tzinfo=UTC),
    )


def test_target_from_latest_passing_benchmark() -> None:
    history = [
        bench("old", "Pass", 10_000, 1),
        bench("newer", "Pass", 12_000, 2),
        bench("failed", "Fail", 20_000, 3),
        bench("no-capacity", "Pass", None, 4),
    ]
    best = latest_passing(history)
    assert best is not None and best.name == "newer"
    policy = ScalingSpec(mode="builtin", target_from_benchmark=True, headroom=0.8)
    target = resolve_target(policy, benchmarks=history, gpu=MI355X)
    assert target.value == pytest.approx(9600) and target.source == "benchmark/newer"
    assert target.capacity_per_replica == 12_000


def test_target_fallbacks() -> None:
    spec = ScalingSpec(mode="builtin", target_per_replica=2500)
    assert resolve_target(spec, gpu=MI355X).source == "spec"
    assert resolve_target(spec, gpu=MI355X).capacity_per_replica == 12_500
    boot = ScalingSpec(mode="builtin", target_from_benchmark=True, headroom=0.5)
    no_bench = resolve_target(boot, gpu=MI355X, gpus_per_replica=2)
    assert no_bench.value == pytest.approx(12_500) and no_bench.source == "config/gfx950"
    kv = ScalingSpec(mode="builtin", target_from_benchmark=True, metric="kvCacheUsage")
    assert resolve_target(kv, benchmarks=[bench("b", "Pass", 9000, 1)]).value is None

"""Capacity on DRA node pools: free devices = devices in ResourceSlices - allocated in claims.

Why: on DRA nodes there is no allocatable ``amd.com/gpu``; without counting devices the
autoscaler would see zero capacity (refusing every scale-up) or unlimited capacity (a pile of
Pending pods). Inputs are the test bed's slices, so the counts match what e2e runs on.
"""

from __future__ import annotations

from typing import Any

from tests.testbed import dra as tb_dra
from tests.testbed import nodes
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.api.status import PoolPlan
from tokenscale.autoscale.capacity import replicas_that_fit
from tokenscale.autoscale.dra import DraView, claimed_models, free_per_node
from tokenscale.autoscale.state import PoolInput
from tokenscale.controller.autoscaler import with_allocatable
from tokenscale.controller.observe import pod_problems

CFG = OperatorConfig()
SLICES = [o for o in tb_dra.manifests(nodes.DEFAULT_POOLS) if o["kind"] == "ResourceSlice"]


def _claim(node: str, *devices: str, driver: str = "gpu.amd.com") -> dict[str, Any]:
    results = [{"request": "gpus", "driver": driver, "pool": node, "device": d} for d in devices]
    return {"status": {"allocation": {"devices": {"results": results}}}}


def test_free_devices_per_model_and_profile() -> None:
    assert free_per_node(SLICES, [], ("MI355X", None), CFG.gpus, "gpu.amd.com") == {
        "mi355x-dra-0": 8
    }
    assert free_per_node(SLICES, [], ("MI300X", None), CFG.gpus, "gpu.amd.com") == {
        "mi300x-dra-0": 4
    }
    assert free_per_node(SLICES, [], ("MI300X", "cpx_nps1"), CFG.gpus, "gpu.amd.com") == {
        "mi300x-dra-0": 32
    }
    assert free_per_node(SLICES, [], ("MI325X", None), CFG.gpus, "gpu.amd.com") == {}


def test_allocated_devices_are_not_free_and_other_drivers_do_not_count() -> None:
    claims = [
        _claim("mi355x-dra-0", "gpu-1-128", "gpu-2-129"),
        _claim("mi355x-dra-0", "gpu-3-130"),
        _claim("mi355x-dra-0", "gpu-4-131", driver="gpu.example.com"),
        {"status": {}},  # pending: allocates nothing yet
    ]
    free = free_per_node(SLICES, claims, ("MI355X", None), CFG.gpus, "gpu.amd.com")
    assert free == {"mi355x-dra-0": 5}
    assert replicas_that_fit(free, 2) == 2
    # a partition claim on the mixed node leaves its whole GPUs free
    claims = [_claim("mi300x-dra-0", "gpu-5-132")]
    assert free_per_node(SLICES, claims, ("MI300X", None), CFG.gpus, "gpu.amd.com") == {
        "mi300x-dra-0": 4
    }
    assert free_per_node(SLICES, claims, ("MI300X", "cpx_nps1"), CFG.gpus, "gpu.amd.com") == {
        "mi300x-dra-0": 31
    }


def _svc() -> InferenceService:
    return InferenceService.model_validate(
        {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {
                "model": {
                    "name": "llama-3.1-8b",
                    "source": {"huggingFace": "meta-llama/Llama-3.1-8B-Instruct"},
                    "maxModelLen": 4096,
                },
                "pools": [{"name": "big", "gpu": "MI355X", "gpusPerReplica": 4, "maxReplicas": 8}],
            },
        }
    )


def _input() -> PoolInput:
    return PoolInput(
        name="big", min_replicas=1, max_replicas=8, replicas=1, ready_replicas=1,
        target_per_replica=100.0,
    )  # fmt: skip


def test_with_allocatable_counts_dra_devices_for_dra_pools() -> None:
    plan = PoolPlan(pool="big", gpu="MI355X", fits=True, gpus_per_replica=4, tensor_parallel=4)
    node_list = nodes.manifests()
    one_replica = [_claim("mi355x-dra-0", "gpu-1-128", "gpu-2-129", "gpu-3-130", "gpu-4-131")]
    view = DraView({"big": "dra"}, SLICES, one_replica)
    [dra_in] = with_allocatable([_input()], _svc(), CFG, [plan], node_list, [], view)
    assert dra_in.allocatable_replicas == 1  # 4 of the node's 8 devices are left
    # the same pool through the device plugin sees the two MI355X nodes' amd.com/gpu
    [plugin_in] = with_allocatable([_input()], _svc(), CFG, [plan], node_list, [], None)
    assert plugin_in.allocatable_replicas == 4


def _pending(name: str, claim: str | None, message: str) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }
        ]
    }
    if claim:
        status["resourceClaimStatuses"] = [{"name": "gpus", "resourceClaimName": claim}]
    return {"metadata": {"name": name, "labels": {"tokenscale.dev/pool": "big"}}, "status": status}


def test_a_pod_waiting_for_devices_names_its_claim_once_per_pool() -> None:
    msg = "0/11 nodes are available: 1 cannot allocate all claims. 10 node(s) didn't match."
    found = pod_problems(
        [_pending("a", "s-big-0-gpus-abcde", msg), _pending("b", "s-big-1-gpus-x", msg)]
    )
    assert found == {
        "big": [f"Unschedulable: ResourceClaim s-big-0-gpus-abcde waits for devices: {msg}"]
    }
    plain = pod_problems([_pending("c", None, "Insufficient amd.com/gpu")])
    assert plain == {"big": ["Unschedulable: Insufficient amd.com/gpu"]}


def test_claimed_models_read_the_first_available_entry() -> None:
    def claim(pool: str, request: str) -> dict[str, Any]:
        result = {"request": request, "driver": "gpu.amd.com", "pool": "n", "device": "d"}
        return {
            "metadata": {"labels": {"tokenscale.dev/pool": pool}},
            "status": {"allocation": {"devices": {"results": [result, dict(result)]}}},
        }

    claims = [
        claim("big", "gpus/mi355x"),
        claim("big", "gpus/mi355x"),
        claim("big", "gpus/mi300x"),
        claim("plain", "gpus"),  # no alternatives: no entry to report
        {"metadata": {"labels": {"tokenscale.dev/pool": "big"}}, "status": {}},  # pending
    ]
    found = claimed_models(claims, CFG.gpus, "tokenscale.dev/pool", "gpu.amd.com")
    assert found == {"big": {"MI300X": 1, "MI355X": 2}}


def test_capacity_of_a_pool_with_alternatives_adds_each_models_free_devices() -> None:
    svc = InferenceService.model_validate(
        {
            **_svc().model_dump(by_alias=True, exclude_none=True),
            "spec": {
                **_svc().spec.model_dump(by_alias=True, exclude_none=True),
                "pools": [
                    {
                        "name": "big",
                        "gpu": "MI355X",
                        "alternatives": ["MI300X"],
                        "gpusPerReplica": 4,
                        "maxReplicas": 8,
                    }
                ],
            },
        }
    )
    plan = PoolPlan(pool="big", gpu="MI355X", fits=True, gpus_per_replica=4, tensor_parallel=4)
    view = DraView({"big": "dra"}, SLICES, [])
    [got] = with_allocatable([_input()], svc, CFG, [plan], [], [], view)
    assert got.allocatable_replicas == 2 + 1  # 8 MI355X devices, then 4 whole MI300X

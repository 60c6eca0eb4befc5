"""Every node shape a real AMD cluster publishes gets its pools placed by the real scheduler on
the right nodes with the right resource name, or a condition that says why not.

The shapes (tests/testbed/nodes.py ``node_shapes``) are created for this module only and
removed afterwards, so other tests keep the test bed they assume. The operator runs with
``pods.resourceNaming: auto`` (the default) and a node selector on the shape nodes, an ordinary
config setting, so the session's other nodes cannot hide a wrong decision. Placement is asserted
on ``pod.spec.nodeName``: what the scheduler did, not what the operator rendered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.helpers import apply, get, wait_condition, wait_for
from tests.e2e.operator_proc import OPERATOR_CONFIG, OperatorProcess
from tests.testbed import nodes
from tests.testbed.cluster import Cluster
from tokenscale import constants as c

pytestmark = pytest.mark.e2e
PARTITION_NODES = {"shape-mixed-cpx", "shape-single-cpx"}
TAINTED = {"shape-unhealthy", "shape-dcm"}


def _config(cluster: Cluster) -> Path:
    cfg: dict[str, Any] = yaml.safe_load(OPERATOR_CONFIG.read_text())
    cfg["pods"]["nodeSelector"] = {nodes.POOL_LABEL: "shapes"}
    cfg["pods"]["resourceNaming"] = "auto"
    path = cluster.work_dir / "operator-shapes.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def shapes(cluster: Cluster, operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """Shape nodes plus an operator that reads them (nodes are read once per resync pass, so
    it starts after they exist); the session's operator steps aside meanwhile."""
    api = cluster.api_client()
    names = nodes.create_shapes(api, nodes.node_shapes())
    core = client.CoreV1Api(api)

    def ready() -> bool:
        found = {
            n.metadata.name: n
            for n in core.list_node(label_selector=f"{nodes.POOL_LABEL}=shapes").items
        }
        return set(names) <= {
            name
            for name, n in found.items()
            if any(cd.type == "Ready" and cd.status == "True" for cd in n.status.conditions or [])
        }

    try:
        wait_for(ready, timeout=60, what="shape nodes Ready")
        operator.stop()
        proc = OperatorProcess(cluster, config=_config(cluster), name="operator-shapes").start()
        try:
            yield proc
        finally:
            proc.stop()
            print(f"\noperator-shapes log (tail):\n{proc.tail(30)}")
    finally:
        nodes.delete_nodes(api, names)
        api.close()
        operator.start()


def _service(name: str, pools: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "llama-3.1-8b",
                "source": {"huggingFace": "meta-llama/Llama-3.1-8B-Instruct"},
                "maxModelLen": 4096,
            },
            "pools": [{**p, "maxReplicas": p["minReplicas"]} for p in pools],
            "scaling": {"mode": "off"},
        },
    }


#: pool -> (spec, resource name, nodes its pods may bind to, bound pods expected)
EXPECTED: dict[str, tuple[dict[str, Any], str, set[str], int]] = {
    # mixed naming, unpartitioned MI300X: the only whole MI300X capacity is spx_nps1 (8); the
    # second 8-GPU replica must stay Pending, never fall onto a 24 GiB partition
    "whole": ({"gpu": "MI300X", "gpusPerReplica": 8, "minReplicas": 2},
              "amd.com/spx_nps1", {"shape-mixed-spx"}, 1),
    "cpx4": ({"gpu": "MI300X", "partition": "cpx_nps4", "minReplicas": 2},
             "amd.com/cpx_nps4", {"shape-mixed-cpx"}, 2),
    # single naming on CPX: amd.com/gpu, chosen by the 24G vram label
    "cpx1": ({"gpu": "MI300X", "partition": "cpx_nps1", "minReplicas": 2},
             "amd.com/gpu", {"shape-single-cpx"}, 2),
    "mi210": ({"gpu": "MI210", "minReplicas": 1}, "amd.com/gpu", {"shape-hetero"}, 1),
    "mi325x": ({"gpu": "MI325X", "minReplicas": 1}, "amd.com/gpu", {"shape-legacy"}, 1),
    # two of the three MI355X nodes carry the GPU Operator's taints
    "mi355x": ({"gpu": "MI355X", "gpusPerReplica": 8, "minReplicas": 2},
               "amd.com/gpu", {"shape-mi355-oam"}, 1),
}  # fmt: skip


def _pods(cluster: Cluster, namespace: str, service: str) -> list[dict[str, Any]]:
    found = get(cluster, "pods", "-n", namespace, "-l", f"{c.LABEL_SERVICE}={service}")
    return list((found or {}).get("items") or [])


def _unschedulable(pod: dict[str, Any]) -> str:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("message") or "")
    return ""


def test_every_shape_places_its_pool_with_the_right_resource(
    cluster: Cluster, shapes: OperatorProcess, namespace: str
) -> None:
    pools = [{"name": name, **spec} for name, (spec, _, _, _) in EXPECTED.items()]
    apply(cluster, namespace, _service("shapes", pools))
    want = sum(n for *_, n in EXPECTED.values())
    pending_want = sum(p["minReplicas"] for p in pools) - want

    def settled() -> list[dict[str, Any]] | None:
        pods = _pods(cluster, namespace, "shapes")
        bound = [p for p in pods if p["spec"].get("nodeName")]
        pending = [p for p in pods if _unschedulable(p)]
        return pods if len(bound) == want and len(pending) == pending_want else None

    pods = wait_for(settled, timeout=60, what="every pool bound or reported unschedulable")
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        by_pool.setdefault(pod["metadata"]["labels"][c.LABEL_POOL], []).append(pod)
    for name, (_, resource, allowed, bound) in EXPECTED.items():
        got = by_pool[name]
        for pod in got:
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert set(limits) == {resource}, (name, limits)
        placed = [p["spec"]["nodeName"] for p in got if p["spec"].get("nodeName")]
        assert len(placed) == bound and set(placed) <= allowed, (name, placed)
    whole = [p for p in by_pool["whole"] + by_pool["mi355x"] if p["spec"].get("nodeName")]
    assert not {p["spec"]["nodeName"] for p in whole} & (PARTITION_NODES | TAINTED)
    stuck_whole = next(_unschedulable(p) for p in by_pool["whole"] if _unschedulable(p))
    assert "Insufficient amd.com/spx_nps1" in stuck_whole
    stuck_355 = next(_unschedulable(p) for p in by_pool["mi355x"] if _unschedulable(p))
    assert "untolerated taint" in stuck_355
    # The condition follows the pods through a status refresh: the first Unschedulable one may
    # name only the pool whose pod the scheduler reported first; wait until it names both.
    degraded = wait_condition(
        cluster,
        namespace,
        "shapes",
        "Degraded",
        lambda cd: (
            cd.get("reason") == "Unschedulable"
            and "pool whole" in cd.get("message", "")
            and "pool mi355x" in cd.get("message", "")
        ),
    )
    assert "pool whole" in degraded["message"] and "pool mi355x" in degraded["message"]


def test_gpu_without_labeller_labels_gets_a_condition_naming_the_fix(
    cluster: Cluster, shapes: OperatorProcess, namespace: str
) -> None:
    """MI300A: no node carries its labels, and one GPU node carries no labeller label at all."""
    apply(
        cluster,
        namespace,
        _service("unlabelled", [{"name": "apu", "gpu": "MI300A", "minReplicas": 1}]),
    )
    ready = wait_condition(
        cluster,
        namespace,
        "unlabelled",
        "Ready",
        lambda cd: "node labeller" in cd.get("message", ""),
    )
    assert ready["status"] == "False"
    assert "shape-no-labeller" in ready["message"]
    assert "enableNodeLabeller" in ready["message"] and "labeller.enabled=true" in ready["message"]
    time.sleep(2)  # the pod exists but no node matches: it never binds
    assert not any(p["spec"].get("nodeName") for p in _pods(cluster, namespace, "unlabelled"))
    assert shapes.alive()

"""The reconcile with ``allocation: auto`` on an in-memory API holding the test bed's nodes,
ResourceSlices and DeviceClass: each pool rendered its own way, claim templates owned and pruned
when the shape changes, and a cluster without the DRA API (or RBAC for it) left on the device
plugin instead of failing the pass."""

from __future__ import annotations

from typing import Any

from tests.factories import service
from tests.testbed import dra as tb_dra
from tests.testbed import nodes
from tests.unit.fakekube import FakeKube
from tokenscale.api.config import OperatorConfig
from tokenscale.controller import devices
from tokenscale.controller.reconcile import reconcile_service
from tokenscale.k8s.kube import KubeError

AUTO = OperatorConfig(allocation="auto")
POOLS = [
    {"name": "whole", "gpu": "MI300X", "gpusPerReplica": 2, "minReplicas": 1, "maxReplicas": 2},
    {"name": "cpx", "gpu": "MI300X", "partition": "cpx_nps1", "gpusPerReplica": 2,
     "minReplicas": 1, "maxReplicas": 2},
]  # fmt: skip


def _cluster(kube: FakeKube) -> FakeKube:
    for obj in nodes.manifests() + tb_dra.manifests(nodes.DEFAULT_POOLS):
        kube.put(obj)
    devices.forget(kube)
    return kube


def _svc(kube: FakeKube, pools: list[dict[str, Any]]) -> dict[str, Any]:
    doc = service(pools=pools)
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    doc["spec"]["model"] = {
        "name": "llama-3.1-8b",
        "source": {"huggingFace": "meta-llama/Llama-3.1-8B-Instruct"},
        "maxModelLen": 4096,
    }
    return kube.put(doc)


def _of(kube: FakeKube, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kube.list(kind, "ns")}


def test_auto_renders_each_pool_its_own_way_and_owns_the_templates() -> None:
    kube = _cluster(FakeKube())
    body = _svc(kube, POOLS)
    out = reconcile_service(body, kube, AUTO)
    deployments = _of(kube, "Deployment")
    whole = deployments["llm-whole"]["spec"]["template"]["spec"]
    cpx = deployments["llm-cpx"]["spec"]["template"]["spec"]
    assert whole["containers"][0]["resources"]["limits"] == {"amd.com/gpu": "2"}
    assert "resourceClaims" not in whole
    [tpl] = _of(kube, "ResourceClaimTemplate").values()
    assert cpx["resourceClaims"][0]["resourceClaimTemplateName"] == tpl["metadata"]["name"]
    assert tpl["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    assert ("ResourceClaimTemplate", tpl["metadata"]["name"]) in (out.children or {})
    # status shows what auto chose per pool
    assert {p["name"]: p.get("allocation") for p in out.status["pools"]} == {
        "whole": "devicePlugin",
        "cpx": "dra",
    }


def test_a_new_pod_shape_is_a_new_template_and_the_old_one_is_pruned() -> None:
    kube = _cluster(FakeKube())
    body = _svc(kube, POOLS)
    reconcile_service(body, kube, AUTO)
    [old] = _of(kube, "ResourceClaimTemplate")
    body["spec"]["pools"][1]["gpusPerReplica"] = 4
    body = kube.put(body)
    out = reconcile_service(body, kube, AUTO)
    [new] = _of(kube, "ResourceClaimTemplate")
    assert new != old
    assert ("Deleted", f"deleted ResourceClaimTemplate {old} (no longer in spec)", "Normal") in (
        out.events
    )


class NoDraKube(FakeKube):
    """A cluster whose operator may not read resource.k8s.io (older chart) or lacks the API."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def list(
        self, kind: str, namespace: str | None, selector: str = "", field: str = ""
    ) -> list[dict[str, Any]]:
        if kind in ("ResourceSlice", "DeviceClass", "ResourceClaim", "ResourceClaimTemplate"):
            raise KubeError(self.status, f"{kind}: forbidden")
        return super().list(kind, namespace, selector, field)


def test_auto_without_the_dra_api_or_rbac_stays_on_the_device_plugin() -> None:
    for status in (403, 404):
        kube = _cluster(NoDraKube(status))
        found = devices.cluster_inventory(kube, AUTO)
        assert found.dra == {} and not found.device_class
        assert found.plugin[("MI300X", None)] == 16  # nodes are still read


def test_cluster_view_is_cached_briefly() -> None:
    kube = _cluster(FakeKube())
    first = devices.cluster_lists(kube, now=100.0)
    kube.delete("ResourceSlice", None, "mi355x-dra-0-gpu.amd.com")
    assert devices.cluster_lists(kube, now=105.0) is first
    fresh = devices.cluster_lists(kube, now=100.0 + devices.TTL_SECONDS + 1)
    assert len(fresh["ResourceSlice"]) == len(first["ResourceSlice"]) - 1

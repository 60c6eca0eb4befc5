"""DRA rendering: claim templates, their CEL selectors, and pods that claim instead of request.

Why evaluate the CEL here: a selector that compiles but matches the wrong devices would put an
engine on a partition when it needs a whole GPU (or on nothing at all). The expressions are run
(cel-python, with Kubernetes' ``quantity``/``compareTo`` supplied) against the devices the test
bed publishes, which copy AMD's driver; the e2e tests then let the real scheduler do the same.
"""

from __future__ import annotations

from typing import Any

import celpy
import kubernetes_validate
from celpy import celtypes

from tests.testbed import dra as tb_dra
from tests.testbed import nodes
from tokenscale import constants as c
from tokenscale import plan, render
from tokenscale.api.config import DraSettings, OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.autoscale.capacity import parse_count
from tokenscale.render import dra


class Quantity(celtypes.IntType):
    """A Kubernetes quantity as CEL sees it: comparable through ``compareTo``."""


def _quantity(text: Any) -> Quantity:
    return Quantity(parse_count(str(text)))


def _compare_to(a: Any, b: Any) -> celtypes.IntType:
    return celtypes.IntType((int(a) > int(b)) - (int(a) < int(b)))


def _activation(device: dict[str, Any], driver: str = "gpu.amd.com") -> dict[str, Any]:
    attrs = {}
    for name, value in device["attributes"].items():
        short = name.removeprefix(f"{driver}/")
        if "/" in short:  # other domains (resource.kubernetes.io/...) are not under driver
            continue
        attrs[short] = next(iter(value.values()))
    caps = {
        celtypes.StringType(k): _quantity(v["value"])
        for k, v in (device.get("capacity") or {}).items()
    }
    return {
        "device": celtypes.MapType(
            {
                celtypes.StringType("driver"): celtypes.StringType(driver),
                celtypes.StringType("attributes"): celpy.json_to_cel({driver: attrs}),
                celtypes.StringType("capacity"): celtypes.MapType(
                    {celtypes.StringType(driver): celtypes.MapType(caps)}
                ),
            }
        )
    }


def matches(expressions: list[str], device: dict[str, Any]) -> bool:
    """All selectors true for ``device`` (a ResourceSlice device), as the scheduler requires."""
    env = celpy.Environment()
    for expr in expressions:
        program = env.program(
            env.compile(expr), functions={"quantity": _quantity, "compareTo": _compare_to}
        )
        if not bool(program.evaluate(_activation(device))):
            return False
    return True


def _devices(pool_name: str) -> list[dict[str, Any]]:
    pool = next(p for p in nodes.DEFAULT_POOLS if p.name == pool_name)
    assert pool.gpu is not None and pool.dra is not None
    return tb_dra.devices(pool.gpu, pool.dra)


CFG = OperatorConfig()


def _pool(**kw: Any) -> GPUPool:
    return GPUPool.model_validate({"name": "p", **kw})


def test_whole_gpu_selectors_pick_only_whole_gpus_of_the_model() -> None:
    mi300x = dra.selectors(_pool(gpu="MI300X"), CFG.gpus["MI300X"], CFG.dra)
    devices = _devices("mi300x-dra")
    picked = [d for d in devices if matches(mi300x, d)]
    assert len(picked) == 4
    assert all(d["attributes"]["type"]["string"] == "amdgpu" for d in picked)
    mi355x = dra.selectors(_pool(gpu="MI355X"), CFG.gpus["MI355X"], CFG.dra)
    assert not any(matches(mi355x, d) for d in devices)  # wrong productName
    assert all(matches(mi355x, d) for d in _devices("mi355x-dra"))


def test_partition_selectors_pick_only_partitions_of_the_profile() -> None:
    devices = _devices("mi300x-dra")
    cpx1 = dra.selectors(_pool(gpu="MI300X", partition="cpx_nps1"), CFG.gpus["MI300X"], CFG.dra)
    picked = [d for d in devices if matches(cpx1, d)]
    assert len(picked) == 32
    assert {d["attributes"]["partitionProfile"]["string"] for d in picked} == {"cpx_nps1"}
    assert all(d["attributes"]["type"]["string"] == "amdgpu-partition" for d in picked)
    cpx4 = dra.selectors(_pool(gpu="MI300X", partition="cpx_nps4"), CFG.gpus["MI300X"], CFG.dra)
    assert not any(matches(cpx4, d) for d in devices)


def test_memory_check_rejects_smaller_devices_and_accepts_unreadable_vram() -> None:
    exprs = dra.selectors(_pool(gpu="MI300X"), CFG.gpus["MI300X"], CFG.dra)
    device = _devices("mi300x-dra")[0]
    assert matches(exprs, device)
    small = {**device, "capacity": {**device["capacity"], "memory": {"value": "96Gi"}}}
    assert not matches(exprs, small)
    # Real MI300X report a little under 192 GiB: the default 0.95 fraction still accepts it.
    real = {**device, "capacity": {**device["capacity"], "memory": {"value": "205822885888"}}}
    assert matches(exprs, real)
    unreadable = {**device, "capacity": {**device["capacity"], "memory": {"value": "0"}}}
    assert matches(exprs, unreadable)  # AMD: memory 0 when VRAM cannot be read


def test_missing_partition_profile_does_not_error() -> None:
    """MI210 publishes no partitionProfile: a partition selector must be false, not an error."""
    device = _devices("mi300x-dra")[0]
    attrs = {k: v for k, v in device["attributes"].items() if k != "partitionProfile"}
    attrs["type"] = {"string": "amdgpu-partition"}
    exprs = dra.selectors(_pool(gpu="MI300X", partition="cpx_nps1"), CFG.gpus["MI300X"], CFG.dra)
    assert not matches(exprs, {**device, "attributes": attrs})


def test_driver_name_is_configuration() -> None:
    settings = DraSettings(driver="gpu.example.com", device_class="amd-gpus")
    exprs = dra.selectors(_pool(gpu="MI300X"), CFG.gpus["MI300X"], settings)
    assert all('device.attributes["gpu.example.com"]' in e or "capacity" in e for e in exprs)
    req = dra.request(_pool(gpu="MI300X"), CFG.gpus["MI300X"], 2, settings)
    assert req["exactly"]["deviceClassName"] == "amd-gpus"
    assert req["exactly"]["count"] == 2


def test_auto_partition_form() -> None:
    settings = DraSettings(auto_partition=True)
    pool = _pool(gpu="MI300X", partition="cpx_nps4")
    req = dra.request(pool, CFG.gpus["MI300X"], 1, settings)["exactly"]
    exprs = [s["cel"]["expression"] for s in req["selectors"]]
    assert 'computePartition == "cpx"' in exprs[0] and 'memoryPartition == "nps4"' in exprs[0]
    assert req["capacity"] == {"requests": {"partitions": "1"}}
    device = {
        "name": "gpu-0-cpx-nps4",
        "attributes": {
            "productName": {"string": "AMD_Instinct_MI300X_OAM"},
            "computePartition": {"string": "cpx"},
            "memoryPartition": {"string": "nps4"},
        },
        "capacity": {"partitions": {"value": "8"}},
    }
    assert matches(exprs, device)
    whole = dra.selectors(_pool(gpu="MI300X"), CFG.gpus["MI300X"], settings)
    assert not matches(whole, device)  # a cpx device is no whole GPU


def _service(pool: dict[str, Any], name: str = "svc") -> InferenceService:
    return InferenceService.model_validate(
        {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "model": {
                    "name": "llama-3.1-8b",
                    "source": {"huggingFace": "meta-llama/Llama-3.1-8B-Instruct"},
                    "maxModelLen": 4096,
                },
                "pools": [pool],
            },
        }
    )


def _render(svc: InferenceService, cfg: OperatorConfig, mode: str = "dra") -> render.RenderResult:
    plans = plan.plan_service(svc, cfg)
    return render.render_all(
        svc,
        cfg,
        plans,
        allocations={p.name: mode for p in svc.spec.pools},  # type: ignore[misc]
    )


def test_dra_pool_renders_claim_template_and_claiming_pod() -> None:
    svc = _service({"name": "big", "gpu": "MI355X", "gpusPerReplica": 2, "minReplicas": 1})
    result = _render(svc, CFG)
    assert not result.problems
    kinds = [o["kind"] for o in result.objects]
    assert kinds.index("ResourceClaimTemplate") < kinds.index("Deployment")
    tpl = next(o for o in result.objects if o["kind"] == "ResourceClaimTemplate")
    kubernetes_validate.validate(tpl, "1.34.0", strict=True)
    assert tpl["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"] == 2
    assert tpl["spec"]["metadata"]["labels"] == {c.LABEL_POOL: "big", c.LABEL_SERVICE: "svc"}
    dep = next(o for o in result.objects if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [
        {"name": "gpus", "resourceClaimTemplateName": tpl["metadata"]["name"]}
    ]
    res = pod["containers"][0]["resources"]
    assert res["claims"] == [{"name": "gpus"}]
    assert "limits" not in res
    assert not any(k.startswith("amd.com/") for k in res["requests"])
    assert "affinity" not in pod  # the claim's selectors choose the model, not node labels


def test_device_plugin_rendering_is_unchanged_by_the_feature() -> None:
    svc = _service({"name": "big", "gpu": "MI355X", "gpusPerReplica": 2})
    plans = plan.plan_service(svc, CFG)
    assert render.render_all(svc, CFG, plans).objects == _render(svc, CFG, "devicePlugin").objects


def test_template_name_follows_the_shape_and_spec_hash_changes() -> None:
    one = _render(_service({"name": "big", "gpu": "MI355X", "gpusPerReplica": 1}), CFG)
    two = _render(_service({"name": "big", "gpu": "MI355X", "gpusPerReplica": 2}), CFG)

    def name(r: render.RenderResult) -> str:
        return str(
            next(o for o in r.objects if o["kind"] == "ResourceClaimTemplate")["metadata"]["name"]
        )

    def spec_hash(r: render.RenderResult) -> str:
        dep = next(o for o in r.objects if o["kind"] == "Deployment")
        return str(dep["spec"]["template"]["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH])

    assert name(one) != name(two)  # template specs are immutable: a new shape, a new name
    assert name(one).startswith("svc-big-")
    assert name(one) == name(
        _render(_service({"name": "big", "gpu": "MI355X", "gpusPerReplica": 1}), CFG)
    )
    plain = render.render_all(
        _service({"name": "big", "gpu": "MI355X", "gpusPerReplica": 1}),
        CFG,
        plan.plan_service(_service({"name": "big", "gpu": "MI355X", "gpusPerReplica": 1}), CFG),
    )
    assert spec_hash(one) != spec_hash(plain)


def test_multi_node_pool_shares_one_template_between_leader_and_workers() -> None:
    cfg = CFG.model_copy(update={"leader_worker_set": True})
    svc = InferenceService.model_validate(
        {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "huge"},
            "spec": {
                "model": {
                    "name": "llama-3.1-405b",
                    "source": {"huggingFace": "meta-llama/Llama-3.1-405B-Instruct"},
                    "maxModelLen": 8192,
                },
                "pools": [{"name": "mi300x", "gpu": "MI300X", "gpusPerReplica": 16}],
            },
        }
    )
    result = _render(svc, cfg)
    tpl = next(o for o in result.objects if o["kind"] == "ResourceClaimTemplate")
    assert tpl["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"] == 8  # per pod
    lws = next(o for o in result.objects if o["kind"] == "LeaderWorkerSet")
    group = lws["spec"]["leaderWorkerTemplate"]
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        assert (
            template["spec"]["resourceClaims"][0]["resourceClaimTemplateName"]
            == tpl["metadata"]["name"]
        )


def test_cpu_pool_is_never_dra() -> None:
    svc = _service({"name": "cpu", "gpu": "CPU"})
    result = _render(svc, CFG)
    assert not any(o["kind"] == "ResourceClaimTemplate" for o in result.objects)


def test_model_without_product_names_is_a_problem_naming_the_fix() -> None:
    result = _render(_service({"name": "p", "gpu": "MI250X", "gpusPerReplica": 8}), CFG)
    assert not any(o["kind"] in ("Deployment", "ResourceClaimTemplate") for o in result.objects)
    assert len(result.problems) == 1
    assert "gpus.MI250X.productNames" in result.problems[0] and "fix" in result.problems[0]


def _request(result: render.RenderResult) -> dict[str, Any]:
    tpl = next(o for o in result.objects if o["kind"] == "ResourceClaimTemplate")
    kubernetes_validate.validate(tpl, "1.34.0", strict=True)
    req: dict[str, Any] = tpl["spec"]["spec"]["devices"]["requests"][0]
    return req


def test_alternatives_render_first_available_in_priority_order() -> None:
    svc = _service(
        {"name": "p", "gpu": "MI355X", "alternatives": ["MI325X", "MI300X"], "gpusPerReplica": 2}
    )
    result = _render(svc, CFG)
    req = _request(result)
    assert "exactly" not in req
    entries = req["firstAvailable"]
    assert [e["name"] for e in entries] == ["mi355x", "mi325x", "mi300x"]
    assert all(e["count"] == 2 for e in entries)
    # each entry selects its own model, and its own memory from the catalogue
    mi300x = [e["cel"]["expression"] for e in entries[2]["selectors"]]
    assert any("AMD_Instinct_MI300X_OAM" in e for e in mi300x)
    devices = _devices("mi300x-dra") + _devices("mi355x-dra")
    for entry, product in zip(entries, ("MI355X", "MI325", "MI300X"), strict=True):
        exprs = [s["cel"]["expression"] for s in entry["selectors"]]
        picked = {d["attributes"]["productName"]["string"] for d in devices if matches(exprs, d)}
        assert all(product in p for p in picked)
    assert not result.warnings


def test_alternative_that_needs_another_gpu_count_is_dropped_with_a_warning() -> None:
    """Llama-3.1-405B fp8 needs fewer MI355X (288 GiB) than MI300X (192 GiB): the pod's
    --tensor-parallel-size is fixed, so MI300X cannot be an alternative of this pool."""
    svc = InferenceService.model_validate(
        {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "big"},
            "spec": {
                "model": {
                    "name": "llama-3.1-405b",
                    "architecture": "llama-3.1-405b",
                    "source": {"huggingFace": "meta-llama/Llama-3.1-405B-Instruct"},
                    "dtype": "fp8",
                    "maxModelLen": 4096,
                },
                "pools": [{"name": "p", "gpu": "MI355X", "alternatives": ["MI300X"]}],
            },
        }
    )
    plans = plan.plan_service(svc, CFG)
    result = _render(svc, CFG)
    alt_plan = plan.plan_pool(svc.spec, svc.spec.pools[0].model_copy(update={"gpu": "MI300X"}), CFG)
    assert alt_plan.gpus_per_replica != plans[0].gpus_per_replica  # the premise
    assert "exactly" in _request(result)
    dropped = [w for w in result.warnings if "alternative" in w]
    assert len(dropped) == 1
    assert "alternative MI300X dropped" in dropped[0] and "fix" in dropped[0]


def test_device_plugin_ignores_alternatives_with_a_warning() -> None:
    svc = _service({"name": "p", "gpu": "MI355X", "alternatives": ["MI300X"], "gpusPerReplica": 2})
    result = _render(svc, CFG, "devicePlugin")
    assert not any(o["kind"] == "ResourceClaimTemplate" for o in result.objects)
    assert any("alternatives MI300X ignored" in w for w in result.warnings)


def test_spx_pool_takes_whole_gpus_like_the_capacity_view_counts_them() -> None:
    spx = dra.selectors(_pool(gpu="MI300X", partition="spx_nps1"), CFG.gpus["MI300X"], CFG.dra)
    whole = dra.selectors(_pool(gpu="MI300X"), CFG.gpus["MI300X"], CFG.dra)
    assert spx == whole

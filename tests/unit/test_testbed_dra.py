"""The test bed's DRA nodes publish devices the way AMD's driver does (no cluster needed).

Why: the e2e DRA tests prove that the real scheduler allocates tokenscale's claims; that only
means something if the fake ResourceSlices carry the driver's names, attributes and capacities.
"""

from __future__ import annotations

import kubernetes_validate

from tests.testbed import dra, nodes


def _slices() -> dict[str, dict]:
    return {
        m["spec"]["nodeName"]: m
        for m in dra.manifests(nodes.DEFAULT_POOLS)
        if m["kind"] == "ResourceSlice"
    }


def test_device_class_and_one_slice_per_dra_node_validate_against_1_34() -> None:
    objs = dra.manifests(nodes.DEFAULT_POOLS)
    assert objs[0]["kind"] == "DeviceClass"
    assert objs[0]["metadata"]["name"] == "gpu.amd.com"
    assert objs[0]["spec"]["selectors"] == [
        {"cel": {"expression": "device.driver == 'gpu.amd.com'"}}
    ]
    assert sorted(_slices()) == ["mi300x-dra-0", "mi355x-dra-0"]
    for obj in objs:
        kubernetes_validate.validate(obj, "1.34.0", strict=True)


def test_whole_gpus_look_like_the_drivers() -> None:
    mi355 = _slices()["mi355x-dra-0"]["spec"]
    assert mi355["driver"] == "gpu.amd.com"
    assert mi355["pool"] == {"name": "mi355x-dra-0", "generation": 1, "resourceSliceCount": 1}
    devices = mi355["devices"]
    assert len(devices) == 8
    first = devices[0]
    assert first["name"] == "gpu-1-128"
    attrs = first["attributes"]
    assert attrs["type"] == {"string": "amdgpu"}
    assert attrs["productName"] == {"string": "AMD_Instinct_MI355X_OAM"}
    assert attrs["partitionProfile"] == {"string": "spx_nps1"}
    assert attrs["driverVersion"] == {"version": "6.16.6"}
    assert attrs["deviceID"] == {"string": "0x75a3"}
    assert "resource.kubernetes.io/pcieRoot" in attrs
    assert first["capacity"]["memory"] == {"value": f"{288 * 1024}Mi"}
    assert first["capacity"]["computeUnits"] == {"value": "256"}
    assert len({d["name"] for d in devices}) == 8


def test_mixed_node_has_whole_gpus_and_cpx_partitions() -> None:
    devices = _slices()["mi300x-dra-0"]["spec"]["devices"]
    kinds = [d["attributes"]["type"]["string"] for d in devices]
    assert kinds.count("amdgpu") == 4
    assert kinds.count("amdgpu-partition") == 32
    part = next(d for d in devices if d["attributes"]["type"]["string"] == "amdgpu-partition")
    assert part["attributes"]["partitionProfile"] == {"string": "cpx_nps1"}
    assert part["attributes"]["productName"] == {"string": "AMD_Instinct_MI300X_OAM"}
    assert part["capacity"]["memory"] == {"value": f"{192 * 1024 // 8}Mi"}
    assert part["capacity"]["computeUnits"] == {"value": str(304 // 8)}
    whole = next(d for d in devices if d["attributes"]["type"]["string"] == "amdgpu")
    # the memory mode is node-wide: whole GPUs report the partitions' NPS
    assert whole["attributes"]["partitionProfile"] == {"string": "spx_nps1"}
    assert len({d["name"] for d in devices}) == len(devices)


def test_no_dra_pools_means_no_objects() -> None:
    pools = [p for p in nodes.DEFAULT_POOLS if p.dra is None]
    assert dra.manifests(pools) == []

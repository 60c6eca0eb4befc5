"""``allocation: auto``: per GPU model and partition profile, DRA or the device plugin.

Inputs are the test bed's own node and ResourceSlice manifests (a mixed cluster: device-plugin
pools for every model plus one DRA node per MI355X and MI300X), so detection is checked against
the same objects the e2e tests run on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.testbed import dra as tb_dra
from tests.testbed import nodes
from tokenscale.allocation import inventory, pool_allocations, resolve
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import GPUPool
from tokenscale.autoscale.dra import allocated_devices, device_key, sliced_devices

CFG = OperatorConfig()
NODES = nodes.manifests()
OBJS = tb_dra.manifests(nodes.DEFAULT_POOLS)
CLASSES = [o for o in OBJS if o["kind"] == "DeviceClass"]
SLICES = [o for o in OBJS if o["kind"] == "ResourceSlice"]


def _pools(*specs: dict[str, Any]) -> list[GPUPool]:
    return [GPUPool.model_validate(s) for s in specs]


def test_inventory_counts_both_ways_per_model_and_profile() -> None:
    found = inventory(SLICES, CLASSES, NODES, CFG)
    assert found.device_class
    assert found.dra == {("MI355X", None): 8, ("MI300X", None): 4, ("MI300X", "cpx_nps1"): 32}
    assert found.plugin[("MI355X", None)] == 16
    assert found.plugin[("MI300X", None)] == 16
    assert found.plugin[("MI300X", "cpx_nps4")] == 64
    assert ("MI300X", "cpx_nps1") not in found.plugin


def test_auto_mixed_cluster_resolves_each_pool_its_own_way() -> None:
    found = inventory(SLICES, CLASSES, NODES, CFG)
    pools = _pools(
        {"name": "whole", "gpu": "MI300X"},
        {"name": "cpx1", "gpu": "MI300X", "partition": "cpx_nps1"},
        {"name": "cpx4", "gpu": "MI300X", "partition": "cpx_nps4"},
        {"name": "cpu", "gpu": "CPU"},
    )
    cfg = CFG.model_copy(update={"allocation": "auto"})
    assert pool_allocations(pools, cfg, found) == {
        "whole": "devicePlugin",  # 16 extended-resource GPUs beat 4 DRA ones
        "cpx1": "dra",  # only published as DRA partitions
        "cpx4": "devicePlugin",  # only as amd.com/cpx_nps4
    }


def test_auto_on_a_dra_only_cluster_is_dra() -> None:
    dra_nodes = [
        n for n in NODES if not any(k.startswith("amd.com/") for k in n["status"]["capacity"])
    ]
    found = inventory(SLICES, CLASSES, dra_nodes, CFG)
    assert resolve("auto", ("MI355X", None), found) == "dra"


def test_no_device_class_means_no_dra() -> None:
    """Claims name the class: without it nothing could be allocated, whatever slices exist."""
    found = inventory(SLICES, [], [], CFG)
    assert not found.device_class and found.dra == {}
    assert resolve("auto", ("MI355X", None), found) == "devicePlugin"


def test_fixed_modes_ignore_the_cluster() -> None:
    found = inventory(SLICES, CLASSES, NODES, CFG)
    assert resolve("dra", ("MI325X", None), found) == "dra"
    assert resolve("devicePlugin", ("MI300X", "cpx_nps1"), found) == "devicePlugin"
    assert resolve("auto", ("MI355X", None), None) == "devicePlugin"  # offline


def test_device_key_reads_driver_attributes_and_autopartition() -> None:
    gpus = CFG.gpus
    whole = SLICES[0]["spec"]["devices"][0]
    assert device_key(whole, "gpu.amd.com", gpus) == ("MI355X", None)
    qualified = {
        "name": "x",
        "attributes": {
            "gpu.amd.com/type": {"string": "amdgpu-partition"},
            "gpu.amd.com/productName": {"string": "AMD_Instinct_MI300X_OAM"},
            "gpu.amd.com/partitionProfile": {"string": "dpx_nps2"},
        },
    }
    assert device_key(qualified, "gpu.amd.com", gpus) == ("MI300X", "dpx_nps2")
    auto = {
        "name": "gpu-0-cpx-nps4",
        "attributes": {
            "productName": {"string": "AMD_Instinct_MI300X_OAM"},
            "computePartition": {"string": "cpx"},
            "memoryPartition": {"string": "nps4"},
        },
    }
    assert device_key(auto, "gpu.amd.com", gpus) == ("MI300X", "cpx_nps4")
    unknown = {
        "name": "y",
        "attributes": {"productName": {"string": "Radeon"}, "type": {"string": "amdgpu"}},
    }
    assert device_key(unknown, "gpu.amd.com", gpus) is None


def test_only_the_newest_generation_of_a_pool_counts_and_other_drivers_are_ignored() -> None:
    old = {
        **SLICES[0],
        "spec": {**SLICES[0]["spec"], "pool": {**SLICES[0]["spec"]["pool"], "generation": 0}},
    }
    other = {**SLICES[0], "spec": {**SLICES[0]["spec"], "driver": "gpu.nvidia.com"}}
    devices = sliced_devices([old, SLICES[0], other], "gpu.amd.com", CFG.gpus)
    assert len(devices) == 8
    assert {d.node for d in devices} == {"mi355x-dra-0"}


def test_allocated_devices_from_claim_status() -> None:
    claim = {
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {
                            "request": "gpus",
                            "driver": "gpu.amd.com",
                            "pool": "n0",
                            "device": "gpu-1-128",
                        },
                        {
                            "request": "nic",
                            "driver": "nic.example.com",
                            "pool": "n0",
                            "device": "eth0",
                        },
                    ]
                }
            }
        }
    }
    assert allocated_devices([claim, {"status": {}}, {}], "gpu.amd.com") == {("n0", "gpu-1-128")}


def test_bad_allocation_settings_name_the_field() -> None:
    with pytest.raises(ValidationError) as bad_mode:
        OperatorConfig.model_validate({"allocation": "DRA"})
    text = str(bad_mode.value)
    assert "allocation" in text and "'devicePlugin', 'dra' or 'auto'" in text
    with pytest.raises(ValidationError) as bad_fraction:
        OperatorConfig.model_validate({"dra": {"memoryFraction": 1.5}})
    assert "dra.memoryFraction" in str(bad_fraction.value)
    with pytest.raises(ValidationError) as bad_driver:
        OperatorConfig.model_validate({"dra": {"driver": "GPU AMD"}})
    assert "dra.driver" in str(bad_driver.value)
    # Helm checks the same values at install time (chart values schema from the model).
    schema = json.loads(
        (Path(__file__).parents[2] / "charts/tokenscale/values.schema.json").read_text()
    )
    props = schema["properties"]["operatorConfig"]["properties"]
    assert props["allocation"]["enum"] == ["devicePlugin", "dra", "auto"]
    assert props["dra"]["properties"]["memoryFraction"]["maximum"] == 1

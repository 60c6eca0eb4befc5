"""Fake nodes' GPUs as AMD's DRA driver (``gpu.amd.com``) publishes them: ResourceSlices + class.

Why: on a node pool where the AMD GPU Operator runs the DRA driver, the device plugin does not
run, so ``amd.com/gpu`` does not exist and the GPUs are only visible as devices in
ResourceSlices. KWOK nodes run no kubelet and no DRA plugin, but allocation is the scheduler's
job (its DynamicResources plugin reads the slices, evaluates the claim's CEL selectors and writes
the allocation into the claim's status), so publishing the slices the driver would publish is
enough for the *real* scheduler to allocate claims. Nothing prepares the devices afterwards;
KWOK marks the pod Running as for any other pod.

Device names, attributes and capacities follow the driver's ``GetDevice()``
(ROCm/k8s-gpu-dra-driver ``cmd/gpu-kubeletplugin/deviceinfo.go``): devices ``gpu-<card>-<render>``;
attributes ``type`` (``amdgpu`` / ``amdgpu-partition``), ``productName``, ``numaNode``,
``driverVersion`` (semver) + ``driverVersionFull``, ``deviceID``, ``partitionProfile``, and the
standard ``resource.kubernetes.io/pciBusID`` / ``pcieRoot``; capacities ``memory`` (bytes),
``computeUnits``, ``simdUnits``. Partitions carry their parent's productName, deviceID and PCI
attributes. One pool per node, named after the node, in one slice (as the kubelet plugin does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .nodes import DraLayout, GpuModel, NodePool

DRIVER = "gpu.amd.com"
DEVICE_CLASS = "gpu.amd.com"
API_VERSION = "resource.k8s.io/v1"
DRIVER_VERSION = "6.16.6"
#: Partitions per GPU by compute mode (MI300X/MI325X/MI355X: 8 XCDs).
COMPUTE_MODES = {"spx": 1, "dpx": 2, "qpx": 4, "cpx": 8}
_FIRST_RENDER = 128
_GROUP, _VERSION = API_VERSION.split("/")


def device_class() -> dict[str, Any]:
    """The class the GPU Operator / driver chart creates (``deviceClass.create``)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "DeviceClass",
        "metadata": {"name": DEVICE_CLASS},
        "spec": {"selectors": [{"cel": {"expression": f"device.driver == '{DRIVER}'"}}]},
    }


def _vram_gib(model: GpuModel) -> int:
    return int(model.vram.rstrip("G"))


def _attrs(model: GpuModel, gpu: int, kind: str, profile: str) -> dict[str, Any]:
    return {
        "type": {"string": kind},
        "productName": {"string": model.product_name},
        "numaNode": {"int": gpu // 4},
        "driverVersion": {"version": DRIVER_VERSION},
        "driverVersionFull": {"string": DRIVER_VERSION},
        "deviceID": {"string": f"0x{model.device_id}"},
        "partitionProfile": {"string": profile},
        "resource.kubernetes.io/pciBusID": {"string": f"0000:{0x05 + 0x10 * gpu:02x}:00.0"},
        "resource.kubernetes.io/pcieRoot": {"string": f"pci0000:{0x10 * gpu:02x}"},
    }


def _capacity(memory_mib: int, cus: int, simds: int) -> dict[str, Any]:
    return {
        "memory": {"value": f"{memory_mib}Mi"},
        "computeUnits": {"value": str(cus)},
        "simdUnits": {"value": str(simds)},
    }


def devices(model: GpuModel, layout: DraLayout) -> list[dict[str, Any]]:
    """Whole GPUs (``spx_nps<N>``) first, then the partitions of the partitioned GPUs.

    Every device (whole GPU or partition) has its own DRM card/render node, so names run on.
    The memory mode is node-wide: whole GPUs report the partitioned GPUs' ``_nps<N>``.
    """
    compute, _, nps = layout.profile.partition("_")
    per_gpu = COMPUTE_MODES[compute]
    out: list[dict[str, Any]] = []
    index = 0
    vram_mib = _vram_gib(model) * 1024
    for gpu in range(layout.whole):
        out.append(
            {
                "name": f"gpu-{index + 1}-{_FIRST_RENDER + index}",
                "attributes": _attrs(model, gpu, "amdgpu", f"spx_{nps}"),
                "capacity": _capacity(vram_mib, model.cu_count, model.simd_count),
            }
        )
        index += 1
    for gpu in range(layout.whole, layout.whole + layout.partitioned):
        for _ in range(per_gpu):
            out.append(
                {
                    "name": f"gpu-{index + 1}-{_FIRST_RENDER + index}",
                    "attributes": _attrs(model, gpu, "amdgpu-partition", layout.profile),
                    "capacity": _capacity(
                        vram_mib // per_gpu, model.cu_count // per_gpu, model.simd_count // per_gpu
                    ),
                }
            )
            index += 1
    return out


def resource_slice(node_name: str, pool: NodePool) -> dict[str, Any]:
    """The one ResourceSlice the kubelet plugin publishes for ``node_name``."""
    if pool.gpu is None or pool.dra is None:
        raise ValueError(f"pool {pool.name} publishes no DRA devices")
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceSlice",
        "metadata": {
            "name": f"{node_name}-{DRIVER}",
            "labels": {"testbed.tokenscale.dev/pool": pool.name},
        },
        "spec": {
            "driver": DRIVER,
            "nodeName": node_name,
            "pool": {"name": node_name, "generation": 1, "resourceSliceCount": 1},
            "devices": devices(pool.gpu, pool.dra),
        },
    }


def manifests(pools: Iterable[NodePool]) -> list[dict[str, Any]]:
    """The DeviceClass (only when some pool publishes DRA devices) and one slice per DRA node."""
    slices = [
        resource_slice(f"{p.name}-{i}", p)
        for p in pools
        if p.dra is not None
        for i in range(p.count)
    ]
    return [device_class(), *slices] if slices else []


def publish(api_client: client.ApiClient, pools: Iterable[NodePool]) -> list[str]:
    """Create the DeviceClass and the slices (409 = already there); returns the slice names."""
    custom = client.CustomObjectsApi(api_client)
    names = []
    for obj in manifests(pools):
        plural = "deviceclasses" if obj["kind"] == "DeviceClass" else "resourceslices"
        try:
            custom.create_cluster_custom_object(_GROUP, _VERSION, plural, obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
        if obj["kind"] == "ResourceSlice":
            names.append(obj["metadata"]["name"])
    return names

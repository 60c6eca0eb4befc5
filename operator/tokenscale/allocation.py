"""Device plugin or DRA, per pool: which way the cluster publishes a GPU model's devices.

Why per pool: a cluster can run AMD's device plugin on some node pools and its DRA driver
(``gpu.amd.com``) on others (they are mutually exclusive per GPU Operator DeviceConfig). A pod
asking for ``amd.com/gpu`` never lands on a DRA node, and a claim never lands on a device-plugin
node, so each InferenceService pool must be rendered the way its GPU model (and partition
profile) is offered. Pure functions over API dicts; ``controller/devices.py`` reads the lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tokenscale.api.config import Allocation, GPUSpec, OperatorConfig
from tokenscale.autoscale.capacity import node_matches, parse_count, resource_name

Resolved = Literal["devicePlugin", "dra"]
#: (GPU model in the catalogue, partition profile or None for whole GPUs)
DeviceKey = tuple[str, str | None]

TYPE_GPU = "amdgpu"
TYPE_PARTITION = "amdgpu-partition"


def _value(attr: Any) -> Any:
    """A v1 DeviceAttribute's value (``{"string": x}``, ``{"int": n}``, ...)."""
    if not isinstance(attr, Mapping):
        return None
    for kind in ("string", "int", "bool", "version"):
        if kind in attr:
            return attr[kind]
    return None


def attribute(device: Mapping[str, Any], driver: str, name: str) -> Any:
    """An attribute by its short name; fully qualified ``<driver>/<name>`` is the same one."""
    attrs = device.get("attributes") or {}
    found = attrs.get(name)
    if found is None:
        found = attrs.get(f"{driver}/{name}")
    return _value(found)


def device_key(
    device: Mapping[str, Any], driver: str, gpus: Mapping[str, GPUSpec]
) -> DeviceKey | None:
    """Which catalogue GPU (and partition profile) a driver device is, or None if unknown.

    The model comes from ``productName`` (the catalogue's ``productNames``, the same list the
    claims' CEL selectors use); ``type: amdgpu`` is a whole GPU, ``amdgpu-partition`` a
    partition of ``partitionProfile``. The AutoPartition form (``computePartition`` and
    ``memoryPartition``) maps to ``<compute>_<memory>`` and whole for ``spx``.
    """
    product = attribute(device, driver, "productName")
    model = next((n for n, g in sorted(gpus.items()) if product in g.product_names), None)
    if model is None:
        return None
    kind = attribute(device, driver, "type")
    compute = attribute(device, driver, "computePartition")
    if compute is not None:
        if compute == "spx":
            return (model, None)
        return (model, f"{compute}_{attribute(device, driver, 'memoryPartition')}")
    if kind == TYPE_GPU:
        return (model, None)
    if kind == TYPE_PARTITION:
        profile = attribute(device, driver, "partitionProfile")
        return (model, str(profile)) if profile else None
    return None


def pool_key(gpu: str, partition: str | None) -> DeviceKey:
    """The device key a pool asks for (an SPX "partition" is a whole GPU)."""
    if partition is not None and partition.startswith("spx"):
        return (gpu, None)
    return (gpu, partition)


@dataclass(frozen=True)
class SlicedDevice:
    """One device of a ResourceSlice, with what allocation needs to know about it."""

    node: str
    pool: str
    name: str
    key: DeviceKey


def sliced_devices(
    slices: Iterable[Mapping[str, Any]], driver: str, gpus: Mapping[str, GPUSpec]
) -> list[SlicedDevice]:
    """Known devices of ``driver`` in node-local slices (the AMD driver's only kind).

    A pool published in several generations keeps only its newest slices, as the scheduler
    does; devices of unknown models are skipped (they cannot match a pool's selectors).
    """
    newest: dict[str, int] = {}
    mine = [s for s in slices if (s.get("spec") or {}).get("driver") == driver]
    for s in mine:
        pool = s["spec"].get("pool") or {}
        name = str(pool.get("name"))
        newest[name] = max(newest.get(name, 0), int(pool.get("generation") or 0))
    out = []
    for s in mine:
        spec = s["spec"]
        pool = spec.get("pool") or {}
        if int(pool.get("generation") or 0) != newest[str(pool.get("name"))]:
            continue
        node = spec.get("nodeName")
        if not node:
            continue
        for device in spec.get("devices") or []:
            key = device_key(device, driver, gpus)
            if key is not None:
                out.append(SlicedDevice(str(node), str(pool.get("name")), device["name"], key))
    return out


def allocated_devices(claims: Iterable[Mapping[str, Any]], driver: str) -> set[tuple[str, str]]:
    """(pool, device) of every device of ``driver`` allocated to some claim."""
    used: set[tuple[str, str]] = set()
    for claim in claims:
        allocation = (claim.get("status") or {}).get("allocation") or {}
        for result in (allocation.get("devices") or {}).get("results") or []:
            if result.get("driver") == driver:
                used.add((str(result.get("pool")), str(result.get("device"))))
    return used


@dataclass
class Inventory:
    """What the cluster offers, per device key, in each of the two ways."""

    device_class: bool = False
    dra: dict[DeviceKey, int] = field(default_factory=dict)
    plugin: dict[DeviceKey, int] = field(default_factory=dict)


def inventory(
    slices: Iterable[Mapping[str, Any]],
    device_classes: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    config: OperatorConfig,
) -> Inventory:
    """Count DRA devices (only when the configured DeviceClass exists: claims name it) and
    device-plugin devices (allocatable ``amd.com/gpu`` / ``amd.com/<profile>`` on nodes the
    node labeller marks with the model) per GPU model and partition profile."""
    settings = config.dra
    found = Inventory(
        device_class=any(
            (d.get("metadata") or {}).get("name") == settings.device_class for d in device_classes
        )
    )
    if found.device_class:
        for dev in sliced_devices(slices, settings.driver, config.gpus):
            found.dra[dev.key] = found.dra.get(dev.key, 0) + 1
    node_list = list(nodes)
    for model, gpu in sorted(config.gpus.items()):
        profiles: list[str | None] = [None, *sorted(gpu.partitions)]
        for profile in profiles:
            resource = resource_name(profile)
            total = 0
            for node in node_list:
                labels = (node.get("metadata") or {}).get("labels") or {}
                alloc = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
                if alloc and node_matches(labels, gpu):
                    total += parse_count(alloc)
            if total:
                key = pool_key(model, profile)
                found.plugin[key] = found.plugin.get(key, 0) + total
    return found


def resolve(mode: Allocation, key: DeviceKey, found: Inventory | None) -> Resolved:
    """One pool's way: fixed by config, or (``auto``) the way the cluster offers its devices.

    ``auto``: DRA when only DRA devices exist for the key, the device plugin when only extended
    resources do; when both do (a model on both kinds of node pool) the larger offer wins, ties
    go to the device plugin. Nothing found (or no cluster view): the device plugin, as before.
    """
    if mode != "auto":
        return "dra" if mode == "dra" else "devicePlugin"
    if found is None:
        return "devicePlugin"
    dra_count, plugin_count = found.dra.get(key, 0), found.plugin.get(key, 0)
    return "dra" if dra_count > plugin_count else "devicePlugin"


def pool_allocations(
    pools: Sequence[Any], config: OperatorConfig, found: Inventory | None
) -> dict[str, Resolved]:
    """``{pool name: devicePlugin | dra}`` for the GPU pools of a service (CPU pools: none)."""
    return {
        p.name: resolve(config.allocation, pool_key(p.gpu, p.partition), found)
        for p in pools
        if p.gpu != "CPU"
    }

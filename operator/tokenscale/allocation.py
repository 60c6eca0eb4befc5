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

from tokenscale.api.config import Allocation, OperatorConfig
from tokenscale.autoscale.capacity import node_matches, parse_count, resource_name
from tokenscale.autoscale.dra import DeviceKey, pool_key, sliced_devices

Resolved = Literal["devicePlugin", "dra"]


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

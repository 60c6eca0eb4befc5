"""DRA devices as the free-capacity view sees them: ResourceSlices minus allocated claims.

Why here, beside :mod:`tokenscale.autoscale.capacity`: on node pools run by AMD's DRA driver
(``gpu.amd.com``) there is no ``amd.com/gpu`` allocatable on the Node; the GPUs are devices in
ResourceSlices and a GPU is taken when a ResourceClaim's status lists it. Counting those per node,
per GPU model and partition profile, lets the autoscaler cap a scale-up exactly as it does for
extended resources (``InsufficientGPU``) instead of leaving a pile of Pending pods. Pure
functions over API dicts; the device attribute names follow the driver (``deviceinfo.go``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tokenscale import constants as c
from tokenscale.api.config import GPUSpec

#: (GPU model in the catalogue, partition profile or None for whole GPUs)
DeviceKey = tuple[str, str | None]


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
    if kind == c.DRA_TYPE_GPU:
        return (model, None)
    if kind == c.DRA_TYPE_PARTITION:
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


@dataclass(frozen=True)
class DraView:
    """The cluster's DRA state one capacity check needs: how each pool of the service asks
    (``devicePlugin``/``dra``), the ResourceSlices and every ResourceClaim (all namespaces:
    other tenants' claims hold devices too)."""

    allocations: Mapping[str, str]
    slices: list[dict[str, Any]]
    claims: list[dict[str, Any]]


def free_per_node(
    slices: Iterable[Mapping[str, Any]],
    claims: Iterable[Mapping[str, Any]],
    key: DeviceKey,
    gpus: Mapping[str, GPUSpec],
    driver: str,
) -> dict[str, int]:
    """Free devices of ``key`` per node: published in slices and allocated to no claim.

    Nodes are not filtered by readiness here: a device-plugin node that goes NotReady keeps its
    allocatable, and the scheduler equally places claims on any node whose devices fit.
    """
    used = allocated_devices(claims, driver)
    free: dict[str, int] = {}
    for dev in sliced_devices(slices, driver, gpus):
        if dev.key != key:
            continue
        free.setdefault(dev.node, 0)
        if (dev.pool, dev.name) not in used:
            free[dev.node] += 1
    return dict(sorted(free.items()))


def claimed_models(
    claims: Iterable[Mapping[str, Any]], models: Iterable[str], pool_label: str, driver: str
) -> dict[str, dict[str, int]]:
    """Per pool (claim label ``pool_label``): allocated claims per GPU model.

    A ``firstAvailable`` request's results name the chosen entry as ``<request>/<entry>``, and
    the entries are named after the models (``mi355x``), so the entry says which model the
    scheduler gave the pod. Claims of a plain request name no entry and are not counted.
    """
    by_entry = {m.lower(): m for m in models}
    out: dict[str, dict[str, int]] = {}
    for claim in claims:
        pool = ((claim.get("metadata") or {}).get("labels") or {}).get(pool_label)
        allocation = (claim.get("status") or {}).get("allocation") or {}
        results = (allocation.get("devices") or {}).get("results") or []
        entries = {
            str(r.get("request", "")).partition("/")[2]
            for r in results
            if r.get("driver") == driver
        }
        model = next((by_entry[e] for e in sorted(entries) if e in by_entry), None)
        if pool and model:
            counts = out.setdefault(str(pool), {})
            counts[model] = counts.get(model, 0) + 1
    return {p: dict(sorted(c.items())) for p, c in sorted(out.items())}

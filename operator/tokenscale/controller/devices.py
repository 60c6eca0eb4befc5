"""The thin reader behind ``allocation: auto`` and DRA capacity: lists, cached briefly.

Why cached: every reconcile of every service would otherwise list all ResourceSlices,
DeviceClasses and Nodes; they change when node pools change, not per reconcile. A few seconds
of staleness only delays a newly added node pool's detection. Why forgiving: a cluster without
the ``resource.k8s.io/v1`` API (404) or an operator without RBAC for it (403) simply has no DRA
devices, and ``auto`` falls back to the device plugin, as before this feature.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from tokenscale import constants as c
from tokenscale.allocation import Inventory, Resolved, inventory, pool_allocations
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.autoscale import dra
from tokenscale.autoscale.dra import DraView
from tokenscale.k8s.kube import Kube, KubeError

log = logging.getLogger(__name__)

#: Seconds a cluster view is reused.
TTL_SECONDS = 10.0

_lock = threading.Lock()
_cache: weakref.WeakKeyDictionary[Kube, tuple[float, dict[str, list[dict[str, Any]]]]] = (
    weakref.WeakKeyDictionary()
)


def _list_or_empty(kube: Kube, kind: str) -> list[dict[str, Any]]:
    try:
        return kube.list(kind, None)
    except KubeError as exc:
        if exc.status in (403, 404):
            log.debug("cannot list %s (%s): treating as none", kind, exc.status)
            return []
        raise


def cluster_lists(kube: Kube, *, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """ResourceSlices, DeviceClasses and Nodes, at most :data:`TTL_SECONDS` old."""
    now = time.monotonic() if now is None else now
    with _lock:
        hit = _cache.get(kube)
        if hit is not None and now - hit[0] < TTL_SECONDS:
            return hit[1]
    lists = {
        "ResourceSlice": _list_or_empty(kube, "ResourceSlice"),
        "DeviceClass": _list_or_empty(kube, "DeviceClass"),
        "Node": _list_or_empty(kube, "Node"),
    }
    with _lock:
        _cache[kube] = (now, lists)
    return lists


def cluster_inventory(kube: Kube, cfg: OperatorConfig) -> Inventory:
    lists = cluster_lists(kube)
    return inventory(lists["ResourceSlice"], lists["DeviceClass"], lists["Node"], cfg)


def pool_allocations_for(
    kube: Kube, cfg: OperatorConfig, svc: InferenceService
) -> dict[str, Resolved]:
    """How each GPU pool of ``svc`` asks for GPUs; reads the cluster only for ``auto``."""
    found = cluster_inventory(kube, cfg) if cfg.allocation == "auto" else None
    return pool_allocations(svc.spec.pools, cfg, found)


def dra_view(kube: Kube, cfg: OperatorConfig, svc: InferenceService) -> DraView | None:
    """What DRA capacity needs for ``svc``, or None when none of its pools claims devices.

    Claims are listed fresh (they change with every scheduled pod); slices come from the cache.
    """
    allocations = pool_allocations_for(kube, cfg, svc)
    if "dra" not in allocations.values():
        return None
    slices = cluster_lists(kube)["ResourceSlice"]
    return DraView(allocations, slices, _list_or_empty(kube, "ResourceClaim"))


def forget(kube: Kube) -> None:
    """Drop the cached view (tests; a known node-pool change)."""
    with _lock:
        _cache.pop(kube, None)


def claimed_models(
    kube: Kube, cfg: OperatorConfig, svc: InferenceService, namespace: str
) -> dict[str, dict[str, int]]:
    """Which GPU model each pool's claims got; only read when some pool has alternatives."""
    if not any(p.alternatives for p in svc.spec.pools):
        return {}
    selector = f"{c.LABEL_SERVICE}={svc.metadata.name}"
    try:
        claims = kube.list("ResourceClaim", namespace, selector)
    except KubeError as exc:
        if exc.status in (403, 404):
            return {}
        raise
    return dra.claimed_models(claims, cfg.gpus, c.LABEL_POOL, cfg.dra.driver)


def workload_allocation(workload: dict[str, Any] | None) -> str | None:
    """``dra`` or ``devicePlugin`` as a rendered workload's pod template asks for GPUs (None:
    no workload, or a pod that asks for no GPU, such as a CPU pool)."""
    spec = (workload or {}).get("spec") or {}
    lws = spec.get("leaderWorkerTemplate") or {}
    templates = [spec.get("template"), lws.get("leaderTemplate"), lws.get("workerTemplate")]
    for template in filter(None, templates):
        pod = template.get("spec") or {}
        if pod.get("resourceClaims"):
            return "dra"
        for container in pod.get("containers") or []:
            limits = (container.get("resources") or {}).get("limits") or {}
            if any(k.startswith(c.RESOURCE_PREFIX) for k in limits):
                return "devicePlugin"
    return None

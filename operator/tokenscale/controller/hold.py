"""Who owns a service's ``/scale``: the scaling-hold protocol between a sweep and the autoscaler.

A replica sweep marks its target with the hold annotation (``benchmark/<name>``) for as long as
it writes replicas itself; the autoscaler's pass then only publishes metrics. The hold is lifted
by the sweep when it ends, by the benchmark's deletion, and, should both be missed, by the
autoscaler noticing that the holder is gone or finished, so autoscaling can never stay frozen.
Kept apart from the sweep so that the autoscaler loads this protocol and not the benchmark
machinery.
"""

from __future__ import annotations

import logging
from typing import Any

from tokenscale import constants as c
from tokenscale.api.benchmark import FINISHED
from tokenscale.controller.observe import benchmark_status
from tokenscale.k8s.kube import Kube

log = logging.getLogger(__name__)


def hold_value(bench: str) -> str:
    """What the scaling-hold annotation says: who owns /scale."""
    return f"benchmark/{bench}"


def release(kube: Kube, namespace: str, service: str, bench: str, restore: int | None) -> None:
    """Give /scale back: restore the replicas the service had and lift the hold (idempotent)."""
    current = kube.get("InferenceService", namespace, service)
    if current is None:
        return
    annotations = current["metadata"].get("annotations") or {}
    if annotations.get(c.ANNOTATION_SCALING_HOLD) != hold_value(bench):
        return  # already released (or someone else holds it): never undo another owner's state
    # One merge patch: spec.replicas back (null removes it) and the hold lifted together.
    patch = {
        "metadata": {"annotations": {c.ANNOTATION_SCALING_HOLD: None}},
        "spec": {"replicas": restore},
    }
    kube.patch_merge("InferenceService", namespace, service, patch)


def live_hold(kube: Kube, meta: dict[str, Any]) -> str | None:
    """The service's scaling hold, if the benchmark holding it still runs. A stale hold (its
    benchmark deleted, or finished without releasing) is lifted here, by the autoscaler's pass,
    so autoscaling can never stay frozen."""
    hold = (meta.get("annotations") or {}).get(c.ANNOTATION_SCALING_HOLD)
    if not hold:
        return None
    kind, _, owner = str(hold).partition("/")
    if kind == "benchmark" and owner:
        bench = kube.get("InferenceBenchmark", meta["namespace"], owner)
        if bench is not None and benchmark_status(bench).phase not in FINISHED:
            return str(hold)
    log.info("lifting stale scaling hold %r on %s", hold, meta["name"])
    kube.patch_merge(
        "InferenceService",
        meta["namespace"],
        meta["name"],
        {"metadata": {"annotations": {c.ANNOTATION_SCALING_HOLD: None}}},
    )
    return None


def release_if_holding(kube: Kube, body: dict[str, Any]) -> None:
    """On deletion of a benchmark mid-sweep: give the target back (best effort)."""
    sweep = benchmark_status(body).sweep
    target = ((body.get("spec") or {}).get("target") or {}).get("service")
    if not target or sweep is None:
        return
    meta = body["metadata"]
    release(kube, meta["namespace"], target, meta["name"], sweep.restore_replicas)

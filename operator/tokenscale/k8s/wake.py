"""Waking a scaled-to-zero InferenceService: the one place that decides how far and says so.

Why one module: a benchmark (in-cluster demand) and the activator (a request from outside) both
wake services, and they must agree on the replica count, the ``/scale`` write and the Event, or
the autoscaler would see two different "woken" states.
"""

from __future__ import annotations

from typing import Any

from tokenscale.api.service import InferenceServiceSpec
from tokenscale.k8s.kube import Kube


def at_zero(svc_body: dict[str, Any]) -> bool:
    """Scaled to zero: /scale says 0 and the reconcile has applied it."""
    replicas = (svc_body.get("spec") or {}).get("replicas")
    applied = (svc_body.get("status") or {}).get("replicas")
    return replicas == 0 and applied in (0, None)


def wake_replicas(spec: InferenceServiceSpec) -> int:
    """Replicas to wake to: every pool's minimum, and at least one engine to take the demand."""
    return max(1, sum(p.min_replicas for p in spec.pools))


def wake(kube: Kube, svc_body: dict[str, Any], spec: InferenceServiceSpec, why: str) -> str:
    """Scale the service up through ``/scale`` and post a ``WokeFromZero`` Event; returns the
    Event's message. ``why`` completes "woke NAME from zero to N replica(s) ..."."""
    meta = svc_body["metadata"]
    replicas = wake_replicas(spec)
    kube.patch_merge(
        "InferenceService",
        meta["namespace"],
        meta["name"],
        {"spec": {"replicas": replicas}},
        "scale",
    )
    message = f"woke {meta['name']} from zero to {replicas} replica(s) {why}"
    kube.event(svc_body, "WokeFromZero", message)
    return message

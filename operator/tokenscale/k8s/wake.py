"""Waking a scaled-to-zero InferenceService: the one place that decides how far and says so.

Why one module: a benchmark (in-cluster demand) and the activator (a request from outside) both
wake services, and they must agree on the replica count, the ``/scale`` write and the Event, or
the autoscaler would see two different "woken" states.
"""

from __future__ import annotations

from typing import Any

from tokenscale.api.service import InferenceServiceSpec
from tokenscale.k8s.kube import Kube, KubeError


def at_zero(svc_body: dict[str, Any]) -> bool:
    """Scaled to zero: /scale says 0 and the reconcile has applied it."""
    replicas = (svc_body.get("spec") or {}).get("replicas")
    applied = (svc_body.get("status") or {}).get("replicas")
    return replicas == 0 and applied in (0, None)


def wake_replicas(spec: InferenceServiceSpec) -> int:
    """Replicas to wake to: every pool's minimum, and at least one engine to take the demand."""
    return max(1, sum(p.min_replicas for p in spec.pools))


def wake(kube: Kube, svc_body: dict[str, Any], spec: InferenceServiceSpec, why: str) -> str | None:
    """Scale the service up through ``/scale`` and post a ``WokeFromZero`` Event; returns the
    Event's message, or None when someone else woke it first (no second Event).

    The write is conditional on the resourceVersion read: two activator replicas (or an
    activator and a benchmark) that both saw the service at zero would otherwise both wake it,
    and a flood of requests spread over them posted one WokeFromZero per replica (found by the
    activator-fault drill, issue 17). On a conflict the service is read again: still at zero
    (only its status moved) means try again; anything else means another writer got there."""
    meta = svc_body["metadata"]
    replicas = wake_replicas(spec)
    body = svc_body
    for _ in range(WAKE_ATTEMPTS):
        patch: dict[str, Any] = {"spec": {"replicas": replicas}}
        version = body["metadata"].get("resourceVersion")
        if version:
            patch["metadata"] = {"resourceVersion": version}
        try:
            kube.patch_merge("InferenceService", meta["namespace"], meta["name"], patch, "scale")
        except KubeError as exc:
            if exc.status != 409:
                raise
            fresh = kube.get("InferenceService", meta["namespace"], meta["name"])
            if fresh is None or not at_zero(fresh):
                return None
            body = fresh
            continue
        message = f"woke {meta['name']} from zero to {replicas} replica(s) {why}"
        kube.event(svc_body, "WokeFromZero", message)
        return message
    raise KubeError(409, f"could not wake {meta['name']}: it kept changing ({WAKE_ATTEMPTS} tries)")


#: Conflicts in a row before a wake gives up (each is a status write landing in between).
WAKE_ATTEMPTS = 5

"""PodDisruptionBudget: node drains take engines down one at a time, and never block forever."""

from __future__ import annotations

from typing import Any

from tokenscale.api.service import InferenceService
from tokenscale.render import names

Obj = dict[str, Any]


def pod_disruption_budget(
    svc: InferenceService, name: str, labels: dict[str, str], selector: dict[str, str]
) -> Obj:
    """maxUnavailable 1 over all engine pods: a reload costs minutes, so evict one at a time.

    ``maxUnavailable`` (not ``minAvailable``) so a one-replica service never blocks a drain.
    ``unhealthyPodEvictionPolicy: AlwaysAllow`` (GA in Kubernetes 1.31) lets a drain evict pods
    that are running but not Ready (a crash-looping new version, an engine still loading):
    they serve nothing, and with the default policy a stuck rollout would hold the budget at
    zero and block every node drain until someone fixed the spec. Rolling updates do not go
    through evictions, so the budget never slows a rollout (docs/rollouts.md, "Drain").
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.object_meta(svc, name, labels),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": dict(sorted(selector.items()))},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }

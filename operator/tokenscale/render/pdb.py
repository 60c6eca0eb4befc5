"""PodDisruptionBudget: node drains take engines down one at a time."""

from __future__ import annotations

from typing import Any

from tokenscale.api.service import InferenceService
from tokenscale.render import names

Obj = dict[str, Any]


def pod_disruption_budget(
    svc: InferenceService, name: str, labels: dict[str, str], selector: dict[str, str]
) -> Obj:
    """maxUnavailable 1 over all engine pods: a reload costs minutes, so evict one at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.object_meta(svc, name, labels),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": dict(sorted(selector.items()))},
        },
    }

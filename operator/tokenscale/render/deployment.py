"""The Deployment of one single-node GPU (or CPU) pool."""

from __future__ import annotations

from typing import Any

from tokenscale import constants as c
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.render import names

Obj = dict[str, Any]

#: Extra time, beyond the startup budget, before a rollout is reported as stalled.
PROGRESS_SLACK_SECONDS = 600


def deployment(
    service: InferenceService,
    pool: GPUPool,
    name: str,
    labels: dict[str, str],
    selector: dict[str, str],
    template: Obj,
    replicas: int,
) -> Obj:
    """One Deployment per pool so each GPU model scales on its own.

    Rolling updates surge one pod and never go below the current count (maxUnavailable 0):
    an engine takes minutes to load, and dropping a serving replica first would break the SLA.
    The price is one spare replica's worth of GPUs during a rollout.
    """
    meta = names.object_meta(service, name, labels)
    meta["annotations"] = {c.ANNOTATION_GPU: pool.gpu}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(sorted(selector.items()))},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": service.spec.engine.startup_timeout_seconds
            + PROGRESS_SLACK_SECONDS,
            "template": template,
        },
    }

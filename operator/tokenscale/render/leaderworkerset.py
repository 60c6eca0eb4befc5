"""LeaderWorkerSet for replicas that span several nodes (vllm.md §5).

One group per replica: the leader runs the API server and node rank 0, workers run
``--headless`` with their rank from the LWS worker-index label. A failing pod restarts its whole
group, because a vLLM process group cannot re-admit a lost rank.
"""

from __future__ import annotations

from typing import Any

from tokenscale import constants as c
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.render import names

Obj = dict[str, Any]


def leader_worker_set(
    service: InferenceService,
    pool: GPUPool,
    name: str,
    labels: dict[str, str],
    size: int,
    leader: Obj,
    worker: Obj,
    replicas: int,
) -> Obj:
    """``size`` pods per replica (one per node); workers start after the leader exists."""
    meta = names.object_meta(service, name, labels)
    meta["annotations"] = {c.ANNOTATION_GPU: pool.gpu}
    return {
        "apiVersion": c.LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": size,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }

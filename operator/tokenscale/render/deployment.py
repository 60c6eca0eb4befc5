"""The Deployment of one single-node GPU (or CPU) pool."""

from __future__ import annotations

import copy
from typing import Any, Literal

from tokenscale import constants as c
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.render import names

Obj = dict[str, Any]

#: The pod template's own hash (rendered by :mod:`tokenscale.render.pod` over the final, merged
#: template): a change of it is a change that replaces pods, and pods carry it, so the new
#: version's pods can be told apart from the old ones.
ANNOTATION_TEMPLATE_HASH = c.ANNOTATION_SPEC_HASH
ANNOTATION_ROLLOUT = c.ANNOTATION_ROLLOUT

RolloutStrategy = Literal["surge", "inPlace"]

_ROLLING = {
    "surge": {"maxSurge": 1, "maxUnavailable": 0},
    "inPlace": {"maxSurge": 0, "maxUnavailable": 1},
}

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

    Rendered with the surge strategy (a new replica loads before an old one stops: an engine
    takes minutes to load); the reconcile swaps it with :func:`set_rollout` when a change that
    replaces pods meets a full fleet (:mod:`tokenscale.autoscale.rollout`).
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
            "strategy": {"type": "RollingUpdate", "rollingUpdate": dict(_ROLLING["surge"])},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": service.spec.engine.startup_timeout_seconds
            + PROGRESS_SLACK_SECONDS,
            "template": template,
        },
    }


def rendered_hash(workload: Obj | None) -> str | None:
    """The template hash a Deployment (rendered or read back) carries, None if none."""
    if workload is None:
        return None
    tpl = (workload.get("spec") or {}).get("template") or {}
    found = ((tpl.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_TEMPLATE_HASH)
    return str(found) if found is not None else None


def live_strategy(workload: Obj) -> RolloutStrategy:
    """The rolling-update strategy a Deployment has now (inPlace when it surges nothing)."""
    rolling = ((workload.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    return "inPlace" if str(rolling.get("maxSurge", 1)) in ("0", "0%") else "surge"


def recorded_rollout(workload: Obj | None) -> str | None:
    """The operator's last rollout decision recorded on a Deployment (JSON), None if none."""
    if workload is None:
        return None
    found = ((workload.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ROLLOUT)
    return str(found) if found is not None else None


def set_rollout(obj: Obj, strategy: RolloutStrategy, record: str | None) -> None:
    """Render ``strategy`` (rolling-update bounds) and the decision ``record`` (JSON, shown in
    status.pools[].rollout) onto a rendered Deployment.

    The record lives on the Deployment, not only in status, so that status stays recomputed
    from what exists: a pass that reads a stale status cannot lose the decision."""
    obj["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": dict(_ROLLING[strategy])}
    if record is not None:
        obj["metadata"].setdefault("annotations", {})[ANNOTATION_ROLLOUT] = record


def hold_template(obj: Obj, live: Obj, record: str) -> None:
    """Keep the live Deployment's pod template and strategy (a rollout that must wait replaces
    nothing); ``record`` says why.

    Nothing is paused: the next pass renders the new template again and decides again, and a
    spec reverted meanwhile simply matches what runs."""
    obj["spec"]["template"] = copy.deepcopy((live.get("spec") or {}).get("template") or {})
    set_rollout(obj, live_strategy(live), record)

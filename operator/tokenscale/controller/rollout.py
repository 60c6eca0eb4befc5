"""The reconcile's rollout hook: pick each pool Deployment's strategy before it is applied.

Only a change that replaces pods is decided (the rendered template hash differs from the live
one; a ``wait`` keeps the live template, so it is decided again on every pass). Otherwise the
live Deployment's strategy and decision record are rendered again, so a rollout in progress never
switches strategy and a pass that changes nothing reads no nodes. The decision is recorded on
the Deployment (JSON annotation) and status.pools[].rollout is read back from there, so the
status stays recomputed from what exists. The decision itself is
:func:`tokenscale.autoscale.rollout.decide`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.api.status import InferenceServiceStatus, PoolPlan, PoolRollout
from tokenscale.autoscale import rollout as decision
from tokenscale.autoscale.state import PoolInput
from tokenscale.controller import devices
from tokenscale.controller.autoscaler import with_allocatable
from tokenscale.controller.events import Event
from tokenscale.k8s.kube import Kube
from tokenscale.render import deployment as dep
from tokenscale.render import names

log = logging.getLogger(__name__)


def recorded(workload: Mapping[str, Any] | None) -> PoolRollout | None:
    """The decision recorded on a Deployment (None: none, or not ours to read)."""
    raw = dep.recorded_rollout(dict(workload) if workload is not None else None)
    if raw is None:
        return None
    try:
        return PoolRollout.model_validate_json(raw)
    except ValidationError:
        log.warning("ignoring an unreadable %s annotation", dep.ANNOTATION_ROLLOUT)
        return None


def _record(rollout: PoolRollout) -> str:
    return rollout.model_dump_json(by_alias=True, exclude_none=True)


def choose(
    body: dict[str, Any],
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    objects: Sequence[dict[str, Any]],
    kube: Kube,
    old: InferenceServiceStatus,
    now: datetime,
) -> list[Event]:
    """Set the strategy of every rendered pool Deployment in ``objects`` (mutated in place);
    the Events of new decisions."""
    meta = body["metadata"]
    rendered = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    if not rendered:
        return []
    live = {
        o["metadata"]["name"]: o
        for o in kube.list("Deployment", meta["namespace"], names.selector_for(meta["name"]))
    }
    pending: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {}
    for pool in svc.spec.pools:
        name = names.pool_workload(meta["name"], pool.name)
        obj, current = rendered.get(name), live.get(name)
        if obj is None or current is None:
            continue  # a new Deployment replaces nothing: rendered as surge
        new_hash = dep.rendered_hash(obj) or ""
        if dep.rendered_hash(current) == new_hash:
            before = recorded(current)
            keep = None if before is None or before.strategy == "wait" else _record(before)
            dep.set_rollout(obj, dep.live_strategy(current), keep)  # a wait was reverted
            continue
        pending[pool.name] = (obj, current, new_hash)
    if not pending:
        return []
    free = _free_replicas(svc, cfg, plans, kube, set(pending))
    engines = [live.get(names.pool_workload(meta["name"], p.name)) for p in svc.spec.pools]
    ready = sum(int((d.get("status") or {}).get("readyReplicas") or 0) for d in engines if d)
    floor = decision.sla_floor(old.metrics, svc.spec.scaling.metric, ready, now)
    by_plan = {p.pool: p for p in plans}
    events: list[Event] = []
    for pool in svc.spec.pools:
        if pool.name not in pending:
            continue
        obj, current, new_hash = pending[pool.name]
        plan = by_plan.get(pool.name)
        choice = decision.decide(
            decision.RolloutInput(
                pin=svc.spec.rollout.strategy,
                gpus_per_replica=plan.gpus_per_replica if plan else 0,
                free_replicas=free.get(pool.name),
                ready=ready,
                floor=floor,
                desired=int(obj["spec"].get("replicas") or 0),
                pool_ready=int((current.get("status") or {}).get("readyReplicas") or 0),
            )
        )
        before = recorded(current)
        same = (
            before is not None
            and before.revision == new_hash
            and (before.strategy, before.reason) == (choice.strategy, choice.reason)
        )
        chosen = PoolRollout(
            strategy=choice.strategy,
            reason=choice.reason,
            message=choice.message,
            revision=new_hash,
            decided_at=before.decided_at if same and before is not None else now,
        )
        if choice.strategy == "wait":
            dep.hold_template(obj, current, _record(chosen))
        else:
            dep.set_rollout(obj, choice.strategy, _record(chosen))
        if same:
            continue
        kind: Literal["Normal", "Warning"] = "Warning" if choice.strategy == "wait" else "Normal"
        verb = "waits" if choice.strategy == "wait" else f"rolls out {choice.strategy}"
        events.append(
            Event(
                f"Rollout{choice.strategy[0].upper()}{choice.strategy[1:]}",
                f"pool {pool.name} {verb} ({choice.reason}): {choice.message}",
                kind,
            )
        )
    return events


def _free_replicas(
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    kube: Kube,
    pools: set[str],
) -> Mapping[str, int | None]:
    """Replicas' worth of free GPUs per pool, counted exactly as the autoscaler counts them
    (device-plugin allocatable minus bound pods' requests, or free DRA devices); None for CPU."""
    wanted = [p for p in svc.spec.pools if p.name in pools]
    inputs = [
        PoolInput(
            name=p.name,
            min_replicas=p.min_replicas,
            max_replicas=p.max_replicas,
            replicas=0,
            ready_replicas=0,
            target_per_replica=0.0,
        )
        for p in wanted
    ]
    nodes = kube.list("Node", None)
    all_pods = kube.list("Pod", None, "", "status.phase!=Succeeded")
    view = devices.dra_view(kube, cfg, svc)
    counted = with_allocatable(inputs, svc, cfg, plans, nodes, all_pods, view)
    return {i.name: i.allocatable_replicas for i in counted}

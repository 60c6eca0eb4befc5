"""The reconcile's rollout hook: pick each pool Deployment's strategy before it is applied.

Only a change that replaces pods is decided (the rendered template hash differs from the live
one; a ``wait`` keeps the live template, so it is decided again on every pass). Otherwise the
strategy recorded on the live Deployment is rendered again, so a rollout in progress never
switches strategy and a pass that changes nothing reads no nodes. The decision itself is
:func:`tokenscale.autoscale.rollout.decide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

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


@dataclass(slots=True)
class Rollouts:
    """Per pool: the rollout shown in status (decided now or carried over), and new Events."""

    pools: dict[str, PoolRollout] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def carried(old: InferenceServiceStatus) -> dict[str, PoolRollout]:
    """The rollouts the stored status shows (a pass that decides nothing keeps them)."""
    return {p.name: p.rollout for p in old.pools if p.rollout is not None}


def choose(
    body: dict[str, Any],
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    objects: Sequence[dict[str, Any]],
    kube: Kube,
    old: InferenceServiceStatus,
    now: datetime,
) -> Rollouts:
    """Set the strategy of every rendered pool Deployment in ``objects`` (mutated in place)."""
    meta = body["metadata"]
    rendered = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    out = Rollouts(pools=carried(old))
    if not rendered:
        return out
    live = {
        o["metadata"]["name"]: o
        for o in kube.list("Deployment", meta["namespace"], names.selector_for(meta["name"]))
    }
    pending: dict[str, tuple[dict[str, Any], str]] = {}
    live_of: dict[str, dict[str, Any]] = {}
    for pool in svc.spec.pools:
        name = names.pool_workload(meta["name"], pool.name)
        obj = rendered.get(name)
        if obj is None:
            continue
        current = live.get(name)
        new_hash = dep.rendered_hash(obj) or ""
        if current is None:
            continue  # a new Deployment replaces nothing: rendered as surge
        if dep.rendered_hash(current) == new_hash:
            dep.set_rollout(obj, dep.chosen_rollout(current) or "surge")
            waited = out.pools.get(pool.name)
            if waited is not None and waited.strategy == "wait":  # reverted while waiting
                del out.pools[pool.name]
            continue
        live_of[pool.name] = current
        pending[pool.name] = (obj, new_hash)
    if not pending:
        return out
    free = _free_replicas(svc, cfg, plans, kube, set(pending))
    ready = sum(int((d.get("status") or {}).get("readyReplicas") or 0) for d in live.values())
    floor = decision.sla_floor(old.metrics, svc.spec.scaling.metric, ready, now)
    by_plan = {p.pool: p for p in plans}
    for pool in svc.spec.pools:
        if pool.name not in pending:
            continue
        obj, new_hash = pending[pool.name]
        plan = by_plan.get(pool.name)
        choice = decision.decide(
            decision.RolloutInput(
                pin=svc.spec.rollout.strategy,
                gpus_per_replica=plan.gpus_per_replica if plan else 0,
                free_replicas=free.get(pool.name),
                ready=ready,
                floor=floor,
                desired=int(obj["spec"].get("replicas") or 0),
                pool_ready=int((live_of[pool.name].get("status") or {}).get("readyReplicas") or 0),
            )
        )
        if choice.strategy == "wait":
            dep.hold_template(obj, live_of[pool.name])
        else:
            dep.set_rollout(obj, choice.strategy)
        before = out.pools.get(pool.name)
        same = (
            before is not None
            and before.revision == new_hash
            and (before.strategy, before.reason) == (choice.strategy, choice.reason)
        )
        if same and before is not None:
            out.pools[pool.name] = before.model_copy(update={"message": choice.message})
            continue
        out.pools[pool.name] = PoolRollout(
            strategy=choice.strategy,
            reason=choice.reason,
            message=choice.message,
            revision=new_hash,
            decided_at=now,
        )
        kind: Literal["Normal", "Warning"] = "Warning" if choice.strategy == "wait" else "Normal"
        verb = "waits" if choice.strategy == "wait" else f"rolls out {choice.strategy}"
        out.events.append(
            Event(
                f"Rollout{choice.strategy[0].upper()}{choice.strategy[1:]}",
                f"pool {pool.name} {verb} ({choice.reason}): {choice.message}",
                kind,
            )
        )
    return out


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

"""One idempotent, level-based reconcile for an InferenceService.

validate → plan → split replicas → render → apply (server-side, one field manager, owned by
the service so deletion is garbage-collected) → prune children the spec no longer wants →
status from what is observed now. Create, update, resume and a slow timer all call this.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tokenscale import constants as c
from tokenscale.api.base import ObjectMeta
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService, InferenceServiceSpec
from tokenscale.api.status import PoolPlan, PoolStatus
from tokenscale.controller import devices, observe, routing
from tokenscale.controller.kube import Kube, KubeError
from tokenscale.controller.owners import owner_reference
from tokenscale.controller.split import split_replicas
from tokenscale.plan import plan_service
from tokenscale.render import names, render_all
from tokenscale.validation import problems_from

log = logging.getLogger(__name__)

#: Child kinds the operator may create for a service, and so may have to prune.
CHILD_KINDS = (
    "Deployment",
    "LeaderWorkerSet",
    "Service",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "ResourceClaimTemplate",
)
#: Child kinds whose status the service's status reports.
WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")


@dataclass(slots=True)
class Outcome:
    """What one pass decided: the status patch and the Events to post."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    invalid: bool = False
    #: (kind, name) -> generation/resourceVersion of every child this pass applied
    children: dict[tuple[str, str], str] | None = None


def child_version(obj: dict[str, Any]) -> str:
    """What changes when someone else edits a child: its generation, else its resourceVersion."""
    meta = obj.get("metadata") or {}
    gen = meta.get("generation")
    return f"g{gen}" if gen is not None else f"r{meta.get('resourceVersion', '')}"


def selector_for(name: str) -> str:
    """Every engine pod of the service: the /scale selector and what status observes."""
    return names.selector_string(names.all_pods_selector(name))


def parse_spec(body: dict[str, Any]) -> InferenceService:
    """The object as a model; raises ValidationError for operator-judged problems."""
    meta = body["metadata"]
    return InferenceService(
        api_version="tokenscale.dev/v1alpha1",
        kind="InferenceService",
        metadata=ObjectMeta(name=meta["name"], namespace=meta.get("namespace")),
        spec=InferenceServiceSpec.model_validate(body.get("spec") or {}),
    )


def _invalid(body: dict[str, Any], exc: ValidationError, now: datetime) -> Outcome:
    text = "; ".join(str(p) for p in problems_from(exc))
    gen = body["metadata"].get("generation")
    conds = [
        observe.condition(c.COND_READY, False, "InvalidSpec", text, gen),
        observe.condition(c.COND_DEGRADED, True, "InvalidSpec", text, gen),
    ]
    old = (body.get("status") or {}).get("conditions") or []
    status = {"observedGeneration": gen, "conditions": observe.merge_conditions(old, conds, now)}
    return Outcome(status, [("InvalidSpec", text, "Warning")], invalid=True)


def cost_per_token(
    cfg: OperatorConfig, svc: InferenceService, plans: Sequence[PoolPlan]
) -> dict[str, float]:
    """Relative cost of a token per pool: GPU-hour price x GPUs / tokens/s per replica."""
    out: dict[str, float] = {}
    by_pool = {p.pool: p for p in plans}
    for pool in svc.spec.pools:
        gpu = cfg.gpus.get(pool.gpu)
        plan = by_pool.get(pool.name)
        if gpu is None or plan is None or not plan.fits:
            out[pool.name] = float("inf")
            continue
        gpus = max(plan.gpus_per_replica, 1)
        tps = (gpu.tokens_per_second_per_gpu or 1.0) * gpus
        out[pool.name] = gpu.cost_per_gpu_hour * gpus / tps
    return out


def _split_hint(body: dict[str, Any]) -> dict[str, int] | None:
    raw = (body["metadata"].get("annotations") or {}).get(c.ANNOTATION_SCALER_STATE)
    if not raw:
        return None
    try:
        split = json.loads(raw).get("split")
    except (ValueError, AttributeError):
        return None
    if not isinstance(split, dict):
        return None
    return {str(k): int(v) for k, v in split.items()}


def reconcile_service(
    body: dict[str, Any], kube: Kube, cfg: OperatorConfig, now: datetime | None = None
) -> Outcome:
    """Make the children match the spec and compute the status patch."""
    return _reconcile(body, kube, cfg, now or datetime.now(UTC), apply=True)


def refresh_status(
    body: dict[str, Any], kube: Kube, cfg: OperatorConfig, now: datetime | None = None
) -> Outcome:
    """Recompute the status from what exists now, writing no child (a child's status moved).

    The caller has checked that the spec's generation was observed and that the workloads are
    the ones the last reconcile applied: the rendered workloads are read back (one list per
    workload kind) instead of applied, children are neither created nor pruned, and
    ``children`` stays None (the ledger keeps what the last reconcile applied). Conditions,
    Events and the benchmark after a finished rollout come out as in :func:`reconcile_service`.
    """
    return _reconcile(body, kube, cfg, now or datetime.now(UTC), apply=False)


def _reconcile(
    body: dict[str, Any], kube: Kube, cfg: OperatorConfig, now: datetime, *, apply: bool
) -> Outcome:
    gen = body["metadata"].get("generation")
    try:
        svc = parse_spec(body)
    except ValidationError as exc:
        return _invalid(body, exc, now)

    plans = plan_service(svc, cfg)
    replicas = split_replicas(
        svc.spec.replicas, svc.spec.pools, cost_per_token(cfg, svc, plans), _split_hint(body)
    )
    namespace = body["metadata"]["namespace"]
    route = routing.live_route(kube, cfg, svc, namespace)
    allocations = devices.pool_allocations_for(kube, cfg, svc)
    rendered = render_all(svc, cfg, plans, replicas, route, allocations)
    events: list[tuple[str, str, str]] = []
    if apply:
        applied = _apply_children(body, rendered.objects, kube, cfg, events)
    else:
        applied = _read_workloads(body, rendered.objects, kube, cfg)

    status = _status(body, svc, plans, replicas, applied, kube, rendered.problems, now, cfg)
    moved = routing.follow(
        body,
        svc,
        cfg,
        kube,
        int(status.get("readyReplicas") or 0),
        route,
        lambda want: _service_object(render_all(svc, cfg, plans, replicas, want).objects),
        events,
    )
    if moved is not None and apply:  # the ledger must hold the Service as it is now
        applied[("Service", moved["metadata"]["name"])] = moved
    old_degraded = _condition(body, c.COND_DEGRADED)
    new_degraded = _condition({"status": status}, c.COND_DEGRADED)
    if new_degraded and new_degraded.get("status") == "True":
        changed = not old_degraded or old_degraded.get("message") != new_degraded.get("message")
        if changed:
            reason = str(new_degraded.get("reason"))
            events.append((reason, str(new_degraded.get("message")), "Warning"))
    if gen != (body.get("status") or {}).get("observedGeneration"):
        events += [("RenderWarning", w, "Warning") for w in rendered.warnings]
    if _rollout_benchmark_due(body, svc, status):
        bench = rollout_benchmark(body, svc)
        kube.apply(bench)
        status["rolloutBenchmarkGeneration"] = gen
        events.append(
            (
                "RolloutBenchmark",
                f"created InferenceBenchmark {bench['metadata']['name']}",
                "Normal",
            )
        )
    status["observedGeneration"] = gen
    if not apply:
        return Outcome(status, events)
    children = {key: child_version(obj) for key, obj in applied.items()}
    return Outcome(status, events, children=children)


def _service_object(objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Service")


def _apply_children(
    body: dict[str, Any],
    objects: Sequence[dict[str, Any]],
    kube: Kube,
    cfg: OperatorConfig,
    events: list[tuple[str, str, str]],
) -> dict[tuple[str, str], dict[str, Any]]:
    """Server-side apply every rendered child, prune owned children no longer rendered."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    owner = owner_reference(body, "InferenceService")
    existing = {
        (kind, o["metadata"]["name"]): o
        for kind in CHILD_KINDS
        if kind_available(kube, cfg, kind)
        for o in kube.list(kind, namespace, selector_for(name))
    }
    applied: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
        obj["metadata"]["ownerReferences"] = [owner]
        key = (obj["kind"], obj["metadata"]["name"])
        try:
            applied[key] = kube.apply(obj)
        except KubeError as exc:
            events.append(("ApplyFailed", f"{key[0]} {key[1]}: {exc}", "Warning"))
            continue
        if key not in existing:
            events.append(("Created", f"created {key[0]} {key[1]}", "Normal"))
    for key in sorted(set(existing) - set(applied)):
        if any(ref.get("uid") == meta.get("uid") for ref in _owners(existing[key])):
            kube.delete(key[0], namespace, key[1])
            events.append(("Deleted", f"deleted {key[0]} {key[1]} (no longer in spec)", "Normal"))
    return applied


def _read_workloads(
    body: dict[str, Any], objects: Sequence[dict[str, Any]], kube: Kube, cfg: OperatorConfig
) -> dict[tuple[str, str], dict[str, Any]]:
    """The service's existing workloads that the rendering wants (what status observes)."""
    meta = body["metadata"]
    wanted = {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in WORKLOAD_KINDS}
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for kind in sorted({k for k, _ in wanted}):
        if not kind_available(kube, cfg, kind):
            continue
        for obj in kube.list(kind, meta["namespace"], selector_for(meta["name"])):
            key = (kind, obj["metadata"]["name"])
            if key in wanted and any(r.get("uid") == meta.get("uid") for r in _owners(obj)):
                found[key] = obj
    return found


def _status(
    body: dict[str, Any],
    svc: InferenceService,
    plans: Sequence[PoolPlan],
    replicas: dict[str, int],
    applied: dict[tuple[str, str], dict[str, Any]],
    kube: Kube,
    render_problems: Sequence[str],
    now: datetime,
    cfg: OperatorConfig,
) -> dict[str, Any]:
    meta = body["metadata"]
    pods = kube.list("Pod", meta["namespace"], selector_for(meta["name"]))
    trouble = observe.pod_problems(pods)
    models = devices.claimed_models(kube, cfg, svc, meta["namespace"])
    by_name = {k[1]: v for k, v in applied.items() if k[0] in WORKLOAD_KINDS}
    pools = []
    allocation: dict[str, str | None] = {}
    for pool in svc.spec.pools:
        workload = by_name.get(names.pool_workload(meta["name"], pool.name))
        obs = observe.observe_workload(pool.name, pool.gpu, replicas[pool.name], workload)
        obs.problems = trouble.get(pool.name, [])
        pools.append(obs)
        allocation[pool.name] = devices.workload_allocation(workload)
    plan_problems = [p.message for p in plans if not p.fits]
    conds = observe.service_conditions(
        pools, plan_problems, render_problems, meta.get("generation")
    )
    conds.append(_sla_condition(body, svc))
    conds.append(_scaling_condition(body, svc))
    old = (body.get("status") or {}).get("conditions") or []
    old_pools = {p.get("name"): p for p in (body.get("status") or {}).get("pools") or []}
    pool_status = [
        PoolStatus(
            name=o.name,
            gpu=o.gpu,
            desired_replicas=o.desired,
            replicas=o.replicas,
            ready_replicas=o.ready,
            tokens_per_second=old_pools.get(o.name, {}).get("tokensPerSecond"),
            capacity_per_replica=old_pools.get(o.name, {}).get("capacityPerReplica"),
            message="; ".join(o.problems),
            allocation=allocation.get(o.name),
            models=models.get(o.name, {}),
        ).to_k8s()
        for o in pools
    ]
    return {
        "replicas": sum(replicas.values()),
        "readyReplicas": sum(o.ready for o in pools),
        "selector": selector_for(meta["name"]),
        "gpuSummary": ",".join(dict.fromkeys(p.gpu for p in svc.spec.pools)),
        "pools": pool_status,
        "plan": [p.to_k8s() for p in plans],
        "conditions": observe.merge_conditions(old, conds, now),
    }


def _rollout_benchmark_due(
    body: dict[str, Any], svc: InferenceService, status: dict[str, Any]
) -> bool:
    """A rollout of this generation finished (Ready, not progressing) and was not benchmarked."""
    auto = svc.spec.benchmark_on_rollout
    if auto is None or not auto.enabled:
        return False
    done = (body.get("status") or {}).get("rolloutBenchmarkGeneration")
    conds = {x["type"]: x for x in status["conditions"]}
    ready = conds.get(c.COND_READY, {}).get("status") == "True"
    settled = conds.get(c.COND_PROGRESSING, {}).get("status") == "False"
    return bool(ready and settled and done != body["metadata"].get("generation"))


def rollout_benchmark(body: dict[str, Any], svc: InferenceService) -> dict[str, Any]:
    """The InferenceBenchmark run after a rollout, owned by the service."""
    auto = svc.spec.benchmark_on_rollout
    assert auto is not None
    meta = body["metadata"]
    spec: dict[str, Any] = {
        "target": {"service": meta["name"]},
        "scenario": auto.scenario,
        "load": {"durationSeconds": auto.duration_seconds},
    }
    if auto.qps is not None:
        spec["load"]["qps"] = auto.qps
    elif auto.scenario != "offline":
        spec["scenario"] = "offline"
    name = f"{meta['name'][:28]}-rollout-{meta.get('generation', 0)}"
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceBenchmark",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_INSTANCE: meta["name"]},
            "ownerReferences": [owner_reference(body, "InferenceService")],
        },
        "spec": spec,
    }


def _scaling_condition(body: dict[str, Any], svc: InferenceService) -> observe.Condition:
    """Scaling from the autoscaler's last conclusion (status.scaling) and the policy mode."""
    gen = body["metadata"].get("generation")
    mode = svc.spec.scaling.mode
    if mode == "off":
        return observe.condition(c.COND_SCALING, False, "Disabled", "scaling.mode is off", gen)
    latest = (body.get("status") or {}).get("scaling")
    if not latest:
        return observe.condition(c.COND_SCALING, None, "Starting", "no decision yet", gen)
    return observe.condition(
        c.COND_SCALING,
        bool(latest.get("able", True)),
        str(latest.get("reason") or "Active"),
        str(latest.get("message") or ""),
        gen,
    )


def _sla_condition(body: dict[str, Any], svc: InferenceService) -> observe.Condition:
    """SLAMet from the latest benchmark summary (written by the benchmark controller)."""
    gen = body["metadata"].get("generation")
    latest = (body.get("status") or {}).get("benchmark")
    if svc.spec.sla is None:
        return observe.condition(c.COND_SLA_MET, None, "NoSLA", "spec.sla is not set", gen)
    if not latest:
        msg = "no benchmark has run yet; apply an InferenceBenchmark targeting this service"
        return observe.condition(c.COND_SLA_MET, None, "NotBenchmarked", msg, gen)
    verdict = latest.get("verdict")
    reason = "BenchmarkPassed" if verdict == "Pass" else f"Benchmark{verdict}"
    return observe.condition(
        c.COND_SLA_MET, verdict == "Pass", reason, f"benchmark {latest.get('name')}: {verdict}", gen
    )


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            found: dict[str, Any] = cond
            return found
    return None


def _owners(obj: dict[str, Any]) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = obj["metadata"].get("ownerReferences") or []
    return refs


_OPTIONAL_CRDS = {
    "ServiceMonitor": "servicemonitors.monitoring.coreos.com",
    "LeaderWorkerSet": "leaderworkersets.leaderworkerset.x-k8s.io",
}


def kind_available(kube: Kube, cfg: OperatorConfig, kind: str) -> bool:
    """Skip listing kinds whose CRD the cluster lacks (a 404 would fail the pass)."""
    if kind == "ResourceClaimTemplate":  # never listed (nor RBAC needed) for device plugins
        return cfg.allocation != "devicePlugin"
    crd = _OPTIONAL_CRDS.get(kind)
    if crd is None:
        return True
    if kind == "LeaderWorkerSet" and not cfg.leader_worker_set:
        return False
    return kube.crd_exists(crd)

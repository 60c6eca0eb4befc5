"""One idempotent, level-based reconcile for an InferenceService.

validate → plan → split replicas → render → apply (server-side, one field manager, owned by
the service so deletion is garbage-collected) → prune children the spec no longer wants →
status from what is observed now. Create, update, resume and a slow timer all call this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.api.status import (
    EnergyStatus,
    InferenceServiceStatus,
    PoolPlan,
    PoolRollout,
    PoolStatus,
)
from tokenscale.api.wire import merge_patch
from tokenscale.autoscale.poolweight import measured_watts_per_gpu, replica_hour_weight
from tokenscale.autoscale.state import ScalerAnnotation
from tokenscale.controller import devices, nodefacts, observe, rollout, routing
from tokenscale.controller.events import Event
from tokenscale.controller.split import split_replicas
from tokenscale.k8s.kube import Kube, KubeError
from tokenscale.k8s.owners import owner_reference
from tokenscale.plan import plan_service
from tokenscale.render import names, render_all
from tokenscale.render.router import router_name
from tokenscale.validation import parse_spec, problems_from

log = logging.getLogger(__name__)

#: Child kinds the operator may create for a service, and so may have to prune.
CHILD_KINDS = (
    "Deployment",
    "LeaderWorkerSet",
    "Service",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "ResourceClaimTemplate",
    # routing.mode router: the router's ServiceAccount and its pod-discovery Role/RoleBinding.
    "ServiceAccount",
    "Role",
    "RoleBinding",
    # routing.mode inferencePool (only listed when their CRDs exist).
    "InferencePool",
    "HTTPRoute",
)
#: Child kinds whose status the service's status reports.
WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")


@dataclass(slots=True)
class Outcome:
    """What one pass decided: the status patch (built from the status model) and the Events.

    ``error`` is set when the spec is invalid: the message Kopf's PermanentError carries (the
    same text as the InvalidSpec condition and Event)."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    error: str | None = None
    #: (kind, name) -> generation/resourceVersion of every child this pass applied
    children: dict[tuple[str, str], str] | None = None
    #: children the API server refused ("Kind name: why"); the existing ones were kept
    apply_failures: list[str] = field(default_factory=list)

    @property
    def invalid(self) -> bool:
        """The spec did not validate (status and Event say why; nothing was applied)."""
        return self.error is not None


def child_version(obj: dict[str, Any]) -> str:
    """What changes when someone else edits a child: its generation, else its resourceVersion."""
    meta = obj.get("metadata") or {}
    gen = meta.get("generation")
    return f"g{gen}" if gen is not None else f"r{meta.get('resourceVersion', '')}"


def _invalid(body: dict[str, Any], exc: ValidationError, now: datetime) -> Outcome:
    text = "; ".join(str(p) for p in problems_from(exc))
    gen = body["metadata"].get("generation")
    conds = [
        observe.condition(c.COND_READY, False, "InvalidSpec", text, gen),
        observe.condition(c.COND_DEGRADED, True, "InvalidSpec", text, gen),
    ]
    old = (body.get("status") or {}).get("conditions") or []
    status = InferenceServiceStatus(
        observed_generation=gen, conditions=observe.merge_conditions(old, conds, now)
    )
    return Outcome(merge_patch(status), [Event("InvalidSpec", text, "Warning")], error=text)


def cost_per_token(
    cfg: OperatorConfig,
    svc: InferenceService,
    plans: Sequence[PoolPlan],
    energy: EnergyStatus | None = None,
) -> dict[str, float]:
    """Relative cost of a token per pool: a replica-hour's weight / tokens/s per replica."""
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
        weight = replica_hour_weight(
            svc.spec.scaling.pool_preference,
            gpu,
            gpus,
            measured_watts_per_gpu(energy, pool.name),
            cfg.energy.price_per_kwh,
        )
        out[pool.name] = weight / tps
    return out


def _split_hint(body: dict[str, Any]) -> dict[str, int] | None:
    """The autoscaler's last per-pool split, from its annotation (None: none usable)."""
    raw = (body["metadata"].get("annotations") or {}).get(c.ANNOTATION_SCALER_STATE)
    return ScalerAnnotation.parse(raw).split


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
    weights = cost_per_token(cfg, svc, plans, observe.service_status(body).energy)
    replicas = split_replicas(svc.spec.replicas, svc.spec.pools, weights, _split_hint(body))
    namespace = body["metadata"]["namespace"]
    if apply and svc.spec.replicas is None:
        _write_initial_replicas(kube, body, sum(replicas.values()))
    route = routing.live_route(kube, cfg, svc, namespace)
    cluster = nodefacts.for_client(kube).get(kube, cfg)  # auto naming, labeller check
    allocations = devices.pool_allocations_for(kube, cfg, svc)
    rendered = render_all(svc, cfg, plans, replicas, route, cluster, allocations)
    events: list[Event] = []
    failures: list[str] = []
    old = observe.service_status(body)
    if apply:
        events += rollout.choose(body, svc, cfg, plans, rendered.objects, kube, old, now)
        applied = _apply_children(body, rendered.objects, kube, cfg, events, failures)
    else:
        applied = _read_workloads(body, rendered.objects, kube, cfg)

    status = _status(
        body, old, svc, plans, replicas, applied, kube, rendered.problems, now, cfg, failures
    )
    moved = routing.follow(
        body,
        svc,
        cfg,
        kube,
        status.ready_replicas,
        route,
        lambda want: _service_object(
            render_all(svc, cfg, plans, replicas, want, cluster, allocations).objects
        ),
        events,
    )
    if moved is not None and apply:  # the ledger must hold the Service as it is now
        applied[("Service", moved["metadata"]["name"])] = moved
    old_degraded = observe.find(old.conditions, c.COND_DEGRADED)
    new_degraded = observe.find(status.conditions, c.COND_DEGRADED)
    if (
        new_degraded is not None
        and new_degraded.status == "True"
        and (old_degraded is None or old_degraded.message != new_degraded.message)
    ):
        events.append(Event(new_degraded.reason, new_degraded.message, "Warning"))
    if gen != old.observed_generation:
        events += [Event("RenderWarning", w, "Warning") for w in rendered.warnings]
        capped = replicas_capped(svc, replicas)
        if capped is not None:
            events.append(Event("ReplicasCapped", capped, "Warning"))
    if _rollout_benchmark_due(body, old, svc, status):
        bench = rollout_benchmark(body, svc)
        kube.apply(bench)
        status.rollout_benchmark_generation = gen
        events.append(
            Event("RolloutBenchmark", f"created InferenceBenchmark {bench['metadata']['name']}")
        )
    status.observed_generation = gen
    if not apply:
        return Outcome(merge_patch(status), events)
    children = {key: child_version(obj) for key, obj in applied.items()}
    return Outcome(merge_patch(status), events, children=children, apply_failures=failures)


def replicas_capped(svc: InferenceService, split: dict[str, int]) -> str | None:
    """Why the requested ``spec.replicas`` (kubectl scale, HPA, KEDA) is not what runs: the
    split clamps it to the pools' bounds, which would otherwise happen silently."""
    asked, running = svc.spec.replicas, sum(split.values())
    if asked is None or asked == running:
        return None
    most = sum(p.max_replicas for p in svc.spec.pools)
    if asked > running and running == most:
        return (
            f"spec.replicas {asked} is capped at {running}, the sum of the pools' maxReplicas; "
            "fix: raise pools[].maxReplicas, or ask for fewer"
        )
    least = sum(p.min_replicas for p in svc.spec.pools)
    if asked < running and running == least:
        return (
            f"spec.replicas {asked} is raised to {running}, the sum of the pools' minReplicas; "
            "fix: lower pools[].minReplicas"
        )
    return None


def _write_initial_replicas(kube: Kube, body: dict[str, Any], total: int) -> None:
    """Give an unset ``spec.replicas`` the count the pools start with.

    The CRD's scale subresource reads ``.spec.replicas``; while it is unset, ``GET /scale``
    fails and HPA/KEDA cannot act on a freshly applied service. No static CRD default fits
    (the count is the sum of the pools' minReplicas, or the autoscaler's last split), so the
    operator writes it once. A ``kubectl apply`` that does not set the field keeps it."""
    meta = body["metadata"]
    kube.patch_merge(
        "InferenceService", meta["namespace"], meta["name"], {"spec": {"replicas": total}}
    )


def _service_object(objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Service")


def _apply_children(
    body: dict[str, Any],
    objects: Sequence[dict[str, Any]],
    kube: Kube,
    cfg: OperatorConfig,
    events: list[Event],
    failures: list[str],
) -> dict[tuple[str, str], dict[str, Any]]:
    """Server-side apply every rendered child, prune owned children no longer rendered.

    Pruning compares with what the spec renders, never with what was applied: a child the API
    server refused (admission policy, quota, 5xx, outage) is still wanted, so the running one
    stays, and it appears in the result as it exists (status keeps observing it). Refusals
    go to ``failures`` for the Degraded condition and the caller's error metric and retry.
    """
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    owner = owner_reference(body, "InferenceService")
    existing = {
        (kind, o["metadata"]["name"]): o
        for kind in CHILD_KINDS
        if kind_available(kube, cfg, kind)
        for o in kube.list(kind, namespace, names.selector_for(name))
    }
    applied: dict[tuple[str, str], dict[str, Any]] = {}
    wanted: set[tuple[str, str]] = set()
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
        obj["metadata"]["ownerReferences"] = [owner]
        key = (obj["kind"], obj["metadata"]["name"])
        wanted.add(key)
        try:
            applied[key] = kube.apply(obj)
        except KubeError as exc:
            failure = f"{key[0]} {key[1]}: {exc}"
            failures.append(failure)
            events.append(Event("ApplyFailed", failure, "Warning"))
            if key in existing:
                applied[key] = existing[key]
            continue
        if key not in existing:
            events.append(Event("Created", f"created {key[0]} {key[1]}"))
    for key in sorted(set(existing) - wanted):
        if any(ref.get("uid") == meta.get("uid") for ref in _owners(existing[key])):
            kube.delete(key[0], namespace, key[1])
            events.append(Event("Deleted", f"deleted {key[0]} {key[1]} (no longer in spec)"))
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
        for obj in kube.list(kind, meta["namespace"], names.selector_for(meta["name"])):
            key = (kind, obj["metadata"]["name"])
            if key in wanted and any(r.get("uid") == meta.get("uid") for r in _owners(obj)):
                found[key] = obj
    return found


def _router(
    svc: InferenceService, name: str, by_name: dict[str, dict[str, Any]]
) -> observe.PoolObservation | None:
    """Router mode: the router Deployment's replica counts (as applied or read back)."""
    if svc.spec.routing.mode != "router":
        return None
    deployment = router_name(name)
    replicas = svc.spec.routing.router_settings().replicas
    return observe.observe_workload(deployment, "", replicas, by_name.get(deployment))


def _status(
    body: dict[str, Any],
    old: InferenceServiceStatus,
    svc: InferenceService,
    plans: Sequence[PoolPlan],
    replicas: dict[str, int],
    applied: dict[tuple[str, str], dict[str, Any]],
    kube: Kube,
    render_problems: Sequence[str],
    now: datetime,
    cfg: OperatorConfig,
    apply_failures: Sequence[str] = (),
) -> InferenceServiceStatus:
    """What the reconcile owns in status, from what exists now (``old``: the stored status)."""
    meta = body["metadata"]
    pods = kube.list("Pod", meta["namespace"], names.selector_for(meta["name"]))
    trouble = observe.pod_problems(pods)
    models = devices.claimed_models(kube, cfg, svc, meta["namespace"])
    by_name = {k[1]: v for k, v in applied.items() if k[0] in WORKLOAD_KINDS}
    pools = []
    allocation: dict[str, str | None] = {}
    rollouts: dict[str, PoolRollout | None] = {}
    for pool in svc.spec.pools:
        workload = by_name.get(names.pool_workload(meta["name"], pool.name))
        obs = observe.observe_workload(pool.name, pool.gpu, replicas[pool.name], workload)
        obs.problems = trouble.get(pool.name, [])
        obs.stuck = observe.stuck_rollout(pods, pool.name, workload)
        rollouts[pool.name] = rollout.recorded(workload)
        waiting = rollouts[pool.name]
        obs.waiting = (
            waiting.message if waiting is not None and waiting.strategy == "wait" else None
        )
        obs.rolled_back = (
            waiting.message if waiting is not None and waiting.rolled_back_from else None
        )
        pools.append(obs)
        allocation[pool.name] = devices.workload_allocation(workload)
    plan_problems = [p.message for p in plans if not p.fits]
    conds = observe.service_conditions(
        pools,
        plan_problems,
        render_problems,
        meta.get("generation"),
        apply_failures,
        _router(svc, meta["name"], by_name),
    )
    conds.append(_sla_condition(body, old, svc))
    conds.append(_scaling_condition(body, old, svc))
    pool_status = [
        PoolStatus(
            name=o.name,
            gpu=o.gpu,
            desired_replicas=o.desired,
            replicas=o.replicas,
            ready_replicas=o.ready,
            message="; ".join(o.problems),
            allocation=allocation.get(o.name),
            models=models.get(o.name, {}),
            rollout=rollouts.get(o.name),
        )
        for o in pools
    ]
    return InferenceServiceStatus(
        replicas=sum(replicas.values()),
        ready_replicas=sum(o.ready for o in pools),
        selector=names.selector_for(meta["name"]),
        url=names.service_url(meta["name"], meta["namespace"]),
        gpu_summary=",".join(dict.fromkeys(p.gpu for p in svc.spec.pools)),
        pools=pool_status,
        plan=list(plans),
        conditions=observe.merge_conditions(
            (body.get("status") or {}).get("conditions") or [], conds, now
        ),
    )


def _rollout_benchmark_due(
    body: dict[str, Any],
    old: InferenceServiceStatus,
    svc: InferenceService,
    status: InferenceServiceStatus,
) -> bool:
    """A rollout of this generation finished (Ready, not progressing) and was not benchmarked."""
    auto = svc.spec.benchmark_on_rollout
    if auto is None or not auto.enabled:
        return False
    ready = observe.find(status.conditions, c.COND_READY)
    settled = observe.find(status.conditions, c.COND_PROGRESSING)
    return bool(
        ready is not None
        and ready.status == "True"
        and settled is not None
        and settled.status == "False"
        and settled.reason == "Stable"
        and old.rollout_benchmark_generation != body["metadata"].get("generation")
    )


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
    if spec["scenario"] == "offline" and auto.concurrency is not None:
        spec["load"]["concurrency"] = auto.concurrency
    name = rollout.rollout_benchmark_name(meta)
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


def _scaling_condition(
    body: dict[str, Any], old: InferenceServiceStatus, svc: InferenceService
) -> observe.Condition:
    """Scaling from the autoscaler's last conclusion (status.scaling) and the policy mode."""
    gen = body["metadata"].get("generation")
    mode = svc.spec.scaling.mode
    if mode == "off":
        return observe.condition(c.COND_SCALING, False, "Disabled", "scaling.mode is off", gen)
    latest = old.scaling
    if latest is None:
        return observe.condition(c.COND_SCALING, None, "Starting", "no decision yet", gen)
    return observe.condition(
        c.COND_SCALING, latest.able, latest.reason or "Active", latest.message, gen
    )


def _sla_condition(
    body: dict[str, Any], old: InferenceServiceStatus, svc: InferenceService
) -> observe.Condition:
    """SLAMet from the latest benchmark summary (written by the benchmark controller)."""
    gen = body["metadata"].get("generation")
    latest = old.benchmark
    if svc.spec.sla is None:
        return observe.condition(c.COND_SLA_MET, None, "NoSLA", "spec.sla is not set", gen)
    if latest is None:
        msg = "no benchmark has run yet; apply an InferenceBenchmark targeting this service"
        return observe.condition(c.COND_SLA_MET, None, "NotBenchmarked", msg, gen)
    verdict = latest.verdict
    reason = "BenchmarkPassed" if verdict == "Pass" else f"Benchmark{verdict}"
    return observe.condition(
        c.COND_SLA_MET, verdict == "Pass", reason, f"benchmark {latest.name}: {verdict}", gen
    )


def _owners(obj: dict[str, Any]) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = obj["metadata"].get("ownerReferences") or []
    return refs


_OPTIONAL_CRDS = {
    "ServiceMonitor": "servicemonitors.monitoring.coreos.com",
    "LeaderWorkerSet": "leaderworkersets.leaderworkerset.x-k8s.io",
    "InferencePool": "inferencepools.inference.networking.k8s.io",
    "HTTPRoute": "httproutes.gateway.networking.k8s.io",
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

"""The autoscaling loop: scrape → decide (pure, in :mod:`tokenscale.autoscale`) → write /scale.

One Kopf daemon per InferenceService runs :func:`run_pass` every scrape interval. Everything
that must survive an operator restart (stabilisation history, panic state, the per-pool split)
is kept in an annotation on the object; the window of samples is rebuilt in a minute.
When the user hands scaling to HPA/KEDA (``mode: external``), or a replica-sweep benchmark holds
the service (annotation ``tokenscale.dev/scaling-hold``), the loop only publishes metrics.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.api.status import BenchmarkSummary, PoolPlan, ScalingDecision
from tokenscale.autoscale import capacity, collector, decision, dra, targets
from tokenscale.autoscale.dra import DraView
from tokenscale.autoscale.rates import Sample
from tokenscale.autoscale.state import Decision, PoolInput, ScalerState
from tokenscale.controller import devices, metrics, sweep
from tokenscale.controller.kube import Kube
from tokenscale.controller.reconcile import parse_spec, selector_for
from tokenscale.plan import plan_service
from tokenscale.render import dra as render_dra

log = logging.getLogger(__name__)

PERSIST_EVERY_SECONDS = 30.0


@dataclass
class LoopState:
    """In-memory companion of one service's daemon."""

    window: deque[Sample] = field(default_factory=lambda: deque(maxlen=2000))
    last_persist: float = 0.0
    last_state_json: str = ""


def _now_iso(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def pool_targets(
    svc: InferenceService, cfg: OperatorConfig, plans: Sequence[PoolPlan], status: dict[str, Any]
) -> dict[str, targets.Target]:
    """Per pool: the per-replica target and where it came from (benchmark, spec or config)."""
    by_plan = {p.pool: p for p in plans}
    history = [BenchmarkSummary.model_validate(h) for h in status.get("benchmarkHistory") or []]
    out = {}
    for pool in svc.spec.pools:
        plan = by_plan.get(pool.name)
        out[pool.name] = targets.resolve_target(
            svc.spec.scaling,
            benchmarks=history,
            gpu=cfg.gpus.get(pool.gpu),
            gpus_per_replica=_gpus(plan),
        )
    return out


def _gpus(plan: PoolPlan | None) -> int:
    return max(plan.gpus_per_replica if plan else 1, 1)


def pool_inputs(
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    status: dict[str, Any],
    desired: dict[str, int],
    pool_target: dict[str, targets.Target],
    startup_seconds: float = 180.0,
) -> list[PoolInput]:
    """What the decision needs per pool: bounds, current/ready replicas, target, cost."""
    by_plan = {p.pool: p for p in plans}
    pools_status = {p.get("name"): p for p in status.get("pools") or []}
    out = []
    for pool in svc.spec.pools:
        gpu = cfg.gpus.get(pool.gpu)
        gpus = _gpus(by_plan.get(pool.name))
        target = pool_target[pool.name]
        ready = int((pools_status.get(pool.name) or {}).get("readyReplicas") or 0)
        out.append(
            PoolInput(
                name=pool.name,
                min_replicas=pool.min_replicas,
                max_replicas=pool.max_replicas,
                replicas=desired.get(pool.name, pool.min_replicas),
                ready_replicas=ready,
                target_per_replica=target.value or 0.0,
                capacity_per_replica=target.capacity_per_replica,
                cost_per_replica_hour=(gpu.cost_per_gpu_hour if gpu else 1.0) * gpus,
                startup_seconds=startup_seconds,
            )
        )
    return out


def with_allocatable(
    inputs: list[PoolInput],
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    dra_view: DraView | None = None,
) -> list[PoolInput]:
    """Add how many more replicas the cluster can place per pool (capacity-aware scale-up).

    Pools that claim GPUs through DRA (``dra_view.allocations``) count free devices in
    ResourceSlices instead of allocatable extended resources on Nodes.
    """
    by_plan = {p.pool: p for p in plans}
    pools = {p.name: p for p in svc.spec.pools}
    out = []
    for item in inputs:
        pool, plan = pools[item.name], by_plan.get(item.name)
        gpu = cfg.gpus.get(pool.gpu)
        if gpu is None or plan is None or pool.gpu == "CPU":
            out.append(item)
            continue
        if dra_view is not None and dra_view.allocations.get(pool.name) == "dra":
            # Each model a claim may take (the pool's, then its usable alternatives) adds the
            # replicas its free devices hold: the pods are the same shape on every model.
            models = [pool.gpu, *render_dra.usable_alternatives(svc, pool, plan, cfg)[0]]
            fit = 0
            for model in models:
                key = dra.pool_key(model, pool.partition)
                free = dra.free_per_node(
                    dra_view.slices, dra_view.claims, key, cfg.gpus, cfg.dra.driver
                )
                fit += capacity.replicas_that_fit(
                    free, plan.gpus_per_replica, plan.nodes_per_replica
                )
        else:
            resource = capacity.resource_name(pool.partition)
            free = capacity.free_per_node(nodes, pods, gpu, resource)
            fit = capacity.replicas_that_fit(free, plan.gpus_per_replica, plan.nodes_per_replica)
        out.append(PoolInput(**{**item.__dict__, "allocatable_replicas": fit}))
    return out


def current_split(body: dict[str, Any]) -> dict[str, int]:
    """The per-pool desired replicas the reconcile last applied (status.pools)."""
    return {
        str(p["name"]): int(p.get("desiredReplicas") or 0)
        for p in (body.get("status") or {}).get("pools") or []
    }


def _state_of(body: dict[str, Any]) -> ScalerState:
    raw = (body["metadata"].get("annotations") or {}).get(c.ANNOTATION_SCALER_STATE)
    if not raw:
        return ScalerState()
    try:
        data = json.loads(raw)
    except ValueError:
        return ScalerState()
    return ScalerState.from_json(json.dumps(data.get("state") or {}))


async def run_pass(
    body: dict[str, Any],
    kube: Kube,
    cfg: OperatorConfig,
    source: collector.MetricsSource,
    loop: LoopState,
    wall_now: datetime | None = None,
) -> Decision | None:
    """One scrape-decide-act pass for one service; returns the decision (None: skipped).

    Times are wall-clock seconds because the decision state persisted on the object must
    stay meaningful across operator restarts.
    """
    import asyncio

    wall_now = wall_now or datetime.now(UTC)
    now = wall_now.timestamp()
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        svc = parse_spec(body)
    except ValidationError:
        return None
    policy = svc.spec.scaling
    if policy.mode == "off":
        return None
    plans = plan_service(svc, cfg)
    pods = await asyncio.to_thread(kube.list, "Pod", namespace, selector_for(name))
    engines = collector.engine_pods(pods)
    result = await source.collect(engines, [p.name for p in svc.spec.pools], now)
    loop.window.append(result.sample)
    horizon = decision.history_seconds(policy)
    while loop.window and loop.window[0].time < now - horizon:
        loop.window.popleft()

    status = dict(body.get("status") or {})
    desired_now = current_split(body) or {p.name: p.min_replicas for p in svc.spec.pools}
    pool_target = pool_targets(svc, cfg, plans, status)
    inputs = pool_inputs(
        svc, cfg, plans, status, desired_now, pool_target, collector.startup_seconds(pods)
    )
    state = _state_of(body)
    verdict = decision.decide(list(loop.window), policy, inputs, state, now)
    wants_more = any(p.desired > p.current for p in verdict.pools)
    if wants_more and policy.mode == "builtin":
        nodes = await asyncio.to_thread(kube.list, "Node", None)
        all_pods = await asyncio.to_thread(kube.list, "Pod", None, "", "status.phase!=Succeeded")
        dra_view = await asyncio.to_thread(devices.dra_view, kube, cfg, svc)
        inputs = with_allocatable(inputs, svc, cfg, plans, nodes, all_pods, dra_view)
        verdict = decision.decide(list(loop.window), policy, inputs, state, now)

    sig = [result.sample.pools[p.name] for p in svc.spec.pools if p.name in result.sample.pools]
    tokens = sum(s.generation_tps for s in sig)
    metrics.TOKENS_PER_SECOND.labels(namespace, name).set(tokens)
    if result.scrape_errors:
        metrics.SCRAPE_ERRORS.labels(namespace, name).inc(result.scrape_errors)
    target = inputs[0].target_per_replica if inputs else None
    if target:
        metrics.TARGET_PER_REPLICA.labels(namespace, name).set(target)
    patch: dict[str, Any] = {
        "metrics": {
            "tokensPerSecond": round(tokens, 3),
            "promptTokensPerSecond": round(sum(s.prompt_tps for s in sig), 3),
            "requestsRunning": sum(s.requests_running for s in sig),
            "requestsWaiting": sum(s.requests_waiting for s in sig),
            "kvCacheUsage": _mean([s.kv_cache_usage for s in sig]),
            "targetPerReplica": target,
            "targetSource": pool_target[svc.spec.pools[0].name].source,
            "scrapeErrors": result.scrape_errors,
            "observedAt": _now_iso(wall_now),
        }
    }
    hold = None
    if (meta.get("annotations") or {}).get(c.ANNOTATION_SCALING_HOLD):
        hold = await asyncio.to_thread(sweep.live_hold, kube, meta)
    if policy.mode == "external" or hold:
        if hold:
            why = f"{hold} owns /scale until it finishes"
            patch["scaling"] = _scaling(True, "Held", why, {}, wall_now)
        else:
            patch["scaling"] = _scaling(True, "ExternalScaler", "HPA/KEDA own /scale", {}, wall_now)
        await asyncio.to_thread(kube.patch_merge, "InferenceService", namespace, name,
                                {"status": patch}, "status")  # fmt: skip
        return verdict

    blocked = verdict.insufficient_gpu
    reason = "InsufficientGPU" if blocked else ("Panic" if verdict.panic else "Active")
    patch["scaling"] = _scaling(not blocked, reason, verdict.reason, verdict.desired(), wall_now)
    state_json = verdict.state.to_json()
    persist = verdict.changed or (
        state_json != loop.last_state_json and now - loop.last_persist >= PERSIST_EVERY_SECONDS
    )
    if verdict.changed:
        await _act(kube, body, pods, verdict, result.in_flight(), cfg, patch, wall_now)
    elif persist:
        await asyncio.to_thread(_write_state, kube, namespace, name, verdict, desired_now)
    if persist:
        loop.last_persist, loop.last_state_json = now, state_json
    await asyncio.to_thread(
        kube.patch_merge, "InferenceService", namespace, name, {"status": patch}, "status"
    )
    return verdict


async def _act(
    kube: Kube,
    body: dict[str, Any],
    pods: list[dict[str, Any]],
    verdict: Decision,
    in_flight: dict[str, float],
    cfg: OperatorConfig,
    patch: dict[str, Any],
    now: datetime,
) -> None:
    """Drain-safe scale: deletion costs first, then the split hint, then /scale."""
    import asyncio

    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if any(p.desired < p.current for p in verdict.pools):
        costs = capacity.deletion_costs(in_flight)
        for pod, cost in capacity.deletion_cost_patches(pods, costs).items():
            annotations = {c.ANNOTATION_POD_DELETION_COST: cost}
            await asyncio.to_thread(
                kube.patch_merge, "Pod", namespace, pod, {"metadata": {"annotations": annotations}}
            )
    desired = verdict.desired()
    await asyncio.to_thread(_write_state, kube, namespace, name, verdict, desired)
    await asyncio.to_thread(
        kube.patch_merge,
        "InferenceService",
        namespace,
        name,
        {"spec": {"replicas": sum(desired.values())}},
        "scale",
    )
    history = list((body.get("status") or {}).get("scalingHistory") or [])
    for pool in verdict.pools:
        if not pool.changed:
            continue
        direction = "up" if pool.desired > pool.current else "down"
        metrics.SCALING_DECISIONS.labels(namespace, name, pool.pool, direction).inc()
        entry = ScalingDecision(
            time=now,
            pool=pool.pool,
            from_replicas=pool.current,
            to_replicas=pool.desired,
            reason=pool.reason,
        )
        history.append(entry.to_k8s())
        msg = f"pool {pool.pool}: {pool.current} -> {pool.desired} replicas ({pool.reason})"
        await asyncio.to_thread(kube.event, body, "Scaled", msg)
    patch["scalingHistory"] = history[-cfg.scaling_history_limit :]
    patch["scaling"]["lastScaleTime"] = _now_iso(now)


def _write_state(
    kube: Kube, namespace: str, name: str, verdict: Decision, split: dict[str, int]
) -> None:
    value = json.dumps(
        {"split": split, "state": json.loads(verdict.state.to_json())}, separators=(",", ":")
    )
    kube.patch_merge(
        "InferenceService",
        namespace,
        name,
        {"metadata": {"annotations": {c.ANNOTATION_SCALER_STATE: value}}},
    )


def _scaling(
    able: bool, reason: str, message: str, desired: dict[str, int], now: datetime
) -> dict[str, Any]:
    return {
        "able": able,
        "reason": reason,
        "message": message,
        "desired": desired,
        "observedAt": _now_iso(now),
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None

"""The autoscaling loop: scrape → decide (pure, in :mod:`tokenscale.autoscale`) → write /scale.

One Kopf daemon per InferenceService runs :func:`run_pass` every scrape interval. Everything
that must survive an operator restart (stabilisation history, panic state, the per-pool split)
is kept in an annotation on the object; the window of samples is rebuilt in a minute.
When the user hands scaling to HPA/KEDA (``mode: external``), or a replica-sweep benchmark holds
the service (annotation ``tokenscale.dev/scaling-hold``), the loop only publishes metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService, ScalingSpec
from tokenscale.api.status import (
    InferenceServiceStatus,
    MetricsStatus,
    PoolPlan,
    ScalingDecision,
    ScalingStatus,
)
from tokenscale.api.wire import merge_patch, would_change
from tokenscale.autoscale import capacity, collector, decision, dra, pdrole, targets, writers
from tokenscale.autoscale.dra import DraView
from tokenscale.autoscale.poolweight import measured_watts_per_gpu, replica_hour_weight
from tokenscale.autoscale.rates import Sample
from tokenscale.autoscale.state import Decision, PoolInput, ScalerAnnotation, ScalerState
from tokenscale.controller import devices, energy, hold, metrics, observe, routerstatus
from tokenscale.k8s.kube import Kube
from tokenscale.plan import plan_service
from tokenscale.render import dra as render_dra
from tokenscale.render import gpuplacement
from tokenscale.render.names import selector_for
from tokenscale.validation import parse_spec

log = logging.getLogger(__name__)

PERSIST_EVERY_SECONDS = 30.0
#: A pass whose status equals the object's, timestamps aside, is written only when the object's
#: ``status.metrics.observedAt`` is this old (see :func:`status_write_due`).
STATUS_HEARTBEAT_SECONDS = 30.0
#: The keys :func:`status_write_due` leaves out of the comparison.
TIMESTAMP_KEYS = frozenset({"observedAt"})


@dataclass
class LoopState:
    """In-memory companion of one service's daemon."""

    window: deque[Sample] = field(default_factory=lambda: deque(maxlen=2000))
    last_persist: float = 0.0
    last_state_json: str = ""
    #: the first pass of this loop (autoscaler turned on, operator restarted) has run
    started: bool = False
    #: the status merge patch this loop last wrote successfully (see :func:`status_write_due`)
    last_written: dict[str, Any] | None = None


def pool_targets(
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    status: InferenceServiceStatus,
) -> dict[str, targets.Target]:
    """Per pool: the per-replica target and where it came from (benchmark, spec or config)."""
    by_plan = {p.pool: p for p in plans}
    history = status.benchmark_history
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
    status: InferenceServiceStatus,
    desired: dict[str, int],
    pool_target: dict[str, targets.Target],
    startup_seconds: float = 180.0,
) -> list[PoolInput]:
    """What the decision needs per pool: bounds, current/ready replicas, target, cost."""
    by_plan = {p.pool: p for p in plans}
    ready_by_pool = {p.name: p.ready_replicas for p in status.pools}
    out = []
    for pool in svc.spec.pools:
        gpu = cfg.gpus.get(pool.gpu)
        gpus = _gpus(by_plan.get(pool.name))
        target = pool_target[pool.name]
        ready = ready_by_pool.get(pool.name, 0)
        out.append(
            PoolInput(
                name=pool.name,
                min_replicas=pool.min_replicas,
                max_replicas=pool.max_replicas,
                replicas=desired.get(pool.name, pool.min_replicas),
                ready_replicas=ready,
                target_per_replica=target.value or 0.0,
                capacity_per_replica=target.capacity_per_replica,
                cost_per_replica_hour=replica_hour_weight(
                    svc.spec.scaling.pool_preference,
                    gpu,
                    gpus,
                    measured_watts_per_gpu(status.energy, pool.name),
                    cfg.energy.price_per_kwh,
                ),
                startup_seconds=startup_seconds,
            )
        )
    return out


#: Pods per page of the cluster-wide list behind a capacity count.
POD_PAGE = 250


def cluster_pods(kube: Kube) -> list[dict[str, Any]]:
    """Every pod of the cluster that may hold GPUs, reduced to what a capacity count reads
    (:func:`capacity.placement_fields`) one page at a time: never the whole list at once."""
    return [
        capacity.placement_fields(pod)
        for page in kube.list_pages("Pod", None, "", POD_PAGE, "status.phase!=Succeeded")
        for pod in page
    ]


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
    cluster = gpuplacement.cluster_gpus(nodes, cfg.pods.tolerations, cfg.pods.node_selector)
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
            request = gpuplacement.gpu_request(pool, gpu, cfg, cluster)
            eligible = [
                n
                for n in nodes
                if gpuplacement.matches_terms(
                    (n.get("metadata") or {}).get("labels") or {}, request.node_terms
                )
            ]
            free = capacity.free_per_node(eligible, pods, gpu, request.resource)
            fit = capacity.replicas_that_fit(free, plan.gpus_per_replica, plan.nodes_per_replica)
        out.append(PoolInput(**{**item.__dict__, "allocatable_replicas": fit}))
    return out


def count_allocatable(
    inputs: list[PoolInput],
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    kube: Kube,
) -> list[PoolInput]:
    """:func:`with_allocatable` over what the cluster holds now: its Nodes, its pods
    (:func:`cluster_pods`) and its DRA devices. The one way the autoscaler and a rollout's surge
    check read the cluster for a capacity count."""
    nodes = kube.list("Node", None)
    pods = cluster_pods(kube)
    dra_view = devices.dra_view(kube, cfg, svc)
    return with_allocatable(inputs, svc, cfg, plans, nodes, pods, dra_view)


def current_split(status: InferenceServiceStatus) -> dict[str, int]:
    """The per-pool desired replicas the reconcile last applied (status.pools)."""
    return {p.name: p.desired_replicas for p in status.pools}


@dataclass
class Observation:
    """What one pass collected about a service: spec, plan, pods, the sample, the inputs."""

    svc: InferenceService
    plans: list[PoolPlan]
    pods: list[dict[str, Any]]
    result: collector.CollectResult
    status: InferenceServiceStatus
    desired_now: dict[str, int]
    pool_target: dict[str, targets.Target]
    inputs: list[PoolInput]
    state: ScalerState

    @property
    def policy(self) -> ScalingSpec:
        """The service's scaling policy."""
        return self.svc.spec.scaling


def loop_wanted(mode: str, cfg: OperatorConfig | None) -> bool:
    """Whether a service needs its loop: it scales (built-in or external, whose metrics it
    publishes), or energy is on, since tokens/J needs the loop's generation tokens/s."""
    return mode != "off" or (cfg is not None and cfg.energy.type != "off")


async def run_pass(
    body: dict[str, Any],
    kube: Kube,
    cfg: OperatorConfig,
    source: collector.MetricsSource,
    loop: LoopState,
    wall_now: datetime | None = None,
) -> Decision | None:
    """One collect → decide → publish → act pass for one service; returns the decision (None:
    skipped: an invalid spec, or scaling off). With scaling off the loop runs only when energy is
    on (:func:`loop_wanted`): it then collects and publishes metrics and energy, nothing else.

    Times are wall-clock seconds because the decision state persisted on the object must
    stay meaningful across operator restarts.
    """
    wall_now = wall_now or datetime.now(UTC)
    seen = await collect(body, kube, cfg, source, loop, wall_now.timestamp())
    if seen is None:
        return None
    off = seen.policy.mode == "off"  # the loop runs for energy only: never decides or acts
    verdict = None if off else await decide(seen, kube, cfg, loop, wall_now.timestamp())
    patch = publish(body, seen, wall_now)
    meta = body["metadata"]
    holder = None
    if not off and (meta.get("annotations") or {}).get(c.ANNOTATION_SCALING_HOLD):
        holder = await asyncio.to_thread(hold.live_hold, kube, meta)
    if verdict is None:
        pass  # status.scaling and /scale are left alone; the reconcile says scaling is Disabled
    elif seen.policy.mode == "external" or holder:
        if holder:
            why = f"{holder} owns /scale until it finishes"
            patch.scaling = _scaling(True, "Held", why, {}, False, wall_now)
        else:
            patch.scaling = _scaling(
                True, "ExternalScaler", "HPA/KEDA own /scale", {}, False, wall_now
            )
    elif not await other_writer(body, seen, kube, patch, wall_now):
        await act(body, seen, verdict, kube, cfg, loop, patch, wall_now)
    patch.energy = await energy.observe(
        meta, kube, cfg, seen.pods, seen.result, getattr(source, "client", None), wall_now
    )
    router = await routerstatus.observe(
        meta, seen.svc, kube, getattr(source, "client", None), seen.status.router, wall_now
    )
    if router is not None or seen.status.router is not None:
        patch.router = router  # None deletes it once the service leaves router mode
    written = merge_patch(patch)
    if status_write_due(body.get("status"), written, wall_now, loop.last_written):
        await asyncio.to_thread(kube.patch_merge, "InferenceService", meta["namespace"],
                                meta["name"], {"status": written}, "status")  # fmt: skip
        loop.last_written = written
    return verdict


def status_write_due(
    current: dict[str, Any] | None,
    written: dict[str, Any],
    now: datetime,
    last_written: dict[str, Any] | None = None,
) -> bool:
    """Write the pass's status only when it says something new, or its timestamps are
    :data:`STATUS_HEARTBEAT_SECONDS` old.

    Every pass used to write (its ``observedAt`` fields always moved): one status write and one
    watch event per autoscaled service every scrape interval, whatever happened — 67 writes/s
    at 1,000 services with a third autoscaled, each event parsed by the operator's own watch
    and held in memory while it lagged (the churn drill, ``tests/e2e/test_drill_churn.py``).

    ``current`` is the object as Kopf last delivered it, and Kopf delivers an object's events
    in order, holding them while a handler of that object runs: behind a backlog (1,000
    services applied at once, or an operator restart) it can predate this loop's own last
    write. Compared with such a stale body every pass looked new and wrote, each write queued
    one more event behind the blocked handler: thousands of whole bodies held at once, the
    operator's memory peak (churn drill, issue 17). So while ``current`` does not yet show
    ``last_written``, the pass is compared with ``last_written`` instead, and no write is made
    for the heartbeat alone: the last one has not even come back yet.
    """
    if last_written is not None and _observed_at(current) != _observed_at(last_written):
        return would_change(last_written, written, TIMESTAMP_KEYS)
    if would_change(current, written, TIMESTAMP_KEYS):
        return True
    try:
        age = (now - datetime.fromisoformat(str(_observed_at(current)))).total_seconds()
    except ValueError:
        return True
    return age >= STATUS_HEARTBEAT_SECONDS


def _observed_at(status: dict[str, Any] | None) -> Any:
    return ((status or {}).get("metrics") or {}).get("observedAt")


async def collect(
    body: dict[str, Any],
    kube: Kube,
    cfg: OperatorConfig,
    source: collector.MetricsSource,
    loop: LoopState,
    now: float,
) -> Observation | None:
    """Scrape the ready engines into the sample window and gather what the decision needs."""
    meta = body["metadata"]
    try:
        svc = parse_spec(body)
    except ValidationError:
        return None  # the reconcile reports the invalid spec
    policy = svc.spec.scaling
    if not loop_wanted(policy.mode, cfg):
        return None
    plans = plan_service(svc, cfg)
    pods = await asyncio.to_thread(kube.list, "Pod", meta["namespace"], selector_for(meta["name"]))
    result = await source.collect(
        collector.engine_pods(pods), [p.name for p in svc.spec.pools], now
    )
    loop.window.append(result.sample)
    horizon = decision.history_seconds(policy)
    while loop.window and loop.window[0].time < now - horizon:
        loop.window.popleft()
    status = observe.service_status(body)
    desired_now = current_split(status) or {p.name: p.min_replicas for p in svc.spec.pools}
    pool_target = pool_targets(svc, cfg, plans, status)
    inputs = pool_inputs(
        svc, cfg, plans, status, desired_now, pool_target, collector.startup_seconds(pods)
    )
    state = ScalerAnnotation.parse(
        (meta.get("annotations") or {}).get(c.ANNOTATION_SCALER_STATE)
    ).state
    if not loop.started:
        # Turned on (or the operator restarted) with a history older than every window: that
        # memory is of another time; start the windows from the current count instead.
        keep = max(policy.scale_up_stabilization_seconds, policy.scale_down_stabilization_seconds)
        state.recommendations = {
            pool: history
            for pool, history in state.recommendations.items()
            if history and history[-1][0] > now - max(keep, PERSIST_EVERY_SECONDS)
        }
        loop.started = True
    return Observation(svc, plans, pods, result, status, desired_now, pool_target, inputs, state)


async def decide(
    seen: Observation, kube: Kube, cfg: OperatorConfig, loop: LoopState, now: float
) -> Decision:
    """The pure decision; before a scale-up, decided again with what the cluster can place."""
    policy = seen.policy
    verdict = _decide(seen, loop, now)
    wants_more = any(p.desired > p.current for p in verdict.pools)
    if wants_more and policy.mode == "builtin":
        seen.inputs = await asyncio.to_thread(
            count_allocatable, seen.inputs, seen.svc, cfg, seen.plans, kube
        )
        verdict = _decide(seen, loop, now)
    return verdict


def _decide(seen: Observation, loop: LoopState, now: float) -> Decision:
    """One decision for the service, or one per P/D role merged (autoscale/pdrole.py)."""
    disagg = seen.svc.spec.disaggregation
    if disagg is not None:
        return pdrole.decide(list(loop.window), seen.policy, seen.inputs, disagg, seen.state, now)
    return decision.decide(list(loop.window), seen.policy, seen.inputs, seen.state, now)


def publish(body: dict[str, Any], seen: Observation, now: datetime) -> InferenceServiceStatus:
    """The operator's gauges and ``status.metrics`` from the sample (in every mode)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    pools = seen.svc.spec.pools
    sample, result = seen.result.sample, seen.result
    sig = [sample.pools[p.name] for p in pools if p.name in sample.pools]
    tokens = sum(s.generation_tps for s in sig)
    metrics.TOKENS_PER_SECOND.labels(namespace, name).set(tokens)
    if result.scrape_errors:
        metrics.SCRAPE_ERRORS.labels(namespace, name).inc(result.scrape_errors)
    target = seen.inputs[0].target_per_replica if seen.inputs else None
    if target:
        metrics.TARGET_PER_REPLICA.labels(namespace, name).set(target)
    return InferenceServiceStatus(
        metrics=MetricsStatus(
            tokens_per_second=round(tokens, 3),
            prompt_tokens_per_second=round(sum(s.prompt_tps for s in sig), 3),
            requests_running=sum(s.requests_running for s in sig),
            requests_waiting=sum(s.requests_waiting for s in sig),
            kv_cache_usage=_mean([s.kv_cache_usage for s in sig]),
            target_per_replica=target,
            target_source=seen.pool_target[pools[0].name].source,
            scrape_errors=result.scrape_errors,
            observed_at=now,
        )
    )


async def other_writer(
    body: dict[str, Any],
    seen: Observation,
    kube: Kube,
    patch: InferenceServiceStatus,
    wall_now: datetime,
) -> bool:
    """Built-in mode: leave a count another writer set standing for a while (True: hold).

    A new foreign write (:mod:`tokenscale.autoscale.writers`) gets a Warning Event naming the
    writer, clears the recommendation history (scaling later resumes from the count found, via
    the stabilisation window) and starts the hold; during the hold ``status.scaling`` says who
    wrote what and the fix, and /scale is not written."""
    meta = body["metadata"]
    now = wall_now.timestamp()
    annotation = ScalerAnnotation.parse(
        (meta.get("annotations") or {}).get(c.ANNOTATION_SCALER_STATE)
    )
    state = seen.state
    found = writers.foreign_write(meta, seen.svc.spec.replicas, annotation.split)
    if found is not None:
        key = f"{found.manager}/{found.replicas}/{found.at}"
        if key != state.foreign_write:
            message = found.describe()
            start = min(found.at or now, now)
            state.foreign_write, state.foreign_message = key, message
            state.foreign_until = start + writers.HOLD_SECONDS
            state.recommendations = {}
            await asyncio.to_thread(kube.event, body, "ConflictingWriter", message, "Warning")
            value = ScalerAnnotation(split=annotation.split, state=state).to_json()
            await asyncio.to_thread(
                kube.patch_merge,
                "InferenceService",
                meta["namespace"],
                meta["name"],
                {"metadata": {"annotations": {c.ANNOTATION_SCALER_STATE: value}}},
            )
    until = state.foreign_until
    if until is None or not now < until <= now + writers.HOLD_SECONDS:
        return False
    why = state.foreign_message or "another writer set spec.replicas"
    patch.scaling = _scaling(True, "ConflictingWriter", why, {}, False, wall_now)
    return True


async def act(
    body: dict[str, Any],
    seen: Observation,
    verdict: Decision,
    kube: Kube,
    cfg: OperatorConfig,
    loop: LoopState,
    patch: InferenceServiceStatus,
    wall_now: datetime,
) -> None:
    """Built-in mode: record the conclusion in ``patch``, scale when it changed, and persist the
    decision state (on every change, else at most every :data:`PERSIST_EVERY_SECONDS`)."""
    meta = body["metadata"]
    now = wall_now.timestamp()
    blocked = verdict.insufficient_gpu
    reason = "InsufficientGPU" if blocked else ("Panic" if verdict.panic else "Active")
    patch.scaling = _scaling(
        not blocked, reason, verdict.reason, verdict.desired(), verdict.panic, wall_now
    )
    state_json = verdict.state.to_json()
    persist = verdict.changed or (
        state_json != loop.last_state_json and now - loop.last_persist >= PERSIST_EVERY_SECONDS
    )
    if verdict.changed:
        in_flight = seen.result.in_flight()
        await _scale(kube, body, seen, verdict, in_flight, cfg, patch, wall_now)
    elif persist:
        await asyncio.to_thread(
            _write_state, kube, meta["namespace"], meta["name"], verdict, seen.desired_now
        )
    if persist:
        loop.last_persist, loop.last_state_json = now, state_json


async def _scale(
    kube: Kube,
    body: dict[str, Any],
    seen: Observation,
    verdict: Decision,
    in_flight: dict[str, float],
    cfg: OperatorConfig,
    patch: InferenceServiceStatus,
    now: datetime,
) -> None:
    """Drain-safe scale: deletion costs first, then the split hint, then /scale."""

    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if any(p.desired < p.current for p in verdict.pools):
        costs = capacity.deletion_costs(in_flight)
        for pod, cost in capacity.deletion_cost_patches(seen.pods, costs).items():
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
    # One line per /scale write: with two replicas, their logs say which one wrote (the HA drill
    # matches them against a watch on the service; both share one field manager).
    log.info("/scale of %s/%s set to %d replicas", namespace, name, sum(desired.values()))
    history = list(seen.status.scaling_history)
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
        history.append(entry)
        msg = f"pool {pool.pool}: {pool.current} -> {pool.desired} replicas ({pool.reason})"
        await asyncio.to_thread(kube.event, body, "Scaled", msg)
    patch.scaling_history = history[-cfg.scaling_history_limit :]
    if patch.scaling is not None:
        patch.scaling.last_scale_time = now


def _write_state(
    kube: Kube, namespace: str, name: str, verdict: Decision, split: dict[str, int]
) -> None:
    value = ScalerAnnotation(split=split, state=verdict.state).to_json()
    kube.patch_merge(
        "InferenceService",
        namespace,
        name,
        {"metadata": {"annotations": {c.ANNOTATION_SCALER_STATE: value}}},
    )


def _scaling(
    able: bool, reason: str, message: str, desired: dict[str, int], panic: bool, now: datetime
) -> ScalingStatus:
    """``status.scaling``: every field written, so nothing stale survives a merge patch."""
    return ScalingStatus(
        able=able, reason=reason, message=message, desired=desired, panic=panic, observed_at=now
    )


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None

"""An operator-driven replica sweep: the same load at 1, 2, 4 … replicas of one service.

Vendors report scaling as throughput per replica and ``T_N / (N · T_1)`` (AMD's MLPerf 6.0:
~93 % across 11 nodes). To measure it honestly the replica count must really change between
runs, so for the length of the sweep the benchmark owns the target's ``/scale``: it marks the
service with a scaling-hold annotation (the autoscaler then only publishes metrics), writes each
level through ``/scale``, waits until exactly that many engine pods are Ready and no others are
still terminating, runs one Job per level, and at the end restores ``spec.replicas`` and lifts
the hold — also when a level fails. Progress lives in ``status.sweep``, so a restarted operator
continues at the level it was on.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from tokenscale import constants as c
from tokenscale.api.benchmark import InferenceBenchmarkSpec, ReplicaSweepLevel, SweepStatus
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceServiceSpec
from tokenscale.autoscale.collector import engine_pods
from tokenscale.bench import metrics
from tokenscale.controller.benchmark import (
    FINISHED,
    VERDICTS,
    BenchOutcome,
    collect_run,
    fail,
    finish,
    job_state,
    start_job,
    with_conditions,
)
from tokenscale.controller.kube import Kube
from tokenscale.controller.reconcile import selector_for

log = logging.getLogger(__name__)

DEFAULT_LEVELS = (1, 2, 4)


def levels_of(spec: InferenceBenchmarkSpec) -> list[int]:
    """The replica levels, ascending and unique (scale-ups only after the first level)."""
    return sorted(set(spec.load.replicas or DEFAULT_LEVELS))


def hold_value(bench: str) -> str:
    """What the scaling-hold annotation says: who owns /scale."""
    return f"benchmark/{bench}"


def bounds_problem(levels: list[int], svc_spec: InferenceServiceSpec) -> str | None:
    """Why the levels cannot be run on this service (pool bounds), or None."""
    low = sum(p.min_replicas for p in svc_spec.pools)
    high = sum(p.max_replicas for p in svc_spec.pools)
    bad = [n for n in levels if not low <= n <= high]
    if not bad:
        return None
    return (
        f"spec.load.replicas: level(s) {bad} outside the service's replica range [{low}, {high}] "
        "(sum of its pools' minReplicas..maxReplicas); fix: choose levels in that range or "
        "change the pools' bounds"
    )


def begin(
    body: dict[str, Any],
    spec: InferenceBenchmarkSpec,
    svc_body: dict[str, Any],
    svc_spec: InferenceServiceSpec,
    kube: Kube,
    now: datetime,
) -> BenchOutcome:
    """Take /scale: hold the autoscaler, remember the replicas to restore, start at level 0."""
    meta = body["metadata"]
    levels = levels_of(spec)
    problem = bounds_problem(levels, svc_spec)
    if problem:
        return fail(body, "InvalidSweep", problem, now)
    service = svc_body["metadata"]["name"]
    kube.patch_merge(
        "InferenceService",
        meta["namespace"],
        service,
        {"metadata": {"annotations": {c.ANNOTATION_SCALING_HOLD: hold_value(meta["name"])}}},
    )
    sweep = SweepStatus(levels=levels, restore_replicas=svc_body["spec"].get("replicas"))
    msg = f"replica sweep over {levels} on {service}; autoscaling of {service} held meanwhile"
    status = {
        "phase": "Running",
        "startTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sweep": sweep.to_k8s(),
    }
    return BenchOutcome(
        with_conditions(body, status, "Sweeping", msg, meta.get("generation"), now),
        [("SweepStarted", msg, "Normal")],
    )


def step(
    body: dict[str, Any],
    spec: InferenceBenchmarkSpec,
    svc_body: dict[str, Any],
    svc_spec: InferenceServiceSpec,
    kube: Kube,
    cfg: OperatorConfig,
    now: datetime,
) -> BenchOutcome:
    """Move the sweep one step: scale, wait for the level, run it, record it, go on or finish."""
    meta = body["metadata"]
    name, namespace, gen = meta["name"], meta["namespace"], meta.get("generation")
    status = body.get("status") or {}
    sweep = SweepStatus.model_validate(status["sweep"])
    service = svc_body["metadata"]["name"]
    n = sweep.levels[sweep.index]

    if svc_body["spec"].get("replicas") != n:
        kube.patch_merge("InferenceService", namespace, service, {"spec": {"replicas": n}}, "scale")
        msg = f"level {sweep.index + 1}/{len(sweep.levels)}: scaling {service} to {n} replica(s)"
        return _progress(body, sweep, msg, gen, now, ("SweepScaled", msg))

    job_name = f"{name}-run-r{n}"
    job = kube.get("Job", namespace, job_name)
    if job is None:
        ready, present = _engine_pods(kube, namespace, service)
        if ready != n or present != n:
            msg = (
                f"level {sweep.index + 1}/{len(sweep.levels)}: waiting for exactly {n} ready "
                f"replica(s) of {service} (ready {ready}, pods {present})"
            )
            return _progress(body, sweep, msg, gen, now)
        start_job(body, spec, svc_spec, kube, cfg, job_name, replicas=n)
        msg = (
            f"level {sweep.index + 1}/{len(sweep.levels)}: started Job {job_name} at {n} replica(s)"
        )
        out = _progress(body, sweep, msg, gen, now, ("Started", msg))
        out.status["jobName"] = job_name
        return out

    state, message = job_state(job)
    if state == "failed":
        release(kube, namespace, service, name, sweep.restore_replicas)
        return fail(body, "JobFailed", f"{job_name} at {n} replica(s): {message}", now)
    if state == "running":
        return BenchOutcome({})
    merged = collect_run(kube, namespace, name, spec, job_name)
    if merged is None:
        return BenchOutcome({})
    point = ReplicaSweepLevel(
        replicas=n,
        job=job_name,
        tokens_per_second=round(merged.metrics.tokens_per_s, 3),
        tokens_per_second_per_replica=round(merged.metrics.tokens_per_s / n, 3),
        verdict=VERDICTS[merged.verdict.status],  # type: ignore[arg-type]
    )
    sweep.points = [*(p for p in sweep.points if p.replicas != n), point]
    if sweep.index + 1 < len(sweep.levels):
        sweep.index += 1
        following = sweep.levels[sweep.index]
        msg = f"{n} replica(s): {point.tokens_per_second:,.0f} tok/s; next {following}"
        return _progress(body, sweep, msg, gen, now, ("SweepLevel", msg))

    curve = metrics.replica_points({p.replicas: p.tokens_per_second for p in sweep.points})
    by_n = {p.replicas: p for p in curve}
    for p in sweep.points:
        eff = by_n[p.replicas].scaling_efficiency
        p.scaling_efficiency = None if eff is None else round(eff, 4)
    release(kube, namespace, service, name, sweep.restore_replicas)
    outcome = finish(
        body, spec, merged.model_copy(update={"replica_sweep": curve}), svc_body, kube, cfg, now
    )
    outcome.status["sweep"] = sweep.to_k8s()
    eff = curve[-1].scaling_efficiency
    summary = ", ".join(f"{p.replicas}: {p.tokens_per_second:,.0f}" for p in sweep.points)
    text = f"replica sweep tok/s {summary}" + (
        f"; scaling efficiency at {n}: {eff:.1%}" if eff is not None else ""
    )
    outcome.events.append(("SweepFinished", text, "Normal"))
    return outcome


def release(kube: Kube, namespace: str, service: str, bench: str, restore: int | None) -> None:
    """Give /scale back: restore the replicas the service had and lift the hold (idempotent)."""
    current = kube.get("InferenceService", namespace, service)
    if current is None:
        return
    annotations = current["metadata"].get("annotations") or {}
    if annotations.get(c.ANNOTATION_SCALING_HOLD) != hold_value(bench):
        return  # already released (or someone else holds it): never undo another owner's state
    # One merge patch: spec.replicas back (null removes it) and the hold lifted together.
    patch = {
        "metadata": {"annotations": {c.ANNOTATION_SCALING_HOLD: None}},
        "spec": {"replicas": restore},
    }
    kube.patch_merge("InferenceService", namespace, service, patch)


def live_hold(kube: Kube, meta: dict[str, Any]) -> str | None:
    """The service's scaling hold, if the benchmark holding it still runs. A stale hold (its
    benchmark deleted, or finished without releasing) is lifted here, by the autoscaler's pass,
    so autoscaling can never stay frozen."""
    hold = (meta.get("annotations") or {}).get(c.ANNOTATION_SCALING_HOLD)
    if not hold:
        return None
    kind, _, owner = str(hold).partition("/")
    if kind == "benchmark" and owner:
        bench = kube.get("InferenceBenchmark", meta["namespace"], owner)
        if bench is not None and (bench.get("status") or {}).get("phase") not in FINISHED:
            return str(hold)
    log.info("lifting stale scaling hold %r on %s", hold, meta["name"])
    kube.patch_merge(
        "InferenceService",
        meta["namespace"],
        meta["name"],
        {"metadata": {"annotations": {c.ANNOTATION_SCALING_HOLD: None}}},
    )
    return None


def release_if_holding(kube: Kube, body: dict[str, Any]) -> None:
    """On deletion of a benchmark mid-sweep: give the target back (best effort)."""
    status = body.get("status") or {}
    target = ((body.get("spec") or {}).get("target") or {}).get("service")
    if not target or not status.get("sweep"):
        return
    sweep = SweepStatus.model_validate(status["sweep"])
    meta = body["metadata"]
    release(kube, meta["namespace"], target, meta["name"], sweep.restore_replicas)


def _engine_pods(kube: Kube, namespace: str, service: str) -> tuple[int, int]:
    """(ready, present) engine pods of the service; terminating pods count as present."""
    pods = kube.list("Pod", namespace, selector_for(service))
    present = [
        p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    return len(engine_pods(present)), len(present)


def _progress(
    body: dict[str, Any],
    sweep: SweepStatus,
    message: str,
    gen: int | None,
    now: datetime,
    event: tuple[str, str] | None = None,
) -> BenchOutcome:
    """Status with the sweep and a Running condition; nothing written when nothing changed."""
    old = body.get("status") or {}
    sweep_k8s = sweep.to_k8s()
    same_msg = any(x.get("message") == message for x in old.get("conditions") or [])
    if event is None and same_msg and old.get("sweep") == sweep_k8s:
        return BenchOutcome({})
    status = {"phase": "Running", "sweep": sweep_k8s}
    events = [(event[0], event[1], "Normal")] if event else []
    return BenchOutcome(with_conditions(body, status, "Sweeping", message, gen, now), events)

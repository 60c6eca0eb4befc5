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
from tokenscale.api.benchmark import (
    InferenceBenchmarkSpec,
    InferenceBenchmarkStatus,
    ReplicaSweepLevel,
    SweepStatus,
)
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceServiceSpec
from tokenscale.autoscale.collector import engine_pods
from tokenscale.bench import metrics
from tokenscale.bench.models import BenchResult
from tokenscale.controller.benchrun import (
    VERDICTS,
    BenchOutcome,
    collect_run,
    fail,
    finish,
    job_state,
    start_job,
    with_conditions,
)
from tokenscale.controller.events import Event
from tokenscale.controller.hold import hold_value, release
from tokenscale.controller.observe import benchmark_status
from tokenscale.k8s.kube import Kube
from tokenscale.render.names import selector_for

log = logging.getLogger(__name__)

DEFAULT_LEVELS = (1, 2, 4)


def levels_of(spec: InferenceBenchmarkSpec) -> list[int]:
    """The replica levels, ascending and unique (scale-ups only after the first level)."""
    return sorted(set(spec.load.replicas or DEFAULT_LEVELS))


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
    sweep = SweepStatus(levels=levels, index=0, restore_replicas=svc_body["spec"].get("replicas"))
    msg = f"replica sweep over {levels} on {service}; autoscaling of {service} held meanwhile"
    status = InferenceBenchmarkStatus(
        phase="Running", start_time=now, sweep=sweep, waiting_since=None
    )
    return BenchOutcome(
        with_conditions(body, status, "Sweeping", msg, meta.get("generation"), now),
        [Event("SweepStarted", msg)],
    )


def step(
    body: dict[str, Any],
    spec: InferenceBenchmarkSpec,
    sweep: SweepStatus,
    svc_body: dict[str, Any],
    svc_spec: InferenceServiceSpec,
    kube: Kube,
    cfg: OperatorConfig,
    now: datetime,
) -> BenchOutcome:
    """Move the sweep one step: scale, wait for the level, run it, record it, go on or finish."""
    meta = body["metadata"]
    name, namespace, gen = meta["name"], meta["namespace"], meta.get("generation")
    service = svc_body["metadata"]["name"]
    n = sweep.levels[sweep.index]
    job_name = f"{name}-run-r{n}"
    holding = (svc_body["metadata"].get("annotations") or {}).get(
        c.ANNOTATION_SCALING_HOLD
    ) == hold_value(name)
    if not holding:
        # /scale is not ours any more: either this sweep gave it back (restored the replicas)
        # and the operator died before the terminal status, or someone else lifted the hold.
        # Never write /scale without the hold (nobody would give that count back): finish from
        # the last level's Job, or stop with the reason.
        job = kube.get("Job", namespace, job_name)
        state = job_state(job)[0] if job is not None else None
        last = sweep.index + 1 == len(sweep.levels)
        if state is None or (state == "complete" and not last):
            text = (
                f"the scaling hold on {service} ({c.ANNOTATION_SCALING_HOLD}) was lifted "
                f"before level {sweep.index + 1}/{len(sweep.levels)} ({n} replica(s)) finished; "
                f"the sweep stopped without writing {service}'s /scale again"
            )
            return fail(body, "HoldLost", text, now)
    elif svc_body["spec"].get("replicas") != n:
        kube.patch_merge("InferenceService", namespace, service, {"spec": {"replicas": n}}, "scale")
        msg = f"level {sweep.index + 1}/{len(sweep.levels)}: scaling {service} to {n} replica(s)"
        return _progress(body, sweep, msg, gen, now, ("SweepScaled", msg), waiting_since=now)

    job = kube.get("Job", namespace, job_name)
    if job is None:
        ready, present = _engine_pods(kube, namespace, service)
        if ready != n or present != n:
            msg = (
                f"level {sweep.index + 1}/{len(sweep.levels)}: waiting for exactly {n} ready "
                f"replica(s) of {service} (ready {ready}, pods {present})"
            )
            since = benchmark_status(body).waiting_since or now
            waited = (now - since).total_seconds()
            if waited >= spec.target_timeout_seconds:  # bounded like the first wait
                release(kube, namespace, service, name, sweep.restore_replicas)
                text = (
                    f"{msg}; gave up after {waited:.0f} s (spec.targetTimeoutSeconds is "
                    f"{spec.target_timeout_seconds}); replicas restored"
                )
                return fail(body, "TargetNotReady", text, now)
            return _progress(body, sweep, msg, gen, now, waiting_since=since)
        start_job(body, spec, svc_spec, kube, cfg, job_name, replicas=n)
        msg = (
            f"level {sweep.index + 1}/{len(sweep.levels)}: started Job {job_name} at {n} replica(s)"
        )
        return _progress(body, sweep, msg, gen, now, ("Started", msg), job_name=job_name)

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
        tokens_per_joule=merged.energy.tokens_per_joule if merged.energy else None,
        verdict=VERDICTS[merged.verdict.status],
    )
    sweep.points = [*(p for p in sweep.points if p.replicas != n), point]
    if sweep.index + 1 < len(sweep.levels):
        sweep.index += 1
        following = sweep.levels[sweep.index]
        msg = f"{n} replica(s): {point.tokens_per_second:,.0f} tok/s; next {following}"
        return _progress(body, sweep, msg, gen, now, ("SweepLevel", msg))

    release(kube, namespace, service, name, sweep.restore_replicas)
    return _finished(body, spec, sweep, merged, svc_body, kube, cfg, now)


def _finished(
    body: dict[str, Any],
    spec: InferenceBenchmarkSpec,
    sweep: SweepStatus,
    merged: BenchResult,
    svc_body: dict[str, Any],
    kube: Kube,
    cfg: OperatorConfig,
    now: datetime,
) -> BenchOutcome:
    """The last level is in: per-level scaling efficiency, the run's results with the replica
    curve (the report plots it), and a SweepFinished Event. /scale was given back already."""
    n = sweep.levels[-1]
    curve = metrics.replica_points({p.replicas: p.tokens_per_second for p in sweep.points})
    by_n = {p.replicas: p for p in curve}
    for p in sweep.points:
        eff = by_n[p.replicas].scaling_efficiency
        p.scaling_efficiency = None if eff is None else round(eff, 4)
    outcome = finish(
        body,
        spec,
        merged.model_copy(update={"replica_sweep": curve}),
        svc_body,
        kube,
        cfg,
        now,
        sweep=sweep,
    )
    eff = curve[-1].scaling_efficiency
    summary = ", ".join(f"{p.replicas}: {p.tokens_per_second:,.0f}" for p in sweep.points)
    text = f"replica sweep tok/s {summary}" + (
        f"; scaling efficiency at {n}: {eff:.1%}" if eff is not None else ""
    )
    outcome.events.append(Event("SweepFinished", text))
    return outcome


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
    job_name: str | None = None,
    waiting_since: datetime | None = None,
) -> BenchOutcome:
    """Status with the sweep and a Running condition; nothing written when nothing changed.

    ``waiting_since``: when the current level began waiting for its replicas (None: not
    waiting; the stored value is cleared)."""
    old = benchmark_status(body)
    same_msg = any(x.message == message for x in old.conditions)
    unchanged = old.sweep is not None and old.sweep.to_k8s() == sweep.to_k8s()
    same_wait = old.waiting_since == waiting_since
    if event is None and same_msg and unchanged and same_wait:
        return BenchOutcome({})
    status = InferenceBenchmarkStatus(phase="Running", sweep=sweep, waiting_since=waiting_since)
    if job_name is not None:
        status.job_name = job_name
    events = [Event(event[0], event[1])] if event else []
    return BenchOutcome(with_conditions(body, status, "Sweeping", message, gen, now), events)

"""Reconcile an InferenceBenchmark: wait for the target, run the Job, collect, judge, report.

The phase in status is the state machine (Pending → WaitingForTarget → Running → Succeeded or
Failed); each pass reads the world and moves at most one step, so a restarted operator simply
continues. This module only dispatches: the single run's steps are in
:mod:`~tokenscale.controller.benchrun`, the replica sweep in :mod:`~tokenscale.controller.sweep`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tokenscale.api.benchmark import FINISHED, InferenceBenchmarkSpec, InferenceBenchmarkStatus
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceServiceSpec
from tokenscale.controller import metrics, refresh, sweep
from tokenscale.controller.benchrun import (
    BenchOutcome,
    collect_run,
    fail,
    finish,
    job_state,
    service_ready,
    start_job,
    wait,
    with_conditions,
)
from tokenscale.controller.events import Event
from tokenscale.controller.observe import benchmark_status
from tokenscale.k8s import wake
from tokenscale.k8s.kube import Kube
from tokenscale.validation import parse_spec, problems_from


def reconcile_benchmark(
    body: dict[str, Any], kube: Kube, cfg: OperatorConfig, now: datetime | None = None
) -> BenchOutcome:
    """Move the benchmark one step forward."""
    now = now or datetime.now(UTC)
    meta, status = body["metadata"], benchmark_status(body)
    name, namespace, gen = meta["name"], meta["namespace"], meta.get("generation")
    if status.phase in FINISHED:
        return BenchOutcome({}, finished=True)
    try:
        spec = InferenceBenchmarkSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        text = "; ".join(str(p) for p in problems_from(exc))
        return fail(body, "InvalidSpec", text, now)

    svc_body = None
    svc_spec: InferenceServiceSpec | None = None
    if spec.target.service:
        svc_body = kube.get("InferenceService", namespace, spec.target.service)
        if svc_body is None:
            if status.sweep is not None:
                return fail(body, "TargetGone", f"{spec.target.service} was deleted", now)
            missing = f"InferenceService {spec.target.service} not found"
            return wait(body, missing, now, spec.target_timeout_seconds)
        try:
            svc_spec = parse_spec(svc_body).spec
        except ValidationError as exc:  # the service's own InvalidSpec says why; it may be fixed
            text = "; ".join(str(p) for p in problems_from(exc))
            invalid = f"InferenceService {spec.target.service} has an invalid spec ({text})"
            return wait(body, invalid, now, spec.target_timeout_seconds)
        if spec.scenario == "replicaSweep" and status.sweep is not None:
            return sweep.step(body, spec, status.sweep, svc_body, svc_spec, kube, cfg, now)
        if wake.at_zero(svc_body):
            return _wake(body, svc_body, svc_spec, kube, now, spec.target_timeout_seconds)
        if not service_ready(svc_body):
            return wait(
                body,
                f"waiting for InferenceService {spec.target.service} to be Ready",
                now,
                spec.target_timeout_seconds,
            )
        if spec.scenario == "replicaSweep":
            return sweep.begin(body, spec, svc_body, svc_spec, kube, now)

    job_name = f"{name}-run"
    job = kube.get("Job", namespace, job_name)
    if job is None:
        start_job(body, spec, svc_spec, kube, cfg, job_name)
        running = InferenceBenchmarkStatus(phase="Running", job_name=job_name, start_time=now)
        msg = f"started Job {job_name} ({spec.scenario}, {spec.shards} shard(s))"
        return BenchOutcome(
            with_conditions(body, running, "Running", msg, gen, now), [Event("Started", msg)]
        )
    state, message = job_state(job)
    if state == "failed":
        return fail(body, "JobFailed", message, now)
    if state == "running":
        return BenchOutcome({})
    merged = collect_run(kube, namespace, name, spec, job_name)
    if merged is None:
        return BenchOutcome({})  # results still arriving; the timer comes back
    return finish(body, spec, merged, svc_body, kube, cfg, now)


def _wake(
    body: dict[str, Any],
    svc_body: dict[str, Any],
    svc_spec: InferenceServiceSpec,
    kube: Kube,
    now: datetime,
    timeout: float,
) -> BenchOutcome:
    """A benchmark is demand: scale a scaled-to-zero target back up, then wait for Ready.

    With no engines there is no signal for the autoscaler; this is the in-cluster wake-up
    (requests from outside go through the activator, which does the same)."""
    bench = body["metadata"]["name"]
    message = wake.wake(kube, svc_body, svc_spec, f"for benchmark {bench}")
    if message is None:  # another writer woke it between our read and our write
        name = svc_body["metadata"]["name"]
        return wait(body, f"waiting for InferenceService {name}, woken by another", now, timeout)
    outcome = wait(body, message, now, timeout)
    outcome.events.append(Event("WokeTarget", message))
    return outcome


def update_target(
    body: dict[str, Any], outcome: BenchOutcome, kube: Kube, cfg: OperatorConfig
) -> None:
    """A finished run's summary onto the target service: its status.benchmark and history, the
    benchmark gauges, and a status refresh so SLAMet follows at once (not at the next resync)."""
    target = (body.get("spec") or {}).get("target") or {}
    if outcome.service_status is None or not target.get("service"):
        return
    namespace, service = body["metadata"]["namespace"], target["service"]
    patch = {"status": outcome.service_status}
    kube.patch_merge("InferenceService", namespace, service, patch, "status")
    verdict = str(outcome.status.get("verdict"))
    metrics.BENCHMARK_VERDICTS.labels(namespace, service, verdict).inc()
    tps = (outcome.status.get("results") or {}).get("tokensPerSecond") or 0.0
    metrics.BENCHMARK_TOKENS_PER_SECOND.labels(namespace, service).set(float(tps))
    refresh.refresh_service(kube, cfg, namespace, service)

"""The steps of one benchmark run, shared by the single-run path and the replica sweep.

Start the Job, read its state, collect and merge the shards, judge and report, and build the
status a step leaves behind. :mod:`~tokenscale.controller.benchmark` dispatches between the two
paths and :mod:`~tokenscale.controller.sweep` strings runs together; both build on this module,
which imports neither.
"""

from __future__ import annotations

import base64
import gzip
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from tokenscale import constants as c
from tokenscale.api.benchmark import (
    FINISHED,
    BenchmarkEnergy,
    BenchmarkResults,
    InferenceBenchmarkSpec,
    InferenceBenchmarkStatus,
    LatencySummary,
    SweepStatus,
    Verdict,
)
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceServiceSpec
from tokenscale.api.status import BenchmarkSummary, InferenceServiceStatus
from tokenscale.api.wire import merge_patch
from tokenscale.bench import resultchannel, scenarios
from tokenscale.bench.models import BenchResult, VerdictStatus
from tokenscale.controller import energy
from tokenscale.controller.events import Event
from tokenscale.controller.observe import (
    benchmark_status,
    condition,
    find,
    merge_conditions,
    service_status,
)
from tokenscale.k8s.kube import Kube
from tokenscale.k8s.owners import owner_reference
from tokenscale.render import benchmark_job
from tokenscale.render.names import selector_for

log = logging.getLogger(__name__)

#: The load generator's verdict as the CRD spells it.
VERDICTS: dict[VerdictStatus, Verdict] = {
    "pass": "Pass",
    "fail": "Fail",
    "invalid": "Invalid",
    "unstable": "Unstable",
    "no_sla": "NoSLA",
}
REPORT_LIMIT = 900_000


@dataclass(slots=True)
class BenchOutcome:
    """Status patch for the benchmark, Events, and an optional patch of the target's status."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    service_status: dict[str, Any] | None = None
    finished: bool = False


def _ms(p: float | None) -> float | None:
    return None if p is None else round(p * 1000.0, 3)


def results_from(result: BenchResult) -> BenchmarkResults:
    """The CRD's headline results from the load generator's contract model."""
    s = result.summary()
    sc = result.self_check
    lag = sc.schedule_lag.p99 if sc.schedule_lag else None
    eff = None
    if result.replica_sweep and result.replica_sweep[-1].scaling_efficiency is not None:
        eff = round(result.replica_sweep[-1].scaling_efficiency, 4)
    return BenchmarkResults(
        tokens_per_second=round(s.tokens_per_s, 3),
        requests_per_second=round(s.requests_per_s, 4),
        goodput=round(s.goodput_requests_per_s or 0.0, 4),
        requests=result.metrics.requests_ok,
        errors=result.metrics.requests_failed,
        partial=result.metrics.requests_failed > 0,
        ttft_ms=LatencySummary(p50=_ms(s.ttft_p50_s), p90=_ms(s.ttft_p90_s), p99=_ms(s.ttft_p99_s)),
        tpot_ms=LatencySummary(p50=_ms(s.tpot_p50_s), p90=_ms(s.tpot_p90_s), p99=_ms(s.tpot_p99_s)),
        itl_ms=LatencySummary(p50=_ms(s.itl_p50_s), p90=_ms(s.itl_p90_s), p99=_ms(s.itl_p99_s)),
        e2e_ms=LatencySummary(p50=_ms(s.e2e_p50_s), p90=_ms(s.e2e_p90_s), p99=_ms(s.e2e_p99_s)),
        client_cpu_fraction=round(sc.cpu_fraction, 4),
        schedule_lag_p99_ms=_ms(lag),
        scaling_efficiency=eff,
        energy=_energy(result),
    )


def _energy(result: BenchResult) -> BenchmarkEnergy | None:
    e = result.energy
    if e is None:
        return None
    return BenchmarkEnergy(
        tokens_per_joule=e.tokens_per_joule,
        joules_per_token=e.joules_per_token,
        joules=e.joules,
        avg_watts_per_gpu=e.avg_watts_per_gpu,
        peak_watts_per_gpu=e.peak_watts_per_gpu,
        gpus=e.gpus,
        reason=e.reason,
    )


def service_ready(svc_body: dict[str, Any]) -> bool:
    """The target serves: Ready is True for its current spec and not merely "scaled to zero".

    The generation check matters right after a /scale write (a wake-up): until the reconcile has
    caught up, the old Ready=True/ScaledToZero would otherwise start a run against no engines.
    """
    status = service_status(svc_body)
    generation = svc_body["metadata"].get("generation")
    if generation is not None and status.observed_generation != generation:
        return False
    ready = find(status.conditions, c.COND_READY)
    return bool(ready and ready.status == "True" and ready.reason != "ScaledToZero")


def start_job(
    body: dict[str, Any],
    spec: InferenceBenchmarkSpec,
    svc_spec: InferenceServiceSpec | None,
    kube: Kube,
    cfg: OperatorConfig,
    job_name: str,
    replicas: int | None = None,
) -> None:
    """The narrow RBAC and the Indexed Job for one run, owned by the benchmark."""
    namespace = body["metadata"]["namespace"]
    model = spec.target.model or (svc_spec.model.name if svc_spec else None)
    sla = spec.sla or (svc_spec.sla if svc_spec else None)
    url = benchmark_job.target_url(spec, namespace)
    args = benchmark_job.bench_args(spec, url, model or "", sla, replicas)
    if not model:
        args = [a for a in args if a not in ("--model", "")]
    args += energy.bench_args(kube, cfg, namespace, spec.target.service)
    for obj in benchmark_job.rbac(namespace, cfg):
        kube.apply(obj)
    obj = benchmark_job.job(job_name, body, spec, cfg, args)
    obj["metadata"]["ownerReferences"] = [owner_reference(body, "InferenceBenchmark")]
    kube.apply(obj)


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """("running" | "failed" | "complete", message) from the Job's conditions."""
    done = {
        x["type"]: x
        for x in (job.get("status") or {}).get("conditions") or []
        if x.get("status") == "True"
    }
    if "Failed" in done:
        return "failed", done["Failed"].get("message") or "benchmark Job failed"
    if "Complete" in done:
        return "complete", ""
    return "running", ""


def collect_run(
    kube: Kube, namespace: str, name: str, spec: InferenceBenchmarkSpec, job_name: str
) -> BenchResult | None:
    """The run's shards merged exactly, or None while any shard is still publishing."""
    shards = resultchannel.collect(kube, namespace, name, spec.shards, run=job_name)
    if shards is None:
        return None
    return shards[0] if len(shards) == 1 else scenarios.merge(shards)


def finish(
    body: dict[str, Any],
    spec: InferenceBenchmarkSpec,
    merged: BenchResult,
    svc_body: dict[str, Any] | None,
    kube: Kube,
    cfg: OperatorConfig,
    now: datetime,
    sweep: SweepStatus | None = None,
) -> BenchOutcome:
    """Judge a collected run: results, verdict, report, Events; on a service target also its
    status.benchmark, history and a Regression Event. The benchmark is finished afterwards.
    A replica sweep passes its final ``sweep`` progress to be written with the results."""
    meta = body["metadata"]
    results = results_from(merged)
    if results.requests == 0:  # nothing answered: no figure to judge, never a pass
        text = (
            f"no request completed ({results.errors} failed); the target did not answer "
            f"(wrong URL, engine down or not serving {merged.config.model!r}?)"
        )
        failed = fail(body, "NoResponses", text, now)
        failed.status["results"] = merge_patch(results)
        return failed
    verdict = VERDICTS[merged.verdict.status]
    partial = partial_note(merged)
    status = InferenceBenchmarkStatus(
        phase="Succeeded",
        completion_time=now,
        results=results,
        verdict=verdict,
        reasons=[*([partial] if partial else []), *merged.verdict.reasons],
        report=store_report(kube, body, merged),
    )
    if sweep is not None:
        status.sweep = sweep
    message = (
        f"{verdict}: {results.tokens_per_second:,.0f} tok/s, p99 TTFT "
        f"{results.ttft_ms.p99} ms, p99 TPOT {results.tpot_ms.p99} ms"
    )
    if partial:
        message = f"{message} ({partial})"
    healthy = verdict in ("Pass", "NoSLA") and not partial
    events = [Event("Finished", message, "Normal" if healthy else "Warning")]
    outcome = BenchOutcome(
        with_conditions(body, status, "Finished", message, meta.get("generation"), now),
        events,
        finished=True,
    )
    if svc_body is not None:
        identity = engine_identity(kube, svc_body)
        target = service_summary(svc_body, meta["name"], results, verdict, cfg, now, identity)
        outcome.service_status = merge_patch(target)
        summary = target.benchmark
        if summary is not None and summary.regression:
            text = (
                f"regression: {summary.capacity_per_replica or 0:,.0f} tok/s per replica at the "
                f"SLA, more than {cfg.benchmark.regression_margin:.0%} below {summary.baseline}"
            )
            outcome.events.append(Event("Regression", text, "Warning"))
            kube.event(svc_body, "Regression", text, "Warning")
    return outcome


def partial_note(merged: BenchResult) -> str | None:
    """The note "partial: ..." when some requests failed, naming how many and how, else None.

    Why in reasons and the Event, not only ``results.partial``: without an SLA (verdict NoSLA)
    nothing else would say that the figures leave out the requests an engine never answered,
    e.g. while its pods were killed mid-run."""
    m = merged.metrics
    if m.requests_failed <= 0:
        return None
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(m.errors.items()))
    return (
        f"partial: {m.requests_failed} of {m.requests_total} requests failed"
        f"{f' ({kinds})' if kinds else ''}; the figures cover the {m.requests_ok} that completed"
    )


@dataclass(frozen=True, slots=True)
class EngineIdentity:
    """What a result is keyed by in the history: a different image or GPU is a different system."""

    image: str | None = None
    engine_version: str | None = None
    gpu: str | None = None


def engine_identity(kube: Kube, svc_body: dict[str, Any]) -> EngineIdentity:
    """Images from the service's Deployments, the version a ready engine reports, the GPUs."""
    meta = svc_body["metadata"]
    selector = selector_for(meta["name"])
    images: list[str] = []
    for deployment in kube.list("Deployment", meta["namespace"], selector):
        for ctr in deployment["spec"]["template"]["spec"].get("containers") or []:
            if ctr.get("name") == c.ENGINE_CONTAINER and ctr.get("image") not in images:
                images.append(ctr["image"])
    version = None
    for pod in kube.list("Pod", meta["namespace"], selector):
        ip = (pod.get("status") or {}).get("podIP")
        if ip and not pod["metadata"].get("deletionTimestamp"):
            version = _engine_version(ip)
            if version:
                break
    gpu = service_status(svc_body).gpu_summary or None
    return EngineIdentity(",".join(images) or None, version, gpu)


def _engine_version(ip: str) -> str | None:
    """vLLM's ``GET /version`` (the simulator answers it too); None when unreachable."""
    try:
        response = httpx.get(f"http://{ip}:{c.ENGINE_PORT}/version", timeout=2.0, trust_env=False)
        version = response.json().get("version") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(version) if version else None


def service_summary(
    svc_body: dict[str, Any],
    bench: str,
    results: BenchmarkResults,
    verdict: str,
    cfg: OperatorConfig,
    now: datetime,
    identity: EngineIdentity | None = None,
) -> InferenceServiceStatus:
    """The target's status.benchmark and bounded history with a regression flag.

    Throughput is compared per replica (runs at different replica counts stay comparable) and
    only against earlier passing runs on the same GPU model(s); the baseline names its image
    and engine version, so a slower new image shows up as exactly that. SLAMet itself is
    derived from status.benchmark by the service's reconcile, in one place.
    """
    identity = identity or EngineIdentity()
    status = service_status(svc_body)
    ready = max(status.ready_replicas, 1)
    capacity = round(results.tokens_per_second / ready, 3)
    history = list(status.benchmark_history)
    comparable = [
        (h, h.capacity_per_replica)
        for h in history
        if h.verdict == "Pass" and h.capacity_per_replica and h.gpu == identity.gpu
    ]
    best, best_capacity = max(comparable, key=lambda pair: pair[1], default=(None, 0.0))
    regression = (
        verdict == "Pass"
        and best is not None
        and capacity < best_capacity * (1 - cfg.benchmark.regression_margin)
    )
    baseline = None
    if best is not None:
        baseline = f"{best.name} ({best_capacity:,.0f} tok/s per replica"
        baseline += "".join(
            f", {label} {value}"
            for value, label in ((best.image, "image"), (best.engine_version, "engine"))
            if value
        )
        baseline += ")"
    summary = BenchmarkSummary(
        name=bench,
        verdict=verdict,
        tokens_per_second=results.tokens_per_second,
        ttft_p99_ms=results.ttft_ms.p99,
        tpot_p99_ms=results.tpot_ms.p99,
        replicas=ready,
        capacity_per_replica=capacity,
        completed_at=now,
        image=identity.image,
        engine_version=identity.engine_version,
        gpu=identity.gpu,
        regression=regression,
        baseline=baseline,
    )
    history = [*history, summary][-cfg.benchmark.history_limit :]
    return InferenceServiceStatus(benchmark=summary, benchmark_history=history)


def store_report(kube: Kube, body: dict[str, Any], merged: BenchResult) -> str | None:
    """The merged HTML report in a ConfigMap (gzip when large); returns where it is."""
    # Imported here, not at the top: bench.report loads jinja2 and its template, which only a
    # finishing run needs (the operator imports this module at start-up).
    from tokenscale.bench import report

    meta = body["metadata"]
    html = report.render(merged)
    name = f"{meta['name']}-report"
    cm: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_ROLE: "benchmark-report"},
            "ownerReferences": [owner_reference(body, "InferenceBenchmark")],
        },
        "data": {"result.json": merged.model_copy(update={"records": []}).model_dump_json()},
    }
    key = "report.html"
    if len(html) < REPORT_LIMIT:
        cm["data"][key] = html
    else:
        key = "report.html.gz"
        cm["binaryData"] = {key: base64.b64encode(gzip.compress(html.encode())).decode()}
    kube.apply(cm)
    return f"configmap/{name}/{key}"


def with_conditions(
    body: dict[str, Any],
    status: InferenceBenchmarkStatus,
    reason: str,
    message: str,
    gen: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The status patch with Complete and Failed derived from its phase, kept stable across
    passes (a condition's transition time moves only when its status flips)."""
    done = status.phase in FINISHED
    conds = [
        condition("Complete", done and status.phase == "Succeeded", reason, message, gen),
        condition("Failed", status.phase == "Failed", reason, message, gen),
    ]
    old = (body.get("status") or {}).get("conditions") or []
    status.observed_generation = gen
    status.conditions = merge_conditions(old, conds, now)
    return merge_patch(status)


def wait(body: dict[str, Any], message: str, now: datetime, timeout: float) -> BenchOutcome:
    """WaitingForTarget with a message; the Waiting Event only on entering the phase, so a
    benchmark polling a slow target does not post one Event per pass.

    The wait is bounded: ``waitingSince`` is kept from the pass that entered the phase, and
    after ``timeout`` seconds (spec.targetTimeoutSeconds) the benchmark ends Failed with
    reason TargetNotReady and the last thing it waited for, instead of polling forever."""
    prior = benchmark_status(body)
    since = prior.waiting_since if prior.phase == "WaitingForTarget" else None
    since = since or now
    waited = (now - since).total_seconds()
    if waited >= timeout:
        text = (
            f"{message}; gave up after {waited:.0f} s (spec.targetTimeoutSeconds is "
            f"{timeout:.0f}); fix: make the target Ready, or raise targetTimeoutSeconds"
        )
        return fail(body, "TargetNotReady", text, now)
    status = InferenceBenchmarkStatus(phase="WaitingForTarget", waiting_since=since)
    gen = body["metadata"].get("generation")
    events = [] if prior.phase == "WaitingForTarget" else [Event("Waiting", message)]
    return BenchOutcome(with_conditions(body, status, "Waiting", message, gen, now), events)


def fail(body: dict[str, Any], reason: str, message: str, now: datetime) -> BenchOutcome:
    """The terminal Failed status and a Warning Event: the benchmark never acts again."""
    status = InferenceBenchmarkStatus(phase="Failed", completion_time=now, reasons=[message])
    gen = body["metadata"].get("generation")
    return BenchOutcome(
        with_conditions(body, status, reason, message, gen, now),
        [Event(reason, message, "Warning")],
        finished=True,
    )

"""Kopf wiring: thin handlers that call the reconcile functions and write what they return.

Nothing here decides anything; it translates Kopf's callbacks into calls of pure-ish
functions in :mod:`reconcile` and turns their outcome into status patches and Events.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
import kopf
from kopf._cogs.structs.references import NamespaceName, match_namespace

from tokenscale import GROUP, VERSION
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.autoscale.collector import ScrapeCollector
from tokenscale.controller import metrics, nodefacts, refresh, resync, sweep
from tokenscale.controller.autoscaler import LoopState, run_pass
from tokenscale.controller.benchmark import FINISHED, reconcile_benchmark
from tokenscale.controller.kube import Kube, KubeError
from tokenscale.controller.peering import Peering, is_active
from tokenscale.controller.reconcile import (
    CHILD_KINDS,
    Outcome,
    child_version,
    kind_available,
    reconcile_service,
    refresh_status,
)
from tokenscale.render import names

log = logging.getLogger(__name__)

SERVICES = "inferenceservices"


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Load operator config, create the API client, tune Kopf for a fleet-sized operator."""
    memo.config = OperatorConfig.load(memo.get("config_path"))
    memo.kube = Kube()
    # Pod IPs are cluster-internal: never route scrapes through an environment HTTP proxy.
    memo.http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=128), trust_env=False
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.execution.max_workers = int(memo.get("workers") or 8)
    # Every object gets its own event worker at once (Kopf's default; a limit makes the events of
    # objects beyond it wait, bodies and all, until a slot frees), and a worker leaves soon after
    # its object's last event instead of holding its slot for Kopf's default 5 s.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 1.0
    port = memo.get("metrics_port")
    if port:
        metrics.serve(int(port), str(memo.get("metrics_addr") or "0.0.0.0"))  # noqa: S104
    memo.refreshes = refresh.RefreshQueue()
    kube, cfg = memo.kube, memo.config
    refresh.start(
        memo.refreshes, lambda ns, name, full: refresh_service(kube, cfg, ns, name, full=full)
    )
    memo.resync_stop = threading.Event()
    threading.Thread(
        target=_resync_forever,
        args=(
            memo.kube,
            memo.config,
            list(memo.get("namespaces") or []),
            memo.resync_stop,
            memo.get("peering"),
        ),
        name="resync",
        daemon=True,
    ).start()


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop and the refresh threads."""
    stop = memo.get("resync_stop")
    if stop is not None:
        stop.set()
    refreshes = memo.get("refreshes")
    if refreshes is not None:
        refreshes.close()


def _resync_forever(
    kube: Kube,
    cfg: OperatorConfig,
    patterns: list[str],
    stop: threading.Event,
    peering: Peering | None = None,
) -> None:
    """Level-based safety net for every service (see :mod:`resync`); one pass per interval.

    A thread, not a Kopf timer per object: one loop costs the same at 10 or 10,000 services.
    Kopf pauses its own handlers and daemons on a standby replica, not this thread, so with
    peering each pass first asks whether this replica is the active one.
    """
    exact = all(not set(p) & set("*?!,") for p in patterns)
    namespaces: list[str | None] = list(patterns) if patterns and exact else [None]

    def wanted(namespace: str) -> bool:
        return exact or any(match_namespace(NamespaceName(namespace), p) for p in patterns)

    while not stop.wait(resync.RESYNC_SECONDS):
        if peering is not None and not is_active(kube, peering):
            log.debug("resync skipped: standby replica")
            continue
        nodefacts.for_client(kube).invalidate()  # node facts are read once per pass
        try:
            resync.resync_pass(
                kube,
                namespaces,
                [k for k in CHILD_KINDS if kind_available(kube, cfg, k)],
                resync.LEDGER,
                lambda ns, name: refresh_service(kube, cfg, ns, name),
                wanted,
                names.selector_string(cfg.activator.selector) if cfg.activator.enabled else None,
            )
        except KubeError as exc:
            log.warning("resync pass failed (next in %.0fs): %s", resync.RESYNC_SECONDS, exc)


def _write(body: kopf.Body, patch: kopf.Patch, outcome: Outcome, kube: Kube) -> None:
    patch.status.update(outcome.status)
    meta = body["metadata"]
    metrics.record_pools(meta["namespace"], meta["name"], outcome.status.get("pools", []))
    for reason, message, type_ in outcome.events:
        kube.event(dict(body), reason, message, type_)


def _run(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> Outcome:
    started = time.perf_counter()
    try:
        outcome = reconcile_service(dict(body), memo.kube, memo.config)
    except KubeError as exc:
        metrics.RECONCILES.labels("InferenceService", "error").inc()
        raise kopf.TemporaryError(f"API error: {exc}", delay=10) from exc
    metrics.RECONCILE_SECONDS.labels("InferenceService").observe(time.perf_counter() - started)
    metrics.RECONCILES.labels("InferenceService", "invalid" if outcome.invalid else "ok").inc()
    _write(body, patch, outcome, memo.kube)
    if outcome.children is not None:
        resync.LEDGER.record(body["metadata"].get("uid"), outcome.children)
    return outcome


@kopf.on.resume(GROUP, VERSION, SERVICES)
@kopf.on.create(GROUP, VERSION, SERVICES)
@kopf.on.update(GROUP, VERSION, SERVICES, field="spec")
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Spec changed (or the operator restarted): converge children and status."""
    outcome = _run(body, patch, memo)
    if outcome.invalid:
        raise kopf.PermanentError(outcome.events[0][1])


@kopf.on.event("apps", "v1", "deployments", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY})
async def child_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A child Deployment changed: have the owner's status refreshed promptly.

    Only marks the owner (see :mod:`refresh`): Kopf holds every queued event until its handler
    returns, so the refresh runs elsewhere and merges the events that arrived meanwhile. No
    event is dropped: each is followed by a refresh that starts after it.
    """
    meta = body["metadata"]
    name, namespace = (meta.get("labels") or {}).get(c.LABEL_SERVICE), meta.get("namespace")
    if not name or not namespace:
        return
    memo.refreshes.mark((namespace, name), full=child_needs_reconcile(type, dict(body)))


def child_needs_reconcile(event_type: str | None, child: dict[str, Any]) -> bool:
    """Whether a child's event calls for a full reconcile, not just a status refresh.

    Only status moved when the child is the version the owner's last reconcile applied (same
    ``generation``: nobody edited its spec). A deleted or deleting child, an edited one, or one
    the ledger does not know (another process applied it, or this one restarted) is converged.
    """
    meta = child.get("metadata") or {}
    if event_type == "DELETED" or meta.get("deletionTimestamp"):
        return True
    owner = next(
        (r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")), None
    )
    applied = resync.LEDGER.get(str(owner)) if owner else None
    if applied is None:
        return True
    key = (str(child.get("kind") or "Deployment"), str(meta.get("name")))
    return applied.get(key) != child_version(child)


def refresh_service(
    kube: Kube, cfg: OperatorConfig, namespace: str, name: str, *, full: bool = True
) -> None:
    """Re-run the service's reconcile outside its own handler and patch its status.

    ``full=False`` asks only for a status refresh; it is done only when the spec's generation
    was observed and the ledger knows the service, else the reconcile runs in full.
    """
    owner = kube.get("InferenceService", namespace, name)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    meta = owner["metadata"]
    observed = (owner.get("status") or {}).get("observedGeneration")
    status_only = (
        not full
        and meta.get("generation") == observed
        and resync.LEDGER.get(str(meta.get("uid") or "")) is not None
    )
    if status_only:
        outcome = refresh_status(owner, kube, cfg)
    else:
        outcome = reconcile_service(owner, kube, cfg)
    if outcome.children is not None:
        resync.LEDGER.record(meta.get("uid"), outcome.children)
    try:
        kube.patch_merge("InferenceService", namespace, name, {"status": outcome.status}, "status")
    except KubeError as exc:
        log.info("status refresh of %s/%s failed: %s", namespace, name, exc)
        return
    for reason, message, type_ in outcome.events:
        kube.event(owner, reason, message, type_)


def _scaling_enabled(spec: kopf.Spec, **_: Any) -> bool:
    return str((spec.get("scaling") or {}).get("mode", "off")) != "off"


@kopf.daemon(
    GROUP, VERSION, SERVICES, initial_delay=2.0, cancellation_timeout=5.0, when=_scaling_enabled
)
async def autoscale(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Per-service autoscaling loop: scrape engines, decide, write /scale (never raises)."""
    cfg: OperatorConfig = memo.config
    source = ScrapeCollector(client=memo.http, timeout_seconds=cfg.scrape_timeout_seconds)
    loop = LoopState()
    while not stopped:
        try:
            await run_pass(dict(body), memo.kube, cfg, source, loop)
        except KubeError as exc:
            log.warning("autoscaler pass for %s failed: %s", body["metadata"]["name"], exc)
        await stopped.wait(cfg.scrape_interval_seconds)


BENCHMARKS = "inferencebenchmarks"


def _bench(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    kube: Kube = memo.kube
    try:
        outcome = reconcile_benchmark(dict(body), kube, memo.config)
    except KubeError as exc:
        metrics.RECONCILES.labels("InferenceBenchmark", "error").inc()
        raise kopf.TemporaryError(f"API error: {exc}", delay=10) from exc
    metrics.RECONCILES.labels("InferenceBenchmark", "ok").inc()
    if outcome.status:
        patch.status.update(outcome.status)
    for reason, message, type_ in outcome.events:
        kube.event(dict(body), reason, message, type_)
    target = (body.get("spec") or {}).get("target") or {}
    if outcome.service_status is not None and target.get("service"):
        namespace, service = body["metadata"]["namespace"], target["service"]
        kube.patch_merge(
            "InferenceService", namespace, service, {"status": outcome.service_status}, "status"
        )
        verdict = str(outcome.status.get("verdict"))
        metrics.BENCHMARK_VERDICTS.labels(namespace, service, verdict).inc()
        tps = (outcome.status.get("results") or {}).get("tokensPerSecond") or 0.0
        metrics.BENCHMARK_TOKENS_PER_SECOND.labels(namespace, service).set(float(tps))
        refresh_service(kube, memo.config, namespace, service)


@kopf.on.resume(GROUP, VERSION, BENCHMARKS)
@kopf.on.create(GROUP, VERSION, BENCHMARKS)
def benchmark_created(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """A benchmark appeared (or the operator restarted): take its first step."""
    _bench(body, patch, memo)


@kopf.timer(
    GROUP,
    VERSION,
    BENCHMARKS,
    interval=3.0,
    initial_delay=2.0,
    when=lambda status, **_: (status or {}).get("phase") not in FINISHED,
)
def benchmark_progress(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Poll the run: target readiness, Job completion, results."""
    _bench(body, patch, memo)


@kopf.on.delete(GROUP, VERSION, BENCHMARKS, optional=True)
def benchmark_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Deleted mid-sweep: give the target's /scale back now (the autoscaler also lifts a stale
    hold on its next pass, so a missed delete event cannot freeze scaling)."""
    sweep.release_if_holding(memo.kube, dict(body))

"""Kopf wiring: thin handlers that call the reconcile functions and write what they return.

Nothing here decides anything; it translates Kopf's callbacks into calls of pure-ish
functions in :mod:`reconcile` and turns their outcome into status patches and Events.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import kopf

from tokenscale import GROUP, VERSION
from tokenscale import constants as c
from tokenscale.api.benchmark import FINISHED
from tokenscale.api.config import OperatorConfig
from tokenscale.autoscale.collector import source_for
from tokenscale.controller import (
    energy,
    events,
    hold,
    memtrim,
    metrics,
    refresh,
    resync,
    statusorder,
    watches,
)
from tokenscale.controller.autoscaler import LoopState, loop_wanted, run_pass
from tokenscale.controller.benchmark import reconcile_benchmark, update_target
from tokenscale.controller.reconcile import (
    Outcome,
    reconcile_service,
)
from tokenscale.k8s.kube import Kube, KubeError

log = logging.getLogger(__name__)

SERVICES = "inferenceservices"


class EndlessBackoffs:
    """Kopf's API-error backoffs (1, 1, 2, 3, 5, 8, 13, 21 s), then every 30 s for ever.

    Kopf gives up on a request after its backoffs run out (54 s), and a watch stream whose
    request gives up kills its watcher task for good: Kopf never starts it again, so an API
    server unreachable for longer than that (a restart on a loaded control plane took 38-60 s)
    left the operator running but blind to every later change of that kind (found by the
    API-server restart drill, ``tests/e2e/test_drill_apiserver.py``). Iterable again for each
    request; not ``Sized``, so Kopf counts attempts without a total."""

    FIRST = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
    CAP = 30.0

    def __iter__(self) -> Iterator[float]:
        return itertools.chain(self.FIRST, itertools.repeat(self.CAP))


def tune_networking(settings: kopf.OperatorSettings) -> None:
    """API retries that outlast an API-server outage (see :class:`EndlessBackoffs`)."""
    settings.networking.error_backoffs = EndlessBackoffs()
    if resync.TROUBLE not in logging.getLogger("kopf").handlers:
        logging.getLogger("kopf").addHandler(resync.TROUBLE)  # a pass once an outage is over


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
    tune_networking(settings)
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
    watches.watch_leader_worker_sets(memo.config, child_changed)
    kube, cfg = memo.kube, memo.config
    refresh.start(
        memo.refreshes,
        lambda ns, name, full: refresh.refresh_service(kube, cfg, ns, name, full=full),
    )
    memo.resync_stop = threading.Event()
    memtrim.start(memo.resync_stop)  # stopped with the resync loop
    threading.Thread(
        target=resync.resync_forever,
        args=(
            memo.kube,
            memo.config,
            list(memo.get("namespaces") or []),
            memo.resync_stop,
            lambda ns, name: refresh.refresh_service(kube, cfg, ns, name),
            memo.get("peering"),
        ),
        name="resync",
        daemon=True,
    ).start()


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop, the heap trimmer and the refresh threads."""
    stop = memo.get("resync_stop")
    if stop is not None:
        stop.set()
    refreshes = memo.get("refreshes")
    if refreshes is not None:
        refreshes.close()


def _write(body: kopf.Body, outcome: Outcome, kube: Kube) -> None:
    """A reconcile's outcome: its status patch, written now (not with Kopf's patch after the
    handler returns) so that it lands inside :func:`statusorder.held`, before any refresh that
    observed the children later."""
    meta = body["metadata"]
    kube.patch_merge(
        "InferenceService", meta["namespace"], meta["name"], {"status": outcome.status}, "status"
    )
    metrics.record_pools(
        meta["namespace"], meta["name"], outcome.status.get("pools", []), meta.get("uid")
    )
    events.post(kube, dict(body), outcome.events)


def _run(body: kopf.Body, memo: kopf.Memo) -> Outcome:
    """Reconcile with metrics; an API error becomes Kopf's retry, the ledger learns the children.

    Observation and status write run under :func:`statusorder.held`, like a refresh's."""
    meta = body["metadata"]
    with statusorder.held(meta["namespace"], meta["name"]):
        started = time.perf_counter()
        try:
            outcome = reconcile_service(dict(body), memo.kube, memo.config)
        except KubeError as exc:
            metrics.RECONCILES.labels("InferenceService", "error").inc()
            raise kopf.TemporaryError(f"API error: {exc}", delay=10) from exc
        metrics.RECONCILE_SECONDS.labels("InferenceService").observe(time.perf_counter() - started)
        result = "invalid" if outcome.invalid else "error" if outcome.apply_failures else "ok"
        metrics.RECONCILES.labels("InferenceService", result).inc()
        if outcome.children is not None:
            resync.LEDGER.record(meta.get("uid"), outcome.children)
        try:
            _write(body, outcome, memo.kube)
        except KubeError as exc:
            raise kopf.TemporaryError(f"status not written: {exc}", delay=10) from exc
    if outcome.apply_failures:  # status and Events are written already; retry later
        raise kopf.TemporaryError("apply refused: " + "; ".join(outcome.apply_failures), delay=30)
    return outcome


@kopf.on.resume(GROUP, VERSION, SERVICES)
@kopf.on.create(GROUP, VERSION, SERVICES)
@kopf.on.update(GROUP, VERSION, SERVICES, field="spec")
def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Spec changed (or the operator restarted): converge children and status."""
    outcome = _run(body, memo)
    if outcome.error is not None:
        raise kopf.PermanentError(outcome.error)


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
    memo.refreshes.mark((namespace, name), full=refresh.child_needs_reconcile(type, dict(body)))


def _deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


@kopf.on.event(GROUP, VERSION, SERVICES, when=_deleted)
async def service_deleted(body: kopf.Body, **_: Any) -> None:
    """A service is gone: its series go now, not when its children's deletion is noticed.

    Kopf handles one object's events in order, so a reconcile in flight when the service was
    deleted (which publishes gauges) has finished before this runs; a refresh thread's late
    publish is refused by uid (:func:`metrics.forget_deleted`). No API call and no thread:
    under a backlog this must not queue behind the reconciles. Filtered with ``when`` so that
    the fleet's other events do not each run (and log) a handler."""
    meta = body["metadata"]
    metrics.forget_deleted(meta["namespace"], meta["name"], str(meta.get("uid") or ""))


@kopf.timer(
    GROUP,
    VERSION,
    SERVICES,
    interval=refresh.SETTLING_SECONDS,
    idle=refresh.SETTLING_SECONDS,
    when=lambda status, **_: refresh.settling(dict(status or {})),
)
async def settling(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Pods of this service are not all ready: have its status refreshed (a pod problem shows
    up in no Deployment event). Only marks it, like :func:`child_changed`; writes nothing.

    ``idle``: only once the service has gone unchanged that long, so a fleet ramping up (its
    status moving with every Deployment event) adds no refreshes; a stuck one gets them."""
    meta = body["metadata"]
    memo.refreshes.mark((meta["namespace"], meta["name"]), full=False)


def _loop_wanted(spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> bool:
    mode = str((spec.get("scaling") or {}).get("mode", "off"))
    return loop_wanted(mode, memo.get("config"))


@kopf.daemon(
    GROUP, VERSION, SERVICES, initial_delay=2.0, cancellation_timeout=5.0, when=_loop_wanted
)
async def autoscale(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Per-service loop: scrape engines, decide, write /scale; with scaling off (energy on) only
    metrics and energy (never raises)."""
    cfg: OperatorConfig = memo.config
    meta = body["metadata"]
    source = source_for(
        cfg.metrics_source, memo.http, meta["namespace"], meta["name"], cfg.scrape_timeout_seconds
    )
    loop = LoopState()
    try:
        while not stopped:
            try:
                await run_pass(dict(body), memo.kube, cfg, source, loop)
            except KubeError as exc:
                log.warning("autoscaler pass for %s failed: %s", body["metadata"]["name"], exc)
            await stopped.wait(cfg.scrape_interval_seconds)
    finally:
        # After the last pass (also when cancelled): its series and counter history go with it.
        energy.forget(meta["namespace"], meta["name"])
        metrics.remove_loop_series(meta["namespace"], meta["name"])


BENCHMARKS = "inferencebenchmarks"


def _bench(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    """One benchmark step: status, Events, then the target service's summary (if any)."""
    kube: Kube = memo.kube
    try:
        outcome = reconcile_benchmark(dict(body), kube, memo.config)
    except KubeError as exc:
        metrics.RECONCILES.labels("InferenceBenchmark", "error").inc()
        raise kopf.TemporaryError(f"API error: {exc}", delay=10) from exc
    metrics.RECONCILES.labels("InferenceBenchmark", "ok").inc()
    if outcome.status:
        patch.status.update(outcome.status)
    events.post(kube, dict(body), outcome.events)
    update_target(dict(body), outcome, kube, memo.config)


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
    hold.release_if_holding(memo.kube, dict(body))

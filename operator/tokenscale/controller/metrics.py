"""The operator's own Prometheus metrics (its registry, separate from the engines').

Series labelled by service (and pool) are removed when the service or pool goes away, so a
deleted service stops exporting its last value instead of reporting it forever.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

REGISTRY = CollectorRegistry()

#: (namespace, service name)
ServiceKey = tuple[str, str]
#: (namespace, service) -> {metric: label values of each of its series}. Kept by
#: :class:`ByService`; guarded by ``_SERIES_LOCK``.
_SERIES: dict[ServiceKey, dict[MetricWrapperBase, set[tuple[str, ...]]]] = {}
_SERIES_LOCK = threading.RLock()
M = TypeVar("M", bound=MetricWrapperBase)


class ByService(MetricWrapperBase):
    """A metric whose first two labels are ``namespace, service``, indexed by that pair.

    Why: the only public way to find one service's series is ``collect()``, which builds a
    sample for every series of the fleet. :func:`record_pools` did that on every reconcile and
    refresh; at 1,000 services it was a third of the operator's CPU (py-spy, churn drill), held
    the GIL against Kopf's event loop and let the backlog grow. Every series is made through
    ``labels`` and dropped through ``remove``, both under one lock, so the index and the
    registry agree."""

    def labels(self: M, *labelvalues: object, **labelkwargs: object) -> M:
        with _SERIES_LOCK:
            child = super().labels(*labelvalues, **labelkwargs)
            values = tuple(
                str(v) for v in labelvalues or [labelkwargs[n] for n in self._labelnames]
            )
            _SERIES.setdefault((values[0], values[1]), {}).setdefault(self, set()).add(values)
        return child

    def remove(self, *labelvalues: object) -> None:
        values = tuple(str(v) for v in labelvalues)
        with _SERIES_LOCK:
            super().remove(*values)
            key = (values[0], values[1])
            held = _SERIES.get(key, {})
            if values in held.get(self, ()):
                held[self].discard(values)
                if not held[self]:
                    del held[self]
                if not held:
                    del _SERIES[key]


class ServiceGauge(ByService, Gauge):
    """A :class:`Gauge` labelled by service (see :class:`ByService`)."""


class ServiceCounter(ByService, Counter):
    """A :class:`Counter` labelled by service (see :class:`ByService`)."""


def series_of(namespace: str, service: str) -> dict[MetricWrapperBase, set[tuple[str, ...]]]:
    """A copy of the label values of every series of one service, per metric."""
    with _SERIES_LOCK:
        return {m: set(v) for m, v in _SERIES.get((namespace, service), {}).items()}


RECONCILES = Counter(
    "tokenscale_reconciles",
    "Reconcile passes by kind and result.",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "tokenscale_reconcile_duration_seconds",
    "Wall time of one reconcile pass.",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DESIRED_REPLICAS = ServiceGauge(
    "tokenscale_service_desired_replicas",
    "Replicas the operator wants per pool.",
    ["namespace", "service", "pool"],
    registry=REGISTRY,
)
READY_REPLICAS = ServiceGauge(
    "tokenscale_service_ready_replicas",
    "Ready replicas per pool.",
    ["namespace", "service", "pool"],
    registry=REGISTRY,
)
TOKENS_PER_SECOND = ServiceGauge(
    "tokenscale_service_tokens_per_second",
    "Observed generation tokens/s per service (summed over ready engines).",
    ["namespace", "service"],
    registry=REGISTRY,
)
TARGET_PER_REPLICA = ServiceGauge(
    "tokenscale_service_target_per_replica",
    "Autoscaling target of the scaling metric per replica.",
    ["namespace", "service"],
    registry=REGISTRY,
)
SCALING_DECISIONS = ServiceCounter(
    "tokenscale_scaling_decisions",
    "Replica changes decided by the built-in autoscaler.",
    ["namespace", "service", "pool", "direction"],
    registry=REGISTRY,
)
SCRAPE_ERRORS = ServiceCounter(
    "tokenscale_scrape_errors",
    "Failed scrapes of engine /metrics.",
    ["namespace", "service"],
    registry=REGISTRY,
)
BENCHMARK_VERDICTS = ServiceCounter(
    "tokenscale_benchmark_verdicts",
    "Finished benchmarks by verdict.",
    ["namespace", "service", "verdict"],
    registry=REGISTRY,
)
BENCHMARK_TOKENS_PER_SECOND = ServiceGauge(
    "tokenscale_benchmark_tokens_per_second",
    "Output tokens/s of the latest finished benchmark per service.",
    ["namespace", "service"],
    registry=REGISTRY,
)
POWER_WATTS = ServiceGauge(
    "tokenscale_pool_power_watts",
    "GPU board power now per pool (AMD Device Metrics Exporter, summed over the pool's GPUs).",
    ["namespace", "service", "pool"],
    registry=REGISTRY,
)
TOKENS_PER_JOULE = ServiceGauge(
    "tokenscale_pool_tokens_per_joule",
    "Output tokens per joule of GPU energy over the energy window, per pool.",
    ["namespace", "service", "pool"],
    registry=REGISTRY,
)
JOULES_PER_TOKEN = ServiceGauge(
    "tokenscale_pool_joules_per_token",
    "GPU energy per output token over the energy window, per pool.",
    ["namespace", "service", "pool"],
    registry=REGISTRY,
)
ENERGY_UNKNOWN = ServiceGauge(
    "tokenscale_service_energy_unknown",
    "1 while the service's energy figures are unknown (status.energy.reason says why).",
    ["namespace", "service"],
    registry=REGISTRY,
)


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - in a pod, every interface
    """Expose the registry on ``addr:port`` (a daemon thread)."""
    start_http_server(port, addr=addr, registry=REGISTRY)


#: Every metric labelled by service.
PER_SERVICE: tuple[ByService, ...] = (
    DESIRED_REPLICAS,
    READY_REPLICAS,
    TOKENS_PER_SECOND,
    TARGET_PER_REPLICA,
    SCALING_DECISIONS,
    SCRAPE_ERRORS,
    BENCHMARK_VERDICTS,
    BENCHMARK_TOKENS_PER_SECOND,
    POWER_WATTS,
    TOKENS_PER_JOULE,
    JOULES_PER_TOKEN,
    ENERGY_UNKNOWN,
)

#: The series the per-service autoscaling loop writes (scrape results, decisions, energy). They
#: go when the loop stops: after its service's deletion the loop's last pass may finish after
#: every other removal, and when scaling and energy are turned off nothing refreshes them again.
LOOP_METRICS: tuple[ByService, ...] = (
    TOKENS_PER_SECOND,
    TARGET_PER_REPLICA,
    SCALING_DECISIONS,
    SCRAPE_ERRORS,
    POWER_WATTS,
    TOKENS_PER_JOULE,
    JOULES_PER_TOKEN,
    ENERGY_UNKNOWN,
)


def _remove(services: Iterable[ServiceKey], only: tuple[ByService, ...] = PER_SERVICE) -> None:
    """Remove every series of the given services (of the metrics ``only``)."""
    for namespace, service in services:
        for metric, series in series_of(namespace, service).items():
            if metric in only:
                for values in series:
                    metric.remove(*values)


#: Which object (uid) of a (namespace, service) last published its replica gauges, and the uids
#: of services seen deleted (the newest :data:`GONE_REMEMBERED`): a deletion then needs no API
#: call to tell the deleted object from a newer one of the same name, and a publish that loses
#: the race with its service's deletion (a refresh's status patch landed just before it) adds
#: nothing. Guarded by ``_OWNERS_LOCK`` (refresh threads, handler threads and the event loop).
_OWNERS: dict[tuple[str, str], str] = {}
_GONE: OrderedDict[str, None] = OrderedDict()
GONE_REMEMBERED = 10_000
_OWNERS_LOCK = threading.RLock()


def record_pools(
    namespace: str, service: str, pools: list[dict[str, object]], uid: str | None = None
) -> None:
    """Publish per-pool replica gauges; a pool no longer in ``pools`` loses its series. Nothing
    is published for a service object (``uid``) already seen deleted."""
    with _OWNERS_LOCK:
        if uid and uid in _GONE:
            return
        if uid:
            _OWNERS[(namespace, service)] = uid
        current = {str(pool.get("name")) for pool in pools}
        for pool in pools:
            labels = (namespace, service, str(pool.get("name")))
            DESIRED_REPLICAS.labels(*labels).set(float(str(pool.get("desiredReplicas", 0))))
            READY_REPLICAS.labels(*labels).set(float(str(pool.get("readyReplicas", 0))))
        held = series_of(namespace, service)
        for gauge in (DESIRED_REPLICAS, READY_REPLICAS):
            for values in held.get(gauge, set()):
                if values[2] not in current:
                    gauge.remove(*values)


def forget_deleted(namespace: str, service: str, uid: str) -> bool:
    """The service object ``uid`` was deleted: drop its series, unless a newer object of that
    name published since (its series are its own). Returns whether they were dropped.

    Why not ask the API server: under a backlog that read waited behind every queued reconcile
    (the churn drill saw series of deleted services linger for up to 25 minutes)."""
    with _OWNERS_LOCK:
        if uid:
            _GONE[uid] = None
            while len(_GONE) > GONE_REMEMBERED:
                _GONE.popitem(last=False)
        owner = _OWNERS.get((namespace, service))
        if owner is not None and uid and owner != uid:
            return False
        remove_service(namespace, service)
        return True


def remove_service(namespace: str, service: str) -> None:
    """Drop every series of one service (it was deleted)."""
    remove_services([(namespace, service)])


def remove_loop_series(namespace: str, service: str) -> None:
    """Drop the series the service's autoscaling loop wrote (the loop stopped)."""
    _remove([(namespace, service)], only=LOOP_METRICS)


def services() -> set[tuple[str, str]]:
    """(namespace, service) of every service that has a series now."""
    with _SERIES_LOCK:
        return set(_SERIES)


def remove_services(gone: Iterable[tuple[str, str]]) -> None:
    """Drop the series of the given services. The resync pass passes those that had series
    before it listed the fleet and were not in the listing: this catches deletions no handler
    saw, and never touches a service created while the pass ran."""
    drop = set(gone)
    with _OWNERS_LOCK:
        for key in drop:
            _OWNERS.pop(key, None)
        _remove(drop)

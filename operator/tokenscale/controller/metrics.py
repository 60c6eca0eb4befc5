"""The operator's own Prometheus metrics (its registry, separate from the engines')."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

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
DESIRED_REPLICAS = Gauge(
    "tokenscale_service_desired_replicas",
    "Replicas the operator wants per pool.",
    ["namespace", "service", "pool"],
    registry=REGISTRY,
)
READY_REPLICAS = Gauge(
    "tokenscale_service_ready_replicas",
    "Ready replicas per pool.",
    ["namespace", "service", "pool"],
    registry=REGISTRY,
)
TOKENS_PER_SECOND = Gauge(
    "tokenscale_service_tokens_per_second",
    "Observed generation tokens/s per service (summed over ready engines).",
    ["namespace", "service"],
    registry=REGISTRY,
)
TARGET_PER_REPLICA = Gauge(
    "tokenscale_service_target_per_replica",
    "Autoscaling target of the scaling metric per replica.",
    ["namespace", "service"],
    registry=REGISTRY,
)
SCALING_DECISIONS = Counter(
    "tokenscale_scaling_decisions",
    "Replica changes decided by the built-in autoscaler.",
    ["namespace", "service", "pool", "direction"],
    registry=REGISTRY,
)
SCRAPE_ERRORS = Counter(
    "tokenscale_scrape_errors",
    "Failed scrapes of engine /metrics.",
    ["namespace", "service"],
    registry=REGISTRY,
)
BENCHMARK_VERDICTS = Counter(
    "tokenscale_benchmark_verdicts",
    "Finished benchmarks by verdict.",
    ["namespace", "service", "verdict"],
    registry=REGISTRY,
)
BENCHMARK_TOKENS_PER_SECOND = Gauge(
    "tokenscale_benchmark_tokens_per_second",
    "Output tokens/s of the latest finished benchmark per service.",
    ["namespace", "service"],
    registry=REGISTRY,
)


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - in a pod, every interface
    """Expose the registry on ``addr:port`` (a daemon thread)."""
    start_http_server(port, addr=addr, registry=REGISTRY)


def record_pools(namespace: str, service: str, pools: list[dict[str, object]]) -> None:
    for pool in pools:
        labels = (namespace, service, str(pool.get("name")))
        DESIRED_REPLICAS.labels(*labels).set(float(str(pool.get("desiredReplicas", 0))))
        READY_REPLICAS.labels(*labels).set(float(str(pool.get("readyReplicas", 0))))

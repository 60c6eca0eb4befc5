"""The activator's Prometheus series, on a registry of its own.

Why private: the process's default registry carries whatever libraries register, and tests
create many applications in one process; a registry per application keeps counts exact.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Every value of the ``outcome`` label; a request ends with exactly one.
OUTCOMES = (
    "proxied",
    "bad_host",
    "not_found",
    "timeout",
    "upstream_error",
    "wake_failed",
    "api_error",
    "client_gone",
    "shutting_down",
)

#: Waits are model loads: seconds when warm, many minutes for a 405B model pulled cold.
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, float("inf"))


class Metrics:
    """Counters and the wait histogram, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tokenscale_activator_requests",
            "Requests the activator received, by target service and how they ended.",
            ["namespace", "service", "outcome"],
            registry=self.registry,
        )
        self.wakes = Counter(
            "tokenscale_activator_wakes",
            "Services the activator scaled up from zero.",
            ["namespace", "service"],
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "tokenscale_activator_wait_seconds",
            "Time a request waited for a ready engine (only requests that had to wait).",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )

    def request(self, namespace: str, service: str, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")  # a typo would invent a series
        self.requests.labels(namespace, service, outcome).inc()

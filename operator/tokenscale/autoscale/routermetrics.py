"""Parse vllm-router's Prometheus exposition into what ``status.router`` shows.

Pure (text in, numbers out) so that it is tested on a sample body without a router. The metric
names are vllm-router 0.1.17's (found in its binary and seen on its ``--prometheus-port``, see
docs/routing.md); :class:`RouterMetricNames` holds them so a release that renames one is a
one-line change. That release exports no gauge for its admission queue (``--queue-size``), so
no queue depth is read: per-worker running requests (a gauge that a round_robin router with
nothing in flight did not export at all) and per-worker processed requests are the load it does
export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


class RouterMetricsError(ValueError):
    """The body is not a vllm-router exposition (garbage, HTML, truncated, NaN counts)."""


@dataclass(frozen=True)
class RouterMetricNames:
    """Sample names as vllm-router 0.1.17 exports them."""

    requests_total: str = "vllm_router_requests_total"
    running_requests: str = "vllm_router_running_requests"
    processed_requests: str = "vllm_router_processed_requests_total"
    worker_health: str = "vllm_router_worker_health"
    worker_label: str = "worker"


DEFAULT_NAMES = RouterMetricNames()


@dataclass
class RouterScrape:
    """One router pod's figures."""

    #: requests the router received since it started, summed over routes
    requests_total: float = 0.0
    #: per worker URL: requests it is running now (the router's own count)
    running: dict[str, float] = field(default_factory=dict)
    #: per worker URL: healthy (1) or not (0), as the router's health checks see it
    healthy: dict[str, bool] = field(default_factory=dict)
    #: per worker URL: requests the router has sent it since it started
    processed: dict[str, float] = field(default_factory=dict)


def parse_router_metrics(text: str, names: RouterMetricNames = DEFAULT_NAMES) -> RouterScrape:
    """Raises :class:`RouterMetricsError` when the text does not parse, is truncated (no final
    line feed), carries a non-finite value, or has no ``requests_total`` family at all (not a
    vllm-router on that port)."""
    out = RouterScrape()
    seen = False
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in (
                    names.requests_total,
                    names.running_requests,
                    names.worker_health,
                    names.processed_requests,
                ):
                    continue
                if not math.isfinite(sample.value):
                    raise RouterMetricsError(f"{sample.name} is {sample.value}: not a number")
                worker = sample.labels.get(names.worker_label, "")
                if sample.name == names.requests_total:
                    out.requests_total += sample.value
                    seen = True
                elif sample.name == names.running_requests and worker:
                    out.running[worker] = out.running.get(worker, 0.0) + sample.value
                elif sample.name == names.worker_health and worker:
                    out.healthy[worker] = sample.value >= 1.0
                elif sample.name == names.processed_requests and worker:
                    out.processed[worker] = out.processed.get(worker, 0.0) + sample.value
    except ValueError as err:  # the parser's error for malformed lines (ours subclasses it)
        if isinstance(err, RouterMetricsError):
            raise
        raise RouterMetricsError(f"not a Prometheus exposition: {err}") from err
    if text and not text.endswith("\n"):  # checked after parsing: an HTML page is not "cut"
        raise RouterMetricsError("truncated exposition (no final line feed)")
    if not seen:
        raise RouterMetricsError(f"no {names.requests_total}: not a vllm-router metrics port")
    return out


@dataclass
class RouterFigures:
    """All router pods together: what ``status.router`` shows."""

    requests_total: float
    #: per worker URL: running requests summed over router pods, health if any pod reports it
    running: dict[str, float]
    healthy: dict[str, bool]
    processed: dict[str, float]


def combine(scrapes: list[RouterScrape]) -> RouterFigures:
    """Sum over router pods: each pod routes its own share, so counts add; a worker is healthy
    when any router pod sees it healthy (pods check health independently and one may lag)."""
    running: dict[str, float] = {}
    healthy: dict[str, bool] = {}
    processed: dict[str, float] = {}
    for s in scrapes:
        for w, v in s.processed.items():
            processed[w] = processed.get(w, 0.0) + v
        for w, v in s.running.items():
            running[w] = running.get(w, 0.0) + v
        for w, ok in s.healthy.items():
            healthy[w] = healthy.get(w, False) or ok
    return RouterFigures(sum(s.requests_total for s in scrapes), running, healthy, processed)


def request_rate(
    total_now: float, now: float, total_before: float | None, before: float | None
) -> float | None:
    """Requests/s between two readings of the summed counter; None when there is no earlier
    reading, no time passed, or the sum fell (a router pod restarted or was replaced)."""
    if total_before is None or before is None or now <= before or total_now < total_before:
        return None
    return (total_now - total_before) / (now - before)

"""Collect the autoscaling signal: scrape engines directly, or ask Prometheus.

Why scrape pods directly: the signal must exist on clusters without Prometheus, and must be fresh
(a Prometheus ``rate()[1m]`` lags by a scrape interval plus the range). Pod IPs come from pod
status, never from EndpointSlices: a ready pod can be scraped before endpoint propagation, and a
pod being drained (already out of the endpoints) still serves the requests it holds.

Both sources implement :class:`MetricsSource`, so the loop does not care which one
``operatorConfig.metricsSource`` selects (:func:`source_for`).
Failures (timeouts, refused connections, non-200, garbage bodies) are counted per pod and reported;
they never raise out of :meth:`collect`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx

from tokenscale.api.config import MetricsSourceSettings
from tokenscale.autoscale.rates import (
    MetricsParseError,
    PodRates,
    PodScrape,
    PoolSignal,
    RateTracker,
    Sample,
    aggregate,
    parse_metrics,
)
from tokenscale.constants import ENGINE_PORT, LABEL_POOL, LABEL_ROLE, ROLE_WORKER


@dataclass(frozen=True)
class EnginePod:
    """A pod the collector should scrape: ready, not terminating, with an IP."""

    name: str
    pool: str
    ip: str
    in_flight: float = 0.0


def serving(pod: Mapping[str, Any]) -> bool:
    """Running, Ready, with a pod IP and not being deleted: a pod that can take a request."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if not status.get("podIP") or meta.get("deletionTimestamp"):
        return False
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def ready_pods(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods among ``pods`` that can take a request (any pod, not only engines)."""
    return [pod for pod in pods if serving(pod)]


def engine_pods(pods: Iterable[Mapping[str, Any]]) -> list[EnginePod]:
    """Select scrapable engine pods from pod objects as the API returns them (dicts).

    Only Running pods whose ``Ready`` condition is True, that have ``status.podIP`` and no
    ``deletionTimestamp``, and that carry the pool label. Order is by name (deterministic).
    A multi-node replica (a LeaderWorkerSet group) is its leader alone: headless workers serve
    no HTTP and no metrics, and the leader's counters already cover the whole group.
    """
    out: list[EnginePod] = []
    for pod in ready_pods(pods):
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        pool = labels.get(LABEL_POOL)
        if pool and labels.get(LABEL_ROLE) != ROLE_WORKER:
            ip = (pod.get("status") or {}).get("podIP")
            out.append(EnginePod(name=str(meta.get("name")), pool=str(pool), ip=str(ip)))
    return sorted(out, key=lambda p: p.name)


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def startup_seconds(pods: Iterable[Mapping[str, Any]], default: float = 180.0) -> float:
    """Median time from pod creation to Ready over ready engine pods (``PoolInput`` lead time).

    Measured rather than configured because it depends on image pulls, weight loading and graph
    capture on this cluster; ``default`` when no pod has become ready yet.
    """
    samples: list[float] = []
    for pod in pods:
        created = _timestamp((pod.get("metadata") or {}).get("creationTimestamp"))
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                ready = _timestamp(cond.get("lastTransitionTime"))
                if created and ready and ready >= created:
                    samples.append((ready - created).total_seconds())
    if not samples:
        return default
    samples.sort()
    return samples[len(samples) // 2]


@dataclass(frozen=True)
class CollectResult:
    """One pass: the decision sample plus what status and pod-deletion costs need."""

    sample: Sample
    pods: tuple[PodRates, ...]
    scrape_errors: int

    def in_flight(self) -> dict[str, float]:
        """Requests running + waiting per pod that answered (for pod-deletion costs)."""
        return {
            p.pod: (p.requests_running or 0.0) + (p.requests_waiting or 0.0)
            for p in self.pods
            if p.requests_running is not None
        }


class MetricsSource(Protocol):
    """Anything that turns the current engine pods into a :class:`CollectResult`."""

    async def collect(
        self, pods: Sequence[EnginePod], pools: Sequence[str], now: float
    ) -> CollectResult:
        """Gather one sample at ``now`` (wall-clock epoch seconds, as the decision state
        stores them so that it survives an operator restart) for ``pools``."""
        ...


def _url(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


@dataclass
class ScrapeCollector:
    """Scrapes every ready engine pod's ``/metrics`` concurrently; one per InferenceService.

    ``client`` is shared by all services (one connection pool); its timeout is overridden per
    request with ``timeout_seconds`` so one slow engine cannot stall a pass. The per-pod counter
    history lives in ``tracker``.
    """

    client: httpx.AsyncClient
    timeout_seconds: float = 2.0
    port: int = ENGINE_PORT
    max_concurrency: int = 32
    tracker: RateTracker = field(default_factory=RateTracker)

    async def _scrape(self, pod: EnginePod, gate: asyncio.Semaphore) -> PodScrape | str:
        async with gate:
            try:
                response = await self.client.get(
                    _url(pod.ip, self.port), timeout=self.timeout_seconds
                )
                response.raise_for_status()
                return parse_metrics(response.text)
            except httpx.TimeoutException:
                return "timeout"
            except httpx.HTTPStatusError as err:
                return f"http {err.response.status_code}"
            except httpx.HTTPError as err:
                return f"{type(err).__name__}: {err}"
            except MetricsParseError as err:
                return str(err)

    async def collect(
        self, pods: Sequence[EnginePod], pools: Sequence[str], now: float
    ) -> CollectResult:
        """Scrape ``pods`` and fold the results into rates; never raises on scrape failures."""
        gate = asyncio.Semaphore(self.max_concurrency)
        results = await asyncio.gather(*(self._scrape(p, gate) for p in pods))
        scrapes: dict[str, tuple[str, PodScrape | str | None]] = {
            p.name: (p.pool, r) for p, r in zip(pods, results, strict=True)
        }
        rates = self.tracker.update(now, scrapes)
        errors = sum(1 for r in rates if r.state == "error")
        return CollectResult(
            sample=Sample(time=now, pools=aggregate(rates, pools)),
            pods=tuple(rates),
            scrape_errors=errors,
        )


class PromQLError(RuntimeError):
    """Prometheus answered with an error or an unexpected shape."""


@dataclass
class PromQLSource:
    """Reads the same signal from a Prometheus HTTP API (``/api/v1/query``).

    For clusters that already scrape engines. ``selector`` restricts the series (e.g.
    ``namespace="prod",service="llama"``) and ``pool_label`` names the label that carries the pool
    (Prometheus relabels pod labels to its own names). Pods are counted from the series, so a
    pool whose pods Prometheus has not scraped yet shows up as missing (hold), as with scraping.
    """

    client: httpx.AsyncClient
    base_url: str
    selector: str = ""
    pool_label: str = "pool"
    range_: str = "1m"
    timeout_seconds: float = 5.0

    def queries(self) -> dict[str, str]:
        """The PromQL per signal field (exposed for golden tests and docs)."""
        sel, by, r = self.selector, self.pool_label, self.range_
        return {
            "generation_tps": f"sum by ({by}) (rate(vllm:generation_tokens_total{{{sel}}}[{r}]))",
            "prompt_tps": f"sum by ({by}) (rate(vllm:prompt_tokens_total{{{sel}}}[{r}]))",
            "preemptions_per_s": f"sum by ({by}) (rate(vllm:num_preemptions_total{{{sel}}}[{r}]))",
            "finished_per_s": f"sum by ({by}) (rate(vllm:request_success_total{{{sel}}}[{r}]))",
            "requests_running": f"sum by ({by}) (vllm:num_requests_running{{{sel}}})",
            "requests_waiting": f"sum by ({by}) (vllm:num_requests_waiting{{{sel}}})",
            "kv_cache_usage_sum": f"sum by ({by}) (vllm:kv_cache_usage_perc{{{sel}}})",
            "pods_reporting": f"count by ({by}) (count by ({by}, pod) "
            f"(vllm:generation_tokens_total{{{sel}}}))",
        }

    async def _query(self, promql: str) -> dict[str, float]:
        response = await self.client.get(
            f"{self.base_url.rstrip('/')}/api/v1/query",
            params={"query": promql},
            timeout=self.timeout_seconds,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise PromQLError(f"prometheus: {body.get('error', 'unknown error')}")
        out: dict[str, float] = {}
        for item in body.get("data", {}).get("result", []):
            pool = item.get("metric", {}).get(self.pool_label, "")
            out[pool] = float(item["value"][1])
        return out

    async def collect(
        self, pods: Sequence[EnginePod], pools: Sequence[str], now: float
    ) -> CollectResult:
        """Run the queries; any failure yields a sample where every pod is missing (hold)."""
        ready: dict[str, int] = {p: 0 for p in pools}
        for pod in pods:
            ready[pod.pool] = ready.get(pod.pool, 0) + 1
        try:
            values = {k: await self._query(q) for k, q in self.queries().items()}
        except (httpx.HTTPError, PromQLError, ValueError, KeyError, IndexError):
            signals = {p: PoolSignal(pods_missing=n, scrape_errors=1) for p, n in ready.items()}
            return CollectResult(Sample(now, signals), (), scrape_errors=1)
        signals = {}
        for pool, n in sorted(ready.items()):
            reporting = min(n, int(values["pods_reporting"].get(pool, 0)))
            signals[pool] = PoolSignal(
                generation_tps=values["generation_tps"].get(pool, 0.0),
                prompt_tps=values["prompt_tps"].get(pool, 0.0),
                preemptions_per_s=values["preemptions_per_s"].get(pool, 0.0),
                finished_per_s=values["finished_per_s"].get(pool, 0.0),
                requests_running=values["requests_running"].get(pool, 0.0),
                requests_waiting=values["requests_waiting"].get(pool, 0.0),
                kv_cache_usage_sum=values["kv_cache_usage_sum"].get(pool, 0.0),
                pods_reporting=reporting,
                pods_missing=n - reporting,
            )
        return CollectResult(Sample(now, signals), (), scrape_errors=0)


def source_for(
    settings: MetricsSourceSettings,
    client: httpx.AsyncClient,
    namespace: str,
    service: str,
    scrape_timeout_seconds: float,
) -> MetricsSource:
    """The configured source for one InferenceService (one per autoscaling loop)."""
    prom = settings.prometheus
    if settings.type == "prometheus" and prom.url:
        return PromQLSource(
            client,
            prom.url,
            selector=f'{prom.namespace_label}="{namespace}",{prom.service_label}="{service}"',
            pool_label=prom.pool_label,
            range_=prom.rate_window,
            timeout_seconds=prom.timeout_seconds,
        )
    return ScrapeCollector(client=client, timeout_seconds=scrape_timeout_seconds)

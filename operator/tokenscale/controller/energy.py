"""Energy per output token for one service, once per autoscaler pass (the I/O around
:mod:`tokenscale.autoscale.energy`).

Why in the autoscaler pass: the output tokens of the pass interval are already in the pass's
sample, and reading the exporter at the same moment gives joules over the same interval. Why
apart from the decision: nothing here may change scaling. :func:`observe` never raises; every
failure (exporter down, HTML, truncated bodies, Prometheus errors, a bug) becomes
``status.energy.reason`` with no figure beside it, and the pool gauges lose their series.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from tokenscale.api.config import EnergySettings, OperatorConfig
from tokenscale.api.status import EnergyStatus, PoolEnergy
from tokenscale.autoscale import collector
from tokenscale.autoscale.energy import EnergyTracker, Figures
from tokenscale.controller import metrics
from tokenscale.k8s.kube import Kube
from tokenscale.power import ENERGY, POWER, EnergyParseError, GpuReading, parse_exporter
from tokenscale.render.names import selector_for, selector_string

log = logging.getLogger(__name__)

_TRACKERS: dict[tuple[str, str], EnergyTracker] = {}


class ExporterError(RuntimeError):
    """No complete set of readings this pass; the message says which exporter and why."""


async def _scrape_one(
    client: httpx.AsyncClient, name: str, ip: str, settings: EnergySettings
) -> list[GpuReading]:
    host = f"[{ip}]" if ":" in ip else ip
    try:
        response = await client.get(
            f"http://{host}:{settings.scrape.port}/metrics",
            timeout=settings.scrape.timeout_seconds,
        )
        response.raise_for_status()
        return parse_exporter(response.text)
    except httpx.TimeoutException as err:
        raise ExporterError(f"ExporterUnreachable: {name}: timeout") from err
    except httpx.HTTPStatusError as err:
        raise ExporterError(f"ExporterError: {name}: http {err.response.status_code}") from err
    except httpx.HTTPError as err:
        raise ExporterError(f"ExporterUnreachable: {name}: {type(err).__name__}") from err
    except EnergyParseError as err:
        raise ExporterError(f"ExporterGarbage: {name}: {err}") from err


async def scrape_readings(
    kube: Kube, client: httpx.AsyncClient, settings: EnergySettings
) -> list[GpuReading]:
    """Every GPU of every ready exporter pod; :class:`ExporterError` if any one fails (a
    missing node would make a pool's joules too small and its tokens/J too good)."""
    selector = selector_string(settings.scrape.selector)
    pods = await asyncio.to_thread(kube.list, "Pod", settings.scrape.namespace, selector)
    ready = collector.ready_pods(pods)
    if not ready:
        raise ExporterError(f"NoExporter: no ready pod matches {selector}")
    results = await asyncio.gather(
        *(
            _scrape_one(client, str(p["metadata"]["name"]), str(p["status"]["podIP"]), settings)
            for p in ready
        ),
        return_exceptions=True,
    )
    out: list[GpuReading] = []
    for result in results:
        if isinstance(result, BaseException):
            if isinstance(result, ExporterError):
                raise result
            raise ExporterError(f"ExporterError: {result}") from result
        out.extend(result)
    return out


async def prometheus_readings(
    client: httpx.AsyncClient, settings: EnergySettings, namespace: str
) -> list[GpuReading]:
    """The same readings from Prometheus (``gpu_energy_consumed`` and ``gpu_power_usage``)."""
    prom = settings.prometheus
    values: dict[str, dict[tuple[str, str], tuple[str, str, float]]] = {}
    for name in (ENERGY, POWER):
        try:
            response = await client.get(
                f"{str(prom.url).rstrip('/')}/api/v1/query",
                params={"query": f'{name}{{namespace="{namespace}"}}'},
                timeout=prom.timeout_seconds,
            )
            response.raise_for_status()
            body = response.json()
            if body.get("status") != "success":
                raise ExporterError(f"PrometheusError: {body.get('error', 'unknown error')}")
            series = {}
            for item in body["data"]["result"]:
                labels = item["metric"]
                key = (str(labels.get("hostname", "")), str(labels.get("gpu_id", "")))
                series[key] = (str(labels.get("pod", "")), namespace, float(item["value"][1]))
            values[name] = series
        except httpx.HTTPError as err:
            raise ExporterError(f"PrometheusUnreachable: {type(err).__name__}") from err
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise ExporterError(f"PrometheusGarbage: {type(err).__name__}: {err}") from err
    if not values[ENERGY]:
        raise ExporterError(
            f'NoExporterData: Prometheus has no {ENERGY}{{namespace="{namespace}"}}'
        )
    return [
        GpuReading(key[0], key[1], pod, ns, values[POWER].get(key, ("", "", None))[2], uj)
        for key, (pod, ns, uj) in sorted(values[ENERGY].items())
    ]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _pool_energy(name: str, fig: Figures) -> PoolEnergy:
    return PoolEnergy(
        name=name,
        gpus=fig.gpus,
        watts=_round(fig.watts, 1),
        joules=_round(fig.joules, 1),
        tokens_per_joule=_round(fig.tokens_per_joule),
        joules_per_token=_round(fig.joules_per_token),
        reason=fig.reason,
    )


def status_from(tracker: EnergyTracker, pools: Sequence[str], now: datetime) -> EnergyStatus:
    """The status block from the tracker's window (pure)."""
    total = tracker.figures()
    return EnergyStatus(
        watts=_round(total.watts, 1),
        joules=_round(total.joules, 1),
        window_seconds=_round(total.window_seconds, 1) if total.joules is not None else None,
        tokens_per_joule=_round(total.tokens_per_joule),
        joules_per_token=_round(total.joules_per_token),
        reason=total.reason,
        pools=[_pool_energy(p, tracker.figures(p)) for p in pools],
        observed_at=now,
    )


def unknown_status(reason: str, pools: Sequence[str], now: datetime) -> EnergyStatus:
    """The status when nothing could be read this pass (pure). Every field is set: the status
    is written as a merge patch, and a field left out would keep the last pass's figures beside
    the new reason, stale numbers that look current."""
    return EnergyStatus(
        watts=None,
        joules=None,
        window_seconds=None,
        tokens_per_joule=None,
        joules_per_token=None,
        reason=reason,
        pools=[PoolEnergy(name=p, reason=reason) for p in pools],
        observed_at=now,
    )


def _publish(namespace: str, service: str, status: EnergyStatus) -> None:
    """Set the energy gauges from the status; a figure that is unknown (or a pool that is no
    longer listed) loses its series rather than keep showing its last value."""
    metrics.ENERGY_UNKNOWN.labels(namespace, service).set(1.0 if status.reason else 0.0)
    pools = {pool.name: pool for pool in status.pools}
    held = metrics.series_of(namespace, service)
    for gauge, attr in (
        (metrics.POWER_WATTS, "watts"),
        (metrics.TOKENS_PER_JOULE, "tokens_per_joule"),
        (metrics.JOULES_PER_TOKEN, "joules_per_token"),
    ):
        for labels in held.get(gauge, set()):
            if labels[2] not in pools:
                gauge.remove(*labels)
        for name, pool in pools.items():
            labels = (namespace, service, name)
            value = getattr(pool, attr)
            if value is not None:
                gauge.labels(*labels).set(value)
            elif labels in held.get(gauge, set()):
                gauge.remove(*labels)


async def observe(
    meta: Mapping[str, Any],
    kube: Kube,
    cfg: OperatorConfig,
    pods: Sequence[Mapping[str, Any]],
    result: collector.CollectResult,
    client: httpx.AsyncClient | None,
    now: datetime,
) -> EnergyStatus | None:
    """This pass's ``status.energy`` (None when energy is off); never raises."""
    settings = cfg.energy
    if settings.type == "off":
        return None
    namespace, name = str(meta["namespace"]), str(meta["name"])
    pools = sorted(result.sample.pools)
    try:
        tracker = _TRACKERS.setdefault(
            (namespace, name), EnergyTracker(window_seconds=settings.window_seconds)
        )
        own = client or httpx.AsyncClient()
        try:
            if settings.type == "prometheus":
                readings = await prometheus_readings(own, settings, namespace)
            else:
                readings = await scrape_readings(kube, own, settings)
        finally:
            if client is None:
                await own.aclose()
        pod_pool = {p.name: p.pool for p in collector.engine_pods(pods)}
        tps = {p: s.generation_tps for p, s in result.sample.pools.items()}
        tracker.update(now.timestamp(), readings, pod_pool, namespace, tps)
        status = status_from(tracker, pools, now)
    except ExporterError as err:
        if (namespace, name) in _TRACKERS:
            _TRACKERS[(namespace, name)].gap()
        status = unknown_status(str(err), pools, now)
    except Exception as err:  # energy must never break the scaling pass
        log.warning("energy for %s/%s failed: %s", namespace, name, err, exc_info=True)
        _TRACKERS.pop((namespace, name), None)  # start over rather than trust a half update
        status = unknown_status(f"Error: {type(err).__name__}: {err}", pools, now)
    try:
        _publish(namespace, name, status)
    except Exception as err:  # metrics must not break the pass either
        log.warning("energy metrics for %s/%s: %s", namespace, name, err, exc_info=True)
    return status


def bench_args(kube: Kube, cfg: OperatorConfig, namespace: str, service: str | None) -> list[str]:
    """``tokenscale bench`` arguments that record energy: every ready exporter's URL and the
    target's engine pods. Empty when energy is off, not scraped, or nothing is found (the Job
    then runs without energy, as before). Prometheus is not read by the Job (no client there)."""
    settings = cfg.energy
    if settings.type != "scrape" or service is None:
        return []
    selector = selector_string(settings.scrape.selector)
    exporters = collector.ready_pods(kube.list("Pod", settings.scrape.namespace, selector))
    engines = kube.list("Pod", namespace, selector_for(service))
    if not exporters or not engines:
        return []
    args: list[str] = []
    for pod in exporters:
        ip = str(pod["status"]["podIP"])
        host = f"[{ip}]" if ":" in ip else ip
        args += ["--energy-url", f"http://{host}:{settings.scrape.port}/metrics"]
    names = sorted(str(p["metadata"]["name"]) for p in engines)
    return [*args, "--energy-pods", ",".join(names)]


def forget(namespace: str, service: str) -> None:
    """Drop a deleted service's counter history."""
    _TRACKERS.pop((namespace, service), None)

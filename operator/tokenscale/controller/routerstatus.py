"""``status.router`` for services in router mode: scrape the router pods' Prometheus port.

Runs in the autoscaling pass (as ``status.energy`` does) so it shares that pass's HTTP client,
interval and status patch. Like the engine scrape, router pod IPs come from pod status; the
figures are parsed by the pure :mod:`tokenscale.autoscale.routermetrics`. A router that is down,
slow or answers something else never fails the pass: the status says unknown and why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from tokenscale.api.service import InferenceService
from tokenscale.api.status import RouterStatus, RouterWorker
from tokenscale.autoscale import collector, routermetrics
from tokenscale.k8s.kube import Kube
from tokenscale.render import names
from tokenscale.render.router import METRICS_PORT, router_name, router_pod_labels

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 2.0


class ScrapeFailed(Exception):
    """One router pod's metrics could not be read; ``reason`` is the status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


async def scrape(client: httpx.AsyncClient, ip: str, port: int = METRICS_PORT) -> str:
    """The body of one router pod's metrics port (raises :class:`ScrapeFailed`)."""
    host = f"[{ip}]" if ":" in ip else ip
    try:
        response = await client.get(f"http://{host}:{port}/metrics", timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as err:
        raise ScrapeFailed("RouterMetricsUnreachable", f"{ip}:{port}: {err!r}") from err
    if response.status_code != 200:
        raise ScrapeFailed("RouterMetricsUnreachable", f"{ip}:{port}: HTTP {response.status_code}")
    return response.text


def figures_status(
    pods: Sequence[Mapping[str, Any]],
    bodies: Sequence[str | ScrapeFailed],
    previous: RouterStatus | None,
    now: datetime,
    deployment: str,
) -> RouterStatus:
    """The status from the router pods and what each ready one answered (pure)."""
    ready = len(bodies)
    status = _blank((len(pods), ready), now)
    if ready == 0:
        status.reason = (
            f"NoReadyRouter: 0 of {len(pods)} router pod(s) ready; "
            f"see kubectl describe deployment {deployment}"
        )
        return status
    scrapes: list[routermetrics.RouterScrape] = []
    reasons: list[str] = []
    for body in bodies:
        if isinstance(body, ScrapeFailed):
            reasons.append(str(body))
            continue
        try:
            scrapes.append(routermetrics.parse_router_metrics(body))
        except routermetrics.RouterMetricsError as err:
            reasons.append(f"RouterMetricsGarbage: {err}")
    status.scrape_errors = len(reasons)
    if reasons:
        status.reason = "; ".join(reasons)
    if not scrapes:
        return status
    got = routermetrics.combine(scrapes)
    status.requests_total = got.requests_total
    status.requests_running = sum(got.running.values())
    status.workers = [
        RouterWorker(
            url=w,
            running_requests=got.running.get(w, 0.0),
            processed_requests=got.processed.get(w, 0.0),
            healthy=got.healthy.get(w),
        )
        for w in sorted(set(got.running) | set(got.healthy) | set(got.processed))
    ]
    # A rate only between two complete readings of the same pods: a partial sum would look
    # like a burst or a drop.
    comparable = (
        not reasons
        and previous is not None
        and previous.scrape_errors == 0
        and previous.ready_replicas == ready
        and previous.observed_at is not None
    )
    if comparable and previous is not None and previous.observed_at is not None:
        rate = routermetrics.request_rate(
            got.requests_total,
            now.timestamp(),
            previous.requests_total,
            previous.observed_at.timestamp(),
        )
        status.requests_per_second = None if rate is None else round(rate, 3)
    return status


def _blank(pods: tuple[int, int] | None, now: datetime) -> RouterStatus:
    """A status with every figure unknown; ``pods``: (router pods, ready ones), None when they
    could not be listed (the patch then leaves the last counts). Every figure is set on
    purpose: the status is written as a merge patch, and a field left out would keep the last
    pass's figures (or reason) beside this pass's, stale numbers that look current."""
    counts = {} if pods is None else {"replicas": pods[0], "ready_replicas": pods[1]}
    return RouterStatus(
        **counts,
        requests_total=None,
        requests_per_second=None,
        requests_running=None,
        workers=[],
        scrape_errors=0,
        reason="",
        observed_at=now,
    )


async def observe(
    meta: Mapping[str, Any],
    svc: InferenceService,
    kube: Kube,
    client: httpx.AsyncClient | None,
    previous: RouterStatus | None,
    now: datetime,
) -> RouterStatus | None:
    """This pass's ``status.router`` (None outside router mode); never raises."""
    if svc.spec.routing.mode != "router":
        return None
    namespace, name = str(meta["namespace"]), str(meta["name"])
    try:
        selector = names.selector_string(router_pod_labels(name))
        pods = await asyncio.to_thread(kube.list, "Pod", namespace, selector)
        ready = collector.ready_pods(pods)
        own = client or httpx.AsyncClient()
        try:
            bodies = await asyncio.gather(
                *(_body(own, str((p.get("status") or {}).get("podIP"))) for p in ready)
            )
        finally:
            if client is None:
                await own.aclose()
        return figures_status(pods, bodies, previous, now, router_name(name))
    except Exception as err:  # router figures must never break the scaling pass
        log.warning("router status of %s/%s failed: %s", namespace, name, err, exc_info=True)
        status = _blank(None, now)
        status.reason = f"Error: {type(err).__name__}: {err}"
        return status


async def _body(client: httpx.AsyncClient, ip: str) -> str | ScrapeFailed:
    try:
        return await scrape(client, ip)
    except ScrapeFailed as err:
        return err

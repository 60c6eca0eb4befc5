"""Drill: memory and time bounds under churn (issue 17).

A population of InferenceServices is kept alive while, every step, one is deleted, one is
created in its place and two others are edited (replica bounds, pod count, autoscaler on/off, a
second pool added/removed), so the whole fleet is replaced about once per ``population`` steps.
Meanwhile the operator's VmRSS is sampled from ``/proc`` every few seconds and its own
``/metrics`` is scraped with Prometheus' text parser. Then every service is deleted.

It proves, on the real API server with the operator under the chart's RBAC:

* **no series outlives its service**: no scrape, during the churn or after the drain, shows a
  series labelled with a service deleted more than ``LINGER_SECONDS`` earlier (names are never
  reused, so a deleted name is a leak, not a newer service), and after the drain the namespace
  has no series at all; a removed pool's series go too;
* **the live series are true**: once the edits settled, every pool's desired/ready gauges
  equal its ``status.pools`` (within a minute);
* **the checks see something**: most live services carry series while churning;
* **RSS is stable**: a least-squares slope through the samples after the warm-up. The long form
  (``TOKENSCALE_DRILL_LONG=1``: 1,000 services, 30 minutes) asserts that the slope would not
  take the operator from its fitted end to the chart's memory limit within a week; the short form
  (``make test``: 40 services, 60 s) is too short for a slope to mean anything and asserts a
  loose bound (no more than 25 % growth after the population is reached, under the limit).

The long form runs on its own KWOK-only test bed sized for the population (as
``benchmarks/reconcile_scale.py``); the short one shares the session's. The figures (RSS start,
end and slope with the method, series seen and leaked, what exactly ran) go to
``$TOKENSCALE_RELIABILITY_DIR/memory_churn.json`` for ``benchmarks/reliability.py``.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from benchmarks.churn import (
    Churner,
    fit_slope,
    lingering,
    make_up,
    pools_by_service,
    series_by_service,
)
from benchmarks.procstat import rss_mb
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.operator_proc import (
    CHART,
    OPERATOR_CONFIG,
    OperatorProcess,
    install_crds_and_rbac,
)
from tests.testbed.cluster import Cluster
from tests.testbed.nodes import scale_pools
from tokenscale.k8s.kube import Kube

LONG = os.environ.get("TOKENSCALE_DRILL_LONG") == "1"
POPULATION = int(os.environ.get("TOKENSCALE_CHURN_SERVICES", "1000" if LONG else "40"))
CHURN_SECONDS = float(os.environ.get("TOKENSCALE_CHURN_SECONDS", "1800" if LONG else "60"))
#: Stop the churn early at this Unix time (a run that must end by a deadline); the figures
#: record the churn that actually ran.
CHURN_END_BY = float(os.environ.get("TOKENSCALE_CHURN_END_BY", "inf"))
#: Steps per second; a step is 1 delete + 1 create + 2 edits.
STEP_RATE = float(os.environ.get("TOKENSCALE_CHURN_RATE", "0.5"))
#: Samples before this many seconds of churn are left out of the fit (see benchmarks/churn.py).
WARMUP_SECONDS = float(os.environ.get("TOKENSCALE_CHURN_WARMUP", "300" if LONG else "30"))
#: How long the first reconciles, the last edits and the drain may take (two shared cores).
WAIT_SECONDS = 2400.0 if LONG else 300.0 + POPULATION
#: A deleted service's series must be gone this long after its deletion (its children's
#: deletion events and a status refresh take a few seconds on a busy test bed).
LINGER_SECONDS = 30.0
RSS_EVERY, SCRAPE_EVERY = 5.0, 10.0
#: The long form's bound: the fitted slope must not reach the chart's limit within this time.
HORIZON_HOURS = 7 * 24.0
GAUGES = {
    "tokenscale_service_desired_replicas": "desiredReplicas",
    "tokenscale_service_ready_replicas": "readyReplicas",
}

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(int(CHURN_SECONDS + 3600 if LONG else 600))]


def chart_memory_limit_mib() -> float:
    """The operator container's memory limit from the chart's values (Mi or Gi)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    limit = str(values["resources"]["limits"]["memory"])
    units = {"Mi": 1.0, "Gi": 1024.0}
    return float(limit[:-2]) * units[limit[-2:]]


@dataclass
class Bed:
    cluster: Cluster
    operator: OperatorProcess
    namespace: str
    nodes: str


def _own_bed() -> Iterator[Bed]:
    """A KWOK-only test bed with GPU nodes for ~1.6 replicas per service, and its operator."""
    count = math.ceil(POPULATION * 1.6 / 8)
    with Cluster(pools=scale_pools(count), start_kubelet=False) as cluster:
        install_crds_and_rbac(cluster)
        api = cluster.api_client()
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata={"name": "churn"}))
        cluster.wait_default_sa("churn")
        api.close()
        # The shipped scrape interval (5 s), not the session bed's 2 s: a thousand autoscaling
        # loops at 2 s is a load test of the two shared cores, not of the operator's memory.
        config = yaml.safe_load(OPERATOR_CONFIG.read_text())
        config.pop("scrapeIntervalSeconds", None)
        path = cluster.work_dir / "operator-config-churn.yaml"
        path.write_text(yaml.safe_dump(config))
        operator = OperatorProcess(cluster, config=path, name="operator-churn").start()
        try:
            yield Bed(
                cluster,
                operator,
                "churn",
                f"{count} KWOK nodes of 8 GPUs (own test bed); operator config: the test bed's "
                "with the default scrapeIntervalSeconds",
            )
        finally:
            operator.stop()
            print(f"\noperator log (tail):\n{operator.tail(40)}")


@pytest.fixture
def bed(request: pytest.FixtureRequest) -> Iterator[Bed]:
    if LONG:
        yield from _own_bed()
        return
    yield Bed(
        request.getfixturevalue("cluster"),
        request.getfixturevalue("operator"),
        request.getfixturevalue("namespace"),
        "the session test bed",
    )


def scrape(operator: OperatorProcess) -> str:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def _record(figures: dict[str, Any]) -> None:
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        (Path(out) / "memory_churn.json").write_text(json.dumps(figures, sort_keys=True))


def _unobserved(kube: Kube, namespace: str) -> list[str]:
    """Services whose status has not caught up with their spec yet."""
    return [
        o["metadata"]["name"]
        for o in kube.list("InferenceService", namespace)
        if (o.get("status") or {}).get("observedGeneration") != o["metadata"].get("generation")
    ]


def gauge_mismatches(kube: Kube, operator: OperatorProcess, namespace: str) -> dict[str, Any]:
    """Live pools whose desired/ready gauges differ from ``status.pools`` (name -> both)."""
    gauges: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(scrape(operator)):
        if family.name not in GAUGES:
            continue
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace:
                key = (sample.labels["service"], sample.labels["pool"])
                gauges.setdefault(key, {})[GAUGES[family.name]] = sample.value
    wrong: dict[str, Any] = {}
    for obj in kube.list("InferenceService", namespace):
        for pool in (obj.get("status") or {}).get("pools") or []:
            key = (obj["metadata"]["name"], pool["name"])
            want = {f: float(pool.get(f, 0)) for f in GAUGES.values()}
            if gauges.get(key) != want:
                wrong["/".join(key)] = {"status": want, "gauges": gauges.get(key)}
    return wrong


def _wait(check: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while True:
        last = check()
        if not last:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}")
        time.sleep(2)


def _fit_figures(rss: list[tuple[float, float]], figures: dict[str, Any]) -> None:
    """The RSS slope and its bound, added to ``figures`` (also for a run that failed late)."""
    if len(rss) < 3:
        return
    fit = fit_slope(rss, min(WARMUP_SECONDS, rss[-3][0] - rss[0][0]))
    half = [(t, m) for t, m in rss if t >= (rss[0][0] + rss[-1][0]) / 2]
    limit = chart_memory_limit_mib()
    figures.update(
        rss_mib_max=round(max(m for _, m in rss), 1),
        rss_slope_mib_per_hour=round(fit.mib_per_hour, 2),
        rss_fit={k: round(v, 2) for k, v in asdict(fit).items()},
        # A slope that falls in the second half is the allocator and the lag settling; a leak
        # keeps its slope. The samples (one a minute) let anyone refit.
        rss_slope_second_half_mib_per_hour=round(fit_slope(half, 0).mib_per_hour, 2)
        if len(half) >= 3
        else None,
        rss_samples_per_minute=[
            [round(t), round(m, 1)] for t, m in rss[:: max(1, int(60 / RSS_EVERY))]
        ],
        rss_fit_method=(
            f"ordinary least squares through VmRSS sampled every {RSS_EVERY:.0f} s, samples "
            f"after the first {WARMUP_SECONDS:.0f} s of churn"
        ),
        rss_limit_mib=limit,
        rss_slope_bound_mib_per_hour=round((limit - fit.rss_end_mib) / HORIZON_HOURS, 2),
        rss_slope_bound_method=(
            f"(chart memory limit {limit:.0f} MiB - fitted end RSS) / {HORIZON_HOURS:.0f} h"
        ),
    )


def test_churn_memory_and_series(bed: Bed) -> None:
    operator, namespace = bed.operator, bed.namespace
    assert operator.proc is not None
    pid = operator.proc.pid
    api = bed.cluster.api_client()
    kube = Kube(api)
    churner = Churner(kube, namespace, POPULATION)
    rss: list[tuple[float, float]] = []
    seen_live: set[str] = set()
    max_linger: dict[str, float] = {}
    leaks: dict[str, float] = {}
    backlog: list[int] = []
    figures: dict[str, Any] = {
        "form": "long" if LONG else "short",
        "population": POPULATION,
        "churn_seconds_planned": CHURN_SECONDS,
        "step_rate_per_second": STEP_RATE,
        "nodes": bed.nodes,
        "linger_bound_seconds": LINGER_SECONDS,
    }
    try:
        figures["rss_mib_before_fill"] = round(rss_mb(pid), 1)
        start = time.monotonic()
        churner.fill()
        figures["fill_seconds"] = round(time.monotonic() - start, 1)
        figures["fill_observed_seconds"] = round(
            _wait(lambda: _unobserved(kube, namespace), WAIT_SECONDS, "the first reconciles"),
            1,
        )
        rss_filled = rss_mb(pid)
        figures["rss_mib_after_fill"] = round(rss_filled, 1)

        figures["make_up_at_churn_start"] = make_up(churner.live.values())
        churn_start = time.monotonic()
        next_rss = next_scrape = churn_start
        steps = scrapes = 0
        while (
            now := time.monotonic()
        ) - churn_start < CHURN_SECONDS and time.time() < CHURN_END_BY:
            if now >= next_rss:
                rss.append((now - churn_start, rss_mb(pid)))
                next_rss += RSS_EVERY
            if now >= next_scrape:
                carrying = series_by_service(scrape(operator), namespace)
                scrapes += 1
                stamp = time.monotonic()
                seen_live |= carrying.keys() & churner.live.keys()
                for name, age in lingering(carrying, churner.deleted, stamp, 0.0).items():
                    max_linger[name] = max(max_linger.get(name, 0.0), age)
                leaks.update(lingering(carrying, churner.deleted, stamp, LINGER_SECONDS))
                # The operator's lag: services whose status has not caught up with their spec.
                backlog.append(len(_unobserved(kube, namespace)))
                next_scrape += SCRAPE_EVERY
            target = churn_start + steps / STEP_RATE
            if time.monotonic() < target:
                time.sleep(min(target - time.monotonic(), 0.5))
                continue
            churner.step()
            steps += 1
        churned = time.monotonic() - churn_start
        rss.append((churned, rss_mb(pid)))
        figures.update(
            churn_seconds=round(churned, 1),
            make_up_at_churn_end=make_up(churner.live.values()),
            churn_stopped_early_by_deadline=churned < CHURN_SECONDS - 1,
            steps=steps,
            **churner.counts,
            scrapes_during_churn=scrapes,
            services_with_series_seen=len(seen_live),
            series_linger_seconds_max=round(max(max_linger.values(), default=0.0), 1),
            deleted_services_lingering_beyond_bound=len(leaks),
            unobserved_services_max=max(backlog, default=0),
            unobserved_services_at_churn_end=backlog[-1] if backlog else 0,
        )

        # Settle: every live service's status has caught up; its pool series match its spec.
        figures["settle_seconds"] = round(
            _wait(lambda: _unobserved(kube, namespace), WAIT_SECONDS, "the last edits"), 1
        )
        # The live services' gauges say what their status says (a refresh publishes them too).
        figures["gauges_match_status_seconds"] = round(
            _wait(
                lambda: gauge_mismatches(kube, operator, namespace),
                120 if LONG else 60,
                "gauges = status",
            ),
            1,
        )
        text = scrape(operator)
        stray_pools = {
            name: sorted(found - churner.pools(name))
            for name, found in pools_by_service(text, namespace).items()
            if name in churner.live and found - churner.pools(name)
        }
        live = len(churner.live)
        live_with_series = len(churner.live.keys() & series_by_service(text, namespace).keys())
        figures.update(
            live_services_with_removed_pool_series=len(stray_pools),
            live_services_with_series_after_settle=live_with_series,
            live_services_after_settle=live,
        )

        # Drain: delete every service; the namespace's series must all go.
        churner.delete_all()
        _wait(lambda: kube.list("InferenceService", namespace), WAIT_SECONDS, "the drain")
        drained = time.monotonic()
        after_drain = series_by_service(scrape(operator), namespace)
        while after_drain and time.monotonic() - drained < LINGER_SECONDS:
            time.sleep(1)
            after_drain = series_by_service(scrape(operator), namespace)
        figures.update(
            drain_series_gone_seconds=round(time.monotonic() - drained, 1),
            deleted_services_with_series_after_drain=len(after_drain),
            services_deleted=len(churner.deleted),
            rss_mib_after_drain=round(rss_mb(pid), 1),
        )
    finally:
        api.close()
        _fit_figures(rss, figures)
        _record(figures)
        print(json.dumps(figures, indent=1, sort_keys=True))

    assert churner.counts["errors"] == 0, churner.counts
    # The checks are not vacuous: series appeared for the services while they lived.
    assert live_with_series == live, (live_with_series, live)
    assert len(seen_live) >= 0.5 * churner.counts["created"], (len(seen_live), churner.counts)
    assert not stray_pools, f"series of removed pools: {dict(list(stray_pools.items())[:20])}"
    assert figures["rss_mib_max"] < figures["rss_limit_mib"], figures
    assert not leaks, f"series of deleted services beyond {LINGER_SECONDS:.0f} s: {leaks}"
    assert not after_drain, f"series left after the drain: {sorted(after_drain)[:20]}"
    if LONG:
        assert figures["rss_slope_mib_per_hour"] <= figures["rss_slope_bound_mib_per_hour"], figures
    else:
        assert rss[-1][1] <= 1.25 * rss_filled, figures

"""CPU of publishing one service's replica gauges as the fleet grows: registry walk vs index.

Why this exists: py-spy on the operator in the churn drill (1,000 services) found a third of its
CPU in ``metrics.record_pools``: to drop the series of a pool that left the spec it walked
``collect()`` of both replica gauges, which builds a sample for every series of the fleet, on
every reconcile and refresh. That made each publish O(fleet), the fleet O(fleet²), and the
threads doing it held the GIL against Kopf's event loop. ``metrics.ByService`` now keeps the
series of each service in an index. This measures one publish (2 pools) both ways, in one
process, with the registry filled for ``N`` services of 1.5 pools; the rounds alternate.

* ``walk``: the old lookup (``collect()`` of both gauges, filtered to the service), reimplemented
  here as the baseline;
* ``index``: ``metrics.record_pools`` as shipped.

``python benchmarks/metrics_index.py`` writes ``benchmarks/results/metrics-index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from tokenscale.controller import metrics

RESULT = Path(__file__).parent / "results" / "metrics-index.json"
POOLS = [{"name": "a", "desiredReplicas": 2, "readyReplicas": 1}, {"name": "b"}]


def walk_publish(namespace: str, service: str, pools: list[dict[str, object]]) -> None:
    """The lookup before the index: every series of both gauges, kept if it is this service's."""
    current = {str(pool.get("name")) for pool in pools}
    for pool in pools:
        labels = (namespace, service, str(pool.get("name")))
        metrics.DESIRED_REPLICAS.labels(*labels).set(float(str(pool.get("desiredReplicas", 0))))
        metrics.READY_REPLICAS.labels(*labels).set(float(str(pool.get("readyReplicas", 0))))
    for gauge in (metrics.DESIRED_REPLICAS, metrics.READY_REPLICAS):
        names = ("namespace", "service", "pool")
        found = {
            tuple(sample.labels[n] for n in names)
            for family in gauge.collect()
            for sample in family.samples
        }
        for ns, svc, name in found:
            if (ns, svc) == (namespace, service) and name not in current:
                gauge.remove(ns, svc, name)


def fill(services: int) -> None:
    """The registry of an operator with ``services`` services, every second one with 2 pools."""
    metrics.remove_services(list(metrics.services()))
    for i in range(services):
        pools = POOLS if i % 2 else POOLS[:1]
        metrics.record_pools("bench", f"svc-{i}", pools)
        metrics.TOKENS_PER_SECOND.labels("bench", f"svc-{i}").set(1.0)


def per_call_us(publish: Callable[..., None], services: int, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        publish("bench", f"svc-{i % services}", POOLS)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 5000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    rows = []
    print(f"{'services':>8} {'walk us/publish':>16} {'index us/publish':>17} {'ratio':>7}")
    for size in args.sizes:
        calls = max(20, 20_000 // size)
        fill(size)
        times: dict[str, list[float]] = {"walk": [], "index": []}
        for _ in range(args.rounds):
            times["walk"].append(per_call_us(walk_publish, size, calls))
            times["index"].append(per_call_us(metrics.record_pools, size, calls))
        walk, index = (statistics.median(times[k]) for k in ("walk", "index"))
        row = {
            "services": size,
            "series": sum(
                len(values)
                for key in metrics.services()
                for values in metrics.series_of(*key).values()
            ),
            "calls_per_round": calls,
            "walk_us_per_publish": round(walk, 1),
            "index_us_per_publish": round(index, 1),
            "walk_over_index": round(walk / index, 1),
        }
        rows.append(row)
        print(f"{size:>8} {walk:>16.1f} {index:>17.1f} {walk / index:>7.1f}", flush=True)
    report = {
        "generated_by": "python benchmarks/metrics_index.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "method": (
            f"median of {args.rounds} alternating rounds; one publish = record_pools of 2 pools "
            "for one service of a registry filled for N services"
        ),
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

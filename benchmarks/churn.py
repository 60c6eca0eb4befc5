"""Churn for the memory-and-time drill: services created, updated and deleted at a steady rate.

The drill (``tests/e2e/test_drill_churn.py``) keeps a population of services alive while it
replaces and edits them, samples the operator's resident memory from ``/proc`` and scrapes the
operator's own ``/metrics``. This module holds the parts that do not need a test bed: the
manifests, the churn schedule, the ``/metrics`` reading and the RSS slope fit (each unit-tested
in ``tests/unit/test_churn.py``), plus the thin :class:`Churner` that writes to the API server.

Every service gets a name that is never reused (``c<generation>-<n>``): a name seen in a series
after its service was deleted is a leak, never a newer service of the same name.

The slope is an ordinary least-squares line through (seconds, MiB) samples taken after a
warm-up (the interpreter's allocator, Kopf's per-object state and the client's caches fill up
while the population first reaches its size; what grows after that is what a leak looks like),
reported in MiB per hour with the RSS at the fit's start and end.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tokenscale.k8s.kube import Kube

GPUS = ("MI300X", "MI325X", "MI355X")

#: The edits an update picks from: each changes the spec (a new generation) and each walks a
#: different path through the operator: replica bounds only, the pods' count, the autoscaler
#: daemon starting or stopping, a second pool appearing or going (its series must go with it).
UPDATES = ("max_replicas", "min_replicas", "scaling", "second_pool")


def manifest(name: str, namespace: str, variant: dict[str, Any]) -> dict[str, Any]:
    """An InferenceService on KWOK-run engines (vLLM, so no process runs per pod)."""
    gpu = GPUS[variant["gpu"] % len(GPUS)]
    pools: list[dict[str, Any]] = [
        {
            "name": "p",
            "gpu": gpu,
            "minReplicas": variant["min"],
            "maxReplicas": variant["max"],
        }
    ]
    if variant["second_pool"]:
        pools.append({"name": "q", "gpu": GPUS[(variant["gpu"] + 1) % len(GPUS)],
                      "minReplicas": 0, "maxReplicas": 1})  # fmt: skip
    spec: dict[str, Any] = {
        "model": {"name": "llama-2-70b", "architecture": "llama-2-70b",
                  "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"}, "dtype": "fp8"},
        "pools": pools,
    }  # fmt: skip
    if variant["scaling"]:
        spec["scaling"] = {"mode": "builtin", "targetPerReplica": 2500}
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def first_variant(rng: random.Random) -> dict[str, Any]:
    """A new service, drawn from the mix the edits keep: each edit flips one two-valued
    setting, so under churn every setting tends to half and half; a new service drawn that way
    keeps the fleet's make-up (autoscaled services, second pools, pods) steady from the first
    step. Drawn otherwise (it was: one pool, min 1, a third autoscaled) the fleet grew busier
    all run long (333 -> 387 autoscaled of 1,000 in 16 minutes) and the RSS slope measured
    that growth along with any leak."""
    return {"gpu": rng.randrange(len(GPUS)), "min": rng.choice((1, 2)),
            "max": rng.choice((2, 3)), "scaling": rng.random() < 0.5,
            "second_pool": rng.random() < 0.5}  # fmt: skip


def make_up(variants: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many of the live services are autoscaled and have a second pool, and their pods'
    minimum: read beside the RSS slope (a fleet that grows busier holds more memory)."""
    live = list(variants)
    return {
        "services": len(live),
        "autoscaled": sum(1 for v in live if v["scaling"]),
        "second_pools": sum(1 for v in live if v["second_pool"]),
        "min_replicas": sum(int(v["min"]) for v in live),
    }


def updated(variant: dict[str, Any], edit: str) -> dict[str, Any]:
    """``variant`` with one edit applied (each edit toggles, so repeated edits stay bounded)."""
    new = dict(variant)
    if edit == "max_replicas":
        new["max"] = 3 if variant["max"] == 2 else 2
    elif edit == "min_replicas":
        new["min"] = 2 if variant["min"] == 1 else 1
        new["max"] = max(new["max"], new["min"])
    elif edit == "scaling":
        new["scaling"] = not variant["scaling"]
    elif edit == "second_pool":
        new["second_pool"] = not variant["second_pool"]
    else:
        raise ValueError(f"unknown edit {edit!r}; known: {UPDATES}")
    return new


@dataclass
class Churner:
    """Keeps ``population`` services alive in ``namespace`` and churns them.

    One :meth:`step` deletes one service, creates one in its place and edits ``edits`` others
    (concurrently: a client that waits for each write in turn measures the API server's latency,
    not the operator), so the population stays constant and the whole fleet is replaced every
    ``population`` steps. Deletion times are kept per name (monotonic clock) for the linger
    check.
    """

    kube: Kube
    namespace: str
    population: int
    seed: int = 17
    edits: int = 2
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {"created": 0, "updated": 0, "deleted": 0, "errors": 0}
    )
    _serial: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def _name(self) -> str:
        self._serial += 1
        return f"c-{self._serial:05d}"

    def _write(self, action: str, call: Any, *args: Any) -> bool:
        try:
            call(*args)
        except Exception:
            with self._lock:
                self.counts["errors"] += 1
            return False
        with self._lock:
            self.counts[action] += 1
        return True

    def _create(self, name: str, variant: dict[str, Any]) -> None:
        if self._write("created", self.kube.apply, manifest(name, self.namespace, variant)):
            self.live[name] = variant

    def _delete(self, name: str) -> None:
        if self._write("deleted", self.kube.delete, "InferenceService", self.namespace, name):
            self.live.pop(name)
            self.deleted[name] = time.monotonic()

    def _update(self, name: str, variant: dict[str, Any]) -> None:
        if self._write("updated", self.kube.apply, manifest(name, self.namespace, variant)):
            self.live[name] = variant

    def fill(self, workers: int = 16) -> None:
        """Create services until the population is reached (``workers`` writes at a time)."""
        missing = self.population - len(self.live)
        new = [(self._name(), first_variant(self.rng)) for _ in range(missing)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda item: self._create(*item), new))

    def delete_all(self, workers: int = 16) -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self._delete, sorted(self.live)))

    def step(self) -> None:
        """Delete one, create one, edit ``edits`` others: the writes at once (one each)."""
        names = sorted(self.live)
        victim = self.rng.choice(names)
        others = [n for n in names if n != victim]
        edited = self.rng.sample(others, min(self.edits, len(others)))
        calls: list[tuple[Any, tuple[Any, ...]]] = [
            (self._delete, (victim,)),
            (self._create, (self._name(), first_variant(self.rng))),
        ]
        calls += [
            (self._update, (name, updated(self.live[name], self.rng.choice(UPDATES))))
            for name in edited
        ]
        with ThreadPoolExecutor(len(calls)) as pool:
            for future in [pool.submit(fn, *args) for fn, args in calls]:
                future.result()

    def pools(self, name: str) -> set[str]:
        """The pools the live service ``name`` has now."""
        return {"p", "q"} if self.live[name]["second_pool"] else {"p"}


def series_by_service(text: str, namespace: str) -> dict[str, set[str]]:
    """Per service of ``namespace``: the names of the operator's metric families that carry it.

    Read with Prometheus' own text parser, so anything a Prometheus server would store counts.
    """
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace and "service" in sample.labels:
                found.setdefault(sample.labels["service"], set()).add(family.name)
    return found


def pools_by_service(text: str, namespace: str) -> dict[str, set[str]]:
    """Per service of ``namespace``: the pool label values its per-pool series carry."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("namespace") == namespace and "service" in labels and "pool" in labels:
                found.setdefault(labels["service"], set()).add(labels["pool"])
    return found


@dataclass(frozen=True)
class SlopeFit:
    """A least-squares line through RSS samples after warm-up."""

    mib_per_hour: float
    rss_start_mib: float  #: the line's value at the first fitted sample
    rss_end_mib: float  #: the line's value at the last fitted sample
    samples: int
    seconds: float
    residual_stdev_mib: float


def fit_slope(samples: Sequence[tuple[float, float]], warmup_seconds: float) -> SlopeFit:
    """OLS slope of ``(t seconds, rss MiB)`` over the samples at ``t >= t0 + warmup_seconds``."""
    if not samples:
        raise ValueError("no RSS samples")
    t0 = samples[0][0]
    kept = [(t, m) for t, m in samples if t - t0 >= warmup_seconds]
    if len(kept) < 3:
        raise ValueError(f"{len(kept)} samples after a {warmup_seconds:.0f} s warm-up; need 3")
    ts, ms = [t for t, _ in kept], [m for _, m in kept]
    t_mean, m_mean = statistics.fmean(ts), statistics.fmean(ms)
    sxx = sum((t - t_mean) ** 2 for t in ts)
    if sxx == 0:
        raise ValueError("RSS samples share one timestamp")
    slope = sum((t - t_mean) * (m - m_mean) for t, m in kept) / sxx
    intercept = m_mean - slope * t_mean
    residuals = [m - (intercept + slope * t) for t, m in kept]
    return SlopeFit(
        mib_per_hour=slope * 3600.0,
        rss_start_mib=intercept + slope * ts[0],
        rss_end_mib=intercept + slope * ts[-1],
        samples=len(kept),
        seconds=ts[-1] - ts[0],
        residual_stdev_mib=statistics.pstdev(residuals),
    )


def lingering(
    seen: Iterable[str], deleted: dict[str, float], now: float, grace: float
) -> dict[str, float]:
    """Deleted services still carrying a series ``grace`` seconds after their deletion,
    with the seconds since it."""
    return {
        name: now - deleted[name]
        for name in seen
        if name in deleted and now - deleted[name] > grace
    }

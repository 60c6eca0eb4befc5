"""Drill: the operator SIGKILLed at random points while services are created, updated, scaled
and deleted, with a benchmark and a replica sweep in flight (issue 17).

A seeded random sequence of operations (20 in ``make test``, 100 with
``TOKENSCALE_DRILL_LONG=1``) runs against a handful of KWOK-backed services; at random moments
the operator process group gets SIGKILL (no shutdown, no finalizer work, no status write),
some operations land while it is dead, and it is restarted after a random pause. Meanwhile a
simulated service is benchmarked and another is swept over 1 and 2 replicas (the sweep owns its
``/scale``); in the long form, when one ends the next starts, so kills keep landing inside
them. After each restart the drill measures how long until the namespace has converged:
every child the stored specs render exists exactly once, nothing is owned by a gone object,
nothing stale survives, statuses caught up with generations and ``spec.replicas``. At the end the
sweeps have each either finished or ended Failed with a reason, and the swept service is back
at its own replica count with the hold lifted.

Figures (``TOKENSCALE_RELIABILITY_DIR``): operations, kills, objects missing / duplicated /
orphaned / stale after each recovery, recovery seconds (restart to converged), the sweep's and
the benchmark's outcome.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.drill_children import Audit, audit
from tests.e2e.helpers import apply, example, get, wait_condition, wait_for
from tests.e2e.operator_proc import OperatorProcess
from tests.testbed.cluster import Cluster
from tokenscale import constants as c

LONG = os.environ.get("TOKENSCALE_DRILL_LONG") == "1"
# Longer than the suite's 600 s per test: a loaded 2-core machine stretches every step.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000 if LONG else 900)]
OPERATIONS = 100 if LONG else 20
KILLS = 12 if LONG else 3
SEED = int(os.environ.get("TOKENSCALE_DRILL_SEED", "17"))
CHURN = 4  # services c0..c3
SWEEP_LEVELS = [1, 2]
RECOVERY_TIMEOUT = 120


def _record(figures: dict[str, Any]) -> None:
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        (Path(out) / "operator_kill.json").write_text(json.dumps(figures, sort_keys=True))


def _churn_service(name: str, rng: random.Random) -> dict[str, Any]:
    doc = example("llama2-70b-mi355x.yaml")
    doc["metadata"] = {"name": name}
    doc["spec"]["model"].pop("hfTokenSecret", None)
    doc["spec"]["scaling"] = {"mode": "off"}
    doc["spec"]["pools"] = [{"name": "mi355x", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": 3}]
    doc["spec"]["replicas"] = rng.randint(1, 3)
    return doc


def _simulated(name: str, high: int, scaling: dict[str, Any]) -> dict[str, Any]:
    doc = example("simulated-llama2-70b.yaml")
    doc["metadata"]["name"] = name
    doc["spec"]["pools"] = [
        {"name": "mi355x", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": high}
    ]
    doc["spec"]["scaling"] = scaling
    return doc


DATASET = {"input": {"kind": "fixed", "mean": 64}, "output": {"kind": "fixed", "mean": 64}}


def _sweep(name: str, target: str) -> dict[str, Any]:
    doc = example("bench-replica-sweep.yaml")
    doc["metadata"]["name"] = name
    doc["spec"]["target"]["service"] = target
    doc["spec"]["load"] = {"replicas": SWEEP_LEVELS, "concurrency": 64, "durationSeconds": 25}
    doc["spec"]["dataset"] = DATASET
    return doc


def _bench(name: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceBenchmark",
        "metadata": {"name": name},
        "spec": {
            "target": {"service": target},
            "scenario": "server",
            "load": {"qps": 4, "durationSeconds": 45},
            "dataset": DATASET,
            "sla": {"preset": "llama2-70b-server"},
        },
    }


class Churn:
    """The random operations: create, update (args / a second pool), scale, delete."""

    def __init__(self, cluster: Cluster, namespace: str, rng: random.Random) -> None:
        self.cluster, self.namespace, self.rng = cluster, namespace, rng
        self.live: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}

    def step(self) -> str:
        names = [f"c{i}" for i in range(CHURN)]
        absent = [n for n in names if n not in self.live]
        choices = ["create"] * bool(absent) * 3
        if self.live:
            choices += ["update", "update", "scale", "scale", "delete"]
        op = self.rng.choice(choices)
        if op == "create":
            name = self.rng.choice(absent)
            doc = self.live[name] = _churn_service(name, self.rng)
            apply(self.cluster, self.namespace, doc)
        else:
            name = self.rng.choice(sorted(self.live))
            doc = self.live[name]
            if op == "update":
                pools = doc["spec"]["pools"]
                if self.rng.random() < 0.4:  # add or remove a second pool (a child appears/goes)
                    if len(pools) == 1:
                        pools.append({"name": "mi325x", "gpu": "MI325X", "maxReplicas": 2})
                    else:
                        del pools[1:]
                else:
                    seqs = str(self.rng.choice([64, 128, 256, 512]))
                    doc["spec"]["engine"] = {"args": ["--max-num-seqs", seqs]}
                apply(self.cluster, self.namespace, doc)
            elif op == "scale":
                n = self.rng.randint(1, 3)
                doc["spec"]["replicas"] = n
                self.cluster.kubectl("scale", "tsvc", name, "-n", self.namespace, f"--replicas={n}")
            else:
                del self.live[name]
                self.cluster.kubectl("delete", "tsvc", name, "-n", self.namespace, "--wait=false")
        self.counts[op] = self.counts.get(op, 0) + 1
        return f"{op} {name}"


def _wait_converged(cluster: Cluster, namespace: str, started: float) -> tuple[float | None, Audit]:
    """Seconds from ``started`` until the namespace audit is clean and converged, with that
    audit; (None, the last audit) when it does not happen within RECOVERY_TIMEOUT, so what was
    still missing, duplicated, orphaned or stale by then is counted, not just a timeout."""
    last = Audit()
    deadline = started + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        last = audit(cluster, namespace)
        if last.converged:
            return time.monotonic() - started, last
        time.sleep(0.5)
    return None, last


def _phase(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict((get(cluster, "tsbench", name, "-n", namespace) or {}).get("status") or {})


FINISHED = ("Succeeded", "Failed")


class InFlight:
    """Keeps a replica sweep and a benchmark running through the operations: when one ends the
    next starts (sweep-0, sweep-1, ...), so kills keep landing in the middle of them."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.sweeps: list[str] = []
        self.benches: list[str] = []

    def top_up(self) -> None:
        if (
            not self.sweeps
            or _phase(self.cluster, self.namespace, self.sweeps[-1]).get("phase") in FINISHED
        ):
            self.sweeps.append(f"sweep-{len(self.sweeps)}")
            apply(self.cluster, self.namespace, _sweep(self.sweeps[-1], "sw"))
        if (
            not self.benches
            or _phase(self.cluster, self.namespace, self.benches[-1]).get("phase") in FINISHED
        ):
            self.benches.append(f"bench-{len(self.benches)}")
            apply(self.cluster, self.namespace, _bench(self.benches[-1], "bt"))

    def sweep_state(self) -> str:
        """``name index/phase`` of the current sweep, for the record of where kills landed."""
        st = _phase(self.cluster, self.namespace, self.sweeps[-1])
        return f"{self.sweeps[-1]} {(st.get('sweep') or {}).get('index')}/{st.get('phase')}"

    def finished(self, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            out[name] = wait_for(
                lambda n=name: (
                    (st := _phase(self.cluster, self.namespace, n)).get("phase") in FINISHED and st
                ),
                timeout=timeout,
                what=f"{name} finished",
            )
        return out


def _outcome(finished: dict[str, dict[str, Any]]) -> dict[str, int]:
    """How many ended in each phase."""
    out: dict[str, int] = {}
    for st in finished.values():
        out[st["phase"]] = out.get(st["phase"], 0) + 1
    return out


def test_operator_killed_at_random_points_loses_nothing(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    rng = random.Random(SEED)
    assert operator.alive()
    # The swept service: the autoscaler would keep 1 replica (target far above any load), so a
    # count of 2 left behind can only be the sweep's.
    apply(cluster, namespace, _simulated("sw", 2, {"mode": "builtin", "targetPerReplica": 100000,
                                                   "windowSeconds": 10}))  # fmt: skip
    apply(cluster, namespace, _simulated("bt", 1, {"mode": "off"}))
    for name in ("sw", "bt"):
        wait_condition(cluster, namespace, name, "Ready", lambda cd: cd["status"] == "True", 180)
    sw_before = get(cluster, "tsvc", "sw", "-n", namespace)["spec"].get("replicas")
    inflight = InFlight(cluster, namespace)
    inflight.top_up()
    wait_for(
        lambda: _phase(cluster, namespace, "sweep-0").get("phase") == "Running",
        timeout=120,
        what="the sweep running",
    )

    churn = Churn(cluster, namespace, rng)
    # Kill points: spread over the operations, the first one while the sweep has just begun.
    kill_after = sorted({0, *rng.sample(range(1, OPERATIONS), KILLS - 1)})
    kills: list[dict[str, Any]] = []
    ops_log: list[str] = []
    sweep_phases_at_kill: list[str] = []
    unrecovered: list[Audit] = []
    try:
        for i in range(OPERATIONS):
            # The long form keeps a sweep and a benchmark running (not the last operations:
            # they need not wait for another); the short form's one of each spans its run.
            if LONG and i < OPERATIONS * 0.8:
                inflight.top_up()
            ops_log.append(churn.step())
            if i not in kill_after:
                time.sleep(rng.uniform(0.0, 1.0))
                continue
            # Kill mid-work: the operation just applied is being reconciled now.
            time.sleep(rng.uniform(0.0, 1.5))
            sweep_phases_at_kill.append(inflight.sweep_state())
            operator.kill()
            dead_ops = rng.randint(0, 2)  # operations landing while no operator runs
            for _ in range(dead_ops):
                ops_log.append(churn.step() + " (operator down)")
            time.sleep(rng.uniform(0.5, 3.0))
            operator.start()
            restarted = time.monotonic()
            seconds, found = _wait_converged(cluster, namespace, restarted)
            kills.append({"after_op": i + 1, "ops_while_down": dead_ops,
                          "recovery_seconds": None if seconds is None else round(seconds, 1),
                          **found.counts()})  # fmt: skip
            if seconds is None:
                unrecovered.append(found)
    finally:
        if not operator.alive():
            operator.start()

    # Every benchmark ends; each sweep resumed or failed with a reason and gave /scale back.
    sweeps = inflight.finished(inflight.sweeps, timeout=420)
    benches = inflight.finished(inflight.benches, timeout=240)
    sw = wait_for(
        lambda: (
            (s := get(cluster, "tsvc", "sw", "-n", namespace))
            and c.ANNOTATION_SCALING_HOLD not in (s["metadata"].get("annotations") or {})
            and s
        ),
        timeout=60,
        what="the sweep's hold lifted",
    )
    final_seconds, final = _wait_converged(cluster, namespace, time.monotonic())
    recovered = [k["recovery_seconds"] for k in kills if k["recovery_seconds"] is not None]
    figures = {
        "seed": SEED,
        "operations": OPERATIONS,
        "operation_counts": churn.counts,
        "kills": len(kills),
        "kill_points": kills,
        "sweep_at_kills": sweep_phases_at_kill,
        "recovered": len(recovered),
        "recovery_seconds_max": max(recovered, default=None),
        "recovery_seconds_median": statistics.median(recovered) if recovered else None,
        "objects_missing": sum(k["missing"] for k in kills) + len(final.missing),
        "objects_duplicated": sum(k["duplicated"] for k in kills) + len(final.duplicated),
        "objects_orphaned": sum(k["orphaned"] for k in kills) + len(final.orphaned),
        "objects_stale": sum(k["stale"] for k in kills) + len(final.stale),
        "sweeps": {
            name: {
                "phase": st["phase"],
                "reasons": st.get("reasons"),
                "points": [p["replicas"] for p in (st.get("sweep") or {}).get("points") or []],
            }
            for name, st in sweeps.items()
        },
        "sweep_outcome": _outcome(sweeps),
        "benchmark_outcome": _outcome(benches),
        "swept_service_replicas": {"before": sw_before, "after": sw["spec"].get("replicas")},
    }
    _record(figures)
    print(json.dumps(figures, indent=1))

    assert len(kills) == KILLS
    assert not unrecovered, (unrecovered, ops_log)  # the operations say how to reproduce it
    assert final_seconds is not None and final.clean, (final, ops_log)
    for name, st in sweeps.items():
        if st["phase"] == "Failed":
            assert st.get("reasons"), (name, st)
        else:
            assert figures["sweeps"][name]["points"] == SWEEP_LEVELS, (name, st)
    # The sweeps' levels never stay behind: the service is back at its own count.
    assert sw["spec"].get("replicas") == sw_before, (sw["spec"], sw_before)
    for name, st in benches.items():
        assert st["phase"] == "Succeeded" or st.get("reasons"), (name, st)
    assert operator.alive()

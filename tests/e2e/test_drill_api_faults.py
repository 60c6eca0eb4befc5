"""Drill (issue 17): API errors between the operator and the API server.

The operator talks to the API server through the test bed's fault proxy
(:mod:`tests.testbed.faultproxy`), which answers a share of its requests with 429 (with
Retry-After) or 500, never answers some (timeouts: closed after ``hold_seconds``) and cuts
watch streams mid-way. Under those faults the operator runs a small life cycle: services
created, scaled 1 -> 2, one loses its Deployment, one is deleted. In the end every service
must have exactly the children its spec wants (none missing, none doubled, none left of the
deleted service), Degraded must be back to False, every kind of fault the operator met must
have been retried (the same request seen again after a delay), and the operator must be the
same process. Then one service's Deployment has every apply refused (500) while its spec
changes: the service must say so (Degraded/ApplyFailed with the API server's message), keep
the Deployment it has (a refused child is never pruned) and converge once the refusals stop.

Short form (``make test``): one run with every kind mixed. ``TOKENSCALE_DRILL_LONG=1``: also
each kind alone at a higher rate, six services. Figures per kind (requests injected, retries
observed, their median delay, objects lost, convergence seconds) go to
``$TOKENSCALE_RELIABILITY_DIR/api_faults.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.apiproxy import proxied_operator
from tests.e2e.helpers import apply, condition, example, get, wait_for
from tests.e2e.operator_proc import OperatorProcess
from tests.testbed.cluster import Cluster
from tests.testbed.faultproxy import KINDS, FaultPlan, FaultProxy, Record, retries
from tokenscale import constants as c

pytestmark = pytest.mark.e2e

LONG = os.environ.get("TOKENSCALE_DRILL_LONG", "") not in ("", "0")
SERVICES = 6 if LONG else 3
CONVERGE_SECONDS = 300.0
#: The short form's mix: every kind at once, at rates that hit every phase of the workload.
MIXED = FaultPlan({"429": 0.1, "500": 0.1, "timeout": 0.03, "drop_watch": 0.3}, hold_seconds=40)
#: The long form adds each kind alone at a higher rate.
ALONE = {
    "429": FaultPlan({"429": 0.3}),
    "500": FaultPlan({"500": 0.3}),
    "timeout": FaultPlan({"timeout": 0.08}, hold_seconds=60),
    "drop_watch": FaultPlan({"drop_watch": 0.6}),
}
INJECTED_MARK = "injected by the test bed's fault proxy"
FIGURES: dict[str, Any] = {}


def _record() -> None:
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        (Path(out) / "api_faults.json").write_text(json.dumps(FIGURES, sort_keys=True))


def _service(name: str, replicas: int) -> dict[str, Any]:
    doc = example("llama2-70b-mi355x.yaml")
    doc["metadata"]["name"] = name
    doc["spec"]["pools"][0]["maxReplicas"] = 4
    doc["spec"]["scaling"] = {"mode": "off"}
    doc["spec"]["replicas"] = replicas
    return doc


def _deployments(cluster: Cluster, namespace: str) -> dict[str, list[dict[str, Any]]]:
    """Every managed Deployment in the namespace, by owning service."""
    found = get(cluster, "deployments", "-n", namespace, "-l", c.LABEL_SERVICE)
    by: dict[str, list[dict[str, Any]]] = {}
    for dep in (found or {}).get("items") or []:
        by.setdefault(dep["metadata"]["labels"][c.LABEL_SERVICE], []).append(dep)
    return by


def _state(cluster: Cluster, namespace: str, want: dict[str, int]) -> dict[str, Any]:
    """Where the namespace stands against ``want`` (service -> replicas; 0 = deleted)."""
    deps = _deployments(cluster, namespace)
    svcs = {
        s["metadata"]["name"]: s for s in (get(cluster, "tsvc", "-n", namespace) or {})["items"]
    }
    missing = sum(1 for n, r in want.items() if r and not deps.get(n))
    doubled = sum(max(0, len(deps.get(n, [])) - 1) for n in want)
    left = sum(len(deps.get(n, [])) for n, r in want.items() if not r)
    left += sum(1 for n, r in want.items() if not r and n in svcs)
    done = all(
        (
            len(deps.get(n, [])) == 1
            and deps[n][0]["spec"].get("replicas") == r
            and (deps[n][0].get("status") or {}).get("readyReplicas") == r
            and condition(svcs.get(n), "Ready").get("status") == "True"
            and condition(svcs.get(n), "Degraded").get("status") == "False"
        )
        if r
        else n not in svcs and not deps.get(n)
        for n, r in want.items()
    )
    return {"done": done, "missing": missing, "doubled": doubled, "left_over": left}


class _ConditionWatch:
    """Polls the namespace's services (as admin, not through the proxy) while the drill runs and
    keeps every non-healthy condition it saw: what the operator told users while it struggled."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.seen: set[tuple[str, str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _ConditionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            found = get(self.cluster, "tsvc", "-n", self.namespace) or {}
            for svc in found.get("items") or []:
                for cond in (svc.get("status") or {}).get("conditions") or []:
                    bad = (cond["type"] == "Degraded" and cond["status"] == "True") or (
                        cond["type"] == "Ready" and cond["status"] == "False"
                    )
                    if bad:
                        self.seen.add(
                            (cond["type"], cond.get("reason", ""), cond.get("message", ""))
                        )


def _warning_events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    found = get(cluster, "events", "-n", namespace, "--field-selector", "type=Warning") or {}
    return list(found.get("items") or [])


def _kind_figures(records: list[Record], kind: str) -> dict[str, Any]:
    hit = [r for r in records if r.fault == kind]
    delays = _retry_delays(records, kind)
    return {
        "requests_injected": len(hit),
        "retries_observed": len(delays),
        "median_retry_delay_seconds": round(statistics.median(delays), 2) if delays else None,
        "min_retry_delay_seconds": round(min(delays), 2) if delays else None,
    }


def _retry_delays(records: list[Record], kind: str) -> list[float]:
    only = [r for r in records if r.fault in ("", kind)]
    return retries(only, window=120.0)


def _refuse_one_child(
    cluster: Cluster, namespace: str, proxy: FaultProxy, plan: FaultPlan, want: dict[str, int]
) -> dict[str, Any]:
    """Every apply of one service's Deployment refused (500) while its spec changes: the
    service must say so (Degraded/ApplyFailed naming the refusal), keep the Deployment as it
    runs (no prune of a refused child), and converge once the refusals stop."""
    target = next(n for n, r in want.items() if r)
    (dep,) = _deployments(cluster, namespace)[target]
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{dep['metadata']['name']}"
    proxy.set_plan(FaultPlan({"500": 1.0}, paths=(path,), methods=("PATCH",)))
    started = time.monotonic()
    apply(cluster, namespace, _service(target, 3))
    cond = wait_for(
        lambda: (
            (cd := condition(get(cluster, "tsvc", target, "-n", namespace), "Degraded"))
            and cd["status"] == "True"
            and cd.get("reason") == "ApplyFailed"
            and cd
        ),
        timeout=90,
        what="Degraded/ApplyFailed while the Deployment's applies are refused",
    )
    reported = time.monotonic() - started
    kept = _deployments(cluster, namespace)[target]
    proxy.set_plan(plan)
    lifted = time.monotonic()
    want = {**want, target: 3}
    wait_for(
        lambda: _state(cluster, namespace, want)["done"], timeout=CONVERGE_SECONDS,
        what="convergence after the refusals stopped",
    )  # fmt: skip
    figures = {
        "condition": f"{cond['reason']}: {cond.get('message', '')}",
        "seconds_to_condition": round(reported, 1),
        "child_kept": [d["metadata"]["uid"] for d in kept] == [dep["metadata"]["uid"]],
        "recovery_seconds": round(time.monotonic() - lifted, 1),
    }
    assert "Internal Server Error" in figures["condition"], figures
    assert figures["child_kept"], (figures, kept)
    return figures


def _run(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    label: str,
    plan: FaultPlan,
    *,
    refuse_one: bool = False,
) -> dict[str, Any]:
    names = [f"af-{i}" for i in range(SERVICES)]
    with (
        proxied_operator(cluster, operator, f"operator-faults-{label}", plan) as (proxy, proc),
        _ConditionWatch(cluster, namespace) as watch,
    ):
        pid = proc.proc.pid if proc.proc else 0
        started = time.monotonic()
        for name in names:
            apply(cluster, namespace, _service(name, 1))
        want = dict.fromkeys(names, 1)
        wait_for(
            lambda: _state(cluster, namespace, want)["done"], timeout=CONVERGE_SECONDS,
            what=f"{label}: every service Ready at 1 replica",
        )  # fmt: skip
        created = time.monotonic() - started
        changed = time.monotonic()
        for name in names[:-1]:
            apply(cluster, namespace, _service(name, 2))
        victim = _deployments(cluster, namespace)[names[0]][0]["metadata"]["name"]
        cluster.kubectl("delete", "deployment", victim, "-n", namespace)
        cluster.kubectl("delete", "tsvc", names[-1], "-n", namespace, "--wait=false")
        want = {**dict.fromkeys(names[:-1], 2), names[-1]: 0}
        last: dict[str, Any] = {}

        def settled() -> bool:
            last.update(_state(cluster, namespace, want))
            return bool(last["done"])

        refusal: dict[str, Any] = {}
        ended, records = 0.0, list[Record]()
        try:
            wait_for(settled, timeout=CONVERGE_SECONDS, what=f"{label}: every change converged")
            ended, records = time.monotonic(), proxy.snapshot()  # the random faults' figures
            if refuse_one:
                refusal = _refuse_one_child(cluster, namespace, proxy, plan, want)
        finally:
            ended, records = ended or time.monotonic(), records or proxy.snapshot()
            alive = proc.alive() and proc.proc is not None and proc.proc.pid == pid
            log = proc.tail(400)
    warnings = _warning_events(cluster, namespace)
    named = [
        e
        for e in warnings
        if INJECTED_MARK in e.get("message", "")
        or any(w in e.get("message", "") for w in ("429", "500", "Too Many", "Internal Server"))
    ]
    figures: dict[str, Any] = {
        "plan": {k: v for k, v in plan.rates.items()},
        "hold_seconds": plan.hold_seconds,
        "services": SERVICES,
        "requests": len(records),
        "requests_per_second": round(len(records) / (ended - started), 2),
        "objects_lost": last.get("missing", 0) + last.get("doubled", 0),
        "objects_left_over": last.get("left_over", 0),
        "create_seconds": round(created, 1),
        "convergence_seconds": round(ended - changed, 1),
        "conditions_seen": sorted({f"{t}/{r}" for t, r, _ in watch.seen}),
        "conditions_naming_the_fault": sum(
            1 for _, _, m in watch.seen if INJECTED_MARK in m or "Internal Server" in m
        ),
        "warning_events_naming_the_fault": len(named),
        "operator_restarted": not alive,
        "kinds": {k: _kind_figures(records, k) for k in KINDS if plan.rates.get(k)},
        "sustained_refusal": refusal,
    }
    FIGURES[label] = figures
    _record()
    print(f"api faults {label}: {json.dumps(figures)}")
    assert alive, log
    assert figures["objects_lost"] == 0 and figures["objects_left_over"] == 0, figures
    for kind, per in figures["kinds"].items():
        assert per["requests_injected"] > 0, (kind, figures)
        # Every injected fault is a request the operator needed: it must come back for it.
        assert per["retries_observed"] > 0, (kind, figures)
    return figures


def test_mixed_api_faults_lose_nothing(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    figures = _run(cluster, operator, namespace, "mixed", MIXED, refuse_one=True)
    assert figures["sustained_refusal"]["child_kept"]


@pytest.mark.skipif(not LONG, reason="long form: TOKENSCALE_DRILL_LONG=1 (make drills)")
@pytest.mark.parametrize("kind", list(ALONE))
def test_each_api_fault_alone(
    cluster: Cluster, operator: OperatorProcess, namespace: str, kind: str
) -> None:
    _run(cluster, operator, namespace, kind, ALONE[kind])

"""Engine-fault drill (issue 17): crash-looping engines, an image that cannot be pulled, replicas
with no room, and a node that disappears under a serving replica. Each service ends Degraded
with the cause named, and the operator does not churn: while a fault lasts it creates, deletes
or rewrites no child, and its status writes per minute stay bounded.

Four simulated services run at once (the faults are independent) on a fleet of their own: fake
MI300X nodes with one GPU each, tainted so that no other test's pod lands there, selected by the
services' podTemplate. Engines of the crash and node-loss services are real processes of the
process kubelet. Writes are counted from watches (tests/e2e/writecount.py) over a window that
starts once every fault is reported; short form 15 s, ``TOKENSCALE_DRILL_LONG=1`` 300 s.
The short form deletes the lost node's pod itself, as the pod garbage collector does 40 s after
the node goes; the long form waits for the collector.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import apply, condition, example, get, pods_of, wait_for
from tests.e2e.operator_proc import OperatorProcess
from tests.e2e.writecount import WriteCounter
from tests.testbed import nodes
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e

LONG = os.environ.get("TOKENSCALE_DRILL_LONG") == "1"
WINDOW = 300.0 if LONG else 15.0
TAINT = {"key": "drill.tokenscale.dev/engine-faults", "value": "true", "effect": "NoSchedule"}
FLEET = nodes.NodePool("drill-eng", 3, nodes.MI300X, gpus_per_node=1, taints=(TAINT,))
#: the node the node-loss service runs on, alone (its own pool label)
LOST = nodes.NodePool("drill-eng-lost", 1, nodes.MI300X, gpus_per_node=1, taints=(TAINT,))
RUN_LABEL = {nodes.PROCESS_LABEL: nodes.PROCESS_LABEL_VALUE}
BROKEN_IMAGE = "registry.invalid/tokenscale/engine:does-not-exist"

#: Bounds, per service, over the window. A fault that persists changes nothing the operator
#: owns, so no child write at all. Status follows what the pods report: a steady fault reads
#: the same from one refresh to the next (a crash loop too, waiting or running between
#: restarts), so writes come only from a message that really changes (the scheduler's, as
#: nodes come and go): a few a minute at most, never one per reconcile or refresh.
MAX_CHILD_WRITES = 0
MAX_STATUS_WRITES_PER_MINUTE = 8.0
MAX_EVENTS_PER_MINUTE = 4.0


def service(name: str, pool_label: str, **engine: Any) -> dict[str, Any]:
    doc = example("simulated-llama2-70b.yaml")
    doc["metadata"]["name"] = name
    doc["spec"]["engine"] = {"mode": "simulated", "args": ["--startup-seconds", "1"], **engine}
    doc["spec"]["pools"] = [
        {"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 4}
    ]  # fmt: skip
    doc["spec"]["scaling"] = {"mode": "off"}
    doc["spec"]["replicas"] = 1
    doc["spec"]["podTemplate"] = {
        "labels": RUN_LABEL,
        "nodeSelector": {nodes.POOL_LABEL: pool_label},
        "tolerations": [{**TAINT, "operator": "Equal"}],
    }
    return doc


def tsvc(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = get(cluster, "tsvc", name, "-n", namespace) or {}
    return found


def degraded_with(cluster: Cluster, namespace: str, name: str, *causes: str) -> dict[str, Any]:
    """The Degraded condition once it is True and names one of ``causes``; {} before."""
    cond = condition(tsvc(cluster, namespace, name), "Degraded")
    text = f"{cond.get('reason')}: {cond.get('message')}"
    if cond.get("status") == "True" and any(cause in text for cause in causes):
        return cond
    return {}


def record(figures: dict[str, Any]) -> None:
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        Path(out, "engine_faults.json").write_text(json.dumps(figures, indent=2))


def test_engine_faults_are_degraded_with_their_cause_and_cause_no_churn(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    api = cluster.api_client()
    fleet = nodes.create_manifests(api, [nodes.node_manifest(FLEET, i) for i in range(FLEET.count)])
    lost_node = nodes.create_manifests(api, [nodes.node_manifest(LOST, 0)])
    try:
        _drill(cluster, operator, namespace)
    finally:
        nodes.delete_nodes(api, fleet + lost_node)


def _drill(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    started = time.monotonic()
    counter = WriteCounter(cluster, namespace).start()
    try:
        faults = {
            "crash": service("crash", FLEET.name, args=["--strict-args", "--no-such-flag"]),
            "pull": service("pull", FLEET.name, image=BROKEN_IMAGE),
            # two GPUs per replica on one-GPU nodes: never schedulable
            "pending": service("pending", FLEET.name),
            "lost": service("lost", LOST.name),
        }
        faults["pending"]["spec"]["pools"][0]["gpusPerReplica"] = 2
        causes = {
            "crash": ("CrashLoopBackOff",),
            "pull": ("ErrImagePull", "ImagePullBackOff"),
            "pending": ("Insufficient amd.com/gpu",),
            "lost": ("Unschedulable",),
        }
        applied = time.monotonic()
        for doc in faults.values():
            apply(cluster, namespace, doc)
        seconds: dict[str, float] = {}
        conds: dict[str, dict[str, Any]] = {}
        since = dict.fromkeys(causes, applied)

        def all_reported(names: tuple[str, ...] = tuple(causes)) -> bool | dict[str, str]:
            for name in names:
                found = (
                    {} if name in conds else degraded_with(cluster, namespace, name, *causes[name])
                )
                if found:
                    conds[name] = found
                    seconds[name] = round(time.monotonic() - since[name], 1)
            if all(n in conds for n in names):
                return True
            return {  # the last value a timeout shows: each missing service's Degraded now
                n: str(condition(tsvc(cluster, namespace, n), "Degraded")) for n in names
                if n not in conds
            }  # fmt: skip

        # the node-loss service must be serving before its node goes (the others' faults are
        # recorded meanwhile)
        wait_for(
            lambda: (
                all_reported(("crash", "pull", "pending")) is not None
                and condition(tsvc(cluster, namespace, "lost"), "Ready").get("status") == "True"
            ),
            timeout=120,
            what="the node-loss service Ready",
        )
        lost_pods = [p["metadata"]["name"] for p in pods_of(cluster, namespace, "lost")]
        cluster.kubectl("delete", "node", LOST.name + "-0", "--wait=false")
        since["lost"] = time.monotonic()
        if not LONG:
            # what the pod garbage collector does with a deleted node's pods, 40 s later (the
            # long form waits for it)
            cluster.kubectl("delete", "pod", "-n", namespace, *lost_pods, "--grace-period=0",
                            "--force")  # fmt: skip
        try:
            wait_for(lambda: all_reported() is True, timeout=180, what="Degraded with causes")
        except AssertionError:
            raise AssertionError(f"not Degraded with {causes}: {all_reported()}") from None
        lost = tsvc(cluster, namespace, "lost")
        assert condition(lost, "Ready").get("status") == "False", lost.get("status")

        # the window: every fault in force, nothing changes but what the kubelet reports
        window_start = time.monotonic()
        time.sleep(WINDOW)
        window_end = time.monotonic()
        minutes = (window_end - window_start) / 60.0
        per_service: dict[str, dict[str, Any]] = {}
        for name in causes:
            counts = counter.count(name, window_start, window_end)
            children = sum(n for kind, n in counts.items() if kind not in ("InferenceService",
                                                                           "Event"))  # fmt: skip
            before = counter.count(name, 0.0, window_start)
            per_service[name] = {
                # the meter at work: creating the service wrote its children and status
                "writes_before_window": sum(before.values()),
                "degraded_reason": conds[name]["reason"],
                "seconds_to_degraded": seconds[name],
                "child_writes": children,
                "status_writes_per_minute": round(counts["InferenceService"] / minutes, 2),
                "events_per_minute": round(counts["Event"] / minutes, 2),
            }
        pods = {name: len(pods_of(cluster, namespace, name)) for name in causes}
    finally:
        counter.stop()
    figures = {
        "window_seconds": round(window_end - window_start, 1),
        "services": per_service,
        "max_status_writes_per_minute": max(
            s["status_writes_per_minute"] for s in per_service.values()
        ),
        "child_writes": sum(s["child_writes"] for s in per_service.values()),
        "pods_at_end": pods,
        "drill_seconds": round(time.monotonic() - started, 1),
    }
    record(figures)
    print(json.dumps(figures, indent=2))
    assert operator.alive(), operator.tail()
    for name, got in per_service.items():
        assert got["writes_before_window"] >= 3, (name, figures)  # else the meter saw nothing
        assert got["child_writes"] <= MAX_CHILD_WRITES, (name, figures)
        assert got["status_writes_per_minute"] <= MAX_STATUS_WRITES_PER_MINUTE, (name, figures)
        assert got["events_per_minute"] <= MAX_EVENTS_PER_MINUTE, (name, figures)
    # no pod churn either: one pod per replica, never a growing pile
    assert all(n <= 1 for n in pods.values()), figures

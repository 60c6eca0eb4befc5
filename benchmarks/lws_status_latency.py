"""How fast a child's readiness reaches the InferenceService status: LeaderWorkerSet vs Deployment.

Issue 20 asks that readiness changes of LWS objects reach status as quickly as Deployment changes
do (both are watched; see ``controller/watches.py``). On the test bed with the real LWS controller
(v0.9.0) and the operator (``leaderWorkerSet: true``), for each kind and each trial:

1. the leader pod (LWS) or the only pod (Deployment) is made un-Ready the way the kubelet does
   after a failed readiness probe (a status patch; KWOK does not undo it), then Ready again;
2. a 0.1 s poll records when the child's status shows the change (``readyReplicas``: the
   controller's part) and when the service's ``Ready`` condition follows (the operator's part).

``operator_seconds`` (child status -> service status) is the operator's latency, the number the
issue is about; ``pod_to_service_seconds`` includes the child's controller. The two services run
side by side in one namespace (the multinode one on the two MI300X nodes, the Deployment one on
an MI355X node), so load affects both alike.

Usage: ``.venv/bin/python -m benchmarks.lws_status_latency [--trials 5] [--out ...]``
Writes ``{"lws": {...}, "deployment": {...}}`` with per-trial numbers and medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from tests.e2e.helpers import apply, condition, example, get, wait_for
from tests.e2e.operator_proc import OPERATOR_CONFIG, OperatorProcess, install_crds_and_rbac
from tests.testbed.cluster import Cluster
from tests.testbed.lws import LwsController

from tokenscale.constants import LABEL_SERVICE

OUT = Path(__file__).parent / "results" / "lws-status-latency.json"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"


def _poll(check: Callable[[], bool], timeout: float = 120) -> float:
    """Monotonic time at which ``check`` first held (0.1 s poll)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError("condition not reached")


def _set_ready(cluster: Cluster, namespace: str, pod: str, value: str) -> None:
    conds = [{"type": t, "status": value} for t in ("Ready", "ContainersReady")]
    cluster.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status",
                    "-p", json.dumps({"status": {"conditions": conds}}))  # fmt: skip


def _trial(
    cluster: Cluster, namespace: str, service: str, pod: str, child: tuple[str, str]
) -> list[dict[str, float]]:
    """Ready -> not Ready -> Ready once; the latencies of both transitions."""
    out = []
    for value, ready_replicas in (("False", 0), ("True", 1)):

        def child_moved(ready_replicas: int = ready_replicas) -> bool:
            status = (get(cluster, child[0], child[1], "-n", namespace) or {}).get("status") or {}
            return int(status.get("readyReplicas") or 0) == ready_replicas

        def service_moved(value: str = value) -> bool:
            svc = get(cluster, "tsvc", service, "-n", namespace)
            return condition(svc, "Ready").get("status") == value

        start = time.monotonic()
        _set_ready(cluster, namespace, pod, value)
        child_at = _poll(child_moved)
        service_at = _poll(service_moved)
        out.append(
            {
                "to_ready": value == "True",
                "child_seconds": round(child_at - start, 2),
                "operator_seconds": round(max(0.0, service_at - child_at), 2),
                "pod_to_service_seconds": round(service_at - start, 2),
            }
        )
    return out


def _summary(trials: list[dict[str, float]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return round(statistics.median(t[key] for t in trials), 2)

    return {
        "transitions": len(trials),
        "operator_seconds_median": med("operator_seconds"),
        "operator_seconds_max": max(t["operator_seconds"] for t in trials),
        "pod_to_service_seconds_median": med("pod_to_service_seconds"),
        "trials": trials,
    }


def _ready_service(cluster: Cluster, namespace: str, name: str) -> None:
    wait_for(
        lambda: (
            condition(get(cluster, "tsvc", name, "-n", namespace), "Ready").get("status") == "True"
        ),
        timeout=180,
        what=f"{name} Ready",
    )


def run(trials: int, work: Path) -> dict[str, Any]:
    with Cluster() as cluster:
        install_crds_and_rbac(cluster)
        LwsController(cluster).start()
        config = yaml.safe_load(OPERATOR_CONFIG.read_text())
        config["leaderWorkerSet"] = True
        path = work / "operator-config.yaml"
        path.write_text(yaml.safe_dump(config))
        operator = OperatorProcess(cluster, config=path, name="operator-latency").start()
        namespace = f"latency-{uuid.uuid4().hex[:6]}"
        core = client.CoreV1Api(cluster.api_client())
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        cluster.wait_default_sa(namespace)
        try:
            multi = example("llama31-405b-multinode.yaml")
            multi["spec"]["scaling"] = {"mode": "external"}
            single = example("llama2-70b-mi355x.yaml")
            single["spec"]["scaling"] = {"mode": "external"}
            single["spec"]["pools"][0]["minReplicas"] = 1
            single["spec"]["pools"][0]["maxReplicas"] = 1
            for doc in (multi, single):
                apply(cluster, namespace, doc)
            mname, sname = multi["metadata"]["name"], single["metadata"]["name"]
            _ready_service(cluster, namespace, mname)
            _ready_service(cluster, namespace, sname)
            lws_name = f"{mname}-mi300x"
            deployment = f"{sname}-{single['spec']['pools'][0]['name']}"
            results: dict[str, list[dict[str, float]]] = {"lws": [], "deployment": []}
            for _ in range(trials):
                leader = f"{lws_name}-0"  # the LWS names group 0's leader after the set
                results["lws"] += _trial(
                    cluster, namespace, mname, leader, ("leaderworkersets", lws_name)
                )
                pods = get(cluster, "pods", "-n", namespace, "-l",
                           f"{LABEL_SERVICE}={sname}")  # fmt: skip
                names = [
                    p["metadata"]["name"]
                    for p in (pods or {}).get("items", [])
                    if p["metadata"]["name"].startswith(deployment)
                    and not p["metadata"].get("deletionTimestamp")
                ]
                if len(names) != 1:
                    raise RuntimeError(f"expected one pod of {deployment}, found {names}")
                results["deployment"] += _trial(
                    cluster, namespace, sname, names[0], ("deployments", deployment)
                )
            return {kind: _summary(t) for kind, t in results.items()}
        finally:
            operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="Ready->not->Ready cycles per kind")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lws-latency-") as work:
        result = run(args.trials, Path(work))
    doc = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.lws_status_latency " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "wall_seconds": round(time.monotonic() - started, 1),
        **result,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "trials"}
                      for k, r in result.items()}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""P1: how fast the operator brings a fleet of InferenceServices to Ready, and what it costs.

On the test bed with N fake GPU nodes, create S InferenceServices and measure the time until all
are Ready, the operator's RSS and its idle CPU. Baseline, measured in the same run on the same
cluster: a plain client server-side-applying exactly the objects the operator would create
(rendered by the same functions), and waiting for the same readiness. The ratio isolates the
operator's own overhead from the control plane's.

    python -m benchmarks.reconcile_scale --services 1000 --nodes 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.e2e.operator_proc import OperatorProcess, install_crds_and_rbac
from tests.testbed.cluster import Cluster
from tests.testbed.nodes import scale_pools

from benchmarks.procstat import cpu_seconds, rss_mb
from tokenscale.api.base import ObjectMeta
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService, InferenceServiceSpec
from tokenscale.k8s.kube import Kube
from tokenscale.plan import plan_service
from tokenscale.render import render_all

RESULTS = Path(__file__).parent / "results" / "reconcile-scale.json"
GPUS = ("MI300X", "MI325X", "MI355X")


def spec(i: int) -> dict[str, Any]:
    return {
        "model": {"name": "llama-2-70b", "architecture": "llama-2-70b",
                  "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"}, "dtype": "fp8"},
        "pools": [{"name": "p", "gpu": GPUS[i % 3], "minReplicas": 1, "maxReplicas": 2}],
    }  # fmt: skip


def manifest(i: int, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": f"svc-{i:04d}", "namespace": namespace},
        "spec": spec(i),
    }


def rendered(i: int, namespace: str, cfg: OperatorConfig) -> list[dict[str, Any]]:
    svc = InferenceService(
        api_version="tokenscale.dev/v1alpha1",
        kind="InferenceService",
        metadata=ObjectMeta(name=f"svc-{i:04d}", namespace=namespace),
        spec=InferenceServiceSpec.model_validate(spec(i)),
    )
    plans = plan_service(svc, cfg)
    objs = render_all(svc, cfg, plans, {"p": 1}).objects
    for obj in objs:
        obj["metadata"]["namespace"] = namespace
    return objs


def ready_deployments(api: client.ApiClient, namespace: str) -> int:
    items = client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    return sum(1 for d in items if (d.status.ready_replicas or 0) >= 1)


def ready_services(kube: Kube, namespace: str) -> int:
    items = kube.list("InferenceService", namespace)
    return sum(
        1
        for o in items
        for cond in (o.get("status") or {}).get("conditions") or []
        if cond["type"] == "Ready" and cond["status"] == "True"
    )


def wait_count(count: Any, total: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if count() >= total:
            return time.monotonic() - start
        time.sleep(1)
    raise TimeoutError(f"only {count()} of {total} ready after {timeout:.0f}s")


def create_namespace(api: client.ApiClient, cluster: Cluster, name: str) -> None:
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata={"name": name}))
    cluster.wait_default_sa(name)


def run(services: int, nodes: int, idle_seconds: float, workers: int) -> dict[str, Any]:
    cfg = OperatorConfig()
    with Cluster(pools=scale_pools(nodes), start_kubelet=False) as cluster:
        install_crds_and_rbac(cluster)
        api = cluster.api_client()
        admin = Kube(api)

        create_namespace(api, cluster, "baseline")
        objects = [o for i in range(services) for o in rendered(i, "baseline", cfg)]
        start = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(admin.apply, objects))
        created = time.monotonic() - start
        base = created + wait_count(lambda: ready_deployments(api, "baseline"), services, 1800)
        print(f"baseline: {len(objects)} objects applied in {created:.1f}s, ready in {base:.1f}s")
        cluster.kubectl("delete", "namespace", "baseline", "--wait=false")

        operator = OperatorProcess(cluster).start()
        assert operator.proc is not None
        try:
            create_namespace(api, cluster, "fleet")
            start = time.monotonic()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(admin.apply, (manifest(i, "fleet") for i in range(services))))
            total = time.monotonic() - start
            total += wait_count(lambda: ready_services(admin, "fleet"), services, 3600)
            print(f"operator: {services} services Ready in {total:.1f}s")
            time.sleep(10)  # let the status refreshes of the last pods settle
            cpu0 = cpu_seconds(operator.proc.pid)
            time.sleep(idle_seconds)
            cpu1, rss = cpu_seconds(operator.proc.pid), rss_mb(operator.proc.pid)
        finally:
            operator.stop()
        api.close()
    return {
        "services": services,
        "nodes": nodes,
        "baseline_seconds": round(base, 2),
        "operator_seconds": round(total, 2),
        "time_ratio_vs_baseline": round(total / base, 3),
        "operator_rss_mb": round(rss, 1),
        "idle_cpu_fraction": round((cpu1 - cpu0) / idle_seconds, 4),
        "idle_window_seconds": idle_seconds,
        "targets": {
            "time_ratio_vs_baseline": 1.5,
            "operator_rss_mb": 200,
            "idle_cpu_fraction": 0.05,
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.reconcile_scale " + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=16, help="client threads for creation")
    args = parser.parse_args()
    result = run(args.services, args.nodes, args.idle_seconds, args.workers)
    print(f"{'metric':<26}{'value':>12}{'target':>10}")
    for key, target in result["targets"].items():
        print(f"{key:<26}{result[key]:>12}{target:>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Router mode for real on the process kubelet: the rendered vllm-router pods (the real Rust
binary, from its cached venv) discover simulated engine pods through the API server with their
own narrow ServiceAccount, and requests through the service's stable name succeed.

Rendered offline (``render_service``) and applied with kubectl, with the test bed's run label
added so the process kubelet runs the pods; the operator's apply/prune path is covered by
test_routing.py."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import get, wait_for
from tests.testbed import vllm_router
from tests.testbed.cluster import PROCESS_LABEL, PROCESS_LABEL_VALUE, Cluster
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.render import cli as render_cli
from tokenscale.render import router as router_mod

pytestmark = pytest.mark.e2e
NAME = "routed"
TESTBED_CONFIG = Path(__file__).parents[1] / "testbed" / "operator-config.yaml"

SERVICE = {
    "apiVersion": "tokenscale.dev/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": NAME},
    "spec": {
        "model": {
            "name": "llama-2-70b",
            "architecture": "llama-2-70b",
            "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"},
            "dtype": "fp8",
            "maxModelLen": 4096,
        },
        "engine": {"mode": "simulated"},
        "pools": [{"name": "mi355x", "gpu": "MI355X", "minReplicas": 2, "maxReplicas": 2}],
        "podTemplate": {"labels": {PROCESS_LABEL: PROCESS_LABEL_VALUE}},
        "routing": {"mode": "router", "router": {"policy": "round_robin", "replicas": 2}},
    },
}


def _objects(namespace: str) -> list[dict[str, Any]]:
    svc = InferenceService.model_validate(SERVICE)
    # The test bed's operator config: pods bind their own loopback pod IP ($(POD_IP)).
    config = OperatorConfig.load(TESTBED_CONFIG)
    result, notes = render_cli.render_service(svc, config, {"mi355x": 2})
    assert not result.problems, (result.problems, notes)
    objs = []
    for obj in result.objects:
        if obj["kind"] in ("PodDisruptionBudget",):
            continue
        obj["metadata"]["namespace"] = namespace
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == router_mod.router_name(NAME):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            labels[PROCESS_LABEL] = PROCESS_LABEL_VALUE
        objs.append(obj)
    return objs


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def test_requests_through_the_router_pods_reach_discovered_engines(
    cluster: Cluster, namespace: str
) -> None:
    vllm_router.ensure()  # once per machine; the image map points the router image at it
    docs = _objects(namespace)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def ready_routers() -> list[dict[str, Any]] | None:
        pods = get(cluster, "pods", "-n", namespace, "-l", f"{router_mod.LABEL_ROUTER}={NAME}")
        ready = [
            p
            for p in (pods or {}).get("items", [])
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]
        return ready if len(ready) == 2 else None

    routers = wait_for(ready_routers, timeout=240, what="2 router pods Ready (engines discovered)")
    ip = routers[0]["status"]["podIP"]
    assert ip.startswith("127.10.")
    with urllib.request.urlopen(f"http://{ip}:8000/readiness", timeout=10) as resp:
        readiness = json.loads(resp.read())
    assert readiness["healthy_workers"] == 2, readiness  # both engines, found by label

    ok = 0
    for i in range(10):
        pod_ip = routers[i % 2]["status"]["podIP"]
        status, body = _post(
            f"http://{pod_ip}:8000/v1/completions",
            {"model": "llama-2-70b", "prompt": f"hello {i}", "max_tokens": 4},
        )
        ok += status == 200 and body["usage"]["completion_tokens"] == 4
        time.sleep(0.05)
    assert ok == 10

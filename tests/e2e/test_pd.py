"""Prefill/decode disaggregation on the test bed: a simulated P/D service (2 prefill, 4 decode,
MI355X) applied by the operator serves streamed requests through the real vllm-router in P/D
mode (the rendered router pods, discovering each role by label through the API server), the KV
is handed over (the decode engines' prompt tokens arrive by transfer), and under a benchmark's
load each role scales on its own signal: prefill on prompt tokens/s, decode on generation
tokens/s.

The connector is nixl: the simulator speaks the HTTP hand-over vllm-router uses for NIXL, not
MoRI-IO's ZMQ registration (docs/disaggregation.md). The router pods get the test bed's
process-run label by a patch of their Deployment (the operator renders no user labels on router
pods; server-side apply leaves a label another manager added alone).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import apply, condition, get, wait_for
from tests.e2e.operator_proc import OperatorProcess
from tests.testbed import vllm_router
from tests.testbed.cluster import PROCESS_LABEL, PROCESS_LABEL_VALUE, Cluster
from tokenscale.render import pd as pd_mod
from tokenscale.render import router as router_mod

pytestmark = pytest.mark.e2e
NAME = "pd"

SERVICE: dict[str, Any] = {
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
        "pools": [
            {
                "name": "prefill",
                "gpu": "MI355X",
                "gpusPerReplica": 1,
                "minReplicas": 2,
                "maxReplicas": 4,
            },
            {
                "name": "decode",
                "gpu": "MI355X",
                "gpusPerReplica": 1,
                "minReplicas": 4,
                "maxReplicas": 6,
            },
        ],
        # 8 req/s x 512 prompt tokens = ~4,100 prompt tok/s: 4 prefill replicas at 1,200;
        # 8 req/s x 64 output tokens = ~510 generation tok/s: 6 decode replicas at 100.
        "disaggregation": {
            "kvConnector": "nixl",
            "prefill": {"pools": ["prefill"], "targetPerReplica": 1200},
            "decode": {"pools": ["decode"], "targetPerReplica": 100},
        },
        "podTemplate": {"labels": {PROCESS_LABEL: PROCESS_LABEL_VALUE}},
        "routing": {"mode": "router", "router": {"policy": "round_robin", "replicas": 2}},
        "scaling": {
            "mode": "builtin",
            "windowSeconds": 10,
            "scaleDownStabilizationSeconds": 15,
        },
    },
}


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def _pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    found = get(cluster, "pods", "-n", namespace, "-l", selector) or {}
    return [p for p in found.get("items", []) if _ready(p)]


def _counters(ip: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://{ip}:8000/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_total"):
                key = (s.name, s.labels.get("source", ""))
                out[key] = out.get(key, 0.0) + s.value
    return out


def _stream(router_ip: str, i: int) -> list[str]:
    body = {
        "model": "llama-2-70b",
        "prompt": f"request {i} " + "tell me about GPUs " * 40,
        "max_tokens": 8,
        "ignore_eos": True,
        "stream": True,
    }
    req = urllib.request.Request(
        f"http://{router_ip}:8000/v1/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        frames = resp.read().decode().split("\n\n")
    return [f.removeprefix("data: ") for f in frames if f.startswith("data: ")]


def _pool(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    svc = get(cluster, "tsvc", NAME, "-n", namespace) or {}
    for pool in (svc.get("status") or {}).get("pools") or []:
        if pool["name"] == name:
            found: dict[str, Any] = pool
            return found
    return {}


def test_pd_service_serves_through_the_router_and_scales_each_role_on_its_own_signal(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    vllm_router.ensure()
    apply(cluster, namespace, SERVICE)
    router = router_mod.router_name(NAME)
    wait_for(lambda: get(cluster, "deploy", router, "-n", namespace), what="router Deployment")
    patch = {"spec": {"template": {"metadata": {"labels": {PROCESS_LABEL: PROCESS_LABEL_VALUE}}}}}
    cluster.kubectl("patch", "deploy", router, "-n", namespace, "--type", "merge",
                    "-p", json.dumps(patch))  # fmt: skip
    wait_for(
        lambda: (
            condition(get(cluster, "tsvc", NAME, "-n", namespace), "Ready").get("status") == "True"
        ),
        timeout=180,
        what="P/D service Ready (6 engines and a router pod ready)",
    )
    # the router pods created before the patch are KWOK's (fake); only the patched ones serve
    routed = f"{router_mod.LABEL_ROUTER}={NAME},{PROCESS_LABEL}={PROCESS_LABEL_VALUE}"
    routers = wait_for(
        lambda: _pods(cluster, namespace, routed), timeout=120, what="a ready router pod"
    )
    router_ip = routers[0]["status"]["podIP"]

    def discovered() -> dict[str, Any] | None:
        with urllib.request.urlopen(f"http://{router_ip}:8000/readiness", timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        found = (body.get("prefill", {}).get("healthy"), body.get("decode", {}).get("healthy"))
        return body if found == (2, 4) else None

    # P/D readiness counts each role: 2 prefill + 4 decode engines, found by their role labels
    wait_for(discovered, timeout=60, what="the router discovering 2 prefill + 4 decode engines")

    for i in range(4):
        events = _stream(router_ip, i)
        assert events[-1] == "[DONE]", events
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        assert len(events) - 1 >= 2 and text, events  # streamed token by token
    role = pd_mod.LABEL_PD_ROLE
    prefill_pods = _pods(cluster, namespace, f"{role}=prefill")
    decode_pods = _pods(cluster, namespace, f"{role}=decode")
    assert len(prefill_pods) == 2 and len(decode_pods) == 4
    pre = [_counters(p["status"]["podIP"]) for p in prefill_pods]
    dec = [_counters(p["status"]["podIP"]) for p in decode_pods]
    # every request: one prefill (1 token, its prompt computed), one decode (8 tokens, the
    # prompt's KV handed over)
    assert sum(c[("vllm:generation_tokens_total", "")] for c in pre) == 4
    assert sum(c[("vllm:generation_tokens_total", "")] for c in dec) == 4 * 8
    assert sum(c[("vllm:prompt_tokens_by_source_total", "external_kv_transfer")] for c in pre) == 0
    handed = sum(c[("vllm:prompt_tokens_by_source_total", "external_kv_transfer")] for c in dec)
    computed = sum(c[("vllm:prompt_tokens_by_source_total", "local_compute")] for c in pre)
    assert handed == computed - 4 > 0  # all but the last prompt token of each request

    load = subprocess.Popen(
        [sys.executable, "-m", "tokenscale", "bench", "--url", f"http://{router_ip}:8000",
         "--model", "llama-2-70b", "--scenario", "server", "--qps", "8", "--duration", "75",
         "--input-len", "512", "--output-len", "64", "--no-progress",
         "--max-client-cpu", "1.0", "--max-lag-ms", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(
            lambda: (
                _pool(cluster, namespace, "prefill").get("desiredReplicas", 0) >= 3
                and _pool(cluster, namespace, "decode").get("desiredReplicas", 0) >= 5
            ),
            timeout=100,
            what="both roles scaled up under load",
        )
    finally:
        load.terminate()
        load.wait(timeout=30)
    history = get(cluster, "tsvc", NAME, "-n", namespace)["status"]["scalingHistory"]
    ups = {d["pool"]: d for d in history if d["toReplicas"] > d["fromReplicas"]}
    assert set(ups) == {"prefill", "decode"}, history
    assert "prompt tok/s" in ups["prefill"]["reason"], ups["prefill"]  # its own signal
    assert "target 1200/replica" in ups["prefill"]["reason"], ups["prefill"]
    assert "prompt tok/s" not in ups["decode"]["reason"], ups["decode"]
    assert "target 100/replica" in ups["decode"]["reason"], ups["decode"]

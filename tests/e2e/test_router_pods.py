"""Router mode for real on the process kubelet: the rendered vllm-router pods (the real Rust
binary, from its cached venv) discover simulated engine pods through the API server with their
own narrow ServiceAccount, and requests through the service's stable name succeed; with one
router pod killed (SIGKILL to its process group, as an OOM kill or node fault would) under
load, the other router pod carries the traffic and the failed requests are counted.

Rendered offline (``render_service``) and applied with kubectl, with the test bed's run label
added so the process kubelet runs the pods; the operator's apply/prune path is covered by
test_routing.py."""

from __future__ import annotations

import json
import os
import signal
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


#: The load client, a pod (the project's image) that reaches the router pods only through the
#: Service ``routed`` (the test bed's Service proxy: a new connection per request, spread round
#: robin over the *ready* router pods, the next one tried when a connect fails, as kube-proxy's
#: endpoints drop a dead pod). Each request gets up to 3 attempts, 0.2 s apart: "retries on".
#: It prints one JSON record per request (start, end, attempts, ok, errors of failed attempts).
CLIENT = """
apiVersion: v1
kind: Pod
metadata:
  name: load
  labels: {{{label}: {value}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: ghcr.io/tokenscale/tokenscale:dev
    command:
    - python
    - -c
    - |
      import json, threading, time, urllib.request
      base = "http://{name}.{ns}.svc:8000"
      for _ in range(240):
          try:
              with urllib.request.urlopen(base + "/readiness", timeout=5) as r:
                  if r.status == 200:
                      break
          except Exception:
              pass
          time.sleep(0.5)
      records, lock = [], threading.Lock()
      def one(tag):
          body = json.dumps({{"model": "llama-2-70b", "prompt": "hello " + tag,
                             "max_tokens": 8}}).encode()
          req = urllib.request.Request(base + "/v1/completions", body,
                                       {{"Content-Type": "application/json"}})
          with urllib.request.urlopen(req, timeout=30) as r:
              return r.status == 200 and json.loads(r.read())["usage"]["completion_tokens"] == 8
      def client(k, end):
          i = 0
          while time.time() < end:
              t0, attempts, ok, errors = time.time(), 0, False, []
              while attempts < 3 and not ok:
                  attempts += 1
                  try:
                      ok = one(f"{{k}}-{{i}}")
                  except Exception as exc:
                      errors.append(type(exc).__name__ + ": " + str(exc)[:80])
                      time.sleep(0.2)
              with lock:
                  records.append({{"t0": t0, "t1": time.time(), "attempts": attempts, "ok": ok,
                                  "errors": errors}})
              i += 1
      end = time.time() + {seconds}
      print("START", time.time(), flush=True)
      threads = [threading.Thread(target=client, args=(k, end)) for k in range(4)]
      for t in threads:
          t.start()
      for t in threads:
          t.join()
      print("RESULT " + json.dumps(records), flush=True)
"""
LOAD_SECONDS = 24
KILL_AFTER_SECONDS = 8


def _pod_log(cluster: Cluster, namespace: str, pod: str) -> str:
    path = Path(cluster.work_dir) / "kubelet" / "logs" / f"{namespace}_{pod}.log"
    return path.read_text() if path.exists() else ""


def _router_requests(pod_ip: str) -> float:
    """``vllm_router_requests_total`` of one router pod (its metrics port), summed over routes."""
    url = f"http://{pod_ip}:{router_mod.METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm_router_requests_total")
    )


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

    _kill_one_router_under_load(cluster, namespace, routers)


def _kill_one_router_under_load(
    cluster: Cluster, namespace: str, routers: list[dict[str, Any]]
) -> None:
    """SIGKILL one router pod's processes while 4 clients send requests through the Service:
    every request still succeeds (with the client's retries), and requests keep succeeding in
    the seconds right after the kill, i.e. on the surviving router pod."""
    manifest = CLIENT.format(
        label=PROCESS_LABEL, value=PROCESS_LABEL_VALUE, name=NAME, ns=namespace,
        seconds=LOAD_SECONDS,
    )  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    wait_for(lambda: "START" in _pod_log(cluster, namespace, "load"), 120, "load client started")
    time.sleep(KILL_AFTER_SECONDS)
    victim, survivor = routers
    pid = int(victim["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    survivor_before = _router_requests(survivor["status"]["podIP"])
    killed_at = time.time()
    os.killpg(pid, signal.SIGKILL)

    def finished() -> dict[str, Any] | None:
        pod = get(cluster, "pod", "load", "-n", namespace)
        phase = (pod or {}).get("status", {}).get("phase")
        return pod if phase in ("Succeeded", "Failed") else None

    wait_for(finished, LOAD_SECONDS + 120, "load client finished")
    survivor_served = _router_requests(survivor["status"]["podIP"]) - survivor_before
    log = _pod_log(cluster, namespace, "load")
    line = next((x for x in log.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, log[-3000:]
    records: list[dict[str, Any]] = json.loads(line.removeprefix("RESULT "))
    failed = [r for r in records if not r["ok"]]
    retried = [r for r in records if r["attempts"] > 1]
    window = [r for r in records if killed_at <= r["t0"] and r["t1"] <= killed_at + 5]
    print(
        f"\nrouter pod killed under load: {len(records)} requests, {len(failed)} failed after "
        f"retries, {len(retried)} needed a retry (first-attempt errors: "
        f"{sorted({e for r in retried for e in r['errors']})}), {len(window)} completed in "
        f"the 5 s after the kill; the surviving router served {survivor_served:.0f} since the kill"
    )
    assert len(records) >= 40, records
    assert not failed, failed
    # The surviving router carried the load at once: requests started after the kill and
    # finished within 5 s of it succeeded (a restarted router needs longer to discover engines).
    assert sum(r["ok"] for r in window) >= 5, (len(window), killed_at)
    after_kill = sum(1 for r in records if r["t0"] >= killed_at)
    assert survivor_served >= after_kill / 2, (survivor_served, after_kill)

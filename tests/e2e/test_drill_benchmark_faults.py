"""Benchmark-fault drill (issue 17): a target that never gets Ready, engine pods killed mid-run,
a server answering errors, and every result write refused a few times before it lands. Each
benchmark ends Failed with a reason, or Succeeded with figures that say they are partial; none
ends in a false pass, and no result is lost.

The result writes are refused by a validating admission webhook on loopback (a small HTTPS
server of this module, trusted through the test bed's CA) that answers 503 to the first
``REFUSALS`` writes of each result ConfigMap: what a benchmark pod sees from an API server that
is restarting or overloaded. The server errors come from the load generator's own fake server
(``tokenscale.bench.fakeserver --fail-every 4``) reached by URL. Short form: 15 s runs;
``TOKENSCALE_DRILL_LONG=1``: 120 s runs and a second kill.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import apply, condition, example, get, pods_of, wait_for
from tests.e2e.operator_proc import OperatorProcess, _die_with_parent, free_port
from tests.testbed import nodes, pki
from tests.testbed.cluster import Cluster
from tokenscale import constants as c

pytestmark = pytest.mark.e2e

LONG = os.environ.get("TOKENSCALE_DRILL_LONG") == "1"
SECONDS = 120 if LONG else 15
KILLS = 2 if LONG else 1
REFUSALS = 3
BROKEN_IMAGE = "registry.invalid/tokenscale/engine:does-not-exist"
RUN_LABEL = {nodes.PROCESS_LABEL: nodes.PROCESS_LABEL_VALUE}
SLA = {"ttftP99Ms": 60000, "tpotP99Ms": 5000}


class FlakyResultStore:
    """A validating webhook that refuses the first ``REFUSALS`` writes of each result ConfigMap
    with 503, then admits; counts what it saw per ConfigMap."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.seen: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.name = f"drill-flaky-results-{namespace}"
        certs = cluster.work_dir / self.name
        pki_dir = cluster.work_dir / "pki"
        crt, key = pki.serving_cert(
            pki_dir / "ca.crt", pki_dir / "ca.key", certs, cn="drill-webhook"
        )
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = review["request"]
                name = request.get("name") or request["object"]["metadata"].get("name", "")
                with store.lock:
                    store.seen[name] += 1
                    refuse = store.refused[name] < REFUSALS
                    if refuse:
                        store.refused[name] += 1
                response: dict[str, Any] = {"uid": request["uid"], "allowed": not refuse}
                if refuse:
                    response["status"] = {
                        "code": 503,
                        "message": "result store unavailable (drill: transient refusal)",
                    }
                body = json.dumps({**{k: review[k] for k in ("apiVersion", "kind")},
                                   "response": response}).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        hook = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [
                {
                    "name": "results.drill.tokenscale.dev",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Ignore",
                    "timeoutSeconds": 5,
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/validate",
                        "caBundle": base64.b64encode(cluster.ca_path.read_bytes()).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "objectSelector": {"matchLabels": {c.LABEL_ROLE: "benchmark-result"}},
                }
            ],
        }
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(hook))
        self._wait_in_force()

    def _wait_in_force(self) -> None:
        """A probe ConfigMap with the result label is refused once the hook is in force."""
        probe = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "probe",
                "namespace": self.namespace,
                "labels": {c.LABEL_ROLE: "benchmark-result"},
            },
        }

        def refused() -> bool:
            out = self.cluster.kubectl(
                "apply", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
            )
            return out.returncode != 0 and "transient refusal" in out.stderr

        wait_for(refused, timeout=60, what="the flaky result store in force")
        with self.lock:
            self.seen.clear()
            self.refused.clear()

    def close(self) -> None:
        self.cluster.kubectl("delete", "validatingwebhookconfiguration", self.name, check=False)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(cluster: Cluster, namespace: str) -> Iterator[FlakyResultStore]:
    store = FlakyResultStore(cluster, namespace)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def failing_server(cluster: Cluster) -> Iterator[str]:
    """The fake OpenAI server on loopback, every 4th request answered 500."""
    port = free_port()
    log = (cluster.logs_dir / f"fakeserver-{port}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenscale.bench.fakeserver", "--port", str(port),
         "--fail-every", "4", "--ttft", "0.05", "--itl", "0.01"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


def target(name: str, **engine: Any) -> dict[str, Any]:
    doc = example("simulated-llama2-70b.yaml")
    doc["metadata"]["name"] = name
    doc["spec"].pop("sla", None)  # a benchmark without its own SLA then has none: NoSLA
    doc["spec"]["engine"] = {"mode": "simulated", **engine}
    doc["spec"]["pools"] = [{"name": "mi355x", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": 1}]
    doc["spec"]["scaling"] = {"mode": "off"}
    doc["spec"]["replicas"] = 1
    doc["spec"]["podTemplate"] = {"labels": RUN_LABEL}
    return doc


def benchmark(name: str, tgt: dict[str, Any], sla: dict[str, Any] | None, **extra: Any) -> Any:
    spec: dict[str, Any] = {
        "target": tgt,
        "scenario": "server",
        "load": {"qps": 3, "durationSeconds": SECONDS},
        "dataset": {
            "input": {"kind": "fixed", "mean": 64},
            "output": {"kind": "fixed", "mean": 64},
        },
        **extra,
    }
    if sla:
        spec["sla"] = sla
    return {"apiVersion": "tokenscale.dev/v1alpha1", "kind": "InferenceBenchmark",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = (get(cluster, "tsbench", name, "-n", namespace) or {}).get(
        "status"
    ) or {}
    return found


def record(figures: dict[str, Any]) -> None:
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        Path(out, "benchmark_faults.json").write_text(json.dumps(figures, indent=2))


def test_benchmark_faults_end_failed_or_partial_never_a_false_pass_and_lose_no_result(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    flaky: FlakyResultStore,
    failing_server: str,
) -> None:
    started = time.monotonic()
    apply(cluster, namespace, target("victim", args=["--startup-seconds", "1"]))
    apply(cluster, namespace, target("broken", image=BROKEN_IMAGE))
    wait_for(
        lambda: (
            condition(get(cluster, "tsvc", "victim", "-n", namespace), "Ready").get("status")
            == "True"
        ),
        timeout=120,
        what="victim Ready",
    )
    benches = {
        "notready": benchmark("notready", {"service": "broken"}, SLA, targetTimeoutSeconds=10),
        "killed": benchmark("killed", {"service": "victim"}, SLA),
        "killed-nosla": benchmark("killed-nosla", {"service": "victim"}, None),
        "errors": benchmark("errors", {"url": failing_server, "model": "fake"}, SLA),
        # its own load-generator pod killed mid-run: the Job fails, and so must the benchmark
        "podkilled": benchmark("podkilled", {"url": failing_server, "model": "fake"}, SLA),
    }
    for doc in benches.values():
        apply(cluster, namespace, doc)
    t0 = time.monotonic()
    wait_for(
        lambda: all(
            status(cluster, namespace, b).get("phase") == "Running"
            for b in ("killed", "errors", "podkilled")
        ),
        timeout=120,
        what="benchmarks running",
    )
    kills = []
    for _ in range(KILLS):
        time.sleep(6 if not LONG else 30)  # inside the run, after its first requests
        victims = [p["metadata"]["name"] for p in pods_of(cluster, namespace, "victim")]
        cluster.kubectl("delete", "pod", "-n", namespace, *victims, "--grace-period=0", "--force")
        kills.append(round(time.monotonic() - t0, 1))
    runner = get(cluster, "pods", "-n", namespace, "-l", "job-name=podkilled-run")["items"]
    cluster.kubectl("delete", "pod", "-n", namespace, runner[0]["metadata"]["name"],
                    "--grace-period=0", "--force")  # fmt: skip

    def finished() -> bool:
        return all(
            status(cluster, namespace, b).get("phase") in ("Succeeded", "Failed") for b in benches
        )

    wait_for(finished, timeout=SECONDS + 180, what="every benchmark finished")
    results: dict[str, dict[str, Any]] = {}
    for name in benches:
        st = status(cluster, namespace, name)
        res = st.get("results") or {}
        failed = condition({"status": st}, "Failed")
        results[name] = {
            "phase": st.get("phase"),
            "reason": failed.get("reason") if st.get("phase") == "Failed" else None,
            "verdict": st.get("verdict"),
            "requests": res.get("requests"),
            "errors": res.get("errors"),
            "partial": res.get("partial"),
            "first_reason": (st.get("reasons") or [None])[0],
            "reasons": (st.get("reasons") or [])[1:],
            "result_writes_refused": flaky.refused.get(f"{name}-run-r0-0", 0),
            "result_writes_seen": flaky.seen.get(f"{name}-run-r0-0", 0),
        }
    figures = {
        "run_seconds": SECONDS,
        "kills_at_seconds": kills,
        "benchmarks": results,
        "false_passes": sum(
            1 for r in results.values() if r["verdict"] == "Pass" and (r["errors"] or 0) > 0
        ),
        "results_lost": sum(
            1
            for n, r in results.items()
            if n not in ("notready", "podkilled") and r["requests"] is None
        ),
        "result_write_refusals": sum(r["result_writes_refused"] for r in results.values()),
        "drill_seconds": round(time.monotonic() - started, 1),
    }
    record(figures)
    print(json.dumps(figures, indent=2))
    assert operator.alive(), operator.tail()

    notready = results["notready"]
    assert (notready["phase"], notready["reason"]) == ("Failed", "TargetNotReady"), figures
    assert notready["verdict"] is None, figures
    podkilled = results["podkilled"]
    assert (podkilled["phase"], podkilled["reason"]) == ("Failed", "JobFailed"), figures
    assert podkilled["verdict"] is None and podkilled["requests"] is None, figures
    for name in ("killed", "killed-nosla", "errors"):
        got = results[name]
        # the fault reached the run (else the drill proved nothing) ...
        assert (got["errors"] or 0) > 0, (name, figures)
        # ... and the result survived REFUSALS refused writes
        assert got["result_writes_refused"] == REFUSALS, (name, figures)
        assert got["result_writes_seen"] > REFUSALS, (name, figures)
        assert got["phase"] == "Succeeded" and got["requests"], (name, figures)
        assert got["partial"] is True and got["first_reason"].startswith("partial: "), figures
    # never a pass; Invalid (a client too busy to hold the schedule, on a loaded CI machine)
    # wins over the SLA by design and is no pass either
    assert results["killed"]["verdict"] in ("Fail", "Invalid"), figures
    assert results["errors"]["verdict"] in ("Fail", "Invalid"), figures
    assert results["killed-nosla"]["verdict"] in ("NoSLA", "Invalid"), figures
    assert figures["false_passes"] == 0 and figures["results_lost"] == 0, figures

"""Request-driven scale from zero, end to end on the test bed.

The chart's activator (Deployment, ServiceAccount, Role) runs as a pod of the process kubelet in
the test namespace. A simulated service sleeps at zero; its Service then selects the activator.
A client pod calls the service by its DNS name, exactly as an in-cluster application would: the
request reaches the activator, which wakes the service through /scale, waits for a ready engine
and streams the engine's answer back. Once the engine is ready the Service selects the engines
again, and with no further demand the service idles back to zero.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
import yaml

from tests.e2e.operator_proc import OperatorProcess, helm_template
from tests.e2e.test_operator import apply, example, get, wait_condition, wait_for
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e
PROJECT_IMAGE = "ghcr.io/tokenscale/tokenscale:0.1.0"

#: One streamed completion to http://NAME.NAMESPACE:8000, as any in-cluster client would send it;
#: exits non-zero unless the answer is 200 with streamed tokens.
CLIENT = textwrap.dedent(
    """
    import json, os, sys, time
    import httpx
    url = f"http://{os.environ['TARGET']}:8000/v1/completions"
    body = {"model": "llama-2-70b", "prompt": "wake up", "max_tokens": 16, "stream": True}
    t0 = time.monotonic()
    chunks, status = 0, None
    with httpx.Client(timeout=300, trust_env=False) as client:
        with client.stream("POST", url, json=body) as resp:
            status = resp.status_code
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks += 1
            if status != 200:
                print(resp.read().decode(errors="replace"), file=sys.stderr)
    print(json.dumps({"status": status, "chunks": chunks, "seconds": time.monotonic() - t0}))
    sys.exit(0 if status == 200 and chunks > 0 else 1)
    """
)


def client_job(namespace: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "client", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"testbed.tokenscale.dev/run": "process"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "client",
                            "image": PROJECT_IMAGE,
                            "command": ["python", "-c", CLIENT],
                            "env": [{"name": "TARGET", "value": f"{target}.{namespace}"}],
                        }
                    ],
                },
            },
        },
    }


def route(cluster: Cluster, namespace: str, name: str) -> str | None:
    svc = get(cluster, "service", name, "-n", namespace) or {}
    return ((svc.get("metadata") or {}).get("annotations") or {}).get("tokenscale.dev/route")


def replicas(cluster: Cluster, namespace: str, name: str) -> int:
    obj = get(cluster, "tsvc", name, "-n", namespace) or {}
    return int((obj.get("status") or {}).get("replicas") or 0)


def test_a_request_to_a_service_at_zero_wakes_it_through_the_activator(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    manifests = helm_template(
        cluster,
        "templates/activator.yaml",
        values={
            "activator": {"enabled": True, "namespaces": [namespace], "timeoutSeconds": 240},
            "bindAddress": "$(POD_IP)",
        },
    )
    for doc in yaml.safe_load_all(manifests):
        if doc:
            if doc["kind"] == "Deployment":  # process-run, like every pod that must really run
                labels = doc["spec"]["template"]["metadata"]["labels"]
                labels["testbed.tokenscale.dev/run"] = "process"
            apply(cluster, namespace, doc)
    wait_for(
        lambda: (
            (d := get(cluster, "deployment", "tokenscale-activator", "-n", namespace))
            and (d.get("status") or {}).get("readyReplicas") == 1
        ),
        timeout=120,
        what="activator Ready",
    )

    doc = example("simulated-llama2-70b.yaml")
    doc["metadata"]["name"] = "sleepy"
    doc["spec"]["pools"] = [{"name": "mi355x", "gpu": "MI355X", "minReplicas": 0, "maxReplicas": 2}]
    doc["spec"]["replicas"] = 0
    doc["spec"]["scaling"] = {
        "mode": "builtin",
        "targetPerReplica": 100000,
        "windowSeconds": 10,
        "scaleToZero": True,
        "scaleToZeroGraceSeconds": 30,
    }
    apply(cluster, namespace, doc)
    asleep = wait_condition(cluster, namespace, "sleepy", "Ready", lambda c: c["status"] == "True")
    assert asleep["reason"] == "ScaledToZero"
    wait_for(
        lambda: route(cluster, namespace, "sleepy") == "activator",
        timeout=60,
        what="the sleeping service's Service routed to the activator",
    )
    svc = get(cluster, "service", "sleepy", "-n", namespace)
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "activator"

    apply(cluster, namespace, client_job(namespace, "sleepy"))
    job = wait_for(
        lambda: (
            (j := get(cluster, "job", "client", "-n", namespace))
            and ((j.get("status") or {}).get("succeeded") or (j.get("status") or {}).get("failed"))
            and j
        ),
        timeout=300,
        what="the client's request answered",
    )
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    messages = [(e.get("reason"), e.get("message") or "") for e in events["items"]]
    assert job["status"].get("succeeded") == 1, (job["status"], messages)
    woke = [m for r, m in messages if r == "WokeFromZero"]
    assert woke and "activator" in woke[0], messages
    assert "RoutedToActivator" in {r for r, _ in messages}, messages

    # Engines ready again: the Service leaves the activator out of the data path.
    wait_for(
        lambda: route(cluster, namespace, "sleepy") == "engines",
        timeout=120,
        what="the Service routed back to the engines",
    )
    svc = get(cluster, "service", "sleepy", "-n", namespace)
    assert svc["spec"]["selector"].get("tokenscale.dev/service") == "sleepy"
    # No more demand: back to zero after the grace period, and the Service back to the activator.
    wait_for(
        lambda: (
            replicas(cluster, namespace, "sleepy") == 0
            and route(cluster, namespace, "sleepy") == "activator"
        ),
        timeout=180,
        what="idle service back at zero behind the activator",
    )

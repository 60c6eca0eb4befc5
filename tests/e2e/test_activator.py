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

import pytest
import yaml

from tests.e2e.helpers import apply, get, wait_condition, wait_for
from tests.e2e.operator_proc import OperatorProcess, helm_template
from tests.testbed.cluster import Cluster
from tests.testbed.request_job import request_job, sleeping_service

pytestmark = pytest.mark.e2e


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
            apply(cluster, namespace, doc)
    wait_for(
        lambda: (
            (d := get(cluster, "deployment", "tokenscale-activator", "-n", namespace))
            and (d.get("status") or {}).get("readyReplicas") == 1
        ),
        timeout=120,
        what="activator Ready",
    )

    doc = sleeping_service("sleepy", 30, windowSeconds=10)
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

    apply(cluster, namespace, request_job("client", namespace, "sleepy", "llama-2-70b"))
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

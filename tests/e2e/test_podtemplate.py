"""spec.podTemplate end to end: a platform team's toleration and PriorityClass put the engine on
a dedicated, tainted node, and a Secret-sourced variable reaches the running engine without its
value leaking into the service's status, Events, the rendered Deployment or the operator log."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.operator_proc import OperatorProcess
from tests.e2e.test_operator import apply, get, pods_of, wait_for
from tests.testbed import nodes
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e
SIMULATED = Path(__file__).parents[2] / "examples" / "simulated-llama2-70b.yaml"
TAINT = {"key": "example.com/dedicated", "value": "llm-serving", "effect": "NoSchedule"}
PRIORITY = 1_000_000


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {k: v for k, _, v in pairs}


def test_toleration_priority_and_secret_env_reach_the_engine(
    cluster: Cluster, operator: OperatorProcess, namespace: str, kube: client.ApiClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    planted = f"planted-{uuid.uuid4().hex}"
    # A dedicated MI300X node that only tolerating pods may use (KWOK keeps it Ready).
    pool = nodes.NodePool(
        f"dedicated-{tag}",
        1,
        nodes.MI300X,
        instance_type="testbed.mi300x.8",
        extra_labels={"example.com/node-pool": tag},
        taints=(TAINT,),
    )
    node_names = nodes.create_nodes(kube, [pool])
    priority_class = f"serving-{tag}"
    scheduling = client.SchedulingV1Api(kube)
    scheduling.create_priority_class(
        client.V1PriorityClass(metadata=client.V1ObjectMeta(name=priority_class), value=PRIORITY)
    )
    try:
        client.CoreV1Api(kube).create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="egress-proxy"),
                data={"url": base64.b64encode(planted.encode()).decode()},
            ),
        )
        doc: dict[str, Any] = yaml.safe_load(SIMULATED.read_text())
        name = doc["metadata"]["name"] = "pod-template"
        doc["spec"]["pools"] = [{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1}]
        doc["spec"]["scaling"] = {"mode": "off"}
        doc["spec"]["podTemplate"] = {
            "nodeSelector": {"example.com/node-pool": tag},
            "tolerations": [{**TAINT, "operator": "Equal"}],
            "priorityClassName": priority_class,
            "env": [
                {
                    "name": "HTTPS_PROXY",
                    "valueFrom": {"secretKeyRef": {"name": "egress-proxy", "key": "url"}},
                }
            ],
        }
        apply(cluster, namespace, doc)

        pod = wait_for(
            lambda: next(
                (
                    p
                    for p in pods_of(cluster, namespace, name)
                    if (p["status"].get("containerStatuses") or [{}])[0].get("ready")
                ),
                None,
            ),
            timeout=120,
            what="engine pod Ready",
        )
        # Placement: on the tainted node (the only one with the label), at the class's priority.
        assert pod["spec"]["nodeName"] == node_names[0]
        assert pod["spec"]["priorityClassName"] == priority_class
        assert pod["spec"]["priority"] == PRIORITY
        node = get(cluster, "node", node_names[0])
        assert TAINT in [{k: t[k] for k in TAINT} for t in node["spec"]["taints"]]

        # The engine process (run by the test bed's process kubelet) has the Secret's value...
        engine = pod["spec"]["containers"][0]
        assert {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {
            "name": "egress-proxy", "key": "url"}}} in engine["env"]  # fmt: skip
        pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
        assert _environ(pid).get("HTTPS_PROXY") == planted

        # ...and nothing the operator writes or logs does.
        svc = cluster.kubectl("get", "tsvc", name, "-n", namespace, "-o", "yaml").stdout
        assert "podTemplate" in svc and "HTTPS_PROXY" in svc
        deploy = cluster.kubectl("get", "deploy", "-n", namespace, "-o", "yaml").stdout
        assert "secretKeyRef" in deploy
        events = cluster.kubectl("get", "events", "-n", namespace, "-o", "yaml").stdout
        assert "pod-template" in events
        log = operator.log_path.read_text(errors="replace")
        assert "Handler " in log  # the live operator's log (plain format names no objects)
        for where, text in (("service", svc), ("deployment", deploy), ("events", events),
                            ("operator log", log)):  # fmt: skip
            assert planted not in text, f"the Secret's value leaked into the {where}"
    finally:
        cluster.kubectl("delete", "tsvc", "--all", "-n", namespace, "--wait=false", check=False)
        scheduling.delete_priority_class(priority_class)
        nodes.delete_nodes(kube, node_names)

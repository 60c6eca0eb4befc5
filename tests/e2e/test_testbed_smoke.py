"""Smoke test of the test bed itself: the real scheduler places pods on fake AMD GPU nodes.

Why: every other e2e test trusts that node labels, ``amd.com/*`` capacities and KWOK's
pod lifecycle behave like a real GPU cluster.  These checks fail first, and clearly,
if the test bed (not the operator) is broken.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client

from tests.testbed import build
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e

MI355X = "AMD_Instinct_MI355X_OAM"


def _pod_spec(resources: dict[str, str], node_selector: dict[str, str] | None = None) -> Any:
    return client.V1PodSpec(
        containers=[
            client.V1Container(
                name="main",
                image="registry.invalid/pause:1",
                resources=client.V1ResourceRequirements(limits=resources, requests=resources),
            )
        ],
        node_selector=node_selector,
        termination_grace_period_seconds=0,
    )


def _wait(fn: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_fake_nodes_are_ready_with_amd_labels(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    gpu = core.list_node(label_selector="amd.com/gpu.device-id=75a3").items
    assert len(gpu) == 2
    node = gpu[0]
    assert node.status.allocatable["amd.com/gpu"] == "8"
    labels = node.metadata.labels
    assert labels["amd.com/gpu.product-name"] == MI355X
    assert labels["beta.amd.com/gpu.device-id.75a3"] == "8"
    assert labels["feature.node.kubernetes.io/amd-gpu"] == "true"
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    assert {a.address for a in node.status.addresses if a.type == "InternalIP"} == {"127.0.0.1"}


def test_deployment_lands_on_mi355x_and_runs(kube: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    labels = {"app": "gpu8"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="gpu8"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=_pod_spec({"amd.com/gpu": "8"}, {"amd.com/gpu.product-name": MI355X}),
                ),
            ),
        ),
    )

    def running_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=gpu8").items
        return next((p for p in pods if p.status.phase == "Running"), None)

    pod = _wait(running_pod, what="gpu8 pod Running")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["amd.com/gpu.product-name"] == MI355X
    assert pod.status.pod_ip and pod.status.pod_ip.startswith("127.244.")
    dep = _wait(
        lambda: (
            (d := apps.read_namespaced_deployment(name="gpu8", namespace=namespace))
            and d.status.ready_replicas == 1
            and d
        ),
        what="deployment ready",
    )
    assert dep.status.ready_replicas == 1


def test_too_many_gpus_stays_pending_with_scheduler_reason(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="gpu16"), spec=_pod_spec({"amd.com/gpu": "16"})
        ),
    )

    def unschedulable() -> Any:
        pod = core.read_namespaced_pod("gpu16", namespace)
        conds = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
        return conds[0] if conds and conds[0].reason == "Unschedulable" else None

    cond = _wait(unschedulable, what="PodScheduled=False/Unschedulable")
    assert cond.status == "False"
    assert "Insufficient amd.com/gpu" in cond.message
    pod = core.read_namespaced_pod("gpu16", namespace)
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name


def test_partitioned_resource_lands_on_cpx_node(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="cpx8"), spec=_pod_spec({"amd.com/cpx_nps4": "8"})
        ),
    )

    def running() -> Any:
        pod = core.read_namespaced_pod("cpx8", namespace)
        return pod if pod.status.phase == "Running" else None

    pod = _wait(running, what="cpx8 Running")
    labels = core.read_node(pod.spec.node_name).metadata.labels
    assert labels["amd.com/gpu.compute-memory-partition"] == "cpx_nps4"
    assert labels["amd.com/compute-memory-partition"] == "cpx_nps4"


def test_kubectl_and_versions(cluster: Cluster) -> None:
    want = build.module_version("k8s", "k8s.io/kubernetes")
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == want
    assert out["serverVersion"]["gitVersion"] == want
    assert cluster.kubectl("get", "nodes", "-o", "name").stdout.count("node/") >= 9


def test_create_token_authenticates_as_serviceaccount(cluster: Cluster, namespace: str) -> None:
    token = cluster.create_token(namespace, "default", seconds=600)
    res = cluster.kubectl(
        f"--token={token}",
        "--user=",
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    )
    assert res.stdout == f"system:serviceaccount:{namespace}:default"

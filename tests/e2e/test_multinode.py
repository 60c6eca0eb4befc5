"""Multi-node replicas on the real LeaderWorkerSet controller (sigs.k8s.io/lws v0.9.0).

``examples/llama31-405b-multinode.yaml`` (TP 8 x PP 2: two 8-GPU MI300X nodes per replica) with
``leaderWorkerSet: true``: the operator renders a LeaderWorkerSet, the LWS controller (built and
started by the ``lws`` fixture, its webhooks called by the API server on loopback) makes the
leader and worker pods, the scheduler spreads them over MI300X nodes, KWOK runs them.

What KWOK cannot show: KWOK marks a bound pod Running and Ready without running a process or a
probe. So "the leader's probes gate Ready" is checked in two halves: the leader carries the
readiness/startup probes and the headless worker none, and when the leader's Ready condition
goes False (written here the way the kubelet writes it after a failed readiness probe) the LWS
counts no ready group and the service is not Ready until it is True again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import apply, condition, example, get, wait_for
from tests.e2e.operator_proc import OPERATOR_CONFIG, OperatorProcess
from tests.testbed import nodes
from tests.testbed.cluster import Cluster
from tests.testbed.lws import LwsController
from tokenscale import constants as c

pytestmark = pytest.mark.e2e

LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
GROUP_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_LABEL = c.LWS_LABEL_WORKER_INDEX
# Two MI300X nodes exist in the test bed; two groups of two pods need four.
EXTRA = nodes.NodePool("mn-mi300x", 2, nodes.MI300X, instance_type="testbed.mi300x.8")


@pytest.fixture
def lws_operator(
    cluster: Cluster, operator: OperatorProcess, lws: LwsController, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The session operator steps aside for one with LeaderWorkerSet enabled."""
    config = yaml.safe_load(OPERATOR_CONFIG.read_text())
    config["leaderWorkerSet"] = True
    path = tmp_path / "operator-config.yaml"
    path.write_text(yaml.safe_dump(config))
    operator.stop()
    proc = OperatorProcess(cluster, config=path, name="operator-multinode").start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator-multinode log (tail):\n{proc.tail(40)}")
        print(f"\nlws-manager log (tail):\n{lws.log_tail(40)}")
        operator.start()


@pytest.fixture
def four_mi300x_nodes(cluster: Cluster) -> Iterator[list[str]]:
    with cluster.api_client() as api:
        names = nodes.create_nodes(api, [EXTRA])
    wait_for(
        lambda: all(
            condition(get(cluster, "node", n), "Ready").get("status") == "True" for n in names
        ),
        what="extra MI300X nodes Ready",
    )
    try:
        yield names
    finally:
        with cluster.api_client() as api:
            nodes.delete_nodes(api, names)


def group_pods(cluster: Cluster, namespace: str, lws_name: str) -> list[dict[str, Any]]:
    out = get(cluster, "pods", "-n", namespace, "-l", f"{LWS_NAME_LABEL}={lws_name}")
    return [p for p in (out or {}).get("items", []) if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def env_names(pod: dict[str, Any]) -> set[str]:
    return {e["name"] for e in pod["spec"]["containers"][0].get("env") or []}


def service_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return (get(cluster, "tsvc", name, "-n", namespace) or {}).get("status") or {}


def wait_groups(
    cluster: Cluster, namespace: str, name: str, lws_name: str, groups: int
) -> list[dict[str, Any]]:
    """``groups`` ready groups of two pods, and the service saying ``groups`` ready replicas."""

    def settled() -> list[dict[str, Any]] | None:
        pods = group_pods(cluster, namespace, lws_name)
        if len(pods) != 2 * groups or not all(ready(p) for p in pods):
            return None
        status = service_status(cluster, namespace, name)
        pool = (status.get("pools") or [{}])[0]
        if pool.get("readyReplicas") != groups or status.get("replicas") != groups:
            return None
        return pods

    try:
        result: list[dict[str, Any]] = wait_for(
            settled, timeout=120, what=f"{groups} ready group(s) of 2 pods counted as {groups}"
        )
    except AssertionError as exc:
        pods = [(p["metadata"]["name"], ready(p)) for p in group_pods(cluster, namespace, lws_name)]
        status = service_status(cluster, namespace, name)
        summary = {k: status.get(k) for k in ("replicas", "readyReplicas", "pools", "conditions")}
        lws = (get(cluster, "leaderworkersets", lws_name, "-n", namespace) or {}).get("status")
        raise AssertionError(
            f"{exc}; pods {pods}; LWS status {lws}; service status {summary}"
        ) from exc
    return result


def test_multinode_replicas_on_the_real_lws_controller(
    cluster: Cluster,
    namespace: str,
    lws_operator: OperatorProcess,
    four_mi300x_nodes: list[str],
) -> None:
    doc = example("llama31-405b-multinode.yaml")
    doc["spec"]["pools"][0]["maxReplicas"] = 2
    doc["spec"]["scaling"] = {"mode": "external"}  # /scale is driven by this test, as by an HPA
    name = doc["metadata"]["name"]
    lws_name = f"{name}-mi300x"
    apply(cluster, namespace, doc)

    # One group: a leader and a worker, made by the LWS controller, on two MI300X nodes.
    pods = wait_groups(cluster, namespace, name, lws_name, 1)
    by_index = {p["metadata"]["labels"][WORKER_LABEL]: p for p in pods}
    assert set(by_index) == {"0", "1"}
    leader, worker = by_index["0"], by_index["1"]
    assert leader["metadata"]["labels"][c.LABEL_ROLE] == c.ROLE_LEADER
    assert worker["metadata"]["labels"][c.LABEL_ROLE] == c.ROLE_WORKER
    node_names = {p["spec"]["nodeName"] for p in pods}
    assert len(node_names) == 2, "a group's pods must land on two different nodes"
    mi300x = {f"mi300x-{i}" for i in range(2)} | set(four_mi300x_nodes)
    assert node_names <= mi300x, f"pods on {node_names}, not on MI300X nodes"
    for pod in pods:
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["amd.com/gpu"] == "8"
        # The LWS pod webhook ran (URL webhook on loopback): it injected the group's env.
        assert {"LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX"} <= env_names(pod)
    leader_addr = next(
        e["value"]
        for e in worker["spec"]["containers"][0]["env"]
        if e["name"] == "LWS_LEADER_ADDRESS"
    )
    assert leader_addr.startswith(f"{leader['metadata']['name']}.{lws_name}.{namespace}")
    # vLLM's multi-node launch: the worker is headless, rank from the worker-index label.
    assert "--headless" in worker["spec"]["containers"][0]["args"]
    assert "--headless" not in leader["spec"]["containers"][0]["args"]
    # The leader's probes gate Ready; the headless worker (no HTTP server) has none.
    assert "readinessProbe" in leader["spec"]["containers"][0]
    assert "readinessProbe" not in worker["spec"]["containers"][0]
    # Only the leader is an endpoint of the Service.
    assert leader["metadata"]["labels"].get(c.LABEL_ENDPOINT) == "true"
    assert c.LABEL_ENDPOINT not in worker["metadata"]["labels"]

    svc = get(cluster, "tsvc", name, "-n", namespace)
    assert condition(svc, "Ready").get("status") == "True", condition(svc, "Ready")
    lws = get(cluster, "leaderworkersets", lws_name, "-n", namespace)
    assert lws["status"]["readyReplicas"] == 1  # groups, as the real controller counts them

    # The leader's readiness gates the group's: mark it un-Ready the way the kubelet does when
    # its readiness probe fails (KWOK only readies Pending pods, so it does not undo this).
    def set_leader_ready(value: str) -> None:
        conds = [{"type": t, "status": value} for t in ("Ready", "ContainersReady")]
        patch = json.dumps({"status": {"conditions": conds}})
        cluster.kubectl("patch", "pod", leader["metadata"]["name"], "-n", namespace,
                        "--subresource=status", "-p", patch)  # fmt: skip

    set_leader_ready("False")
    wait_for(
        lambda: (
            (get(cluster, "leaderworkersets", lws_name, "-n", namespace) or {})
            .get("status", {})
            .get("readyReplicas", 0)
            == 0
            and condition(get(cluster, "tsvc", name, "-n", namespace), "Ready").get("status")
            == "False"
        ),
        what="group and service not ready while the leader is not",
    )
    assert service_status(cluster, namespace, name)["pools"][0].get("readyReplicas", 0) == 0
    set_leader_ready("True")
    wait_groups(cluster, namespace, name, lws_name, 1)

    # Scale 1 -> 2 -> 1 through the /scale subresource: whole groups come and go.
    cluster.kubectl("scale", "tsvc", name, "-n", namespace, "--replicas=2")
    pods = wait_groups(cluster, namespace, name, lws_name, 2)
    assert len({p["spec"]["nodeName"] for p in pods}) == 4
    assert {p["metadata"]["labels"][GROUP_LABEL] for p in pods} == {"0", "1"}
    scale = json.loads(
        cluster.kubectl("get", "--raw", f"/apis/tokenscale.dev/v1alpha1/namespaces/{namespace}"
                        f"/inferenceservices/{name}/scale").stdout
    )  # fmt: skip
    assert scale["status"]["replicas"] == 2  # groups, though four pods match the selector
    cluster.kubectl("scale", "tsvc", name, "-n", namespace, "--replicas=1")
    pods = wait_groups(cluster, namespace, name, lws_name, 1)
    assert {p["metadata"]["labels"][GROUP_LABEL] for p in pods} == {"0"}

    # Deleting the worker recreates the whole group (RecreateGroupOnPodRestart): a new leader.
    leader = next(p for p in pods if p["metadata"]["labels"][WORKER_LABEL] == "0")
    worker = next(p for p in pods if p["metadata"]["labels"][WORKER_LABEL] == "1")
    cluster.kubectl("delete", "pod", worker["metadata"]["name"], "-n", namespace, "--wait=false")

    def group_recreated() -> bool:
        now = group_pods(cluster, namespace, lws_name)
        uids = {p["metadata"]["uid"] for p in now}
        return (
            len(now) == 2
            and leader["metadata"]["uid"] not in uids
            and worker["metadata"]["uid"] not in uids
            and all(ready(p) for p in now)
        )

    try:
        wait_for(group_recreated, timeout=120, what="the group recreated with a new leader")
    except AssertionError as exc:
        state = [
            (p["metadata"]["name"], p["metadata"]["uid"], ready(p), p["status"].get("phase"))
            for p in group_pods(cluster, namespace, lws_name)
        ]
        old = (leader["metadata"]["uid"], worker["metadata"]["uid"])
        raise AssertionError(f"{exc}; pods now {state}; old leader/worker uids {old}") from exc
    wait_groups(cluster, namespace, name, lws_name, 1)
    assert lws_operator.alive()

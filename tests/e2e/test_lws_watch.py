"""A multi-node service's readiness follows its LeaderWorkerSet at once, not after the 5-minute
resync: with ``leaderWorkerSet: true`` the operator watches LeaderWorkerSets like Deployments.

The test bed has no LWS controller, so the test installs the CRD (the API only) and plays the
controller: it writes the LWS status the way the LWS controller would. The operator runs
under the chart's RBAC, with the test bed's config plus ``leaderWorkerSet: true``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.helpers import apply, condition, example, get, wait_for
from tests.e2e.operator_proc import OPERATOR_CONFIG, OperatorProcess
from tests.testbed.cluster import Cluster
from tokenscale.controller import resync

pytestmark = pytest.mark.e2e

LWS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "leaderworkersets.leaderworkerset.x-k8s.io"},
    "spec": {
        "group": "leaderworkerset.x-k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "LeaderWorkerSet", "plural": "leaderworkersets", "singular": "lws"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def lws_operator(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The session operator steps aside for one with LeaderWorkerSet enabled."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(LWS_CRD))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{LWS_CRD['metadata']['name']}",
                    "--timeout=60s")  # fmt: skip
    config = yaml.safe_load(OPERATOR_CONFIG.read_text())
    config["leaderWorkerSet"] = True
    path = tmp_path / "operator-config.yaml"
    path.write_text(yaml.safe_dump(config))
    operator.stop()
    lws = OperatorProcess(cluster, config=path, name="operator-lws").start()
    try:
        yield lws
    finally:
        lws.stop()
        print(f"\noperator-lws log (tail):\n{lws.tail(40)}")
        cluster.kubectl("delete", "crd", LWS_CRD["metadata"]["name"], "--wait=false")
        operator.start()


def test_lws_status_reaches_the_service_long_before_the_resync(
    cluster: Cluster, namespace: str, lws_operator: OperatorProcess
) -> None:
    doc = example("llama31-405b-multinode.yaml")
    name = doc["metadata"]["name"]
    apply(cluster, namespace, doc)
    lws = wait_for(
        lambda: get(cluster, "leaderworkersets", f"{name}-mi300x", "-n", namespace),
        what="the LeaderWorkerSet",
    )
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    wait_for(
        lambda: (
            condition(get(cluster, "tsvc", name, "-n", namespace), "Ready").get("reason")
            == "ReplicasNotReady"
        ),
        what="not ready while the LWS has no ready group",
    )

    # The LWS controller's part: the one replica (a leader and a worker) became ready.
    status = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}
    cluster.kubectl("patch", "leaderworkersets", f"{name}-mi300x", "-n", namespace,
                    "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))  # fmt: skip
    timeout = 30.0
    assert timeout < resync.RESYNC_SECONDS / 5  # only the watch can be this quick
    svc = wait_for(
        lambda: (
            (o := get(cluster, "tsvc", name, "-n", namespace))
            and condition(o, "Ready").get("status") == "True"
            and o
        ),
        timeout=timeout,
        what="Ready from the LWS status",
    )
    assert svc["status"]["pools"][0]["readyReplicas"] == 1
    assert lws_operator.alive()

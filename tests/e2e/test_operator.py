"""The operator on a real control plane: examples become scheduled, Ready engines on nodes of
the requested GPU model; edits change exactly the children they should; impossible requests
end in conditions, invalid objects are rejected by the API server itself, and a restart leaves
no duplicates. The operator runs under the Helm chart's RBAC (a ServiceAccount token)."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from tests.e2e.helpers import apply, condition, example, get, pods_of, wait_condition, wait_for
from tests.e2e.operator_proc import OperatorProcess
from tests.invalid_manifests import CASES, Case
from tests.testbed.cluster import Cluster
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig

pytestmark = pytest.mark.e2e
CFG = OperatorConfig()


@pytest.mark.parametrize(
    ("file", "gpu", "gpus_per_pod"),
    [
        ("llama2-70b-mi355x.yaml", "MI355X", 1),
        ("gpt-oss-120b-mi300x.yaml", "MI300X", 8),
    ],
)
def test_example_reaches_ready_on_the_right_gpus(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    file: str,
    gpu: str,
    gpus_per_pod: int,
) -> None:
    doc = example(file)
    name = doc["metadata"]["name"]
    apply(cluster, namespace, doc)
    svc = wait_for(
        lambda: (
            (o := get(cluster, "tsvc", name, "-n", namespace))
            and condition(o, "Ready").get("status") == "True"
            and o
        ),
        what=f"{name} Ready",
    )
    assert svc["status"]["selector"] and svc["status"]["replicas"] >= 1
    pods = [p for p in pods_of(cluster, namespace, name) if p["spec"].get("nodeName")]
    assert pods, "no scheduled pods"
    device_ids = set(CFG.gpus[gpu].device_ids)
    for pod in pods:
        node = get(cluster, "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"].get(c.NODE_LABEL_DEVICE_ID) in device_ids, pod["spec"]
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits[c.RESOURCE_GPU] == str(gpus_per_pod)
    assert cluster.kubectl("wait", "--for=condition=Ready", f"tsvc/{name}", "-n", namespace,
                           "--timeout=5s").returncode == 0  # fmt: skip
    assert svc["status"]["url"] == f"http://{name}.{namespace}.svc:{c.ENGINE_PORT}"
    # What a user reads first: the API server evaluates the CRD's printer columns.
    table = cluster.kubectl("get", "tsvc", name, "-n", namespace).stdout.split("\n")
    starts = [m.start() for m in re.finditer(r"\S+", table[0])]  # empty cells are blank
    cells = [table[1][a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    row = dict(zip(table[0].split(), cells, strict=True))
    assert row["READY"] == "True" and row["REASON"] == "ReplicasReady", table
    assert row["URL"] == svc["status"]["url"], table
    assert int(row["REPLICAS"]) == svc["status"]["readyReplicas"] >= 1, table
    assert row["DESIRED"] == str(svc["status"]["replicas"]), table
    assert operator.alive()


def test_edit_add_pool_change_args_then_delete(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = example("llama2-70b-mi355x.yaml")
    name = doc["metadata"]["name"]
    apply(cluster, namespace, doc)
    wait_for(lambda: get(cluster, "deploy", f"{name}-mi355x", "-n", namespace), what="deployment")
    service_rv = wait_for(lambda: get(cluster, "svc", name, "-n", namespace))["metadata"][
        "resourceVersion"
    ]

    doc["spec"]["pools"].append({"name": "mi325x", "gpu": "MI325X", "maxReplicas": 2})
    doc["spec"]["engine"] = {"args": ["--max-num-seqs", "512"]}
    apply(cluster, namespace, doc)
    added = wait_for(
        lambda: get(cluster, "deploy", f"{name}-mi325x", "-n", namespace), what="new pool"
    )
    assert added["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    changed = wait_for(
        lambda: (
            (d := get(cluster, "deploy", f"{name}-mi355x", "-n", namespace))
            and "--max-num-seqs" in d["spec"]["template"]["spec"]["containers"][0]["args"]
            and d
        ),
        what="args rolled",
    )
    assert c.ANNOTATION_SPEC_HASH in changed["spec"]["template"]["metadata"]["annotations"]
    service_after = get(cluster, "svc", name, "-n", namespace)
    assert service_after["metadata"]["resourceVersion"] == service_rv, "Service changed needlessly"

    doc["spec"]["pools"] = [p for p in doc["spec"]["pools"] if p["name"] != "mi325x"]
    apply(cluster, namespace, doc)
    wait_for(
        lambda: get(cluster, "deploy", f"{name}-mi325x", "-n", namespace) is None,
        what="removed pool's Deployment deleted",
    )

    cluster.kubectl("delete", "tsvc", name, "-n", namespace)
    wait_for(
        lambda: (
            not (get(cluster, "deploy", "-n", namespace) or {}).get("items")
            and get(cluster, "svc", name, "-n", namespace) is None
        ),
        timeout=120,
        what="children garbage-collected",
    )


def test_more_gpus_than_the_fleet_has_is_degraded_with_scheduler_reason(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = example("llama2-70b-mi355x.yaml")
    doc["metadata"]["name"] = "too-big"
    doc["spec"]["pools"] = [
        {"name": "mi355x", "gpu": "MI355X", "gpusPerReplica": 8, "minReplicas": 4, "maxReplicas": 4}
    ]
    apply(cluster, namespace, doc)
    degraded = wait_condition(
        cluster, namespace, "too-big", "Degraded", lambda cd: cd.get("status") == "True"
    )
    assert degraded["reason"] == "Unschedulable"
    assert "Insufficient amd.com/gpu" in degraded["message"]
    events = get(cluster, "events", "-n", namespace, "--field-selector",
                 "involvedObject.name=too-big")  # fmt: skip
    assert any(e["reason"] == "Unschedulable" for e in events["items"])
    assert operator.alive()


def test_model_that_does_not_fit_gets_a_condition_and_no_pods(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = example("llama31-405b-multinode.yaml")
    doc["metadata"]["name"] = "no-fit"
    doc["spec"]["parallelism"] = {}
    doc["spec"]["pools"] = [{"name": "mi300x", "gpu": "MI300X", "gpusPerReplica": 1}]
    apply(cluster, namespace, doc)
    ready = wait_condition(
        cluster, namespace, "no-fit", "Ready", lambda cd: cd.get("reason") == "PlanFailed"
    )
    assert "mi300x" in ready["message"]
    assert not pods_of(cluster, namespace, "no-fit")


def test_multinode_without_lws_is_a_clear_condition(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, namespace, example("llama31-405b-multinode.yaml"))
    ready = wait_condition(
        cluster,
        namespace,
        "llama31-405b",
        "Ready",
        lambda cd: cd.get("status") == "False" and "LeaderWorkerSet" in cd.get("message", ""),
    )
    assert ready["reason"] == "PlanFailed"


@pytest.mark.parametrize("case", [k for k in CASES if k.server], ids=lambda k: k.id)
def test_invalid_objects_are_rejected_by_the_api_server(
    cluster: Cluster, namespace: str, operator: OperatorProcess, case: Case
) -> None:
    out = cluster.kubectl("create", "-n", namespace, "-f", "-", check=False,
                          input=yaml.safe_dump(case.manifest))  # fmt: skip
    assert out.returncode != 0, f"API server accepted {case.id}"
    leaf = case.field.split(".")[-1].split("[")[0]
    assert leaf in out.stderr or case.says.split()[0] in out.stderr, out.stderr


def test_dtype_the_gpu_cannot_run_ends_in_a_condition_and_an_event(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Only the operator knows the GPU catalogue: fp6 on MI300X is valid YAML, invalid intent."""
    doc = example("llama2-70b-mi355x.yaml")
    doc["metadata"]["name"] = "fp6-on-mi300x"
    doc["spec"]["model"]["dtype"] = "fp6"
    doc["spec"]["pools"] = [{"name": "mi300x", "gpu": "MI300X"}]
    apply(cluster, namespace, doc)
    ready = wait_condition(
        cluster, namespace, "fp6-on-mi300x", "Ready", lambda cd: cd.get("reason") == "PlanFailed"
    )
    assert "fp6" in ready["message"]
    events = get(cluster, "events", "-n", namespace, "--field-selector",
                 "involvedObject.name=fp6-on-mi300x")  # fmt: skip
    assert any(e["reason"] == "PlanFailed" for e in events["items"])
    assert not pods_of(cluster, namespace, "fp6-on-mi300x")


def test_scale_subresource_splits_across_pools(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = example("mixed-mi300x-mi355x.yaml")
    doc["spec"]["scaling"] = {"mode": "external"}
    name = doc["metadata"]["name"]
    apply(cluster, namespace, doc)
    wait_for(lambda: get(cluster, "deploy", f"{name}-mi355x", "-n", namespace))
    cluster.kubectl("scale", "tsvc", name, "-n", namespace, "--replicas=5")
    status = wait_for(
        lambda: (
            (o := get(cluster, "tsvc", name, "-n", namespace))
            and o["status"].get("replicas") == 5
            and o["status"]
        ),
        what="status.replicas 5",
    )
    split = {p["name"]: p["desiredReplicas"] for p in status["pools"]}
    assert sum(split.values()) == 5 and split["mi355x"] >= split["mi300x"]
    scale = json.loads(
        cluster.kubectl("get", "--raw",
                        f"/apis/tokenscale.dev/v1alpha1/namespaces/{namespace}/inferenceservices/{name}/scale").stdout
    )  # fmt: skip
    assert scale["status"]["selector"] == status["selector"]


def test_restart_leaves_no_duplicates_or_orphans(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = example("mixed-mi300x-mi355x.yaml")
    name = doc["metadata"]["name"]
    apply(cluster, namespace, doc)
    wait_for(lambda: get(cluster, "deploy", f"{name}-mi300x", "-n", namespace))
    operator.stop()
    doc["spec"]["pools"][0]["maxReplicas"] = 6
    apply(cluster, namespace, doc)
    operator.start()
    time.sleep(5)
    deployments = get(cluster, "deploy", "-n", namespace, "-l", f"{c.LABEL_SERVICE}={name}")
    names = sorted(d["metadata"]["name"] for d in deployments["items"])
    assert names == [f"{name}-mi300x", f"{name}-mi355x"]
    for d in deployments["items"]:
        owners = d["metadata"]["ownerReferences"]
        assert len(owners) == 1 and owners[0]["kind"] == "InferenceService"
    services = get(cluster, "svc", "-n", namespace, "-l", f"{c.LABEL_SERVICE}={name}")
    assert len(services["items"]) == 1

"""A child update the API server refuses (here a ValidatingAdmissionPolicy) keeps the running
Deployment: no prune, no delete/create loop, and the service's Degraded condition and an Event
name the refusal (issue 17: a rejected update used to delete the Deployment, 38 times in 18 s)."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.e2e.helpers import apply, example, get, wait_condition, wait_for
from tests.e2e.operator_proc import OperatorProcess
from tests.testbed.cluster import Cluster
from tokenscale import constants as c

pytestmark = pytest.mark.e2e

ARG = "--max-num-seqs"


def _policy(namespace: str) -> list[dict[str, object]]:
    name = f"no-max-num-seqs-{namespace}"
    expr = (
        "!object.spec.template.spec.containers.exists(c, has(c.args) && "
        f"c.args.exists(a, a == '{ARG}'))"
    )
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["deployments"],
                        }
                    ]
                },
                "validations": [{"expression": expr, "message": f"{ARG} is not allowed here"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    ]


def test_a_refused_update_keeps_the_running_deployment(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = example("llama2-70b-mi355x.yaml")
    name = doc["metadata"]["name"]
    deploy = f"{name}-mi355x"
    apply(cluster, namespace, doc)
    uid = wait_for(lambda: get(cluster, "deploy", deploy, "-n", namespace), what="deployment")[
        "metadata"
    ]["uid"]
    policy = _policy(namespace)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(policy))
    try:
        # The binding takes a moment to reach the admission plugin: probe with a dry run.
        probe = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "probe", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "x", "image": "x", "args": [ARG]}]},
                },
            },
        }
        wait_for(
            lambda: (
                cluster.kubectl(
                    "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe), check=False
                ).returncode
                != 0
            ),
            what="policy in force",
        )
        doc["spec"]["engine"] = {"args": [ARG, "512"]}
        apply(cluster, namespace, doc)
        degraded = wait_condition(
            cluster, namespace, name, "Degraded", lambda cd: cd.get("reason") == "ApplyFailed"
        )
        assert deploy in degraded["message"] and "is not allowed here" in degraded["message"]
        time.sleep(15)  # long enough for the old delete/create loop to have run several times
        kept = get(cluster, "deploy", deploy, "-n", namespace)
        assert kept is not None and kept["metadata"]["uid"] == uid, "Deployment was replaced"
        args = kept["spec"]["template"]["spec"]["containers"][0].get("args") or []
        assert ARG not in args
        events = get(cluster, "events", "-n", namespace) or {"items": []}
        reasons = [e["reason"] for e in events["items"]]
        assert "Deleted" not in reasons, reasons
        assert "ApplyFailed" in reasons, reasons
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(policy))


def test_scale_of_a_fresh_service_is_readable(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """HPA/KEDA read /scale first: it must resolve before anyone has set spec.replicas."""
    doc = example("llama2-70b-mi355x.yaml")
    doc["spec"].pop("replicas", None)
    name = doc["metadata"]["name"]
    apply(cluster, namespace, doc)
    path = f"/apis/tokenscale.dev/v1alpha1/namespaces/{namespace}/inferenceservices/{name}/scale"

    def scale() -> dict[str, object] | None:
        out = cluster.kubectl("get", "--raw", path, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    found = wait_for(scale, timeout=30, what="/scale readable")
    mins = sum(p.get("minReplicas", 1) for p in doc["spec"]["pools"])
    assert found["spec"]["replicas"] == mins, found  # type: ignore[index]
    # what HPA needs next: the selector, once the operator has written status
    selected = wait_for(lambda: (s := scale()) and s["status"].get("selector"), timeout=30)
    assert "tokenscale.dev/service" in selected, selected


def test_kubectl_scale_is_reported_not_silently_undone(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """Another writer of /scale (here `kubectl scale`) is named in status.scaling and an
    Event, from the API server's managedFields, and its count stays."""
    doc = example("llama2-70b-mi355x.yaml")
    name = doc["metadata"]["name"]
    # As if the builtin autoscaler had last decided 1 replica for the pool.
    doc["metadata"]["annotations"] = {
        c.ANNOTATION_SCALER_STATE: json.dumps({"split": {"mi355x": 1}, "state": {}})
    }
    doc["spec"]["pools"][0].update({"minReplicas": 1, "maxReplicas": 3})
    apply(cluster, namespace, doc)
    wait_for(lambda: get(cluster, "deploy", f"{name}-mi355x", "-n", namespace), what="deploy")
    cluster.kubectl("scale", f"tsvc/{name}", "-n", namespace, "--replicas=2")
    scaling = wait_for(
        lambda: (
            (s := ((get(cluster, "tsvc", name, "-n", namespace) or {}).get("status") or {}))
            and (s.get("scaling") or {}).get("reason") == "ConflictingWriter"
            and s["scaling"]
        ),
        timeout=30,
        what="ConflictingWriter",
    )
    assert "set to 2 through /scale by 'kubectl" in scaling["message"], scaling
    time.sleep(6)  # several autoscaler passes (scrape interval 2 s)
    svc = get(cluster, "tsvc", name, "-n", namespace)
    assert svc["spec"]["replicas"] == 2
    deploy = get(cluster, "deploy", f"{name}-mi355x", "-n", namespace)
    assert deploy["spec"]["replicas"] == 2
    events = get(cluster, "events", "-n", namespace) or {"items": []}
    assert [e for e in events["items"] if e["reason"] == "ConflictingWriter"]

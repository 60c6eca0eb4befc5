"""spec.routing on a real API server, with the operator under the chart's RBAC: router mode's
children (including the discovery Role, which RBAC lets the operator create only because it
holds those verbs itself) are applied and pruned; inferencePool mode's InferencePool and
HTTPRoute are accepted by the real CRDs (InferencePool v1.6.0, Gateway API from the module
proxy). No router binary or gateway data plane runs here (docs/routing.md)."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.e2e.helpers import apply, example, get, wait_for
from tests.e2e.operator_proc import OperatorProcess
from tests.testbed import gateway_crds
from tests.testbed.cluster import Cluster
from tokenscale.render import names
from tokenscale.render import router as router_mod

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def gateway_api(cluster: Cluster) -> None:
    """The InferencePool and Gateway API CRDs, installed before the operator looks for them."""
    try:
        gateway_crds.install(cluster)
    except gateway_crds.GatewayAPIUnavailable as exc:
        pytest.fail(f"Gateway API CRDs unavailable: {exc}", pytrace=False)


def test_router_children_are_applied_then_pruned(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = example("llama2-70b-router.yaml")
    name = doc["metadata"]["name"]
    apply(cluster, namespace, doc)
    role = wait_for(
        lambda: get(cluster, "role", router_mod.router_name(name), "-n", namespace),
        what="router Role",
    )
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    dep = wait_for(
        lambda: get(cluster, "deploy", router_mod.router_name(name), "-n", namespace),
        what="router Deployment",
    )
    assert dep["spec"]["replicas"] == 2
    stable = get(cluster, "svc", name, "-n", namespace)
    assert stable["spec"]["selector"] == router_mod.router_pod_labels(name)
    assert get(cluster, "svc", router_mod.engines_service_name(name), "-n", namespace)

    # Back to a plain Service: the router's objects go, the Service selects the engines again.
    plain = copy.deepcopy(doc)
    plain["spec"]["routing"] = {"mode": "service"}
    apply(cluster, namespace, plain)
    wait_for(
        lambda: (
            get(cluster, "role", router_mod.router_name(name), "-n", namespace) is None
            and get(cluster, "sa", router_mod.router_name(name), "-n", namespace) is None
        ),
        what="router RBAC pruned",
    )
    wait_for(
        lambda: (
            (get(cluster, "svc", name, "-n", namespace) or {}).get("spec", {}).get("selector")
            == names.service_selector(name)
        ),
        what="Service back on the engines",
    )


def test_inferencepool_objects_are_accepted_by_the_real_crds(
    cluster: Cluster, gateway_api: None, operator: OperatorProcess, namespace: str
) -> None:
    # The operator caches which CRDs exist; restart it so it sees the ones just installed.
    operator.stop()
    operator.start()
    doc = example("llama2-70b-inferencepool.yaml")
    name = doc["metadata"]["name"]
    apply(cluster, namespace, doc)
    pool = wait_for(
        lambda: get(cluster, "inferencepool", name, "-n", namespace), what="InferencePool"
    )
    assert pool["spec"]["selector"]["matchLabels"] == names.service_selector(name)
    # Defaulted by the CRD's schema on the server: proof the real schema judged it.
    assert pool["spec"]["endpointPickerRef"]["group"] == ""
    route = wait_for(lambda: get(cluster, "httproute", name, "-n", namespace), what="HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"
    assert get(cluster, "deploy", f"{name}-epp", "-n", namespace)

    # The CRD's CEL rules are live: a pool whose picker Service has no port is refused.
    bad = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "bad-pool"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "epp"},
        },
    }
    out = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", check=False, input=yaml.safe_dump(bad)
    )
    assert out.returncode != 0 and "port is required" in out.stderr, out.stderr

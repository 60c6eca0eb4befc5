"""The Helm chart as a platform team uses it: lint, schema-valid templates, values that fail
at install time, and a real install → reconcile → upgrade → uninstall on the test bed with the
operator running as a pod (process kubelet) under the chart's own ServiceAccount and RBAC."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.e2e.helpers import apply, condition, example, get, wait_for
from tests.e2e.operator_proc import CHART, OPERATOR_CONFIG, OperatorProcess
from tests.testbed.cluster import Cluster
from tokenscale.api.config import DEFAULT_GPUS, OperatorConfig

pytestmark = pytest.mark.e2e
RELEASE_NS = "tokenscale-chart"
K8S_VERSION = "1.34.0"


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(cluster.bin_dir / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])} failed:\n{out.stderr}")
    return out


def test_lint_and_templates_validate_against_kubernetes_schemas(cluster: Cluster) -> None:
    out = helm(cluster, "lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out.stdout
    values = [
        {},
        {"watchNamespaces": ["a", "b"], "peering": {"enabled": True}, "replicaCount": 2},
        {"metrics": {"serviceMonitor": {"enabled": True}}, "dashboard": {"enabled": True}},
        {"activator": {"enabled": True, "namespaces": ["a", "b"]}},
    ]
    for extra in values:
        args = ["template", "t", str(CHART), "-n", "ns"]
        for key, value in extra.items():
            args += ["--set-json", f"{key}={json.dumps(value)}"]
        docs = [d for d in yaml.safe_load_all(helm(cluster, *args).stdout) if d]
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "ClusterRole", "ConfigMap", "CustomResourceDefinition"} <= kinds
        for doc in docs:
            if doc["kind"] == "ServiceMonitor":
                continue
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        rules = [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
        assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
        assert not any("secrets" in r["resources"] for r in rules)


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"imageTag": "x"}, "imageTag"),
        ({"operatorConfig": {"pods": {"shmSise": "1Gi"}}}, "shmSise"),
        ({"activator": {"enabled": True, "namespaces": "team-a"}}, "namespaces"),
        ({"activator": {"replicas": 0}}, "replicas"),
        ({"operatorConfig": {"activator": {"enabeld": True}}}, "enabeld"),
        ({"operatorConfig": {"metricsSource": {"type": "promql"}}}, "type"),
        ({"operatorConfig": {"metricsSource": {"prometheus": {"url": "prom:9090"}}}}, "url"),
    ],
)
def test_bad_values_fail_at_install_time(
    cluster: Cluster, values: dict[str, Any], says: str
) -> None:
    args = ["template", "t", str(CHART)]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    out = helm(cluster, *args, check=False)
    assert out.returncode != 0
    assert says in out.stderr


def test_partial_gpu_override_renders_a_config_the_operator_loads(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The documented partial override passes the values schema and the operator's own load
    (before the deep merge it installed cleanly and then crash-looped the operator)."""
    override = {"gpus": {"MI300X": {"costPerGpuHour": 3}}}
    out = helm(cluster, "template", "t", str(CHART), "--set-json",
               f"operatorConfig={json.dumps(override)}")  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (cm,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")
    ]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    config = OperatorConfig.load(path)
    assert config.gpus["MI300X"].cost_per_gpu_hour == 3
    assert config.gpus["MI300X"].hbm_gib == DEFAULT_GPUS["MI300X"].hbm_gib


@pytest.fixture
def quiet_session_operator(operator: OperatorProcess) -> Iterator[None]:
    """The chart's operator replaces the session's subprocess operator for this test."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def test_install_reconcile_upgrade_uninstall(
    cluster: Cluster, namespace: str, quiet_session_operator: None, tmp_path: Path
) -> None:
    values = {
        "bindAddress": "$(POD_IP)",
        "logFormat": "plain",
        "watchNamespaces": [namespace],
        # A partial GPU entry (deep-merged over the built-in MI355X) must not stop the operator.
        "operatorConfig": {
            **yaml.safe_load(OPERATOR_CONFIG.read_text()),
            "gpus": {"MI355X": {"costPerGpuHour": 3.5}},
        },
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    helm(cluster, "install", "ts", str(CHART), "-n", RELEASE_NS, "--create-namespace",
         "--take-ownership", "-f", str(path), "--wait", "--timeout", "3m")  # fmt: skip
    try:
        pods = get(cluster, "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/instance=ts")
        pod = pods["items"][0]
        assert pod["spec"]["serviceAccountName"] == "ts-tokenscale"
        assert pod["status"]["podIP"].startswith("127.")

        doc = example("llama2-70b-mi355x.yaml")
        apply(cluster, namespace, doc)
        wait_for(
            lambda: (
                condition(get(cluster, "tsvc", "llama2-70b", "-n", namespace), "Ready").get(
                    "status"
                )
                == "True"
            ),
            timeout=120,
            what="Ready under the chart-installed operator",
        )

        values["workers"] = 4
        path.write_text(yaml.safe_dump(values))
        helm(cluster, "upgrade", "ts", str(CHART), "-n", RELEASE_NS, "-f", str(path),
             "--wait", "--timeout", "3m")  # fmt: skip
        new = get(cluster, "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/instance=ts")
        running = [p for p in new["items"] if not p["metadata"].get("deletionTimestamp")]
        assert any("--workers=4" in p["spec"]["containers"][0]["args"] for p in running)
        doc["spec"]["pools"][0]["maxReplicas"] = 3
        apply(cluster, namespace, doc)
        wait_for(
            lambda: (
                (o := get(cluster, "tsvc", "llama2-70b", "-n", namespace))
                and o["status"].get("observedGeneration") == o["metadata"]["generation"]
            ),
            timeout=120,
            what="upgraded operator reconciles",
        )
    finally:
        helm(cluster, "uninstall", "ts", "-n", RELEASE_NS, "--wait", check=False)
    wait_for(
        lambda: not (get(cluster, "pods", "-n", RELEASE_NS) or {}).get("items"),
        timeout=120,
        what="operator pod gone",
    )
    crd = get(cluster, "crd", "inferenceservices.tokenscale.dev")
    assert crd is not None, "CRDs must survive uninstall (helm.sh/resource-policy: keep)"
    time.sleep(1)

"""The vendored Kubernetes core/v1 schemas behind spec.podTemplate, and the operator's handling
of what only it can judge.

Why: the committed schemas must be exactly what the installed Kubernetes definitions give (else
`kubectl explain` and the API server drift from Kubernetes), and the offline checker must name
the same fields the API server would.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale.api import k8sschema
from tokenscale.api.config import OperatorConfig
from tokenscale.controller.reconcile import reconcile_service


def test_vendored_schemas_match_the_kubernetes_definitions() -> None:
    built = k8sschema.dump(k8sschema.build(k8sschema.installed_definitions()))
    assert k8sschema.VENDORED.read_text() == built, "stale k8s_core_v1.json; run `make crds`"


def test_vendored_schemas_are_structural() -> None:
    def walk(node: dict[str, Any], path: str) -> None:
        assert "$ref" not in node and "oneOf" not in node, path
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), path
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    for name, schema in k8sschema.schemas().items():
        walk(schema, name)


VOLUME = k8sschema.schema("Volume")
ENV = k8sschema.schema("EnvVar")
SECRET = {"name": "A", "valueFrom": {"secretKeyRef": {"key": "k", "optional": 1}}}
DIVISOR = {
    "name": "A",
    "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
}
BAD_DIVISOR = {"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "x", "divisor": [1]}}}
CHECKS: list[tuple[dict[str, Any], Any, str | None, str | None]] = [
    (VOLUME, {"name": "v", "secret": {"secretName": "s"}}, None, None),
    (VOLUME, {"secret": {"secretName": "s"}}, ".name", "required"),
    (VOLUME, {"name": "v", "secret": {"secretNam": "s"}}, ".secret.secretNam", "unknown"),
    (VOLUME, {"name": "v", "secret": {"defaultMode": "0644"}}, ".secret.defaultMode", "integer"),
    (VOLUME, {"name": "v", "secret": {"items": {}}}, ".secret.items", "array"),
    (ENV, SECRET, ".valueFrom.secretKeyRef.optional", "boolean"),
    (ENV, DIVISOR, None, None),
    (ENV, BAD_DIVISOR, ".valueFrom.resourceFieldRef.divisor", "integer or a string"),
    (ENV, {"name": True}, ".name", "string"),
]


@pytest.mark.parametrize(("schema", "value", "where", "says"), CHECKS)
def test_check_names_the_field(
    schema: dict[str, Any], value: Any, where: str | None, says: str | None
) -> None:
    problems = k8sschema.check(schema, value)
    if where is None:
        assert problems == []
    else:
        assert problems and problems[0][0] == where and says in problems[0][1], problems


def test_bad_quantity_the_api_server_accepts_becomes_invalid_spec_naming_the_field() -> None:
    kube = FakeKube()
    doc = service(podTemplate={"resources": {"requests": {"memory": "lots"}}})
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    outcome = reconcile_service(kube.put(doc), kube, OperatorConfig())
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert "podTemplate.resources.requests.memory: not a Kubernetes quantity" in ready["message"]
    assert not [k for k in kube.objects if k[0] == "Deployment"]
    assert any(e[0] == "InvalidSpec" for e in outcome.events)


def test_render_time_clash_is_a_warning_event_and_the_pool_still_runs() -> None:
    kube = FakeKube()
    doc = service(
        engine={"env": [{"name": "VLLM_NO_USAGE_STATS", "value": "1"}]},
        podTemplate={"env": [{"name": "VLLM_NO_USAGE_STATS", "value": "0"}]},
    )
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    outcome = reconcile_service(kube.put(doc), kube, OperatorConfig())
    warnings = [e for e in outcome.events if e[0] == "RenderWarning"]
    assert warnings and "spec.podTemplate.env[0].name" in warnings[0][1]
    assert [k for k in kube.objects if k[0] == "Deployment"]

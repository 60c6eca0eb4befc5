"""spec.podTemplate merged over the operator's pod: one row per field and merge rule.

Why: a platform team's settings must land in every engine pod (Deployment pools, LWS leader
and worker) while the operator's own parts (GPU placement and resources, its env, volumes,
mounts, selection labels, spec hash) keep working. The refusals of operator-owned fields are
in tests/invalid_manifests.py (run offline and against the API server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.factories import service
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.plan import plan_service
from tokenscale.render import pod, podtemplate, render_all

Obj = dict[str, Any]
CONFIG = OperatorConfig.model_validate(
    {
        "pods": {
            "nodeSelector": {"cluster/pool": "gpu"},
            "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "labels": {"cost-center": "platform"},
        }
    }
)
SECRET_ENV = {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "api"}}}
CM_ENV = {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}


def rendered(pod_template: Obj | None = None, config: OperatorConfig = CONFIG, **spec: Any) -> Obj:
    """The engine pod template of the one pool, with ``pod_template`` as spec.podTemplate."""
    changes = dict(spec)
    if pod_template is not None:
        changes["podTemplate"] = pod_template
    svc = InferenceService.model_validate(service(**changes))
    objs = render_all(svc, config, plan_service(svc, config)).objects
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    template: Obj = deploy["spec"]["template"]
    return template


BASE = rendered()


def engine(template: Obj) -> Obj:
    found: Obj = template["spec"]["containers"][0]
    assert found["name"] == c.ENGINE_CONTAINER
    return found


def _terms(template: Obj) -> list[Obj]:
    node = template["spec"]["affinity"]["nodeAffinity"]
    terms: list[Obj] = node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return terms


ZONE = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}
RACK = {"key": "rack", "operator": "Exists"}


def _check_affinity(t: Obj) -> None:
    base_terms = _terms(BASE)
    terms = _terms(t)
    # (GPU terms) AND (zone OR rack): every GPU term appears once with each user term.
    assert len(terms) == 2 * len(base_terms)
    for i, base in enumerate(base_terms):
        assert terms[2 * i]["matchExpressions"] == [*base["matchExpressions"], ZONE]
        assert terms[2 * i + 1]["matchExpressions"] == [*base["matchExpressions"], RACK]
    pref = t["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref == [{"weight": 10, "preference": {"matchExpressions": [RACK]}}]
    anti = t["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 50


ANTI = {
    "preferredDuringSchedulingIgnoredDuringExecution": [
        {
            "weight": 50,
            "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"team": "search"}},
            },
        }
    ]
}

#: (id, spec.podTemplate, check on the merged pod template)
MERGES: list[tuple[str, Obj, Callable[[Obj], None]]] = [
    (
        "labels-added-config-extra-replaced",
        {"labels": {"team": "search", "cost-center": "search"}},
        lambda t: (
            (
                t["metadata"]["labels"]
                == {**BASE["metadata"]["labels"], "team": "search", "cost-center": "search"}
            )
            or pytest.fail(str(t["metadata"]["labels"]))
        ),
    ),
    (
        "annotations-added",
        {"annotations": {"sidecar.istio.io/inject": "false"}},
        lambda t: (
            t["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
            or pytest.fail("annotation missing")
        ),
    ),
    (
        "node-selector-merged-with-config",
        {"nodeSelector": {"node.kubernetes.io/instance-type": "mi300x.8"}},
        lambda t: (
            t["spec"]["nodeSelector"]
            == {"cluster/pool": "gpu", "node.kubernetes.io/instance-type": "mi300x.8"}
            or pytest.fail(str(t["spec"]["nodeSelector"]))
        ),
    ),
    (
        "tolerations-appended-after-config",
        {"tolerations": [{"key": "dedicated", "value": "llm", "effect": "NoSchedule"}]},
        lambda t: (
            t["spec"]["tolerations"]
            == [
                *BASE["spec"]["tolerations"],
                {"key": "dedicated", "value": "llm", "effect": "NoSchedule"},
            ]
            or pytest.fail(str(t["spec"]["tolerations"]))
        ),
    ),
    (
        "affinity-required-anded-with-gpu-terms",
        {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [ZONE]},
                            {"matchExpressions": [RACK]},
                        ]
                    },
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 10, "preference": {"matchExpressions": [RACK]}}
                    ],
                },
                "podAntiAffinity": ANTI,
            }
        },
        _check_affinity,
    ),
    (
        "priority-class",
        {"priorityClassName": "serving-high"},
        lambda t: t["spec"]["priorityClassName"] == "serving-high" or pytest.fail("not set"),
    ),
    (
        "service-account",
        {"serviceAccountName": "engine-reader"},
        lambda t: t["spec"]["serviceAccountName"] == "engine-reader" or pytest.fail("not set"),
    ),
    (
        "image-pull-secrets",
        {"imagePullSecrets": [{"name": "regcred"}]},
        lambda t: t["spec"]["imagePullSecrets"] == [{"name": "regcred"}] or pytest.fail("not set"),
    ),
    (
        "resources-key-by-key-gpu-kept",
        {
            "resources": {
                "requests": {"memory": "64Gi", "ephemeral-storage": "200Gi"},
                "limits": {"memory": "128Gi"},
            }
        },
        lambda t: (
            engine(t)["resources"]
            == {
                "requests": {
                    **engine(BASE)["resources"]["requests"],
                    "memory": "64Gi",
                    "ephemeral-storage": "200Gi",
                },
                "limits": {**engine(BASE)["resources"]["limits"], "memory": "128Gi"},
            }
            or pytest.fail(str(engine(t)["resources"]))
        ),
    ),
    (
        "env-from-secret-and-configmap-appended",
        {"env": [SECRET_ENV, CM_ENV]},
        lambda t: (
            engine(t)["env"] == [*engine(BASE)["env"], SECRET_ENV, CM_ENV]
            or pytest.fail(str(engine(t)["env"]))
        ),
    ),
    (
        "env-from-appended",
        {"envFrom": [{"secretRef": {"name": "tokens"}, "prefix": "T_"}]},
        lambda t: (
            engine(t)["envFrom"] == [{"secretRef": {"name": "tokens"}, "prefix": "T_"}]
            or pytest.fail(str(engine(t).get("envFrom")))
        ),
    ),
    (
        "volumes-and-mounts-appended",
        {
            "volumes": [{"name": "certs", "secret": {"secretName": "certs"}}],
            "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs", "readOnly": True}],
        },
        lambda t: (
            (
                t["spec"]["volumes"]
                == [*BASE["spec"]["volumes"], {"name": "certs", "secret": {"secretName": "certs"}}]
                and engine(t)["volumeMounts"]
                == [
                    *engine(BASE)["volumeMounts"],
                    {"name": "certs", "mountPath": "/etc/certs", "readOnly": True},
                ]
            )
            or pytest.fail(str(t["spec"]["volumes"]))
        ),
    ),
]


@pytest.mark.parametrize(("fields", "check"), [m[1:] for m in MERGES], ids=[m[0] for m in MERGES])
def test_each_field_merges_by_its_rule(fields: Obj, check: Callable[[Obj], None]) -> None:
    merged = rendered(fields)
    check(merged)
    # The operator's invariants survive every merge.
    assert engine(merged)["command"] == engine(BASE)["command"]
    assert engine(merged)["args"] == engine(BASE)["args"]
    assert engine(merged)["ports"] == engine(BASE)["ports"]
    assert engine(merged)["readinessProbe"] == engine(BASE)["readinessProbe"]
    for key, value in BASE["metadata"]["labels"].items():
        if key != "cost-center":  # an operator-config extra, which the service may replace
            assert merged["metadata"]["labels"][key] == value
    for key in ("requests", "limits"):
        gpu = {k: v for k, v in engine(BASE)["resources"][key].items() if k.startswith("amd.com/")}
        assert gpu.items() <= engine(merged)["resources"][key].items()
    # The spec hash covers the merged template (a podTemplate change is a visible change).
    annotations = dict(merged["metadata"]["annotations"])
    digest = annotations.pop(c.ANNOTATION_SPEC_HASH)
    unhashed = {**merged, "metadata": {**merged["metadata"], "annotations": annotations}}
    assert digest == pod.spec_hash(unhashed)
    assert digest != BASE["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]


def test_no_pod_template_leaves_the_rendering_alone() -> None:
    template = rendered()
    same, warnings = podtemplate.merge(template, None)
    assert same is template and not warnings
    assert rendered({}) == {
        **template,
        "metadata": {**template["metadata"], "annotations": template["metadata"]["annotations"]},
    }


def _warned(fields: Obj, config: OperatorConfig = CONFIG, **spec: Any) -> tuple[Obj, str]:
    changes = dict(spec)
    changes["podTemplate"] = fields
    svc = InferenceService.model_validate(service(**changes))
    result = render_all(svc, config, plan_service(svc, config))
    deploy = next(o for o in result.objects if o["kind"] == "Deployment")
    return deploy["spec"]["template"], " ".join(result.warnings)


#: Clashes only a particular rendering shows: the operator's value stays, a warning names the
#: field (the reconciler posts it as a RenderWarning Event).
CLASHES: list[tuple[str, Obj, Obj, str, Callable[[Obj], bool]]] = [
    (
        "env-set-by-engine-env",
        {"env": [{"name": "VLLM_NO_USAGE_STATS", "value": "0"}]},
        {"engine": {"env": [{"name": "VLLM_NO_USAGE_STATS", "value": "1"}]}},
        "spec.podTemplate.env[0].name",
        lambda t: (
            [e for e in engine(t)["env"] if e["name"] == "VLLM_NO_USAGE_STATS"]
            == [{"name": "VLLM_NO_USAGE_STATS", "value": "1"}]
        ),
    ),
    (
        "mount-over-operator-path",
        {
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "volumeMounts": [{"name": "cache", "mountPath": "/dev/shm"}],
        },
        {},
        "spec.podTemplate.volumeMounts[0].mountPath",
        lambda t: (
            [m["name"] for m in engine(t)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            == ["shm"]
        ),
    ),
    (
        "node-selector-against-config",
        {"nodeSelector": {"cluster/pool": "batch"}},
        {},
        "spec.podTemplate.nodeSelector.cluster/pool",
        lambda t: t["spec"]["nodeSelector"] == {"cluster/pool": "gpu"},
    ),
    (
        "limit-below-operator-request",
        {"resources": {"limits": {"cpu": "2"}}},
        {},
        "spec.podTemplate.resources.limits.cpu",
        lambda t: engine(t)["resources"]["requests"]["cpu"] == "2",
    ),
]


@pytest.mark.parametrize(
    ("fields", "spec", "field", "check"), [x[1:] for x in CLASHES], ids=[x[0] for x in CLASHES]
)
def test_render_time_clash_keeps_the_operator_value_and_names_the_field(
    fields: Obj, spec: Obj, field: str, check: Callable[[Obj], bool]
) -> None:
    template, warnings = _warned(fields, **spec)
    assert field in warnings, warnings
    assert check(template)


def test_volume_named_like_an_operator_volume_is_dropped_with_its_mounts() -> None:
    """The API refuses the known names; a volume the operator renders later still wins."""
    base = {"name": "engine", "containers": [{"name": c.ENGINE_CONTAINER}]}
    template = {"metadata": {}, "spec": {**base, "volumes": [{"name": "cache", "emptyDir": {}}]}}
    tpl = InferenceService.model_validate(
        service(
            podTemplate={
                "volumes": [{"name": "cache", "hostPath": {"path": "/x"}}],
                "volumeMounts": [{"name": "cache", "mountPath": "/x"}],
            }
        )
    ).spec.pod_template
    merged, warnings = podtemplate.merge(template, tpl)
    assert merged["spec"]["volumes"] == [{"name": "cache", "emptyDir": {}}]
    assert "volumeMounts" not in merged["spec"]["containers"][0]
    assert "spec.podTemplate.volumes[0].name" in warnings[0]


def test_leader_and_worker_templates_both_get_the_pod_template() -> None:
    doc = service(
        model={"name": "llama-3.1-405b", "source": {"huggingFace": "meta-llama/Llama-3.1-405B"}},
        pools=[{"name": "mi300x", "gpu": "MI300X"}],
        parallelism={"tensor": 8, "pipeline": 2},
        podTemplate={"priorityClassName": "serving-high", "env": [SECRET_ENV]},
    )
    svc = InferenceService.model_validate(doc)
    config = CONFIG.model_copy(update={"leader_worker_set": True})
    lws = next(o for o in render_all(svc, config, plan_service(svc, config)).objects
               if o["kind"] == "LeaderWorkerSet")  # fmt: skip
    spec = lws["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        assert spec[role]["spec"]["priorityClassName"] == "serving-high", role
        assert SECRET_ENV in engine(spec[role])["env"], role


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", "0.5"), ("4", "4"), ("64Gi", str(64 * 2**30)), ("1e3", "1000"), ("2k", "2000")],
)
def test_quantity_parser(text: str, value: str) -> None:
    from decimal import Decimal

    from tokenscale.api.k8sschema import parse_quantity

    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["lots", "4 Gi", "", "1.2.3", "5Gb"])
def test_quantity_parser_refuses_garbage(text: str) -> None:
    from tokenscale.api.k8sschema import parse_quantity

    assert parse_quantity(text) is None


def test_pool_pod_template_is_merged_after_the_services_for_its_pool_only() -> None:
    doc = service(
        pools=[
            {"name": "mi300x", "gpu": "MI300X", "podTemplate": {
                "nodeSelector": {"example.com/node-pool": "mi300x-dedicated"},
                "tolerations": [{"key": "mi300x-only", "operator": "Exists"}],
                "labels": {"team": "search-mi300x"},
                "resources": {"requests": {"memory": "96Gi"}},
                "priorityClassName": "serving-high",
                "env": [CM_ENV],
            }},
            {"name": "mi355x", "gpu": "MI355X"},
        ],
        podTemplate={
            "labels": {"team": "search"},
            "resources": {"requests": {"memory": "64Gi"}},
            "env": [SECRET_ENV],
        },
    )  # fmt: skip
    svc = InferenceService.model_validate(doc)
    objs = render_all(svc, CONFIG, plan_service(svc, CONFIG)).objects
    tpl = {o["metadata"]["name"].rsplit("-", 1)[-1]: o["spec"]["template"]
           for o in objs if o["kind"] == "Deployment"}  # fmt: skip
    mi300x, mi355x = tpl["mi300x"], tpl["mi355x"]
    assert mi300x["metadata"]["labels"]["team"] == "search-mi300x"
    assert mi355x["metadata"]["labels"]["team"] == "search"
    assert engine(mi300x)["resources"]["requests"]["memory"] == "96Gi"
    assert engine(mi355x)["resources"]["requests"]["memory"] == "64Gi"
    assert mi300x["spec"]["nodeSelector"] == {
        "cluster/pool": "gpu",
        "example.com/node-pool": "mi300x-dedicated",
    }
    assert mi355x["spec"]["nodeSelector"] == {"cluster/pool": "gpu"}
    assert {"key": "mi300x-only", "operator": "Exists"} in mi300x["spec"]["tolerations"]
    assert {"key": "mi300x-only", "operator": "Exists"} not in mi355x["spec"]["tolerations"]
    assert mi300x["spec"]["priorityClassName"] == "serving-high"
    assert "priorityClassName" not in mi355x["spec"]
    assert engine(mi300x)["env"][-2:] == [SECRET_ENV, CM_ENV]
    assert engine(mi355x)["env"][-1] == SECRET_ENV and CM_ENV not in engine(mi355x)["env"]


def test_pool_clash_warning_names_the_pool_field() -> None:
    doc = service(
        pools=[{"name": "mi300x", "gpu": "MI300X",
                "podTemplate": {"nodeSelector": {"cluster/pool": "batch"}}}],
    )  # fmt: skip
    svc = InferenceService.model_validate(doc)
    result = render_all(svc, CONFIG, plan_service(svc, CONFIG))
    assert any("spec.pools[0].podTemplate.nodeSelector.cluster/pool" in w for w in result.warnings)


def test_every_variable_the_operator_renders_is_refused_up_front() -> None:
    """The API's list of operator-owned env names covers what the renderer really sets (for
    every model source, role and engine mode), so a clash is an API error, not a warning."""
    from tokenscale.api.podtemplate import OWNED_ENV

    sources = [
        {"huggingFace": "meta-llama/Llama-3.1-405B"},
        {"pvc": {"claimName": "models", "path": "llama"}},
        {"s3": {"uri": "s3://bucket/llama", "credentialsSecret": "aws"}},
    ]
    config = CONFIG.model_copy(update={"leader_worker_set": True})
    rendered_names: set[str] = set()
    for source in sources:
        for mode in ("vllm", "simulated"):
            doc = service(
                model={"name": "llama-3.1-405b", "source": source,
                       "hfTokenSecret": {"name": "hf", "key": "token"}},
                engine={"mode": mode},
                parallelism={"tensor": 8, "pipeline": 2},
            )  # fmt: skip
            svc = InferenceService.model_validate(doc)
            for obj in render_all(svc, config, plan_service(svc, config)).objects:
                spec = obj.get("spec", {})
                lwt = spec.get("leaderWorkerTemplate", {})
                for tpl in (spec.get("template"), lwt.get("leaderTemplate"),
                            lwt.get("workerTemplate")):  # fmt: skip
                    if tpl:
                        rendered_names |= {e["name"] for e in engine(tpl).get("env", [])}
    assert {"POD_IP", "HF_TOKEN", "HF_HOME", "NODE_RANK", "VLLM_HOST_IP"} <= rendered_names
    assert rendered_names - set(OWNED_ENV) == set(), (
        "add these to tokenscale.api.podtemplate.OWNED_ENV (and docs/rendering.md)"
    )


def test_every_volume_the_operator_renders_is_refused_up_front() -> None:
    from tokenscale.api.podtemplate import OWNED_VOLUMES

    configs = [
        CONFIG,
        OperatorConfig.model_validate({"pods": {"runAsNonRoot": True, "hfCachePvc": "hf"}}),
    ]
    sources = [
        {"huggingFace": "meta-llama/Llama-2-70b-hf"},
        {"pvc": {"claimName": "models", "path": "llama"}},
    ]
    names: set[str] = set()
    for config in configs:
        for source in sources:
            svc = InferenceService.model_validate(
                service(model={"name": "llama-2-70b", "source": source})
            )
            for obj in render_all(svc, config, plan_service(svc, config)).objects:
                if obj["kind"] == "Deployment":
                    names |= {v["name"] for v in obj["spec"]["template"]["spec"]["volumes"]}
    assert {"shm", "hf-cache", "model"} <= names
    assert names - set(OWNED_VOLUMES) == set(), (
        "add these to tokenscale.api.podtemplate.OWNED_VOLUMES (and docs/rendering.md)"
    )

"""The chart grants the operator exactly what its code uses, no more and no less.

Two sources of need, compared with the rules in ``charts/tokenscale/templates/rbac.yaml``:

- derived from the code: every call of the ``Kube`` facade with a literal kind
  (``kube.get("Service", ...)``, ``asyncio.to_thread(kube.list, "Pod", ...)``,
  ``kube.patch_merge(..., "scale")``) maps to the verb it sends;
- a table for what a literal scan cannot see (server-side apply of built objects, the prune
  loop over child kinds, Kopf's own watches and patches, RBAC's escalation rule), each with a
  snippet that must still occur in the package, so a grant whose caller is gone fails here.

The e2e tests run the operator under these rules (cluster-wide in ``test_operator.py`` and
``test_autoscale_bench.py``, per namespace in ``test_chart.py``): they catch a missing grant the
scan and the table both missed.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "operator/tokenscale"
RBAC = ROOT / "charts/tokenscale/templates/rbac.yaml"
RBAC_DRA = ROOT / "charts/tokenscale/templates/rbac-dra.yaml"
VALUES = ROOT / "charts/tokenscale/values.yaml"

Need = tuple[str, str, str]  # (apiGroup, resource, verb)

#: kind -> (apiGroup, plural), for the kinds the operator's code names.
RESOURCES = {
    "Deployment": ("apps", "deployments"),
    "ReplicaSet": ("apps", "replicasets"),
    "Service": ("", "services"),
    "ConfigMap": ("", "configmaps"),
    "Pod": ("", "pods"),
    "Node": ("", "nodes"),
    "Event": ("", "events"),
    "Job": ("batch", "jobs"),
    "ServiceAccount": ("", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "ServiceMonitor": ("monitoring.coreos.com", "servicemonitors"),
    "InferencePool": ("inference.networking.k8s.io", "inferencepools"),
    "HTTPRoute": ("gateway.networking.k8s.io", "httproutes"),
    "LeaderWorkerSet": ("leaderworkerset.x-k8s.io", "leaderworkersets"),
    "InferenceService": ("tokenscale.dev", "inferenceservices"),
    "InferenceBenchmark": ("tokenscale.dev", "inferencebenchmarks"),
    "CustomResourceDefinition": ("apiextensions.k8s.io", "customresourcedefinitions"),
    "ResourceClaimTemplate": ("resource.k8s.io", "resourceclaimtemplates"),
    "ResourceClaim": ("resource.k8s.io", "resourceclaims"),
    "ResourceSlice": ("resource.k8s.io", "resourceslices"),
    "DeviceClass": ("resource.k8s.io", "deviceclasses"),
    "KopfPeering": ("kopf.dev", "kopfpeerings"),
    "ClusterKopfPeering": ("kopf.dev", "clusterkopfpeerings"),
}
#: Kube facade method -> HTTP verb it sends (apply is PATCH; on a new object also create).
VERBS = {
    "get": ("get",),
    "list": ("list",),
    "list_pages": ("list",),
    "delete": ("delete",),
    "patch_merge": ("patch",),
    "apply": ("create", "patch"),
    "create": ("create",),
}


@dataclass(frozen=True)
class Because:
    """Needs a literal scan cannot see, and the code that still shows them."""

    needs: tuple[str, ...]  # "group/resource: verb verb"
    evidence: tuple[str, ...]  # each must occur somewhere in the package source
    why: str


TABLE = (
    Because(
        ("apps/deployments: create patch delete list",
         "/services: create patch delete list",
         "policy/poddisruptionbudgets: create patch delete list",
         "monitoring.coreos.com/servicemonitors: create patch delete list",
         "leaderworkerset.x-k8s.io/leaderworkersets: create patch delete list",
         "/serviceaccounts: create patch delete list",
         "rbac.authorization.k8s.io/roles: create patch delete list",
         "rbac.authorization.k8s.io/rolebindings: create patch delete list",
         "inference.networking.k8s.io/inferencepools: create patch delete list",
         "gateway.networking.k8s.io/httproutes: create patch delete list"),
        ('CHILD_KINDS = (\n    "Deployment",\n    "LeaderWorkerSet",\n    "Service",\n'
         '    "PodDisruptionBudget",\n    "ServiceMonitor",', "kube.delete(key[0]",
         "applied[key] = kube.apply(obj)",
         "kube.list(kind, namespace, names.selector_for(name))", '    "HTTPRoute",\n)'),
        "reconcile applies the rendered children, lists them by label and prunes leftovers",
    ),
    Because(
        ("/pods: get list watch",),
        ('"resources": ["pods"], "verbs": ["get", "list", "watch"]',),
        "RBAC lets the operator grant the router's discovery Role only verbs it holds itself",
    ),
    Because(
        ("inference.networking.k8s.io/inferencepools: get list watch",),
        ('"resources": ["inferencepools"],\n'
         '            "verbs": ["get", "list", "watch"]',),
        "RBAC lets the operator grant the endpoint picker's Role only verbs it holds itself",
    ),
    Because(
        ("apps/deployments: watch", "leaderworkerset.x-k8s.io/leaderworkersets: watch"),
        ('@kopf.on.event("apps", "v1", "deployments"', "LWS_PLURAL,"),
        "child events refresh the owner's status (Kopf lists, then watches)",
    ),
    Because(
        ("tokenscale.dev/inferenceservices: list watch patch",
         "tokenscale.dev/inferencebenchmarks: list watch patch",
         "tokenscale.dev/inferenceservices/status: patch",
         "tokenscale.dev/inferencebenchmarks/status: patch"),
        ("@kopf.on.create(GROUP, VERSION, SERVICES)", "@kopf.on.create(GROUP, VERSION, BENCHMARKS)",
         "patch.status.update("),
        "Kopf watches the CRs and PATCHes its progress annotations and the handlers' status",
    ),
    Because(
        ("tokenscale.dev/inferencebenchmarks: create patch",),
        ("kube.apply(bench)",),
        "spec.benchmarkOnRollout: the operator applies a benchmark after a rollout",
    ),
    Because(
        ("batch/jobs: create patch", "/serviceaccounts: create patch",
         "rbac.authorization.k8s.io/roles: create patch",
         "rbac.authorization.k8s.io/rolebindings: create patch"),
        ('"kind": "Job"', '"kind": "ServiceAccount"', '"kind": "RoleBinding"'),
        "a benchmark run applies its narrow ServiceAccount, Role, RoleBinding and Job",
    ),
    Because(
        ("/configmaps: create patch",),
        ('"kind": "ConfigMap"',),
        "the operator applies the benchmark report ConfigMap",
    ),
    Because(
        ("/configmaps: get",),
        ('"resources": ["configmaps"]', '"verbs": ["get", "create", "patch"]'),
        "RBAC lets the operator grant the benchmark Role only verbs it holds itself",
    ),
    Because(
        ("/events: create",),
        ("kube.event(",),
        "Events on decisions (Kopf posts core/v1 Events for handler failures too)",
    ),
    Because(
        ("apiextensions.k8s.io/customresourcedefinitions: get list watch",
         "/namespaces: list watch"),
        ("kube.crd_exists(", "import kopf"),
        "optional kinds are used only when their CRD exists; Kopf watches CRDs and namespaces",
    ),
    Because(
        ("kopf.dev/kopfpeerings: get list watch create patch",
         "kopf.dev/clusterkopfpeerings: get list watch create patch"),
        ("KopfPeering", "kube.create({", "kube.get(kind, namespace, peering.name)"),
        "peering: the operator creates the peering object and reads it; Kopf keeps it alive",
    ),
    Because(
        ("resource.k8s.io/resourceclaimtemplates: list create patch delete",),
        ('    "ResourceClaimTemplate",\n', "applied[key] = kube.apply(obj)"),
        "DRA pools: the reconcile applies, lists and prunes its ResourceClaimTemplates",
    ),
    Because(
        ("resource.k8s.io/resourceslices: list", "resource.k8s.io/deviceclasses: list"),
        ('_list_or_empty(kube, "ResourceSlice")', '_list_or_empty(kube, "DeviceClass")'),
        "allocation auto and DRA capacity read the devices the driver publishes",
    ),
)  # fmt: skip


def _table_needs() -> set[Need]:
    out: set[Need] = set()
    for entry in TABLE:
        for line in entry.needs:
            path, verbs = line.split(": ")
            group, _, resource = path.rpartition("/")
            if resource == "status" or resource == "scale":  # group/plural/sub
                group, _, plural = group.rpartition("/")
                resource = f"{plural}/{resource}"
            out.update((group, resource, verb) for verb in verbs.split())
    return out


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _kube_method(node: ast.expr) -> str | None:
    """``kube.get`` / ``self.kube.list`` / ``memo.kube.apply`` -> the method name."""
    if not isinstance(node, ast.Attribute) or node.attr not in (*VERBS, "event", "crd_exists"):
        return None
    base = node.value
    name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
    return node.attr if name == "kube" else None


def _call_needs(method: str, args: list[ast.expr], keywords: list[ast.keyword]) -> set[Need]:
    if method == "event":
        return {("", "events", "create")}
    if method == "crd_exists":
        return {("apiextensions.k8s.io", "customresourcedefinitions", "get")}
    kind = _literal(args[0]) if args else None
    if kind is None:
        return set()
    group, resource = RESOURCES[kind]
    if method == "patch_merge":
        sub = _literal(args[4]) if len(args) > 4 else None
        sub = sub or next((_literal(k.value) for k in keywords if k.arg == "sub"), None)
        resource = f"{resource}/{sub}" if sub else resource
    return {(group, resource, verb) for verb in VERBS[method]}


def derived_needs(root: Path = PACKAGE) -> dict[Need, list[str]]:
    """Need -> call sites, from every ``Kube`` call with a literal kind in the operator's code
    (the activator runs under its own ServiceAccount and Role, so it is left out)."""
    found: dict[Need, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if "activator" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            method, args = _kube_method(node.func), list(node.args)
            if method is None and args and (inner := _kube_method(args[0])):  # to_thread(f, ...)
                method, args = inner, args[1:]
            if method is None:
                continue
            for need in _call_needs(method, args, node.keywords):
                found.setdefault(need, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def _render_lite(text: str) -> str:
    """The chart's rules with every branch taken (the widest grant) and default values."""
    values = yaml.safe_load(VALUES.read_text())
    name = json.dumps(values["benchmark"]["serviceAccountName"])
    text = text.replace("{{ .Values.benchmark.serviceAccountName | quote }}", name)
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("{{"))


def granted() -> tuple[set[Need], list[dict[str, Any]]]:
    """Every (group, resource, verb) the chart grants the operator, and the rules."""
    text = RBAC.read_text()
    start = text.index('{{- define "tokenscale.namespacedRules" }}')
    end = text.index("\n---", start)
    namespaced = yaml.safe_load(_render_lite(text[start:end]))
    cluster_doc = text[end:].split("\n---")[1]  # the ClusterRole
    cluster = yaml.safe_load(_render_lite(cluster_doc[cluster_doc.index("rules:") :]))["rules"]
    dra = RBAC_DRA.read_text()
    start = dra.index('{{- define "tokenscale.draNamespacedRules" }}')
    end = dra.index("{{- end }}", start)
    dra_namespaced = yaml.safe_load(_render_lite(dra[start:end]))
    dra_cluster_doc = dra[end:].split("\n---")[1]  # the ClusterRole
    dra_cluster = yaml.safe_load(_render_lite(dra_cluster_doc[dra_cluster_doc.index("rules:") :]))[
        "rules"
    ]
    rules = [*cluster, *namespaced, *dra_cluster, *dra_namespaced]
    out = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    return out, rules


def test_the_scan_sees_the_calls_it_claims_to() -> None:
    needs = derived_needs()
    assert ("", "pods", "patch") in needs  # asyncio.to_thread(kube.patch_merge, "Pod", ...)
    assert ("tokenscale.dev", "inferenceservices/scale", "patch") in needs  # sub-resource
    assert ("", "services", "get") in needs
    assert ("", "nodes", "list") in needs


def test_the_chart_grants_what_the_code_uses_and_nothing_else() -> None:
    have, _ = granted()
    derived = derived_needs()
    need = set(derived) | _table_needs()
    missing = {n: derived.get(n, ["table"]) for n in need - have}
    assert not missing, f"the code needs grants the chart lacks: {missing}"
    unused = sorted(have - need)
    assert not unused, f"the chart grants what no code uses (remove, or add its reason): {unused}"


@pytest.mark.parametrize("entry", TABLE, ids=[e.why[:40] for e in TABLE])
def test_every_table_reason_is_still_in_the_code(entry: Because) -> None:
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    for snippet in entry.evidence:
        assert snippet in source, f"{snippet!r} is gone: is '{entry.why}' still needed?"


def test_no_update_and_only_our_benchmark_identity_is_writable() -> None:
    have, rules = granted()
    assert not [n for n in have if n[2] == "update"]  # the code only PATCHes
    assert not [n for n in have if n[0] == "events.k8s.io"]  # only core/v1 Events are posted
    watched = {n[1] for n in have if n[2] == "watch"}
    assert watched == {
        "inferenceservices", "inferencebenchmarks", "deployments", "leaderworkersets", "pods",
        "inferencepools",
        "customresourcedefinitions", "namespaces", "kopfpeerings", "clusterkopfpeerings",
    }  # fmt: skip
    benchmark = yaml.safe_load(VALUES.read_text())["benchmark"]["serviceAccountName"]
    for rule in rules:
        if {"serviceaccounts", "roles", "rolebindings"} & set(rule["resources"]):
            # Benchmarks: create/patch of one name only. Routers: any name (one per service),
            # but never bind/escalate, and never update.
            if "delete" in rule["verbs"]:
                assert rule["verbs"] == ["list", "create", "patch", "delete"], rule
            else:
                assert rule.get("resourceNames") == [benchmark], rule


def test_the_scan_fails_on_an_ungranted_call(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text('def f(kube):\n    kube.delete("Node", None, "n1")\n')
    needs = derived_needs(tmp_path)
    assert set(needs) == {("", "nodes", "delete")}
    assert not set(needs) <= granted()[0]


def test_render_lite_keeps_every_rule() -> None:
    """The lite renderer must not drop rules: count them against the raw template."""
    _, rules = granted()
    raw = RBAC.read_text() + RBAC_DRA.read_text()
    assert len(rules) == len(re.findall(r"^\s*- apiGroups:", raw, re.M))

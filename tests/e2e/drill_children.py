"""What the operator drills check after a crash: every child where it should be, exactly once.

The expected children of a service come from the operator's own pure pipeline (plan → split →
render, as ``tokenscale render`` runs it) applied to the service as it is stored now, so the
audit compares the cluster with what the spec asks for, not with what some earlier pass wrote.
Findings are names ("Deployment c3-mi355x of c3"), so a failing drill says what went wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.operator_proc import OPERATOR_CONFIG
from tests.testbed.cluster import Cluster
from tokenscale import constants as c
from tokenscale.controller.split import split_replicas
from tokenscale.render.cli import load_config, render_service
from tokenscale.validation import parse_spec

#: Kinds the operator creates in a namespace on behalf of services and benchmarks.
CHILD_KINDS = (
    "deployments",
    "services",
    "poddisruptionbudgets",
    "jobs",
    "configmaps",
    "serviceaccounts",
    "roles",
    "rolebindings",
)
OWNER_KINDS = ("InferenceService", "InferenceBenchmark")
CONFIG = load_config(OPERATOR_CONFIG)


@dataclass
class Audit:
    """Named findings; ``clean`` when there are none."""

    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # owned by a live service, not in its spec
    unconverged: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.duplicated or self.orphaned or self.stale)

    @property
    def converged(self) -> bool:
        return self.clean and not self.unconverged

    def counts(self) -> dict[str, int]:
        return {
            "missing": len(self.missing),
            "duplicated": len(self.duplicated),
            "orphaned": len(self.orphaned),
            "stale": len(self.stale),
        }


def list_all(cluster: Cluster, namespace: str, kinds: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", kinds, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        return []
    items: list[dict[str, Any]] = json.loads(out.stdout).get("items") or []
    return items


def expected_children(svc: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of what the operator should keep for ``svc`` as stored now."""
    model = parse_spec(svc)  # the operator's own reading of a stored object
    pools = model.spec.pools
    replicas = split_replicas(model.spec.replicas, pools, {p.name: 1.0 for p in pools}, None)
    result, _ = render_service(model, CONFIG, replicas)
    return {(o["kind"], o["metadata"]["name"]) for o in result.objects}


def _controller(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The service or benchmark the child belongs to: its controller reference, else a plain
    owner reference (benchmark pods publish their result ConfigMaps with one)."""
    refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("kind") in OWNER_KINDS]
    refs.sort(key=lambda r: not r.get("controller"))
    return refs[0] if refs else None


def audit(cluster: Cluster, namespace: str) -> Audit:
    """Compare the namespace's children with what each live service and benchmark wants.

    - missing: a (kind, name) the service's spec renders that does not exist, or exists
      controlled by someone else (an earlier incarnation of the service);
    - duplicated: two workloads for one (service, pool), two Jobs for one benchmark run, or a
      child with more than one tokenscale controller reference;
    - orphaned: a child whose controller (service or benchmark) no longer exists, or an object
      labelled as managed by tokenscale with no owner at all;
    - stale: a child of a live service its spec no longer renders (should have been pruned);
    - unconverged: a live service whose status has not caught up with its generation and
      spec.replicas, or whose workloads do not add up to spec.replicas.
    """
    found = Audit()
    services = {s["metadata"]["uid"]: s for s in list_all(cluster, namespace, "tsvc")}
    benches = {b["metadata"]["uid"]: b for b in list_all(cluster, namespace, "tsbench")}
    children = [
        (kind, obj)
        for kinds in CHILD_KINDS
        for obj in list_all(cluster, namespace, kinds)
        for kind in [obj["kind"]]
    ]
    held: dict[str, set[tuple[str, str]]] = {uid: set() for uid in services}
    workloads: dict[tuple[str, str], list[str]] = {}
    runs: dict[str, list[str]] = {}
    for kind, obj in children:
        meta = obj["metadata"]
        label = f"{kind} {meta['name']}"
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("kind") in OWNER_KINDS]
        if len([r for r in refs if r.get("controller")]) > 1:
            found.duplicated.append(f"{label}: {len(refs)} controller references")
        ref = _controller(obj)
        labels = meta.get("labels") or {}
        if ref is None:
            # The benchmark ServiceAccount/Role/RoleBinding are shared by the namespace's
            # benchmarks on purpose (render/benchmark_job.rbac); anything else needs an owner.
            shared = labels.get(c.LABEL_COMPONENT) == "benchmark"
            if labels.get(c.LABEL_MANAGED_BY) == c.MANAGED_BY and not shared:
                found.orphaned.append(f"{label}: managed by tokenscale, no owner")
            continue
        if ref["uid"] not in services and ref["uid"] not in benches:
            found.orphaned.append(f"{label} of gone {ref['kind']} {ref['name']}")
            continue
        if ref["uid"] in services:
            held[ref["uid"]].add((kind, meta["name"]))
            if kind in ("Deployment", "LeaderWorkerSet"):
                pool = labels.get(c.LABEL_POOL, meta["name"])
                workloads.setdefault((ref["name"], pool), []).append(label)
        if kind == "Job":
            run = labels.get(c.LABEL_BENCHMARK_RUN) or meta["name"]
            runs.setdefault(f"{ref['name']}/{run}", []).append(meta["name"])
    for key, names in sorted(workloads.items()):
        if len(names) > 1:
            found.duplicated.append(f"{key[0]} pool {key[1]}: {names}")
    for run, names in sorted(runs.items()):
        if len(names) > 1:
            found.duplicated.append(f"benchmark run {run}: Jobs {names}")

    for uid, svc in services.items():
        name = svc["metadata"]["name"]
        if svc["metadata"].get("deletionTimestamp"):
            found.unconverged.append(f"{name}: being deleted")
            continue
        want = expected_children(svc)
        for kind, child in sorted(want - held[uid]):
            found.missing.append(f"{kind} {child} of {name}")
        for kind, child in sorted(held[uid] - want):
            found.stale.append(f"{kind} {child} of {name}")
        found.unconverged += _unconverged(svc, children)
    return found


def _unconverged(svc: dict[str, Any], children: list[tuple[str, dict[str, Any]]]) -> list[str]:
    meta, spec = svc["metadata"], svc.get("spec") or {}
    status = svc.get("status") or {}
    name = meta["name"]
    out = []
    if status.get("observedGeneration") != meta.get("generation"):
        out.append(f"{name}: observedGeneration {status.get('observedGeneration')} of gen "
                   f"{meta.get('generation')}")  # fmt: skip
    pools = spec.get("pools") or []
    low = sum(int(p.get("minReplicas", 1)) for p in pools)
    high = sum(int(p.get("maxReplicas", 1)) for p in pools)
    want = spec.get("replicas")
    if want is None:
        out.append(f"{name}: spec.replicas unset")
        return out
    want = min(max(int(want), low), high)
    running = sum(
        int((obj.get("spec") or {}).get("replicas") or 0)
        for kind, obj in children
        if kind == "Deployment" and (_controller(obj) or {}).get("uid") == meta["uid"]
    )
    if running != want:
        out.append(f"{name}: Deployments sum to {running} replicas, spec asks {want}")
    if status.get("replicas") != want:
        out.append(f"{name}: status.replicas {status.get('replicas')}, spec asks {want}")
    return out

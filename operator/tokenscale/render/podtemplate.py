"""Merge ``spec.podTemplate`` (then a pool's) over a rendered engine pod template (pure).

Applied to every pod template the renderer produces (Deployment pools, LeaderWorkerSet
leaders and workers) after the operator's own patches, so the operator's invariants hold
whatever the platform team adds. The API refuses the operator's fields by name
(:mod:`tokenscale.api.podtemplate`); what can only clash with a particular rendering (a
variable, volume or mount path the operator added for this model source, a nodeSelector key
operator config already pins) keeps the operator's value and returns a warning naming the
field, which the reconciler posts as an Event. Rules (docs/rendering.md, "Per-service pod
settings"):

- labels, annotations: added; a key from operator config ``pods.labels/annotations`` takes
  the service's value. The spec-hash annotation is recomputed.
- nodeSelector: merged into the pod's (the scheduler ANDs it with node affinity).
- affinity: required node terms are ANDed with the operator's GPU terms (each pair of terms
  becomes one term holding both sets of expressions); preferred terms and pod (anti-)affinity
  are appended.
- tolerations, imagePullSecrets, envFrom, volumes, volumeMounts, env: appended (env after
  the operator's, so ``$(VAR)`` may refer to them).
- priorityClassName, serviceAccountName: set.
- resources: requests/limits replaced key by key; a request above its limit is lowered to the
  limit (as Kubernetes defaults a missing request to the limit).
- a pool's ``spec.pools[].podTemplate`` is merged after the service's by the same rules (the
  API refuses a pool value that contradicts the service's).
"""

from __future__ import annotations

import copy
from typing import Any

from tokenscale import constants as c
from tokenscale.api.k8sschema import parse_quantity
from tokenscale.api.podtemplate import PodTemplate, PoolPodTemplate
from tokenscale.render.pod import spec_hash

Obj = dict[str, Any]


def _engine(pod: Obj) -> Obj:
    for container in pod["containers"]:
        if container["name"] == c.ENGINE_CONTAINER:
            found: Obj = container
            return found
    raise ValueError(f"rendered pod has no {c.ENGINE_CONTAINER} container")


def _and_terms(ours: list[Obj], theirs: list[Obj]) -> list[Obj]:
    """Node-selector terms are ORed, expressions inside a term ANDed: (A or B) and (C or D)
    is (A and C) or (A and D) or (B and C) or (B and D)."""
    if not ours or not theirs:
        return copy.deepcopy(ours or theirs)
    out = []
    for mine in ours:
        for term in theirs:
            merged: Obj = {}
            for key in ("matchExpressions", "matchFields"):
                items = [*mine.get(key, []), *term.get(key, [])]
                if items:
                    merged[key] = copy.deepcopy(items)
            out.append(merged)
    return out


def _affinity(pod: Obj, user: Obj) -> None:
    if not user:
        return
    aff = pod.setdefault("affinity", {})
    node_user = user.get("nodeAffinity") or {}
    if node_user:
        node = aff.setdefault("nodeAffinity", {})
        req_key = "requiredDuringSchedulingIgnoredDuringExecution"
        required = (node_user.get(req_key) or {}).get("nodeSelectorTerms") or []
        if required:
            ours = (node.get(req_key) or {}).get("nodeSelectorTerms") or []
            node[req_key] = {"nodeSelectorTerms": _and_terms(ours, required)}
        pref_key = "preferredDuringSchedulingIgnoredDuringExecution"
        if node_user.get(pref_key):
            node[pref_key] = [*node.get(pref_key, []), *copy.deepcopy(node_user[pref_key])]
    for kind in ("podAffinity", "podAntiAffinity"):
        for key, terms in (user.get(kind) or {}).items():
            mine = aff.setdefault(kind, {})
            mine[key] = [*mine.get(key, []), *copy.deepcopy(terms)]


def _append_unique(target: Obj, key: str, items: list[Obj]) -> None:
    existing = target.get(key, [])
    added = [copy.deepcopy(i) for i in items if i not in existing]
    if added:
        target[key] = [*existing, *added]


def _resources(container: Obj, user: Obj, at: str, warn: list[str]) -> None:
    res = container.setdefault("resources", {})
    for kind in ("requests", "limits"):
        if user.get(kind):
            res[kind] = {**res.get(kind, {}), **{k: str(v) for k, v in user[kind].items()}}
    requests, limits = res.get("requests", {}), res.get("limits", {})
    for key, limit in limits.items():
        want, cap = parse_quantity(requests.get(key)), parse_quantity(limit)
        if want is not None and cap is not None and want > cap:
            warn.append(
                f"{at}.resources.limits.{key}: the request {requests[key]} is above "
                f"the limit {limit}; the request is lowered to the limit"
            )
            requests[key] = limit


def _env(container: Obj, user: list[Obj], at: str, warn: list[str]) -> None:
    taken = {e["name"] for e in container.get("env", [])}
    added = []
    for i, var in enumerate(user):
        if var["name"] in taken:
            warn.append(
                f"{at}.env[{i}].name: {var['name']} is already set by the operator "
                "or spec.engine.env; the operator's value is kept (fix: use another name)"
            )
            continue
        added.append(copy.deepcopy(var))
    if added:
        container["env"] = [*container.get("env", []), *added]


def _volumes(pod: Obj, container: Obj, tpl: PodTemplate, at: str, warn: list[str]) -> None:
    taken = {v["name"] for v in pod.get("volumes", [])}
    skipped = set()
    added = []
    vol: Obj
    for i, vol in enumerate(tpl.volumes):
        if vol["name"] in taken:
            skipped.add(vol["name"])
            warn.append(
                f"{at}.volumes[{i}].name: the operator already renders a volume "
                f"named {vol['name']}; yours and its mounts are left out (fix: rename it)"
            )
            continue
        added.append(copy.deepcopy(vol))
    if added:
        pod["volumes"] = [*pod.get("volumes", []), *added]
    paths = {m["mountPath"] for m in container.get("volumeMounts", [])}
    mounts = []
    mount: Obj
    for i, mount in enumerate(tpl.volume_mounts):
        if mount["name"] in skipped:
            continue
        if mount["mountPath"] in paths:
            warn.append(
                f"{at}.volumeMounts[{i}].mountPath: the operator mounts "
                f"{mount['mountPath']} itself; this mount is left out (fix: use another path)"
            )
            continue
        mounts.append(copy.deepcopy(mount))
    if mounts:
        container["volumeMounts"] = [*container.get("volumeMounts", []), *mounts]


def _node_selector(pod: Obj, user: dict[str, str], at: str, warn: list[str]) -> None:
    selector = dict(pod.get("nodeSelector", {}))
    for key, value in user.items():
        if key in selector and selector[key] != value:
            warn.append(
                f"{at}.nodeSelector.{key}: operator config pods.nodeSelector "
                f"requires {key}={selector[key]}; both cannot hold, so the operator's value is "
                "kept (fix: drop the key or change operator config)"
            )
            continue
        selector[key] = value
    if selector:
        pod["nodeSelector"] = dict(sorted(selector.items()))


def _scalar(pod: Obj, key: str, value: str | None, at: str, warn: list[str]) -> None:
    if value is None:
        return
    if pod.get(key, value) != value:
        warn.append(f"{at}.{key}: the operator sets {pod[key]}; yours is ignored")
        return
    pod[key] = value


def _layer(out: Obj, tpl: PoolPodTemplate, at: str, warn: list[str]) -> None:
    """Merge one podTemplate (the service's, then a pool's) into ``out`` in place."""
    meta, pod = out["metadata"], out["spec"]
    container = _engine(pod)
    meta["labels"] = dict(sorted({**meta.get("labels", {}), **tpl.labels}.items()))
    meta["annotations"].update(tpl.annotations)
    _node_selector(pod, tpl.node_selector, at, warn)
    _append_unique(pod, "tolerations", tpl.tolerations)
    _scalar(pod, "priorityClassName", tpl.priority_class_name, at, warn)
    _scalar(pod, "serviceAccountName", tpl.service_account_name, at, warn)
    _append_unique(pod, "imagePullSecrets", tpl.image_pull_secrets)
    _resources(container, tpl.resources, at, warn)
    _env(container, tpl.env, at, warn)
    _append_unique(container, "envFrom", tpl.env_from)
    if isinstance(tpl, PodTemplate):
        _affinity(pod, tpl.affinity)
        _volumes(pod, container, tpl, at, warn)


def merge(
    template: Obj,
    tpl: PodTemplate | None,
    pool_tpl: PoolPodTemplate | None = None,
    pool_path: str = "spec.pools[].podTemplate",
) -> tuple[Obj, list[str]]:
    """A copy of the rendered pod ``template`` with the service's podTemplate and then the
    pool's merged in, and warnings naming ``spec.podTemplate`` or ``pool_path``.

    Without either the template is returned unchanged (same spec hash).
    """
    if tpl is None and pool_tpl is None:
        return template, []
    out = copy.deepcopy(template)
    warn: list[str] = []
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(c.ANNOTATION_SPEC_HASH, None)
    if tpl is not None:
        _layer(out, tpl, "spec.podTemplate", warn)
    if pool_tpl is not None:
        _layer(out, pool_tpl, pool_path, warn)
    annotations[c.ANNOTATION_SPEC_HASH] = spec_hash(out)
    out["metadata"]["annotations"] = dict(sorted(annotations.items()))
    return out, warn

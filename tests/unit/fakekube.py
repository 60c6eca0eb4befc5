"""An in-memory stand-in for :class:`tokenscale.k8s.kube.Kube` (unit tests only).

It stores objects by kind/namespace/name and understands equality label selectors — enough
to exercise reconcile logic; the e2e tests run the same code against a real API server. Unlike
the real one it rejects a status patch its model does not allow (:mod:`tests.unit.statuscheck`)
instead of pruning it silently, so every unit test that writes status checks what it writes.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from typing import Any

from tests.unit.statuscheck import MODELS, check_status_patch
from tokenscale.k8s.kube import KubeError

_uids = itertools.count(1)


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:  # an existence selector
            return False
    return True


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.crds: set[str] = set()
        #: every status-subresource patch, each validated against its status model
        self.status_patches: list[tuple[str, dict[str, Any]]] = []

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{next(_uids)}")
        meta.setdefault("generation", 1)
        self.objects[(obj["kind"], meta.get("namespace"), meta["name"])] = obj
        return obj

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        old = self.objects.get(key)
        new = copy.deepcopy(obj)
        if old is not None:
            new["metadata"]["uid"] = old["metadata"]["uid"]
            new.setdefault("status", old.get("status"))
        return self.put(new)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def list(
        self, kind: str, namespace: str | None, selector: str = "", field: str = ""
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
            if k == kind
            and (namespace is None or ns == namespace)
            and _matches(o["metadata"].get("labels") or {}, selector)
        ]

    def list_pages(
        self,
        kind: str,
        namespace: str | None,
        selector: str = "",
        limit: int = 100,
        field: str = "",
    ) -> Iterator[list[dict[str, Any]]]:
        found = self.list(kind, namespace, selector, field)
        for start in range(0, len(found), limit):
            yield found[start : start + limit]

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self.objects.pop((kind, namespace, name), None)

    def patch_merge(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], sub: str = ""
    ) -> dict[str, Any]:
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise KubeError(404, "not found")
        if sub == "status" and kind in MODELS:
            check_status_patch(kind, patch["status"])  # what the real API server would prune
            self.status_patches.append((kind, copy.deepcopy(patch["status"])))
        _merge(obj, copy.deepcopy(patch))
        return copy.deepcopy(obj)

    def crd_exists(self, name: str) -> bool:
        return name in self.crds

    def event(
        self, involved: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.events.append((reason, message, type_))


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386), as the API server applies it: null deletes a key."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value

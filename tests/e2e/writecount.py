"""Count the writes that land on a namespace's objects, from watches (the drills' churn meter).

The API server bumps an object's resourceVersion on every write that changes it, and a watch
sees each such change, so counting watch events measures writes exactly, whoever made them and
whatever client they used (the operator's own client and Kopf's). What counts:

- an InferenceService: every change (only the operator writes one while a drill watches it);
- a child (Deployment, Service, ConfigMap, PodDisruptionBudget): its creation, its deletion, and
  a change of anything but ``status`` (controllers other than the operator write only status);
- an Event about an InferenceService: its creation or a count bump (only the operator posts them).

A write that changes nothing leaves resourceVersion alone and is not seen: the meter measures
churn of objects, not API requests. Not a test module, so importing it collects nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch

from tests.testbed.cluster import Cluster

GROUP, VERSION, PLURAL = "tokenscale.dev", "v1alpha1", "inferenceservices"


@dataclass(frozen=True, slots=True)
class Write:
    """One observed change: when (monotonic seconds), which kind/name, and what kind of change."""

    at: float
    kind: str
    name: str
    change: str  # ADDED / DELETED / MODIFIED
    service: str  # the InferenceService it belongs to ("" when unknown)


@dataclass
class WriteCounter:
    """Watches one namespace in background threads until :meth:`stop`."""

    cluster: Cluster
    namespace: str
    writes: list[Write] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ready: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def start(self) -> WriteCounter:
        api = self.cluster.api_client()
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        policy, custom = client.PolicyV1Api(api), client.CustomObjectsApi(api)
        ns = self.namespace
        sources: dict[str, Callable[..., Any]] = {
            "InferenceService": lambda **kw: custom.list_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, **kw
            ),
            "Deployment": lambda **kw: apps.list_namespaced_deployment(ns, **kw),
            "Service": lambda **kw: core.list_namespaced_service(ns, **kw),
            "ConfigMap": lambda **kw: core.list_namespaced_config_map(ns, **kw),
            "PodDisruptionBudget": lambda **kw: policy.list_namespaced_pod_disruption_budget(
                ns, **kw
            ),
            "Event": lambda **kw: core.list_namespaced_event(ns, **kw),
        }
        for kind, lister in sources.items():
            thread = threading.Thread(
                target=self._watch, args=(api, kind, lister), daemon=True, name=f"watch-{kind}"
            )
            thread.start()
            self._threads.append(thread)
        for _ in sources:  # every watch has listed: later writes are all seen
            if not self._ready.acquire(timeout=30):
                raise TimeoutError("a watch did not start within 30 s")
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> WriteCounter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(
        self, service: str, since: float, until: float | None = None, kinds: set[str] | None = None
    ) -> Counter[str]:
        """Writes per kind for ``service`` in [since, until)."""
        end = until if until is not None else time.monotonic()
        with self._lock:
            return Counter(
                w.kind
                for w in self.writes
                if w.service == service
                and since <= w.at < end
                and (kinds is None or w.kind in kinds)
            )

    def _watch(self, api: client.ApiClient, kind: str, lister: Callable[..., Any]) -> None:
        initial = lister()
        items = initial["items"] if isinstance(initial, dict) else initial.items
        meta = initial["metadata"] if isinstance(initial, dict) else initial.metadata
        rv = meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version
        seen: dict[str, dict[str, Any]] = {}
        for item in items:
            obj = _plain(api, item)
            seen[obj["metadata"]["name"]] = obj
        self._ready.release()
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in _stream(w, lister, rv):
                    obj = _plain(api, event["object"])
                    if event["type"] == "ERROR":
                        rv = ""  # expired: relist from now (changes in between are not counted)
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    self._record(kind, event["type"], obj, seen)
                    if self._stop.is_set():
                        break
            except Exception:  # a dropped stream: resume from the last version
                if self._stop.is_set():
                    return
                time.sleep(0.2)
            finally:
                w.stop()

    def _record(self, kind: str, change: str, obj: dict[str, Any], seen: dict[str, Any]) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        before = seen.get(name)
        if change == "DELETED":
            seen.pop(name, None)
        else:
            seen[name] = obj
        if kind == "Event":
            involved = obj.get("involvedObject") or {}
            if involved.get("kind") != "InferenceService":
                return
            service = str(involved.get("name") or "")
        elif kind == "InferenceService":
            service = name
        else:
            service = (meta.get("labels") or {}).get("tokenscale.dev/service", "")
            if change == "MODIFIED" and before is not None and _spec(before) == _spec(obj):
                return  # a status-only change: the Deployment controller, not the operator
        with self._lock:
            self.writes.append(Write(time.monotonic(), kind, name, change, service))


def _stream(w: watch.Watch, lister: Callable[..., Any], rv: str) -> Iterator[dict[str, Any]]:
    kwargs: dict[str, Any] = {"timeout_seconds": 5, "allow_watch_bookmarks": False}
    if rv:
        kwargs["resource_version"] = rv
    yield from w.stream(lister, **kwargs)


def _plain(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    plain: dict[str, Any] = obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)
    return plain


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything but status and the bookkeeping every write changes."""
    meta = {
        k: v
        for k, v in obj["metadata"].items()
        if k not in ("resourceVersion", "managedFields", "generation", "annotations")
    }
    # the Deployment controller's own annotation (the revision it rolled out)
    annotations = dict(obj["metadata"].get("annotations") or {})
    annotations.pop("deployment.kubernetes.io/revision", None)
    meta["annotations"] = annotations
    return {**{k: v for k, v in obj.items() if k not in ("status", "metadata")}, "metadata": meta}

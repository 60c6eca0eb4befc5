"""The operator's only door to the API server: server-side apply, list, delete, events.

Raw REST calls through the official client's public dynamic client
(``DynamicClient.request``): we know every kind we write, so a fixed path table replaces
per-kind resource discovery (one discovery round-trip per API group, seconds per start on a
busy API server). Only the client's public surface is used, not ``ApiClient.param_serialize``
/ ``call_api``: those are generated plumbing that the generator reshaped in v36/v37, which is
what the old ``<38`` pin guarded; the dynamic client is kept working across such changes by
the client's maintainers. What the route costs (two discovery GETs at first use, memory) is
measured by ``benchmarks/operator_rss.py`` and recorded in docs/operator.md.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config, dynamic
from kubernetes.client.exceptions import ApiException

from tokenscale.api.wire import k8s_time
from tokenscale.constants import FIELD_MANAGER

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Kind:
    """Where a kind lives in the REST API."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        ns = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        tail = f"/{name}" if name else ""
        return f"{prefix}{ns}/{self.plural}{tail}"


KINDS: dict[str, Kind] = {
    "Deployment": Kind("apps/v1", "deployments"),
    "ReplicaSet": Kind("apps/v1", "replicasets"),
    "Service": Kind("v1", "services"),
    "ConfigMap": Kind("v1", "configmaps"),
    "Pod": Kind("v1", "pods"),
    "Node": Kind("v1", "nodes", namespaced=False),
    "Event": Kind("v1", "events"),
    "Job": Kind("batch/v1", "jobs"),
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "Role": Kind("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "ServiceMonitor": Kind("monitoring.coreos.com/v1", "servicemonitors"),
    "LeaderWorkerSet": Kind("leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
    "InferencePool": Kind("inference.networking.k8s.io/v1", "inferencepools"),
    "HTTPRoute": Kind("gateway.networking.k8s.io/v1", "httproutes"),
    "InferenceService": Kind("tokenscale.dev/v1alpha1", "inferenceservices"),
    "InferenceBenchmark": Kind("tokenscale.dev/v1alpha1", "inferencebenchmarks"),
    # Kopf's peering records (controller/peering.py creates and reads them).
    "KopfPeering": Kind("kopf.dev/v1", "kopfpeerings"),
    "ClusterKopfPeering": Kind("kopf.dev/v1", "clusterkopfpeerings", namespaced=False),
    # Dynamic Resource Allocation (allocation: dra/auto; GA in Kubernetes 1.34).
    "ResourceClaimTemplate": Kind("resource.k8s.io/v1", "resourceclaimtemplates"),
    "ResourceClaim": Kind("resource.k8s.io/v1", "resourceclaims"),
    "ResourceSlice": Kind("resource.k8s.io/v1", "resourceslices", namespaced=False),
    "DeviceClass": Kind("resource.k8s.io/v1", "deviceclasses", namespaced=False),
    "CustomResourceDefinition": Kind(
        "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False
    ),
}


#: Waits before the second and third attempt of a request the API server turned away for now
#: (429, 500, 502, 503, 504). Without them one refused request in the ten or so of a
#: reconcile fails the whole reconcile, so at a few percent of errors most reconciles failed
#: and waited out Kopf's 10-30 s retry (found by the API-faults drill).
RETRY_DELAYS = (0.5, 2.0)
#: Longest ``Retry-After`` obeyed in place; a longer one is left to the caller's own retry.
MAX_RETRY_AFTER = 5.0
_TRANSIENT = frozenset({500, 502, 503, 504})


class KubeError(RuntimeError):
    """An API call failed; ``status`` is the HTTP status (0 when no response)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


def retry_wait(exc: KubeError, method: str, attempt: int) -> float | None:
    """Seconds to wait before attempt ``attempt + 2`` of a failed request; None: give up.

    A 429 is always safe to repeat (the API server's priority and fairness refused it before
    it ran) and waits at least its ``Retry-After``; a 5xx is repeated only for methods whose
    repetition converges to the same state (GET, server-side apply, merge patch, DELETE), not
    for a POST that may have landed."""
    if attempt >= len(RETRY_DELAYS):
        return None
    delay = RETRY_DELAYS[attempt]
    if exc.status == 429:
        if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER:
            return None
        return max(delay, exc.retry_after or 0.0)
    if exc.status in _TRANSIENT and method != "POST":
        return delay
    return None


class Kube:
    """A thin synchronous client; Kopf runs sync handlers in its thread pool."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or _default_client()
        self._rest: dynamic.DynamicClient | None = None
        self._rest_lock = threading.Lock()
        self._crds: dict[str, bool] = {}

    def _dynamic(self) -> dynamic.DynamicClient:
        """The dynamic client, made on first use: making it fetches /version and the API group
        list (then cached in a temp file), so a call's error handling and its caller's retries
        cover that too, and constructing a Kube stays free of I/O. Per-kind discovery never
        runs: paths come from KINDS."""
        with self._rest_lock:
            if self._rest is None:
                self._rest = dynamic.DynamicClient(self.api)  # type: ignore[no-untyped-call]
            return self._rest

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        attempt = 0
        while True:
            try:
                return self._call_once(method, path, body, query, content_type)
            except KubeError as exc:
                wait = retry_wait(exc, method, attempt)
                if wait is None:
                    raise
                log.debug("%s %s: %s (HTTP %s); retry in %.1f s", method, path, exc, exc.status,
                          wait)  # fmt: skip
                time.sleep(wait)
                attempt += 1

    def _call_once(
        self,
        method: str,
        path: str,
        body: Any,
        query: list[tuple[str, str]] | None,
        content_type: str,
    ) -> Any:
        try:
            response = self._dynamic().request(
                method,
                path,
                body=body,
                query_params=query or [],
                header_params={"Accept": "application/json"},
                content_type=content_type,
                _request_timeout=30,
                serialize=False,  # the raw response: we parse JSON ourselves, no wrapper objects
            )
            raw: bytes = response.data
        except ApiException as exc:
            if not exc.status:
                raise KubeError(0, f"{method} {path}: {exc}") from None
            raise KubeError(
                exc.status, _reason(exc.body, exc.reason), _retry_after(exc.headers)
            ) from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise KubeError(0, f"{method} {path}: {exc}") from None
        return json.loads(raw) if raw else None

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply under the operator's single field manager."""
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        query = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
        path = kind.path(meta.get("namespace"), meta["name"])
        result: dict[str, Any] = self._call(
            "PATCH", path, json.dumps(obj), query, "application/apply-patch+yaml"
        )
        return result

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST a new object; 409 (``KubeError.status``) when it exists already."""
        kind = KINDS[obj["kind"]]
        created: dict[str, Any] = self._call(
            "POST", kind.path(obj["metadata"].get("namespace")), obj
        )
        return created

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._call("GET", KINDS[kind].path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def list(
        self, kind: str, namespace: str | None, selector: str = "", field: str = ""
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        if field:
            query.append(("fieldSelector", field))
        items: list[dict[str, Any]] = self._call("GET", KINDS[kind].path(namespace), None, query)[
            "items"
        ]
        return items

    def list_pages(
        self,
        kind: str,
        namespace: str | None,
        selector: str = "",
        limit: int = 100,
        field: str = "",
    ) -> Iterator[builtins.list[dict[str, Any]]]:
        """Like :meth:`list`, in pages of ``limit`` (bounded memory for fleet-wide lists)."""
        token = ""
        while True:
            query = [("limit", str(limit))]
            if selector:
                query.append(("labelSelector", selector))
            if field:
                query.append(("fieldSelector", field))
            if token:
                query.append(("continue", token))
            found = self._call("GET", KINDS[kind].path(namespace), None, query)
            yield found["items"]
            token = (found.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        body = {"propagationPolicy": "Background"}
        try:
            self._call("DELETE", KINDS[kind].path(namespace, name), body)
        except KubeError as exc:
            if exc.status != 404:
                raise

    def patch_merge(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], sub: str = ""
    ) -> dict[str, Any]:
        path = KINDS[kind].path(namespace, name) + (f"/{sub}" if sub else "")
        # Our field manager on every write: managedFields then tell the operator's writes of
        # spec.replicas from another writer's (autoscale.writers).
        query = [("fieldManager", FIELD_MANAGER)]
        result: dict[str, Any] = self._call(
            "PATCH", path, patch, query, "application/merge-patch+json"
        )
        return result

    def crd_exists(self, name: str) -> bool:
        if name in self._crds:
            return self._crds[name]
        try:
            found = self.get("CustomResourceDefinition", None, name) is not None
        except KubeError as exc:
            if exc.status != 403:
                raise
            found = False
        self._crds[name] = found
        return found

    def event(
        self, involved: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """Post a core/v1 Event; failures are logged, never raised (events are best effort)."""
        meta = involved["metadata"]
        now = k8s_time(datetime.now(UTC))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1000],
            "type": type_,
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._call("POST", KINDS["Event"].path(meta["namespace"]), body)
        except KubeError as exc:
            log.warning("could not post event %s: %s", reason, exc)


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers["Retry-After"]) if headers and "Retry-After" in headers else None
    except (TypeError, ValueError):
        return None


def _reason(raw: str | bytes | None, fallback: str | None) -> str:
    try:
        return str(json.loads(raw or b"{}").get("message") or fallback)
    except (ValueError, AttributeError):
        return str(fallback)


def _default_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()

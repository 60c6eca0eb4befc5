"""Child names, labels and selectors: every rendered object takes them from here.

Selectors only use labels that never change for the life of a child (service, pool, role), so a
spec change can never orphan pods; everything else (extra pod labels from operator config,
versions) goes into labels only.
"""

from __future__ import annotations

from typing import Any

from tokenscale import constants as c
from tokenscale.api.base import MAX_NAME_LENGTH, MAX_POOL_NAME_LENGTH
from tokenscale.api.service import InferenceService

#: "<service>-<pool>" is the longest child name (Deployment, LeaderWorkerSet).
MAX_CHILD_NAME_LENGTH = MAX_NAME_LENGTH + 1 + MAX_POOL_NAME_LENGTH


def _checked(name: str) -> str:
    if len(name) > MAX_CHILD_NAME_LENGTH:
        raise ValueError(
            f"child name {name!r} is longer than {MAX_CHILD_NAME_LENGTH} characters; the API "
            f"limits service names to {MAX_NAME_LENGTH} and pool names to {MAX_POOL_NAME_LENGTH}"
        )
    return name


def pool_workload(service: str, pool: str) -> str:
    """Deployment or LeaderWorkerSet of one pool."""
    return _checked(f"{service}-{pool}")


def service(service: str) -> str:
    """The Service in front of every pool (also the PDB and ServiceMonitor name)."""
    return _checked(service)


def service_url(service: str, namespace: str) -> str:
    """In-cluster base URL of a service's API (``status.url``).

    ``NAME.NAMESPACE.svc`` without the cluster domain: it resolves through every pod's DNS
    search path whatever the domain is (not always ``cluster.local``), and the activator
    accepts it as a Host when the service sleeps at zero.
    """
    return f"http://{_checked(service)}.{namespace}.svc:{c.ENGINE_PORT}"


def common_labels(service: str) -> dict[str, str]:
    """Labels on every child object of a service."""
    return {
        c.LABEL_NAME: c.APP_NAME,
        c.LABEL_INSTANCE: service,
        c.LABEL_COMPONENT: c.COMPONENT_ENGINE,
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_SERVICE: service,
    }


def pool_selector(service: str, pool: str) -> dict[str, str]:
    """Selector of one pool's pods (Deployment .spec.selector)."""
    return {c.LABEL_SERVICE: service, c.LABEL_POOL: pool}


def service_selector(service: str) -> dict[str, str]:
    """Selector of every pod that serves HTTP, in every pool (Service, ServiceMonitor)."""
    return {c.LABEL_SERVICE: service, c.LABEL_ENDPOINT: "true"}


def all_pods_selector(service: str) -> dict[str, str]:
    """Selector of every engine pod of the service (PDB, /scale status selector)."""
    return {c.LABEL_SERVICE: service}


def pod_labels(service: str, pool: str, role: str, extra: dict[str, str]) -> dict[str, str]:
    """Labels of an engine pod; operator-config extras never override ours."""
    labels = dict(extra)
    labels.update(common_labels(service))
    labels[c.LABEL_POOL] = pool
    labels[c.LABEL_ROLE] = role
    if role != c.ROLE_WORKER:
        labels[c.LABEL_ENDPOINT] = "true"
    return dict(sorted(labels.items()))


def selector_string(labels: dict[str, str]) -> str:
    """``k=v,k=v`` form (status.selector for the /scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def selector_for(service: str) -> str:
    """Every engine pod of the service: the /scale selector and what status observes."""
    return selector_string(all_pods_selector(service))


def object_meta(owner: InferenceService, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """Child metadata in the owner's namespace (omitted when the manifest has none)."""
    meta: dict[str, Any] = {"name": name}
    if owner.metadata.namespace:
        meta["namespace"] = owner.metadata.namespace
    meta["labels"] = dict(sorted(labels.items()))
    return meta

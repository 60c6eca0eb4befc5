"""The cluster as the activator sees it: get a service, wake it, find its ready engines.

Why a protocol: the activator's decisions (wake or not, wait, proxy, which error) are tested
against an in-memory fake; only :class:`KubeBackend` talks to the API server, through the same
:class:`~tokenscale.k8s.kube.Kube` and wake code the operator uses, so a wake from here
is indistinguishable from one by a benchmark.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from tokenscale.api.service import InferenceServiceSpec
from tokenscale.autoscale.collector import engine_pods
from tokenscale.k8s import wake
from tokenscale.k8s.kube import Kube
from tokenscale.render import names

#: Completes the WokeFromZero Event: "woke NAME from zero to N replica(s) <WHY>".
WAKE_REASON = "for a request via the activator"


class Backend(Protocol):
    """What the activator needs from the cluster; every method may raise on API errors."""

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The InferenceService object as the API returns it, or None if it does not exist."""
        ...

    async def wake(self, body: dict[str, Any]) -> str | None:
        """Scale the service (``body`` as from :meth:`get_service`) up from zero; returns the
        message of the Event that says so, or None if another writer woke it first."""
        ...

    async def ready_ips(self, namespace: str, name: str) -> list[str]:
        """Pod IPs of the service's HTTP-serving engines that are Running and Ready."""
        ...


class KubeBackend:
    """:class:`Backend` on the synchronous :class:`Kube`, each call in a worker thread so a
    slow API server never stalls the event loop that streams other requests."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.kube.get, "InferenceService", namespace, name)

    async def wake(self, body: dict[str, Any]) -> str | None:
        spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
        return await asyncio.to_thread(wake.wake, self.kube, body, spec, WAKE_REASON)

    async def ready_ips(self, namespace: str, name: str) -> list[str]:
        # Leaders and single-node engines only: a multi-node worker has no HTTP server.
        selector = names.selector_string(names.service_selector(name))
        pods = await asyncio.to_thread(self.kube.list, "Pod", namespace, selector)
        return [pod.ip for pod in engine_pods(pods)]

"""Point a scale-to-zero service's Service at its engines or at the activator.

Why here and not in the render: which way the Service should point depends on what exists now
(ready engines, a ready activator in the namespace), which only the controller can observe. The
rule itself is pure (:func:`tokenscale.render.service.wants_activator`); this module reads the
cluster, and rewrites only the Service, only when the route changes, with an Event each time.
It costs no API call for services that cannot scale to zero or when the activator is disabled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.autoscale.collector import ready_pods
from tokenscale.controller.events import Event
from tokenscale.k8s.kube import Kube
from tokenscale.k8s.owners import owner_reference
from tokenscale.render import names
from tokenscale.render.service import Route, route_of, wants_activator


def applies(cfg: OperatorConfig, svc: InferenceService) -> bool:
    return cfg.activator.enabled and svc.spec.scaling.scale_to_zero


def live_route(kube: Kube, cfg: OperatorConfig, svc: InferenceService, namespace: str) -> Route:
    """Where the Service points now: a reconcile re-renders it that way, so that only
    :func:`follow` moves it (and says so)."""
    if not applies(cfg, svc):
        return "engines"
    return route_of(kube.get("Service", namespace, names.service(svc.metadata.name)))


def activator_ready(kube: Kube, cfg: OperatorConfig, namespace: str) -> bool:
    selector = names.selector_string(cfg.activator.selector)
    return bool(ready_pods(kube.list("Pod", namespace, selector)))


def follow(
    body: dict[str, Any],
    svc: InferenceService,
    cfg: OperatorConfig,
    kube: Kube,
    ready_replicas: int,
    current: Route,
    render_service: Callable[[Route], dict[str, Any]],
    events: list[Event],
) -> dict[str, Any] | None:
    """Move the Service to the route the service needs now, if that is not ``current``;
    returns the Service as applied, or None when it was left alone."""
    if not applies(cfg, svc):
        return None
    namespace = body["metadata"]["namespace"]
    want: Route = (
        "activator"
        if wants_activator(
            cfg,
            svc.spec,
            ready_replicas,
            ready_replicas == 0 and activator_ready(kube, cfg, namespace),
        )
        else "engines"
    )
    if want == current:
        return None
    # A create handler and a status refresh of a new service run at the same time and both
    # see the old route; reading again just before the write leaves the move (and its Event)
    # to whichever comes first.
    if live_route(kube, cfg, svc, namespace) == want:
        return None
    obj = render_service(want)
    obj["metadata"]["namespace"] = namespace
    obj["metadata"]["ownerReferences"] = [owner_reference(body, "InferenceService")]
    live = kube.apply(obj)
    if want == "activator":
        events.append(
            Event(
                "RoutedToActivator",
                f"no ready engine: Service {obj['metadata']['name']} now selects the activator, "
                "so a request wakes the service instead of being refused",
            )
        )
    else:
        events.append(
            Event(
                "RoutedToEngines",
                f"{ready_replicas} engine(s) ready: Service {obj['metadata']['name']} selects "
                "the engines again",
            )
        )
    return live

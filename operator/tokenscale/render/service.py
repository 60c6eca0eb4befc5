"""The Service in front of every pool: clients see one endpoint whatever GPUs serve it.

While a scale-to-zero service has no ready engine, the same Service (same name, same ClusterIP,
same port) selects the activator pods of its namespace instead, Knative-style: a request then
wakes the service instead of being refused. Clients never change their URL.
"""

from __future__ import annotations

from typing import Any, Literal

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService, InferenceServiceSpec
from tokenscale.render import names

Obj = dict[str, Any]
Route = Literal["engines", "activator"]


def wants_activator(
    config: OperatorConfig,
    spec: InferenceServiceSpec,
    ready_replicas: int,
    activator_ready: bool,
) -> bool:
    """Route to the activator only when all of these hold: the operator has it enabled, the
    service may scale to zero, no engine is ready to answer, and an activator is ready in the
    namespace to take the request (without one, routing there would only move the refusal)."""
    return (
        config.activator.enabled
        and spec.scaling.scale_to_zero
        and ready_replicas == 0
        and activator_ready
    )


def service(
    svc: InferenceService,
    name: str,
    labels: dict[str, str],
    selector: dict[str, str],
    route: Route = "engines",
    activator_selector: dict[str, str] | None = None,
) -> Obj:
    """ClusterIP Service on port 8000 (``http``) selecting the serving pods of all pools, or
    the activator pods (which also name their port ``http``) when ``route`` is ``activator``."""
    chosen = activator_selector if route == "activator" and activator_selector else selector
    meta = names.object_meta(svc, name, labels)
    meta.setdefault("annotations", {})[c.ANNOTATION_ROUTE] = route
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": dict(sorted(chosen.items())),
            "ports": [
                {
                    "name": c.ENGINE_PORT_NAME,
                    "port": c.ENGINE_PORT,
                    "targetPort": c.ENGINE_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def route_of(obj: Obj | None) -> Route:
    """Where a live Service routes, from our annotation (a Service we never annotated: engines)."""
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return "activator" if annotations.get(c.ANNOTATION_ROUTE) == "activator" else "engines"

"""The Service in front of every pool: clients see one endpoint whatever GPUs serve it."""

from __future__ import annotations

from typing import Any

from tokenscale import constants as c
from tokenscale.api.service import InferenceService
from tokenscale.render import names

Obj = dict[str, Any]


def service(
    svc: InferenceService, name: str, labels: dict[str, str], selector: dict[str, str]
) -> Obj:
    """ClusterIP Service on port 8000 (``http``) selecting the serving pods of all pools."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.object_meta(svc, name, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(sorted(selector.items())),
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

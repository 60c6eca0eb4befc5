"""Generate the Helm chart's ``values.schema.json``.

The ``operatorConfig`` part is the OperatorConfig model's own schema, so a typo in a values
file fails ``helm install`` with the same field names the operator would reject at start-up.
"""

from __future__ import annotations

import json
from typing import Any

from tokenscale.api.config import OperatorConfig
from tokenscale.crdgen import structural

_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}
_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _strict(props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": props, **extra}


def _json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Structural (OpenAPI) → plain JSON Schema: drop Kubernetes keys, forbid unknown fields."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and value is True:
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[key] = node[bound]
            continue
        if key in ("minimum", "maximum") and node.get(f"exclusive{key.capitalize()}") is True:
            continue
        if key == "properties":
            out[key] = {k: _json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _json_schema(value)
        else:
            out[key] = value
    if node.get("type") == "object" and "properties" in node:
        out["additionalProperties"] = False
        out.pop("required", None)  # values are merged over defaults: nothing is required
    return out


def values_schema() -> dict[str, Any]:
    operator_config = _json_schema(
        structural(OperatorConfig.model_json_schema(by_alias=True, mode="validation"))
    )
    operator_config.pop("default", None)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "tokenscale Helm values",
        **_strict(
            {
                "image": _strict(
                    {
                        "repository": _STR,
                        "tag": _STR,
                        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                    }
                ),
                "imagePullSecrets": {"type": "array", "items": _OBJ},
                "replicaCount": {"type": "integer", "minimum": 0, "maximum": 2},
                "peering": _strict({"enabled": _BOOL, "name": _STR}),
                "crds": _strict({"install": _BOOL, "keep": _BOOL}),
                "watchNamespaces": {"type": "array", "items": _STR},
                "operatorConfig": operator_config,
                "bindAddress": _STR,
                "health": _strict({"port": _INT}),
                "metrics": _strict(
                    {
                        "port": _INT,
                        "serviceMonitor": _strict(
                            {"enabled": _BOOL, "interval": _STR, "labels": _MAP}
                        ),
                    }
                ),
                "dashboard": _strict({"enabled": _BOOL, "labels": _MAP}),
                "logFormat": {"enum": ["plain", "full", "json"]},
                "workers": {"type": "integer", "minimum": 1, "maximum": 64},
                "serviceAccount": _strict({"create": _BOOL, "name": _STR}),
                "benchmark": _strict({"serviceAccountName": _STR}),
                "activator": _strict(
                    {
                        "enabled": _BOOL,
                        "namespaces": {"type": "array", "items": _STR},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10},
                        "timeoutSeconds": {"type": "integer", "minimum": 1},
                        "resources": _OBJ,
                    }
                ),
                "resources": _OBJ,
                "podLabels": _MAP,
                "podAnnotations": _MAP,
                "nodeSelector": _MAP,
                "tolerations": {"type": "array", "items": _OBJ},
                "affinity": _OBJ,
            }
        ),
    }


def dump_values_schema() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"

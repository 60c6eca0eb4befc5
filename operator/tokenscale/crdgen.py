"""Generate CustomResourceDefinitions from the pydantic models.

Pydantic emits JSON Schema (``$defs``/``$ref``, ``anyOf`` with ``null``, ``title``, ``const``);
Kubernetes wants a *structural* OpenAPI v3 schema (everything inlined, a ``type`` on every
node, no ``$ref``). :func:`structural` converts one into the other so the models stay the single
source of truth and ``kubectl explain`` shows the field docstrings.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from tokenscale import GROUP, VERSION
from tokenscale.api.benchmark import InferenceBenchmark
from tokenscale.api.service import InferenceService

_DROP = {"title", "$defs", "examples"}
_KEEP_AS_IS = {
    "description",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "format",
    "nullable",
}


class SchemaError(ValueError):
    """The model uses a JSON Schema construct that has no structural equivalent."""


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert a pydantic JSON schema node into a Kubernetes structural schema node."""
    defs = schema.get("$defs", defs) or {}
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if schema.get("x-kubernetes-int-or-string"):
        keep = ("description", "default", "x-kubernetes-validations")
        return {"x-kubernetes-int-or-string": True, **{k: schema[k] for k in keep if k in schema}}
    if "anyOf" in schema:
        return _any_of(schema, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 puts the bound here; OpenAPI 3.0 wants a boolean flag on it.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key in _KEEP_AS_IS or key.startswith("x-kubernetes-") or key == "type":
            out[key] = value
        elif key == "default":
            out["default"] = value
        elif key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = structural(value, defs)
            elif value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif key == "required":
            out["required"] = sorted(value)
        else:
            raise SchemaError(f"unsupported JSON schema keyword {key!r}")
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    if "type" not in out and "x-kubernetes-preserve-unknown-fields" not in out:
        raise SchemaError(f"schema node without a type: {sorted(schema)}")
    if "x-kubernetes-list-type" in out:
        _check_list_type(out)
    return out


_LIST_TYPES = ("atomic", "set", "map")
_SCALARS = ("string", "integer", "number", "boolean")


def _check_list_type(node: dict[str, Any]) -> None:
    """Refuse list-type markers the API server would reject, so ``make crds`` fails, not the
    ``kubectl apply`` of the generated CRD (a map key must be a required or defaulted scalar
    of object items, or the server cannot key the entries)."""
    kind = node["x-kubernetes-list-type"]
    if kind not in _LIST_TYPES or node.get("type") != "array":
        raise SchemaError(f"x-kubernetes-list-type {kind!r} needs an array, one of {_LIST_TYPES}")
    keys = node.get("x-kubernetes-list-map-keys")
    if kind != "map":
        if keys is not None:
            raise SchemaError("x-kubernetes-list-map-keys needs x-kubernetes-list-type: map")
        return
    items = node.get("items") or {}
    if not keys or items.get("type") != "object":
        raise SchemaError("x-kubernetes-list-type: map needs map keys and object items")
    props = items.get("properties") or {}
    for key in keys:
        prop = props.get(key)
        if prop is None or prop.get("type") not in _SCALARS:
            raise SchemaError(f"list-map key {key!r} is not a scalar property of the items")
        if key not in items.get("required", []) and "default" not in prop:
            raise SchemaError(f"list-map key {key!r} must be required or have a default")


def _any_of(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` becomes X (optional fields are simply not required)."""
    options = [o for o in schema["anyOf"] if o.get("type") != "null"]
    if len(options) != 1:
        raise SchemaError(f"union of {len(options)} non-null types has no structural form")
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if rest.get("default", 0) is None:
        del rest["default"]
    return structural({**options[0], **rest}, defs)


def _enum_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds <= {str}:
        return "string"
    if kinds <= {int}:
        return "integer"
    if kinds <= {int, float}:
        return "number"
    if kinds <= {bool}:
        return "boolean"
    raise SchemaError(f"enum with mixed value types {kinds}")


def _open_api(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    root = structural(schema)
    props = root["properties"]
    # metadata is validated by the API server itself; the name rule becomes a CEL check.
    props["metadata"] = {"type": "object"}  # the API server allows nothing else here
    root.setdefault("x-kubernetes-validations", []).append(
        {
            "rule": "self.metadata.name.size() <= 40",
            "message": "metadata.name must be at most 40 characters so child object names fit",
        }
    )
    root["required"] = [r for r in root.get("required", []) if r not in ("apiVersion", "kind")]
    for key in ("apiVersion", "kind"):
        props[key] = {"type": "string", "description": props[key]["description"]}
    return root


def _column(name: str, type_: str, path: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, "description": description, **extra}


def _crd(
    model: type[BaseModel],
    kind: str,
    plural: str,
    short: str,
    columns: list[dict[str, Any]],
    scale: dict[str, str] | None,
) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if scale:
        subresources["scale"] = scale
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["tokenscale"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _open_api(model)},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def service_crd() -> dict[str, Any]:
    """The InferenceService CRD, with /scale driving the total replica count."""
    sla = '.status.conditions[?(@.type=="SLAMet")].status'
    ready = '.status.conditions[?(@.type=="Ready")]'
    # READY is the Ready condition (True/False), as KServe users read it; the counts follow.
    columns = [
        _column("Model", "string", ".spec.model.name", "Served model name."),
        _column("Ready", "string", f"{ready}.status", "The Ready condition."),
        _column("Replicas", "integer", ".status.readyReplicas", "Ready replicas."),
        _column("Desired", "integer", ".status.replicas", "Desired replicas."),
        _column("Reason", "string", f"{ready}.reason", "Why Ready is what it is."),
        _column("URL", "string", ".status.url", "In-cluster URL of the API."),
        _column("Tok/s", "number", ".status.metrics.tokensPerSecond", "Output tokens/s."),
        _column(
            "Tok/J",
            "number",
            ".status.energy.tokensPerJoule",
            "Output tokens per joule of GPU energy over the window (operatorConfig.energy).",
        ),
        _column("SLA", "string", sla, "Whether the latest benchmark met the SLA."),
        _column("GPU", "string", ".status.gpuSummary", "GPU models of the pools.", priority=1),
        _column("Age", "date", ".metadata.creationTimestamp", "Age."),
    ]
    scale = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    return _crd(InferenceService, "InferenceService", "inferenceservices", "tsvc", columns, scale)


def benchmark_crd() -> dict[str, Any]:
    """The InferenceBenchmark CRD."""
    columns = [
        _column("Target", "string", ".spec.target.service", "Target service.", priority=1),
        _column("Scenario", "string", ".spec.scenario", "Scenario."),
        _column("Phase", "string", ".status.phase", "Phase."),
        _column("Tok/s", "number", ".status.results.tokensPerSecond", "Output tokens/s."),
        _column("P99 TTFT(ms)", "number", ".status.results.ttftMs.p99", "p99 TTFT in ms."),
        _column("P99 TPOT(ms)", "number", ".status.results.tpotMs.p99", "p99 TPOT in ms."),
        _column("SLA", "string", ".status.verdict", "SLA verdict."),
        _column(
            "Tok/J",
            "number",
            ".status.results.energy.tokensPerJoule",
            "Output tokens per joule of GPU energy over the run.",
        ),
        _column(
            "Scaling Eff",
            "number",
            ".status.results.scalingEfficiency",
            "Replica sweep: T_N / (N * T_1) at the largest N.",
            priority=1,
        ),
        _column("Age", "date", ".metadata.creationTimestamp", "Age."),
    ]
    return _crd(
        InferenceBenchmark, "InferenceBenchmark", "inferencebenchmarks", "tsbench", columns, None
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD object, for ``crds/`` and the Helm chart."""
    return {
        f"{GROUP}_inferenceservices.yaml": service_crd(),
        f"{GROUP}_inferencebenchmarks.yaml": benchmark_crd(),
    }


def dump(crd: dict[str, Any], source: str = "operator/tokenscale/api") -> str:
    """Stable YAML text with a do-not-edit header."""
    header = f"# Generated by `tokenscale crds` from {source}. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)

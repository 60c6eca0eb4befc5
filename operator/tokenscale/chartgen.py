"""Generate the Helm chart's ``values.schema.json`` and the operator configuration reference.

The ``operatorConfig`` part is the OperatorConfig model's own schema, so a typo in a values
file fails ``helm install`` with the same field names the operator would reject at start-up.
"""

from __future__ import annotations

import json
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tokenscale.api.config import (
    DEFAULT_GPUS,
    OperatorConfig,
    catalogue_entry_in,
    settings_model_in,
)
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


def configuration_markdown() -> str:
    """``docs/configuration.md``: every OperatorConfig setting, generated from the model so the
    reference cannot drift from what the operator accepts (a unit test compares the file)."""
    lines = [
        "# Operator configuration",
        "",
        "<!-- Generated from operator/tokenscale/api/config.py by `tokenscale config-docs`"
        " (`make crds`); do not edit. -->",
        "",
        "The operator reads one YAML file (`--config`, `TOKENSCALE_CONFIG`); the Helm chart "
        "renders `operatorConfig` from its values into it. The file is **deep-merged over the "
        "built-in defaults**: write only what differs. Nested settings and the named catalogues "
        "(`gpus`, a GPU's `partitions`) merge entry by entry, so",
        "",
        "```yaml",
        "operatorConfig:",
        "  gpus:",
        "    MI300X:",
        "      costPerGpuHour: 3",
        "```",
        "",
        "changes one number and keeps every other MI300X fact. Lists and string maps (labels, "
        "selectors, tolerations) replace the default whole. A GPU that is not built in must be "
        "complete (`arch` and `hbmGib` are required). Unknown keys are errors that name the key, "
        "both at `helm install` (the chart's values schema) and at operator start.",
        "",
        "Keys are camelCase; snake_case is accepted too.",
        "",
    ]
    lines += _settings_table("", OperatorConfig)
    lines += [
        "## Built-in GPU catalogue",
        "",
        "| GPU | arch | HBM GiB | FP8 | GPUs/node | cost/GPU-hour | board W | tok/s/GPU | "
        "partitions |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for name, gpu in DEFAULT_GPUS.items():
        parts = ", ".join(gpu.partitions) or "—"
        tps = "—" if gpu.tokens_per_second_per_gpu is None else f"{gpu.tokens_per_second_per_gpu:g}"
        watts = "—" if gpu.board_power_watts is None else f"{gpu.board_power_watts:g}"
        lines.append(
            f"| {name} | {gpu.arch} | {gpu.hbm_gib:g} | {'yes' if gpu.fp8 else 'no'} | "
            f"{gpu.gpus_per_node} | {gpu.cost_per_gpu_hour:g} | {watts} | {tps} | {parts} |"
        )
    return "\n".join(lines) + "\n"


def _settings_table(prefix: str, model: type[BaseModel]) -> list[str]:
    """One section per settings model: key, type, default, description; nested models after."""
    title = f"`{prefix.rstrip('.')}`" if prefix else "Top level"
    lines = [f"## {title}", "", model.__doc__ or "", "", "| key | type | default | description |",
             "|---|---|---|---|"]  # fmt: skip
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        annotation = info.annotation
        sub = settings_model_in(annotation)
        entry = catalogue_entry_in(annotation)
        if sub is not None:
            nested.append((f"{prefix}{key}.", sub))
            default = f"see [`{prefix}{key}`](#{(prefix + key).replace('.', '').lower()})"
        elif entry is not None:
            nested.append((f"{prefix}{key}.<name>.", entry))
            default = "built-in catalogue" if key == "gpus" else "see below"
        elif (item := _list_item_model(annotation)) is not None:
            nested.append((f"{prefix}{key}[].", item))
            default = f"`{json.dumps(_default(info))}`"
        elif info.is_required():
            default = "required"
        else:
            default = f"`{json.dumps(_default(info))}`"
        type_ = _type_name(annotation).replace("|", "\\|")
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{key}` | {type_} | {default} | {description} |")
    lines.append("")
    for sub_prefix, sub_model in nested:
        lines += _settings_table(sub_prefix, sub_model)
    return lines


def _default(info: FieldInfo) -> Any:
    value = info.get_default(call_default_factory=True)
    return value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is list:
        return settings_model_in(get_args(annotation)[0])
    return None


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    name: str = getattr(annotation, "__name__", str(annotation))
    return name

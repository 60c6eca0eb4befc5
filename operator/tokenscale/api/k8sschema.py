"""Kubernetes core/v1 schemas for the pod fields a platform team may set on a service.

Why vendored: ``spec.podTemplate`` carries real core/v1 objects (tolerations, affinity, env,
volumes, ...). Hand-written models would drift from Kubernetes and lose its field docs, so the
schemas come from the Kubernetes OpenAPI definitions shipped by ``kubernetes-validate`` (a dev
dependency), converted once into the structural form a CRD needs and committed as
``k8s_core_v1.json`` (the operator image has no kubernetes-validate). ``kubectl explain`` then
shows Kubernetes' own descriptions, the API server validates the same shapes, and
:func:`check` validates them offline with the field path in every message.

Regenerate with ``python -m tokenscale.api.k8sschema`` (``make crds`` does it); a unit test
fails when the committed file and the installed Kubernetes definitions disagree.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "v1.34.0"
VENDORED = Path(__file__).with_name("k8s_core_v1.json")

#: Vendored name → Kubernetes definition.
ROOTS = {
    "Toleration": "io.k8s.api.core.v1.Toleration",
    "Affinity": "io.k8s.api.core.v1.Affinity",
    "LocalObjectReference": "io.k8s.api.core.v1.LocalObjectReference",
    "EnvVar": "io.k8s.api.core.v1.EnvVar",
    "EnvFromSource": "io.k8s.api.core.v1.EnvFromSource",
    "Volume": "io.k8s.api.core.v1.Volume",
    "VolumeMount": "io.k8s.api.core.v1.VolumeMount",
    "Quantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
}
_KEEP = {"description", "enum", "format", "required"}

Schema = dict[str, Any]


def convert(node: Any, defs: dict[str, Any]) -> Schema:
    """One Kubernetes JSON-schema node → an inlined structural CRD schema node.

    ``$ref`` is inlined, ``type: [x, "null"]`` becomes ``x``, ``oneOf`` string/number (Quantity,
    IntOrString) becomes ``x-kubernetes-int-or-string``. List/map-type markers are dropped:
    they are merge hints for server-side apply inside Kubernetes objects, not validation.
    """
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return convert({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    if "oneOf" in node:
        out: Schema = {"x-kubernetes-int-or-string": True}
        if "description" in node:
            out["description"] = node["description"]
        return out
    out = {k: node[k] for k in _KEEP if k in node}
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind is not None:
        out["type"] = kind
    if "properties" in node:
        out["properties"] = {n: convert(s, defs) for n, s in sorted(node["properties"].items())}
    if "items" in node:
        out["items"] = convert(node["items"], defs)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = convert(extra, defs)
    if "required" in out:
        out["required"] = sorted(out["required"])
    return out


def build(definitions: Path) -> dict[str, Schema]:
    """The vendored schemas from a kubernetes-validate ``_definitions.json``."""
    defs = json.loads(definitions.read_text())["$defs"]
    return {name: convert(defs[ref], defs) for name, ref in ROOTS.items()}


def installed_definitions() -> Path:
    """``_definitions.json`` of :data:`KUBERNETES_VERSION` in the installed kubernetes-validate."""
    import kubernetes_validate  # dev dependency: only needed to regenerate or check drift

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return base / f"{KUBERNETES_VERSION}-local-strict" / "_definitions.json"


def dump(schemas: dict[str, Schema]) -> str:
    """Stable text of the vendored file."""
    return json.dumps(schemas, indent=1, sort_keys=True) + "\n"


@cache
def schemas() -> dict[str, Schema]:
    """The committed schemas (read once)."""
    loaded: dict[str, Schema] = json.loads(VENDORED.read_text())
    return loaded


def schema(name: str, description: str | None = None) -> Schema:
    """A copy of one vendored schema, optionally with the field's own description."""
    out: Schema = json.loads(json.dumps(schemas()[name]))
    if description is not None:
        out["description"] = description
    return out


_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity as a number, or None when it is not one."""
    if isinstance(value, bool):
        return None
    match = _QUANTITY.match(str(value).strip())
    if match is None or match.group(2) not in _SUFFIX:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        return None


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def check(node: Schema, value: Any, path: str = "") -> list[tuple[str, str]]:
    """Validate ``value`` against a structural schema: ``(sub-path, message)`` per problem.

    Covers what the API server's structural validation enforces (types, required, enums,
    unknown fields) so ``tokenscale validate`` and the operator name the same field the API
    server would, instead of the apply of a Deployment failing later.
    """
    if node.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return [(path, "must be an integer or a string (e.g. 500m, 4Gi)")]
        return []
    kind = node.get("type")
    want = _PY_TYPES.get(kind or "", (object,))
    if not isinstance(value, want) or (kind != "boolean" and isinstance(value, bool)):
        return [(path, f"wrong type: must be {'an' if kind == 'integer' else 'a'} {kind}")]
    if "enum" in node and value not in node["enum"]:
        return [(path, f"must be one of {node['enum']}")]
    if isinstance(value, str) and len(value) > node.get("maxLength", len(value)):
        return [(path, f"longer than {node['maxLength']} characters; fix: shorten it")]
    if isinstance(value, list) and len(value) > node.get("maxItems", len(value)):
        return [(path, f"more than {node['maxItems']} entries; fix: remove some")]
    problems: list[tuple[str, str]] = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            problems += check(node.get("items", {}), item, f"{path}[{i}]")
    elif isinstance(value, dict):
        props = node.get("properties")
        for name in node.get("required", []):
            if name not in value:
                problems.append((f"{path}.{name}", "required field is missing; fix: add it"))
        for key, item in value.items():
            if props is not None and key in props:
                problems += check(props[key], item, f"{path}.{key}")
            elif "additionalProperties" in node:
                problems += check(node["additionalProperties"], item, f"{path}.{key}")
            elif props is not None:
                problems.append(
                    (
                        f"{path}.{key}",
                        "unknown field; fix: remove it or correct its spelling "
                        f"(known: {', '.join(sorted(props))})",
                    )
                )
    return problems


def main(argv: list[str]) -> int:
    """Write (or with ``--check`` compare) the vendored file."""
    text = dump(build(installed_definitions()))
    if "--check" in argv:
        if VENDORED.read_text() != text:
            print(f"{VENDORED} is stale; run `make crds`", file=sys.stderr)
            return 1
        return 0
    VENDORED.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Check a status patch the way the API server would read it, but loudly.

The API server prunes status fields its schema does not know, without a word: a controller
writing ``tokensPerSecnd`` would just leave the Tok/s column empty. Every patch the controllers
produce is validated here against the status model the CRD is generated from, strictly and by
its camelCase names only, and every time it carries must be ``metav1.Time`` text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel

from tokenscale.api.benchmark import InferenceBenchmarkStatus
from tokenscale.api.status import InferenceServiceStatus

MODELS: dict[str, type[BaseModel]] = {
    "InferenceService": InferenceServiceStatus,
    "InferenceBenchmark": InferenceBenchmarkStatus,
}
#: (kind, dotted camelCase path) of every field a checked patch carried: which fields the
#: controllers write, for the test that every field the schema promises is written
WRITTEN: set[tuple[str, str]] = set()
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_TIME_KEYS = ("time", "Time", "At")


def check_status_patch(kind: str, patch: dict[str, Any]) -> None:
    """Raise (pydantic's ValidationError, or AssertionError for a time) if the patch is not
    exactly what the status model allows."""
    MODELS[kind].model_validate_json(json.dumps(patch), strict=True, by_alias=True, by_name=False)
    _check_times(patch, "status")
    WRITTEN.update((kind, path) for path in _paths(patch, ""))


def schema_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of a status model as a dotted camelCase path (list items as their fields;
    a dict-valued field, such as ``desired``, as itself)."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        out.add(path)
        for arg in _model_args(info.annotation):
            out |= schema_paths(arg, f"{path}.")
    return out


def _model_args(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _model_args(arg)]


def _paths(value: Any, prefix: str) -> set[str]:
    out: set[str] = set()
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict):
            for key, sub in item.items():
                if sub is None:
                    continue  # a merge patch's null deletes: nothing written
                out.add(f"{prefix}{key}")
                if key != "desired":  # keyed by pool name, not a schema field
                    out |= _paths(sub, f"{prefix}{key}.")
    return out


def _check_times(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if isinstance(item, str) and key.endswith(_TIME_KEYS):
                assert _TIME.match(item), f"{where}: {item!r} is not metav1.Time text"
            _check_times(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_times(item, f"{path}[{i}]")

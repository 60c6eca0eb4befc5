"""Turn manifests into API models, and pydantic errors into messages people can act on.

Each message names the field in the manifest's own spelling (``spec.pools[0].maxReplicas``)
and says how to fix it; the same text ends up in ``tokenscale validate``, in status
conditions and in Events.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails

from tokenscale.api.base import ObjectMeta
from tokenscale.api.benchmark import InferenceBenchmark
from tokenscale.api.service import InferenceService, InferenceServiceSpec
from tokenscale.plan import catalog

KINDS: dict[str, type[BaseModel]] = {
    "InferenceService": InferenceService,
    "InferenceBenchmark": InferenceBenchmark,
}


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One invalid field: where, what and how to fix it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def field_path(loc: Iterable[int | str]) -> str:
    """``('spec', 'pools', 0, 'gpu')`` → ``spec.pools[0].gpu``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "literal[")) or part in ("tagged-union", "int", "str"):
            continue
        else:
            out += f".{part}" if out else part
    return out or "(root)"


def _hint(err: ErrorDetails) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return "unknown field; fix: remove it or correct its spelling (see kubectl explain)"
    if kind == "missing":
        return "required field is missing; fix: add it"
    if kind == "literal_error":
        return f"{msg}; fix: use one of the listed values"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{msg}; fix: change the value to satisfy the bound"
    if kind == "string_pattern_mismatch":
        return f"invalid format (must match {ctx.get('pattern')}); fix: correct the value"
    if kind == "string_too_long":
        return f"{msg}; fix: shorten it"
    if kind in ("too_short", "too_long"):
        return f"{msg}; fix: change the number of entries"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"wrong type: {msg}; fix: use the documented type"
    if "fix:" in msg:
        return msg
    return f"{msg}; fix: see `kubectl explain` for this field"


def problems_from(error: ValidationError) -> list[FieldProblem]:
    """Flatten a pydantic error into field problems, one per distinct field.

    A union such as ``int | "auto"`` fails once per branch; the branch messages are joined so
    the reader sees every accepted form.
    """
    hints: dict[str, list[str]] = {}
    for err in error.errors():
        hint = _hint(err)
        # Errors from inside Kubernetes objects (spec.podTemplate) carry their own sub-path.
        subpath = str(err.get("ctx", {}).get("subpath", ""))
        path = field_path(err["loc"])
        path = subpath.lstrip(".") if subpath and path == "(root)" else path + subpath
        bucket = hints.setdefault(path, [])
        if hint not in bucket:
            bucket.append(hint)
    return [FieldProblem(path, " | ".join(found)) for path, found in hints.items()]


class InvalidManifest(ValueError):
    """A manifest that does not validate; ``problems`` name each field."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def parse_manifest(doc: dict[str, Any]) -> BaseModel:
    """Validate one manifest into its model, raising :class:`InvalidManifest`."""
    if not isinstance(doc, dict):
        raise InvalidManifest([FieldProblem("(root)", "a manifest must be a mapping")])
    kind = doc.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(KINDS)
        raise InvalidManifest([FieldProblem("kind", f"unknown kind {kind!r}; fix: use {known}")])
    try:
        parsed = model.model_validate(doc)
    except ValidationError as exc:
        raise InvalidManifest(problems_from(exc)) from None
    if isinstance(parsed, InferenceService):
        found = simulator_problems(parsed.spec)
        if found:
            raise InvalidManifest([FieldProblem(f"spec.{p.field}", p.message) for p in found])
    return parsed


@functools.cache
def _simulator_profiles() -> tuple[tuple[str, str], ...]:
    """(GPU, model) pairs the simulator has a profile for, read from its profile file as data:
    the simulator's own loader (``tokenscale.sim.profiles``) sits in a layer this module, used
    by the render and bench CLIs, must not import."""
    text = resources.files("tokenscale.sim").joinpath("profiles.yaml").read_text("utf-8")
    entries = (yaml.safe_load(text) or {}).get("profiles") or []
    return tuple((_norm(str(e["gpu"])), _norm(str(e["model"]))) for e in entries)


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def simulator_problems(spec: InferenceServiceSpec) -> list[FieldProblem]:
    """A simulated engine needs a simulator profile for its (GPU, model); without one the
    engine exits at start and the pods crash-loop, so the spec is refused up front. Fields are
    relative to ``spec`` (``pools[0].gpu``)."""
    if spec.engine.mode != "simulated":
        return []
    arch = catalog.resolve(spec.model)
    model = arch.key if arch else (spec.model.architecture or spec.model.name)
    pairs = _simulator_profiles()
    models = sorted({m for _, m in pairs})
    if _norm(model) not in models:
        field = "model.architecture" if spec.model.architecture else "model.name"
        return [
            FieldProblem(
                field,
                f"the simulator has no profile for model {model!r} (engine.mode simulated); "
                f"fix: use one of {', '.join(models)}, or engine.mode vllm",
            )
        ]
    gpus = sorted(g.upper() for g, m in pairs if m == _norm(model))
    override = _gpu_override(spec.engine.args)
    if override is not None:  # the simulator takes the last --gpu: every pool simulates it
        if (_norm(override), _norm(model)) in pairs:
            return []
        return [
            FieldProblem(
                "engine.args",
                f"--gpu {override}: the simulator has no {override} profile for model "
                f"{model!r}; fix: use one of {', '.join(gpus)}",
            )
        ]
    return [
        FieldProblem(
            f"pools[{i}].gpu",
            f"the simulator has no {pool.gpu} profile for model {model!r} (engine.mode "
            f"simulated); fix: use one of {', '.join(gpus)}, pass --gpu <one of them> in "
            "spec.engine.args to simulate it on these nodes, or engine.mode vllm",
        )
        for i, pool in enumerate(spec.pools)
        if (_norm(pool.gpu), _norm(model)) not in pairs
    ]


def _gpu_override(args: Sequence[str]) -> str | None:
    """The last ``--gpu X`` / ``--gpu=X`` of the engine's extra args (the simulator's own rule:
    the operator renders ``--gpu <pool gpu>`` first, and a later value wins)."""
    found: str | None = None
    for i, arg in enumerate(args):
        if arg == "--gpu" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--gpu="):
            found = arg.split("=", 1)[1]
    return found


def load_documents(text: str) -> list[dict[str, Any]]:
    """All non-empty YAML documents of a file."""
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidManifest([FieldProblem("(file)", f"not valid YAML: {exc}")]) from None


def parse_spec(body: dict[str, Any]) -> InferenceService:
    """An InferenceService object as the operator receives it (metadata from the API server,
    so only name and namespace matter) as a model; raises ValidationError for operator-judged
    problems, which :func:`problems_from` turns into messages."""
    meta = body["metadata"]
    spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
    found = simulator_problems(spec)
    if found:
        errors: list[InitErrorDetails] = [
            {
                "type": "value_error",
                "loc": tuple(
                    int(part) if part.isdigit() else part
                    for part in p.field.replace("[", ".").replace("]", "").split(".")
                ),
                "input": None,
                "ctx": {"error": ValueError(p.message)},
            }
            for p in found
        ]
        raise ValidationError.from_exception_data("InferenceServiceSpec", errors)
    return InferenceService(
        api_version="tokenscale.dev/v1alpha1",
        kind="InferenceService",
        metadata=ObjectMeta(name=meta["name"], namespace=meta.get("namespace")),
        spec=spec,
    )

"""Generated InferenceService / InferenceBenchmark manifests, shared by the unit fuzz test
(tests/unit/test_fuzz_specs.py) and the e2e test that applies a sample to a real API server.

Specs are the shipped examples mutated by hypothesis: a value nudged (same type, plausible
range), replaced by a random JSON value or by one of the CRD schema's own boundary values
(each enum member, each minimum/maximum and one past it), a field deleted, an unknown field
added; one to four mutations per spec. Random documents from scratch would almost all fail at
the first required field; mutants of working manifests reach the planner, the renderer and the
benchmark controller.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tokenscale import yamlsafe
from tokenscale.crdgen import benchmark_crd, service_crd
from tokenscale.validation import KINDS

EXAMPLES = Path(__file__).parents[1] / "examples"


def _seeds() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yamlsafe.load_file(path):
            if isinstance(doc, dict) and doc.get("kind") in out:
                out[doc["kind"]].append(doc)
    return out


SEEDS = _seeds()


def _walk_schema(schema: Any) -> Iterator[Any]:
    """Boundary values of a CRD schema: enum members, each bound and one past it."""
    if isinstance(schema, dict):
        yield from schema.get("enum", [])
        for key in ("minimum", "maximum"):
            if key in schema:
                bound = schema[key]
                yield from (bound, bound - 1, bound + 1)
        for key in ("minLength", "maxLength", "minItems", "maxItems"):
            if key in schema:
                yield "x" * (schema[key] + (1 if key.startswith("max") else 0))
        for value in schema.values():
            yield from _walk_schema(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _walk_schema(item)


def _boundaries() -> list[Any]:
    found: list[Any] = []
    for crd in (service_crd(), benchmark_crd()):
        for value in _walk_schema(crd):
            if value not in found:
                found.append(value)
    return found


BOUNDARIES = _boundaries()

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["", "0", "-1", "1e400", "CPU", "MI300X", "auto", "100Mi", "1.5", "a" * 300]),
    st.sampled_from(BOUNDARIES),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=8,
)


def _containers(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every mapping and list under ``spec`` (where a mutation can land)."""
    out = [path] if isinstance(doc, dict | list) else []
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, value in items:
        out += _containers(value, (*path, key))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _nudge(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(min_value=0, max_value=max(2 * value + 2, 4))
    if isinstance(value, float):
        return st.floats(min_value=0, max_value=max(2 * value, 1.0))
    if isinstance(value, str):
        return st.sampled_from([value, value + "x", value.upper(), value[: len(value) // 2]])
    if isinstance(value, list):
        return st.lists(st.sampled_from(value), max_size=len(value) + 2) if value else st.just([])
    return st.just(value)


@st.composite
def mutated_pair(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the seed, its mutant): an update from a working manifest to a generated one."""
    seed = draw(st.sampled_from(SEEDS[kind]))
    doc = copy.deepcopy(seed)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4]))):
        places = _containers(doc["spec"], ("spec",))
        target = _at(doc, draw(st.sampled_from(places)))
        op = draw(
            st.sampled_from(["nudge", "nudge", "nudge", "replace", "boundary", "delete", "add"])
        )
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if op == "add" or not keys:
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=12))] = draw(_values)
            else:
                target.append(draw(_values))
            continue
        key = draw(st.sampled_from(keys))
        if op == "nudge":  # a plausible edit of the same type: most still validate
            target[key] = draw(_nudge(target[key]))
        elif op == "delete":
            del target[key]
        elif op == "boundary":
            target[key] = draw(st.sampled_from(BOUNDARIES))
        else:
            target[key] = draw(_values)
    return seed, doc


def mutated(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Generated manifests of ``kind``."""
    return mutated_pair(kind).map(lambda pair: pair[1])

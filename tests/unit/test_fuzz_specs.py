"""Generated InferenceService / InferenceBenchmark specs: no crash, every rejection named.

Specs are the shipped examples mutated by hypothesis: a value replaced (by a random JSON value
or by one of the CRD schema's own boundary values: each enum member, each minimum/maximum and
one past it), a field deleted, an unknown field added; one to four mutations per spec. Random
documents from scratch would almost all fail at the first required field; mutants of working
manifests reach the planner, the renderer and the benchmark controller.

Each spec goes through what both consumers do with it:

* the CLI's view, :func:`tokenscale.validation.parse_manifest`: valid, or every problem names a
  field (``spec.pools[0].gpu``, never ``(root)`` for a mapping) and says how to fix it;
* the operator's view, one reconcile on the in-memory API (:class:`FakeKube`): the spec as the
  API server hands it over (real metadata, mutated spec) is planned, rendered and applied, or
  marked invalid; no exception, and the status patch is one the status model allows.

``TOKENSCALE_FUZZ_EXAMPLES`` sets specs per kind (default 600 + 400, about 15 s);
``make drills`` runs 5,000 per kind. ``TOKENSCALE_FUZZ_REPORT=path`` writes the counts as JSON
(read by ``benchmarks/reliability.py``).
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.fakekube import FakeKube
from tests.unit.statuscheck import check_status_patch
from tokenscale import yamlsafe
from tokenscale.api.config import OperatorConfig
from tokenscale.controller.benchmark import reconcile_benchmark
from tokenscale.controller.reconcile import reconcile_service
from tokenscale.crdgen import benchmark_crd, service_crd
from tokenscale.validation import KINDS, InvalidManifest, parse_manifest

EXAMPLES = Path(__file__).parents[2] / "examples"
CFG = OperatorConfig()
PER_KIND = int(os.environ.get("TOKENSCALE_FUZZ_EXAMPLES", "0")) or None
COUNTS: Counter[str] = Counter()


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
def mutated(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS[kind])))
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
    return doc


def _check_rejection(exc: InvalidManifest) -> None:
    assert exc.problems, "a rejection without problems"
    for problem in exc.problems:
        field = problem.field
        assert field and field != "(root)", f"unnamed field: {problem}"
        assert field.split(".")[0].split("[")[0] in ("spec", "metadata", "kind", "apiVersion"), (
            f"field outside the manifest: {problem}"
        )
        assert "fix:" in problem.message, f"no fix in: {problem}"


def _cli_view(doc: dict[str, Any]) -> bool:
    try:
        parse_manifest(copy.deepcopy(doc))
    except InvalidManifest as exc:
        _check_rejection(exc)
        COUNTS["rejected"] += 1
        return False
    COUNTS["accepted"] += 1
    return True


def _as_served(doc: dict[str, Any]) -> dict[str, Any]:
    """What the API server hands the operator: its own metadata, the user's spec."""
    return {
        "apiVersion": doc.get("apiVersion"),
        "kind": doc["kind"],
        "metadata": {"name": "fz", "namespace": "ns", "uid": "uid-fz", "generation": 1},
        "spec": doc["spec"],
    }


def _ready_target(kube: FakeKube, name: str) -> None:
    svc = copy.deepcopy(SEEDS["InferenceService"][0])
    svc["metadata"] = {"name": name, "namespace": "ns"}
    svc["status"] = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True"}],
        "readyReplicas": 1,
    }
    kube.put(svc)


def _settings(default: int) -> Any:
    return settings(
        max_examples=PER_KIND or default,
        deadline=None,
        database=None,
        derandomize=True,  # the same specs in every run: a failure reproduces
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@_settings(600)
@given(mutated("InferenceService"))
def test_generated_services(doc: dict[str, Any]) -> None:
    COUNTS["InferenceService"] += 1
    _cli_view(doc)
    kube = FakeKube()
    body = kube.put(_as_served(doc))
    out = reconcile_service(body, kube, CFG)
    check_status_patch("InferenceService", out.status)
    if out.error is not None:
        assert out.error.strip(), "an invalid spec without a message"


@_settings(400)
@given(mutated("InferenceBenchmark"))
def test_generated_benchmarks(doc: dict[str, Any]) -> None:
    COUNTS["InferenceBenchmark"] += 1
    _cli_view(doc)
    kube = FakeKube()
    target = (doc["spec"].get("target") or {}) if isinstance(doc["spec"], dict) else {}
    if isinstance(target, dict) and isinstance(target.get("service"), str) and target["service"]:
        _ready_target(kube, target["service"])
    body = kube.put(_as_served(doc))
    out = reconcile_benchmark(body, kube, CFG)
    check_status_patch("InferenceBenchmark", out.status)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    path = os.environ.get("TOKENSCALE_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps(dict(COUNTS), sort_keys=True))


def test_seeds_cover_both_kinds_and_are_valid() -> None:
    """The mutations start from working manifests, or they test nothing deep."""
    for kind, docs in SEEDS.items():
        assert docs, kind
        for doc in docs:
            parse_manifest(doc)

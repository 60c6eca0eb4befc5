"""Generated InferenceService / InferenceBenchmark specs: no crash, every rejection named.

Specs come from :mod:`tests.fuzzspecs` (the shipped examples, mutated by hypothesis).

Each spec goes through what both consumers do with it:

* the CLI's view, :func:`tokenscale.validation.parse_manifest`: valid, or every problem names a
  field (``spec.pools[0].gpu``, never ``(root)`` for a mapping) and says how to fix it;
* the operator's view, one reconcile on the in-memory API (:class:`FakeKube`): the spec as the
  API server hands it over (real metadata, mutated spec) is planned, rendered and applied, or
  marked invalid; no exception, and the status patch is one the status model allows.

``TOKENSCALE_FUZZ_EXAMPLES`` sets specs per kind (default 600 + 400, about 15 s);
``make drills`` runs 5,000 per kind. ``TOKENSCALE_RELIABILITY_DIR=dir`` writes the counts to
``dir/fuzz_specs.json`` (read by ``benchmarks/reliability.py``).
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
from pydantic import ValidationError

from tests.fuzzspecs import SEEDS, mutated, mutated_pair
from tests.invalid_manifests import CASES as INVALID
from tests.invalid_manifests import Case
from tests.unit.fakekube import FakeKube
from tests.unit.statuscheck import check_status_patch
from tokenscale.api.config import OperatorConfig
from tokenscale.controller.benchmark import reconcile_benchmark
from tokenscale.controller.reconcile import reconcile_service
from tokenscale.validation import InvalidManifest, parse_manifest

CFG = OperatorConfig()
PER_KIND = int(os.environ.get("TOKENSCALE_FUZZ_EXAMPLES", "0")) or None
COUNTS: Counter[str] = Counter()


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
@given(mutated_pair("InferenceService"))
def test_generated_services(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """The mutant arrives as an update of its (working) seed: one that the operator refuses
    must leave every child of the seed in place (counted as ``objects_lost``)."""
    seed, doc = pair
    COUNTS["InferenceService"] += 1
    valid = _cli_view(doc)
    kube = FakeKube()
    body = kube.put(_as_served(seed))
    reconcile_service(body, kube, CFG)
    children = {key for key in kube.objects if key[0] != "InferenceService"}
    assert children, "the seed rendered nothing: the update test means nothing"
    body = kube.put({**body, "spec": doc["spec"]})
    out = reconcile_service(body, kube, CFG)
    check_status_patch("InferenceService", out.status)
    if out.error is not None:
        assert out.error.strip(), "an invalid spec without a message"
        lost = children - set(kube.objects)
        COUNTS["objects_lost"] += len(lost)
        assert not lost, f"a refused update deleted {sorted(lost)}"
    assert valid == (out.error is None), "tokenscale validate and the operator disagree"


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
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    COUNTS["objects_lost"] += 0  # present in the report even when nothing was lost
    if out:
        (Path(out) / "fuzz_specs.json").write_text(json.dumps(dict(COUNTS), sort_keys=True))


def test_seeds_cover_both_kinds_and_are_valid() -> None:
    """The mutations start from working manifests, or they test nothing deep."""
    for kind, docs in SEEDS.items():
        assert docs, kind
        for doc in docs:
            parse_manifest(doc)


#: Operator-judged invalid services (the API server stores them): a benchmark may target one.
OPERATOR_JUDGED = [case for case in INVALID if not case.server]


@pytest.mark.xfail(
    strict=True,
    raises=ValidationError,
    reason="found by this drill, fix belongs in controller/benchmark.py (issue 17's benchmark "
    "work): reconcile_benchmark validates the target's spec without catching ValidationError, "
    "so a benchmark of an InvalidSpec service raises on every retry instead of waiting or "
    "failing with a reason",
)
@pytest.mark.parametrize("case", OPERATOR_JUDGED, ids=[c.id for c in OPERATOR_JUDGED])
def test_benchmark_of_an_invalid_target_does_not_raise(case: Case) -> None:
    kube = FakeKube()
    target = copy.deepcopy(case.manifest)
    target["metadata"] = {"name": "target", "namespace": "ns"}
    target["status"] = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True"}],
        "readyReplicas": 1,
    }
    kube.put(target)
    bench = copy.deepcopy(SEEDS["InferenceBenchmark"][0])
    bench["spec"]["target"] = {"service": "target"}
    body = kube.put(_as_served(bench))
    COUNTS["benchmark_invalid_target_crashes"] += 0
    try:
        out = reconcile_benchmark(body, kube, CFG)
    except ValidationError:
        COUNTS["benchmark_invalid_target_crashes"] += 1
        raise
    check_status_patch("InferenceBenchmark", out.status)

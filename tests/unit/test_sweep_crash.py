"""A replica sweep survives an operator crash at any point (found by the operator-kill drill).

The sweep gives ``/scale`` back with one merge patch (replicas restored, hold lifted) and only
then writes its terminal status. An operator killed between the two restarts with the sweep
still ``Running`` at its level and the service back at its own count: it must not scale the
service to the level again (no hold, so nobody would ever give it back), but finish from the
level's Job or fail with a reason.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.factories import benchmark, service
from tests.unit.builders import as_result, make_records
from tests.unit.fakekube import FakeKube
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.bench import resultchannel
from tokenscale.bench.models import BenchResult
from tokenscale.controller.benchmark import reconcile_benchmark

CFG = OperatorConfig()
SVC = ("InferenceService", "ns", "llama2-70b")


def _cluster() -> FakeKube:
    kube = FakeKube()
    svc = service(pools=[{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 4}])
    svc["metadata"] = {"name": "llama2-70b", "namespace": "ns"}
    svc["spec"]["replicas"] = 3
    svc["status"] = {"observedGeneration": 1, "readyReplicas": 3,
                     "conditions": [{"type": "Ready", "status": "True"}]}  # fmt: skip
    kube.put(svc)
    body = benchmark(scenario="replicaSweep", load={"replicas": [1, 2], "durationSeconds": 5})
    body["metadata"] = {"name": "sw", "namespace": "ns"}
    kube.put(body)
    return kube


def _engines(kube: FakeKube, ready: int) -> None:
    for key in [k for k in kube.objects if k[0] == "Pod"]:
        del kube.objects[key]
    for i in range(ready):
        kube.put({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"e{i}", "namespace": "ns",
                         "labels": {c.LABEL_SERVICE: "llama2-70b", c.LABEL_POOL: "mi300x"}},
            "status": {"phase": "Running", "podIP": f"127.10.0.{i + 1}",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip


def _step(kube: FakeKube, *, crash: bool = False) -> Any:
    """One reconcile; with ``crash`` its status write is lost (the operator died before it)."""
    bench = copy.deepcopy(kube.get("InferenceBenchmark", "ns", "sw"))
    out = reconcile_benchmark(bench, kube, CFG)
    if out.status and not crash:
        stored = kube.objects[("InferenceBenchmark", "ns", "sw")]
        stored["status"] = {**(stored.get("status") or {}), **out.status}
    return out


def _complete(kube: FakeKube, n: int, result_json: str, failed: bool = False) -> None:
    cond = {"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"} if failed else {
        "type": "Complete", "status": "True"}  # fmt: skip
    kube.objects[("Job", "ns", f"sw-run-r{n}")]["status"] = {"conditions": [cond]}
    if not failed:
        payload = BenchResult.model_validate_json(result_json).model_dump_json()
        resultchannel.publish(kube, "ns", "sw", "uid", 0, payload, run=f"sw-run-r{n}")


def _to_last_level(kube: FakeKube, result_json: str) -> None:
    _step(kube)  # begin: hold
    for n in (1, 2):
        _step(kube)  # /scale to n
        _engines(kube, ready=n)
        _step(kube)  # Job
        if n == 1:
            _complete(kube, 1, result_json)
            _step(kube)  # level recorded, next


@pytest.fixture
def result_json() -> str:
    result: BenchResult = as_result(make_records(50, seed=1), [0.01] * 20, 1_700_000_000.0, 1, 0)
    return result.model_dump_json()


def _assert_given_back(kube: FakeKube) -> None:
    svc = kube.get(*SVC)
    assert svc is not None
    assert svc["spec"]["replicas"] == 3, "left at the sweep's level"
    assert c.ANNOTATION_SCALING_HOLD not in (svc["metadata"].get("annotations") or {})


def test_killed_after_giving_scale_back_at_the_end_finishes_without_rescaling(
    result_json: str,
) -> None:
    kube = _cluster()
    _to_last_level(kube, result_json)
    _complete(kube, 2, result_json)
    _step(kube, crash=True)  # released /scale, died before the Succeeded status
    _assert_given_back(kube)
    for _ in range(3):  # the restarted operator
        out = _step(kube)
        _assert_given_back(kube)
    stored = kube.get("InferenceBenchmark", "ns", "sw")
    assert stored is not None and stored["status"]["phase"] == "Succeeded", out.status
    assert [p["replicas"] for p in stored["status"]["sweep"]["points"]] == [1, 2]


def test_killed_after_giving_scale_back_on_a_failed_level_fails_and_keeps_the_count(
    result_json: str,
) -> None:
    kube = _cluster()
    _to_last_level(kube, result_json)
    _complete(kube, 2, result_json, failed=True)
    _step(kube, crash=True)
    _assert_given_back(kube)
    for _ in range(3):
        _step(kube)
        _assert_given_back(kube)
    stored = kube.get("InferenceBenchmark", "ns", "sw")
    assert stored is not None and stored["status"]["phase"] == "Failed"
    assert "BackoffLimitExceeded" in stored["status"]["reasons"][0]


def test_a_hold_lifted_by_someone_else_mid_sweep_fails_without_writing_scale(
    result_json: str,
) -> None:
    kube = _cluster()
    _step(kube)  # begin
    _step(kube)  # /scale to 1
    svc = kube.objects[SVC]
    svc["metadata"]["annotations"].pop(c.ANNOTATION_SCALING_HOLD)
    svc["spec"]["replicas"] = 3  # the other writer's count
    out = _step(kube)
    assert out.status["phase"] == "Failed"
    assert c.ANNOTATION_SCALING_HOLD in out.status["reasons"][0]
    assert kube.objects[SVC]["spec"]["replicas"] == 3

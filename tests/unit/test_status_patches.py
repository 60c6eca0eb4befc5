"""Every status the controllers write is what the status models allow, by camelCase name.

The API server silently prunes status fields its schema does not know, so a typo would show
up only as an empty printer column. Here the reconcile, the autoscaler, the benchmark run and
the replica sweep are driven through their paths on the fake API; each status patch goes
through the fake's ``patch_merge`` the way the handlers send it, where
:func:`tests.unit.statuscheck.check_status_patch` validates it strictly against
``InferenceServiceStatus`` / ``InferenceBenchmarkStatus``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from tests.factories import benchmark, service
from tests.unit.fakekube import FakeKube
from tests.unit.statuscheck import MODELS, WRITTEN, check_status_patch, schema_paths
from tests.unit.test_autoscaler_loop import _cluster
from tests.unit.test_bench_merge import as_result, make_records
from tests.unit.test_energy import _exporter_pod, _observe, _ok
from tests.unit.test_router_status import test_reader_failures_say_unknown_and_why as router_down
from tests.unit.test_router_status import test_reader_ok_then_rate as router_ok
from tokenscale import constants as c
from tokenscale.api.benchmark import InferenceBenchmarkStatus
from tokenscale.api.config import OperatorConfig
from tokenscale.api.status import InferenceServiceStatus
from tokenscale.api.wire import merge_patch
from tokenscale.autoscale.collector import CollectResult, EnginePod
from tokenscale.autoscale.rates import PoolSignal, Sample
from tokenscale.bench import resultchannel
from tokenscale.bench.energy import EnergyResult
from tokenscale.bench.models import BenchResult
from tokenscale.controller.autoscaler import (
    STATUS_HEARTBEAT_SECONDS,
    LoopState,
    run_pass,
    status_write_due,
)
from tokenscale.controller.benchmark import reconcile_benchmark
from tokenscale.controller.benchrun import (
    BenchOutcome,
    EngineIdentity,
    results_from,
    service_summary,
)
from tokenscale.controller.reconcile import reconcile_service, refresh_status

CFG = OperatorConfig()
T0 = datetime(2026, 11, 28, 12, 0, 7, 123456, tzinfo=UTC)  # sub-second: written as whole seconds


def test_the_check_catches_a_typo_a_snake_case_name_and_a_bad_time() -> None:
    check_status_patch("InferenceService", {"metrics": {"tokensPerSecond": 1.0}})
    for bad in (
        {"metrics": {"tokensPerSecnd": 1.0}},
        {"metrics": {"tokens_per_second": 1.0}},
        {"scaling": {"panic": "yes"}},
    ):
        with pytest.raises(ValidationError):
            check_status_patch("InferenceService", bad)
    with pytest.raises(AssertionError, match=r"metav1\.Time"):
        check_status_patch(
            "InferenceService", {"metrics": {"observedAt": "2026-11-28T12:00:07.1Z"}}
        )
    with pytest.raises(ValidationError):
        check_status_patch("InferenceBenchmark", {"phase": "Done"})


def _write_service(kube: FakeKube, out_status: dict[str, Any]) -> dict[str, Any]:
    """What the handler does with a reconcile's outcome: one status patch."""
    assert out_status, "a reconcile always writes status"
    return kube.patch_merge("InferenceService", "ns", "llm", {"status": out_status}, "status")


def test_reconcile_refresh_and_invalid_spec_patches_validate() -> None:
    kube = FakeKube()
    doc = service(benchmarkOnRollout={"enabled": True, "qps": 5, "durationSeconds": 30})
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    body = kube.put(doc)
    body = _write_service(kube, reconcile_service(body, kube, CFG, T0).status)
    for obj in kube.objects.values():
        if obj["kind"] == "Deployment":
            n = obj["spec"]["replicas"]
            obj["status"] = {"replicas": n, "readyReplicas": n, "updatedReplicas": n}
    out = reconcile_service(body, kube, CFG, T0 + timedelta(seconds=5))
    assert out.status["rolloutBenchmarkGeneration"] == 1  # the rollout benchmark path ran too
    body = _write_service(kube, out.status)
    body = _write_service(kube, refresh_status(body, kube, CFG, T0 + timedelta(seconds=9)).status)
    ready = next(x for x in body["status"]["conditions"] if x["type"] == c.COND_READY)
    assert ready["status"] == "True"
    assert ready["lastTransitionTime"] == "2026-11-28T12:00:12Z"

    v1 = copy.deepcopy(next(o for o in kube.objects.values() if o["kind"] == "Deployment"))
    body["spec"]["engine"] = {"image": "example.com/vllm:2"}  # replaces pods: a rollout decision
    out = reconcile_service(body, kube, CFG, T0 + timedelta(seconds=12))
    assert out.status["pools"][0]["rollout"]["strategy"] in ("surge", "inPlace", "wait")
    body = _write_service(kube, out.status)

    # the SLA gate: the new version rolled out, its post-rollout benchmark failed: v1 is back
    body["spec"]["engine"] = {"image": "example.com/vllm:2"}
    body["spec"]["rollout"] = {"strategy": "inPlace"}
    body["spec"]["benchmarkOnRollout"]["rollback"] = True
    body = kube.put(body)
    body = _write_service(
        kube, reconcile_service(body, kube, CFG, T0 + timedelta(seconds=13)).status
    )
    kube.put({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "rs-v1", "namespace": "ns", "labels": v1["metadata"]["labels"],
                     "ownerReferences": [{"kind": "Deployment", "name": v1["metadata"]["name"]}]},
        "spec": {"template": v1["spec"]["template"]},
    })  # fmt: skip
    body["status"]["benchmark"] = {"name": "llm-rollout-1", "verdict": "Fail"}
    body = kube.put(body)
    out = reconcile_service(body, kube, CFG, T0 + timedelta(seconds=14))
    assert out.status["pools"][0]["rollout"]["rolledBackFrom"], out.status["pools"]
    body = _write_service(kube, out.status)

    body["spec"]["pools"][0]["maxReplicas"] = 0  # operator-judged: max below min
    out = reconcile_service(body, kube, CFG, T0)
    assert out.invalid and out.error is not None
    assert out.events[0] == ("InvalidSpec", out.error, "Warning")
    _write_service(kube, out.status)


class SteadyLoad:
    """A metrics source reporting a fixed generation tokens/s per pool."""

    def __init__(self, tokens_per_s: float) -> None:
        self.tokens_per_s = tokens_per_s

    async def collect(
        self, pods: Sequence[EnginePod], pools: Sequence[str], now: float
    ) -> CollectResult:
        signal = PoolSignal(generation_tps=self.tokens_per_s, pods_reporting=len(pods))
        return CollectResult(Sample(now, {p: signal for p in pools}), (), 0)


def _autoscaled(kube: FakeKube, mode: str, annotations: dict[str, str]) -> dict[str, Any]:
    doc = service(
        scaling={"mode": mode, "targetPerReplica": 1000, "windowSeconds": 10},
        pools=[{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 8}],
    )
    doc["metadata"] = {"name": "llm", "namespace": "ns", "annotations": annotations}
    doc["status"] = {"pools": [{"name": "mi300x", "gpu": "MI300X", "desiredReplicas": 1,
                                "readyReplicas": 1}]}  # fmt: skip
    kube.put({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "llm-mi300x-a", "namespace": "ns",
                     "labels": {c.LABEL_SERVICE: "llm", c.LABEL_POOL: "mi300x"}},
        "status": {"phase": "Running", "podIP": "127.10.0.1",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip
    kube.put({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n0", "labels": {c.NODE_LABEL_DEVICE_ID: "74a1",
                                              "amd.com/gpu.vram": "192G"}},
        "status": {"allocatable": {c.RESOURCE_GPU: "8"}},
    })  # fmt: skip
    return kube.put(doc)


@pytest.mark.parametrize(
    ("mode", "annotations"),
    [
        ("builtin", {}),
        ("external", {}),
        ("builtin", {c.ANNOTATION_SCALING_HOLD: "benchmark/sw"}),
        # a scaler-state annotation that is valid JSON but not an object reads as no state
        ("builtin", {c.ANNOTATION_SCALER_STATE: "[1, 2]"}),
    ],
)
async def test_autoscaler_patches_validate_and_panic_is_written(
    mode: str, annotations: dict[str, str]
) -> None:
    kube = FakeKube()
    body = _autoscaled(kube, mode, annotations)
    kube.put({
        "apiVersion": "tokenscale.dev/v1alpha1", "kind": "InferenceBenchmark",
        "metadata": {"name": "sw", "namespace": "ns"}, "status": {"phase": "Running"},
    })  # fmt: skip
    loop = LoopState()
    for second in range(0, 20, 2):
        body = kube.get("InferenceService", "ns", "llm") or body
        await run_pass(body, kube, CFG, SteadyLoad(3500.0), loop, T0 + timedelta(seconds=second))
    scaling = [p["scaling"] for kind, p in kube.status_patches if "scaling" in p]
    # Each pass that said something new wrote metrics and scaling, each one validated (a pass
    # that only moved the timestamps writes nothing: test_a_steady_loop_writes_status_...).
    assert scaling
    assert all("panic" in s for s in scaling)  # the field the schema promises is written
    history = (kube.get("InferenceService", "ns", "llm") or {})["status"].get("scalingHistory")
    if mode == "builtin" and not annotations.get(c.ANNOTATION_SCALING_HOLD):
        # 3.5x the ready capacity within the panic window: Knative-style panic, and it shows
        assert any(s["panic"] and s["reason"] == "Panic" for s in scaling)
        assert history and history[0]["time"] == "2026-11-28T12:00:07Z"
        assert any("lastScaleTime" in s for s in scaling)
    else:
        assert not any(s["panic"] for s in scaling) and not history


@pytest.fixture
def result_json() -> str:
    result: BenchResult = as_result(make_records(200, seed=1), [0.01] * 50, 1.7e9, 1, 0)
    return result.model_dump_json()


def _bench_pass(kube: FakeKube, name: str) -> BenchOutcome:
    """One benchmark pass as the handler runs it: its status, then the target's status."""
    body = kube.get("InferenceBenchmark", "ns", name)
    assert body is not None
    out = reconcile_benchmark(body, kube, CFG, T0)
    if out.status:
        kube.patch_merge("InferenceBenchmark", "ns", name, {"status": out.status}, "status")
    if out.service_status is not None:
        patch = {"status": out.service_status}
        kube.patch_merge("InferenceService", "ns", "llama2-70b", patch, "status")
    return out


def _target(kube: FakeKube, replicas: int) -> None:
    svc = service(pools=[{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 4}])
    svc["metadata"] = {"name": "llama2-70b", "namespace": "ns"}
    svc["spec"]["replicas"] = replicas
    svc["status"] = {"observedGeneration": 1, "readyReplicas": replicas,
                     "conditions": [{"type": "Ready", "status": "True"}]}  # fmt: skip
    kube.put(svc)


def _complete(kube: FakeKube, bench: str, job: str, result_json: str) -> None:
    kube.objects[("Job", "ns", job)]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}]
    }
    resultchannel.publish(kube, "ns", bench, "uid", 0, result_json, run=job)


def test_benchmark_run_patches_validate_and_history_accumulates(result_json: str) -> None:
    kube = FakeKube()
    kube.put({**benchmark(), "metadata": {"name": "b", "namespace": "ns"}})
    assert _bench_pass(kube, "b").status["phase"] == "WaitingForTarget"
    _target(kube, 2)
    assert _bench_pass(kube, "b").status["phase"] == "Running"
    _complete(kube, "b", "b-run", result_json)
    out = _bench_pass(kube, "b")
    assert out.finished and out.status["phase"] == "Succeeded"
    kube.put({**benchmark(), "metadata": {"name": "b2", "namespace": "ns"}})
    _bench_pass(kube, "b2")
    _complete(kube, "b2", "b2-run", result_json)
    _bench_pass(kube, "b2")
    svc = kube.get("InferenceService", "ns", "llama2-70b")
    assert svc is not None
    assert [h["name"] for h in svc["status"]["benchmarkHistory"]] == ["b", "b2"]
    kinds = [kind for kind, _ in kube.status_patches]
    assert kinds.count("InferenceService") == 2 and kinds.count("InferenceBenchmark") == 5


def test_replica_sweep_and_failure_patches_validate(result_json: str) -> None:
    kube = FakeKube()
    _target(kube, 3)
    body = benchmark(scenario="replicaSweep", load={"replicas": [1], "durationSeconds": 5})
    kube.put({**body, "metadata": {"name": "sw", "namespace": "ns"}})
    assert _bench_pass(kube, "sw").status["sweep"]["levels"] == [1]
    _bench_pass(kube, "sw")  # writes /scale
    kube.put({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "e0", "namespace": "ns",
                     "labels": {c.LABEL_SERVICE: "llama2-70b", c.LABEL_POOL: "mi300x"}},
        "status": {"phase": "Running", "podIP": "127.10.0.1",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip
    assert _bench_pass(kube, "sw").status["jobName"] == "sw-run-r1"
    _complete(kube, "sw", "sw-run-r1", result_json)
    out = _bench_pass(kube, "sw")
    assert out.finished and out.status["sweep"]["points"][0]["replicas"] == 1

    bad = benchmark(scenario="replicaSweep", load={"replicas": [9], "durationSeconds": 5})
    kube.put({**bad, "metadata": {"name": "bad", "namespace": "ns"}})
    out = _bench_pass(kube, "bad")
    assert out.finished and out.status["phase"] == "Failed"


async def test_every_field_the_status_schema_promises_is_written() -> None:
    """A field in the CRD that no controller writes is a promise kubectl explain makes and the
    operator breaks: drive every path above and compare what was written with the models."""
    WRITTEN.clear()
    test_reconcile_refresh_and_invalid_spec_patches_validate()
    for mode in ("builtin", "external"):
        await test_autoscaler_patches_validate_and_panic_is_written(mode, {})
    payload = as_result(make_records(200, seed=1), [0.01] * 50, 1.7e9, 1, 0).model_dump_json()
    test_benchmark_run_patches_validate_and_history_accumulates(payload)
    # a run that recorded energy (exporters reachable): the benchmark's results.energy
    energy_result = EnergyResult(
        gpus=1, window_s=10.0, joules=5000.0, output_tokens=9000, tokens_per_joule=1.8,
        joules_per_token=0.5556, avg_watts_per_gpu=500.0, peak_watts_per_gpu=612.0,
    )  # fmt: skip
    with_energy = BenchResult.model_validate_json(payload).model_copy(
        update={"energy": energy_result}
    )
    # the sweep's levels carry tokens/J when the run recorded energy
    test_replica_sweep_and_failure_patches_validate(with_energy.model_dump_json())
    # What the fake cannot show (an engine's /version, images, a regression against an earlier
    # passing run on the same GPU): the same summary function on a target that has them.
    results = results_from(BenchResult.model_validate_json(payload))
    identity = EngineIdentity(image="rocm/vllm:1", engine_version="0.9.1", gpu="MI300X")
    svc: dict[str, Any] = {"metadata": {"name": "llm"}, "status": {"readyReplicas": 1}}
    for name, scale in (("fast", 1.0), ("slow", 0.5)):
        slower = results.model_copy(update={"tokens_per_second": results.tokens_per_second * scale})
        patch = merge_patch(service_summary(svc, name, slower, "Pass", CFG, T0, identity))
        check_status_patch("InferenceService", patch)
        svc["status"].update(patch)
    assert svc["status"]["benchmark"]["regression"] is True
    results_patch = merge_patch(InferenceBenchmarkStatus(results=results_from(with_energy)))
    check_status_patch("InferenceBenchmark", results_patch)
    # energy (operatorConfig.energy on): the autoscaler pass's status.energy, figures present
    kube, body = _cluster()
    _exporter_pod(kube, "exp-n0", "127.20.0.1")
    for energy_status in await _observe(kube, body, [_ok(0.0), _ok(6000e6)], 2):
        check_status_patch(
            "InferenceService", merge_patch(InferenceServiceStatus(energy=energy_status))
        )
    # router mode: status.router with figures and a rate, then with a reason (router down)
    await router_ok()
    await router_down(0, "RouterMetricsUnreachable")
    for kind, model in MODELS.items():
        missing = schema_paths(model) - {path for k, path in WRITTEN if k == kind}
        assert not missing, f"{kind} status fields never written: {sorted(missing)}"


async def test_a_steady_loop_writes_status_once_then_only_at_the_heartbeat() -> None:
    """A pass whose figures equal the object's status (timestamps aside) writes nothing until
    the status is STATUS_HEARTBEAT_SECONDS old; a figure that moves is written at once."""
    kube = FakeKube()
    body = _autoscaled(kube, "external", {})
    loop = LoopState()

    async def passes(load: float, seconds: range) -> int:
        before = len(kube.status_patches)
        for second in seconds:
            now = T0 + timedelta(seconds=second)
            current = kube.get("InferenceService", "ns", "llm") or body
            await run_pass(current, kube, CFG, SteadyLoad(load), loop, now)
        return len(kube.status_patches) - before

    heartbeat = int(STATUS_HEARTBEAT_SECONDS)
    assert await passes(3500.0, range(0, 20, 2)) == 1  # the first pass only
    assert await passes(3500.0, range(20, heartbeat + 10, 2)) == 1  # the heartbeat
    assert await passes(7000.0, range(heartbeat + 10, heartbeat + 14, 2)) >= 1  # new figures
    tps = (kube.get("InferenceService", "ns", "llm") or {})["status"]["metrics"]
    assert tps["tokensPerSecond"] > 3500.0


async def test_a_loop_behind_its_own_writes_does_not_write_every_pass() -> None:
    """Kopf holds an object's events while a handler of that object runs, so behind a backlog
    the daemon's body stays the one it started with (no status at all). Compared with that
    body every pass looked new and wrote, and each write queued one more whole body behind the
    blocked handler (the churn drill's memory peak). Behind its own writes the loop writes
    only what is new, no heartbeat; once the body shows its last write, the heartbeat is back."""
    kube = FakeKube()
    stale = copy.deepcopy(_autoscaled(kube, "external", {}))
    loop = LoopState()

    async def passes(load: float, seconds: range, body: dict[str, Any] | None = None) -> int:
        before = len(kube.status_patches)
        for second in seconds:
            await run_pass(body or stale, kube, CFG, SteadyLoad(load), loop, T0 + timedelta(
                seconds=second))  # fmt: skip
        return len(kube.status_patches) - before

    heartbeat = int(STATUS_HEARTBEAT_SECONDS)
    assert await passes(3500.0, range(0, 4 * heartbeat, 5)) == 1  # was one a pass: 24
    assert await passes(7000.0, range(4 * heartbeat, 4 * heartbeat + 10, 5)) >= 1  # new figures
    fresh = kube.get("InferenceService", "ns", "llm")
    assert fresh is not None and fresh["status"]["metrics"]["tokensPerSecond"] > 3500.0
    start = 5 * heartbeat
    assert await passes(7000.0, range(start, start + heartbeat + 10, 5), fresh) == 1  # heartbeat


def test_status_write_due_compares_a_stale_body_with_the_last_write() -> None:
    now = datetime(2026, 11, 28, 12, 10, 0, tzinfo=UTC)
    mine = {"metrics": {"tokensPerSecond": 1.5, "observedAt": "2026-11-28T12:00:00Z"}}
    older = {"metrics": {"tokensPerSecond": 9.0, "observedAt": "2026-11-28T11:59:00Z"}}
    same = {"metrics": {"tokensPerSecond": 1.5, "observedAt": "2026-11-28T12:10:00Z"}}
    assert not status_write_due(older, same, now, mine)  # 10 min on, but not back yet
    assert not status_write_due(None, same, now, mine)
    assert status_write_due(older, {"metrics": {"tokensPerSecond": 2.0}}, now, mine)
    assert status_write_due(mine, same, now, mine)  # back: the heartbeat counts from it
    assert not status_write_due(mine, same, now - timedelta(minutes=9, seconds=50), mine)


def test_status_write_due_compares_what_a_merge_patch_would_change() -> None:
    at = "2026-11-28T12:00:00Z"
    current = {"metrics": {"tokensPerSecond": 1.5, "observedAt": at}, "scaling": {"able": True}}
    now = datetime(2026, 11, 28, 12, 0, 10, tzinfo=UTC)
    same = {"metrics": {"tokensPerSecond": 1.5, "observedAt": "2026-11-28T12:00:10Z"}}
    assert not status_write_due(current, same, now)
    assert status_write_due(current, same, now + timedelta(seconds=STATUS_HEARTBEAT_SECONDS))
    assert status_write_due(current, {"metrics": {"tokensPerSecond": 2.0}}, now)
    assert status_write_due(current, {"router": None, "energy": {"watts": 1.0}}, now)
    assert not status_write_due(current, {"router": None, "metrics": {"observedAt": at}}, now)
    assert status_write_due(current, {"scaling": None}, now)  # deletes a field
    assert status_write_due(None, same, now)  # no status yet
    assert status_write_due({"scaling": {}}, {"scaling": {}}, now)  # no timestamp: write

"""The benchmark controller's pure parts: Job/args rendering, the ConfigMap result channel
(round trip, multi-part, incomplete shards) and the benchmark state machine on a fake API."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.factories import benchmark, service
from tests.unit.builders import as_result, make_records
from tests.unit.fakekube import FakeKube
from tokenscale import constants as c
from tokenscale.api.benchmark import BenchmarkResults, InferenceBenchmarkSpec, LatencySummary
from tokenscale.api.config import OperatorConfig
from tokenscale.api.sla import SLASpec
from tokenscale.api.wire import merge_patch
from tokenscale.bench import resultchannel, scenarios
from tokenscale.bench.models import BenchResult
from tokenscale.controller.benchmark import reconcile_benchmark
from tokenscale.controller.benchrun import (
    EngineIdentity,
    engine_identity,
    partial_note,
    results_from,
    service_summary,
)
from tokenscale.render import benchmark_job

CFG = OperatorConfig()


def _spec(**changes: Any) -> InferenceBenchmarkSpec:
    return InferenceBenchmarkSpec.model_validate(benchmark(**changes)["spec"])


def test_server_args_carry_qps_sla_and_dataset() -> None:
    spec = _spec(dataset={"input": {"kind": "openorca"}, "output": {"kind": "openorca"}})
    args = benchmark_job.bench_args(spec, "http://svc.ns.svc:8000", "m", spec.sla)
    joined = " ".join(args)
    assert "--scenario server" in joined and "--qps 10" in joined
    assert "--sla llama2-70b-server" in joined
    assert "--dataset openorca-llama2-70b" in joined
    assert "--url http://svc.ns.svc:8000" in joined


def test_explicit_limits_and_sweep() -> None:
    spec = _spec(
        scenario="concurrencySweep",
        load={"concurrencies": [1, 8], "durationSeconds": 30},
        sla=None,
        dataset={"input": {"kind": "uniform", "min": 10, "max": 20}, "output": {"mean": 64}},
    )
    sla = SLASpec(ttft_p99_ms=450, tpot_p99_ms=40)
    args = " ".join(benchmark_job.bench_args(spec, "http://x:8000", "m", sla))
    assert "--scenario sweep" in args and "--concurrency 1,8" in args
    assert "--ttft-p99 450ms --tpot-p99 40ms" in args
    assert "--input-len uniform:10:20" in args and "--output-len 64" in args


def test_job_is_indexed_with_narrow_account() -> None:
    body = benchmark(shards=4)
    body["metadata"].update(namespace="ns", uid="u1")
    spec = InferenceBenchmarkSpec.model_validate(body["spec"])
    job = benchmark_job.job("b-run", body, spec, CFG, ["--url", "x"])
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == CFG.benchmark.service_account
    role = next(o for o in benchmark_job.rbac("ns", CFG) if o["kind"] == "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]}
    ]


@pytest.fixture
def result_json() -> str:
    """A real BenchResult assembled from synthetic per-request records."""
    records = make_records(200, seed=1)
    result: BenchResult = as_result(records, [0.01] * 50, 1_700_000_000.0, 1, 0)
    return result.model_dump_json()


def test_result_channel_round_trip_in_parts(
    monkeypatch: pytest.MonkeyPatch, result_json: str
) -> None:
    kube = FakeKube()
    monkeypatch.setattr(resultchannel, "PART_BYTES", 200)
    parts = resultchannel.publish(kube, "ns", "b", "uid", 0, result_json)
    assert parts > 1
    assert resultchannel.collect(kube, "ns", "b", shards=2) is None  # shard 1 missing
    resultchannel.publish(kube, "ns", "b", "uid", 1, result_json)
    got = resultchannel.collect(kube, "ns", "b", shards=2)
    assert got is not None and len(got) == 2
    assert got[0].model_dump_json() == result_json
    merged = scenarios.merge(got)
    assert merged.metrics.requests_ok == 2 * got[0].metrics.requests_ok


def test_state_machine_waits_runs_and_finishes(result_json: str) -> None:
    kube = FakeKube()
    bench = kube.put({**benchmark(), "metadata": {"name": "b", "namespace": "ns"}})
    out = reconcile_benchmark(bench, kube, CFG)
    assert out.status["phase"] == "WaitingForTarget"

    svc = service()
    svc["metadata"] = {"name": "llama2-70b", "namespace": "ns"}
    svc["status"] = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True"}],
        "readyReplicas": 2,
    }
    kube.put(svc)
    bench["status"] = out.status
    out = reconcile_benchmark(bench, kube, CFG)
    assert out.status["phase"] == "Running"
    job = kube.get("Job", "ns", "b-run")
    assert (
        job is not None and job["metadata"]["ownerReferences"][0]["uid"] == bench["metadata"]["uid"]
    )
    assert kube.get("Role", "ns", CFG.benchmark.service_account) is not None

    bench["status"] = out.status
    assert reconcile_benchmark(bench, kube, CFG).status == {}  # Job still running
    kube.objects[("Job", "ns", "b-run")]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}]
    }
    resultchannel.publish(kube, "ns", "b", "uid", 0, result_json, run="b-run")
    out = reconcile_benchmark(bench, kube, CFG)
    assert out.status["phase"] == "Succeeded"
    assert out.status["verdict"] == "NoSLA"  # the fixture result was run without limits
    assert out.status["results"]["tokensPerSecond"] > 0
    assert out.service_status is not None
    assert out.service_status["benchmark"]["name"] == "b"
    assert out.status["report"].startswith("configmap/b-report/")
    assert kube.get("ConfigMap", "ns", "b-report") is not None


def test_failed_job_fails_the_benchmark() -> None:
    kube = FakeKube()
    body = benchmark(target={"url": "http://127.0.0.1:1"})
    body["metadata"] = {"name": "b", "namespace": "ns"}
    bench = kube.put(body)
    out = reconcile_benchmark(bench, kube, CFG)
    assert out.status["phase"] == "Running"
    kube.objects[("Job", "ns", "b-run")]["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]
    }
    bench["status"] = out.status
    out = reconcile_benchmark(copy.deepcopy(bench), kube, CFG)
    assert out.status["phase"] == "Failed" and out.finished
    assert ("JobFailed", "BackoffLimitExceeded", "Warning") in out.events
    assert c.LABEL_BENCHMARK in kube.get("Job", "ns", "b-run")["metadata"]["labels"]


def _sweep_cluster(levels: list[int]) -> tuple[FakeKube, dict[str, Any]]:
    kube = FakeKube()
    svc = service(pools=[{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 4}])
    svc["metadata"] = {"name": "llama2-70b", "namespace": "ns"}
    svc["spec"]["replicas"] = 3
    svc["status"] = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True"}],
        "readyReplicas": 3,
    }
    kube.put(svc)
    body = benchmark(scenario="replicaSweep", load={"replicas": levels, "durationSeconds": 5})
    body["metadata"] = {"name": "sw", "namespace": "ns"}
    return kube, kube.put(body)


def _engines(kube: FakeKube, ready: int, terminating: int = 0) -> None:
    for key in [k for k in kube.objects if k[0] == "Pod"]:
        del kube.objects[key]
    for i in range(ready + terminating):
        meta: dict[str, Any] = {
            "name": f"e{i}",
            "namespace": "ns",
            "labels": {c.LABEL_SERVICE: "llama2-70b", c.LABEL_POOL: "mi300x"},
        }
        if i >= ready:
            meta["deletionTimestamp"] = "2026-11-28T12:00:00Z"
        kube.put({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "status": {"phase": "Running", "podIP": f"127.10.0.{i + 1}",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip


def _result_at(tokens_per_s: float, result_json: str) -> str:
    result = BenchResult.model_validate_json(result_json)
    metrics = result.metrics.model_copy(update={"tokens_per_s": tokens_per_s})
    return result.model_copy(update={"metrics": metrics}).model_dump_json()


def _step(kube: FakeKube, bench: dict[str, Any]) -> Any:
    current = kube.get("InferenceBenchmark", "ns", "sw")
    assert current is not None
    bench = {**current, "status": bench.get("status") or {}}
    out = reconcile_benchmark(bench, kube, CFG)
    if out.status:
        merged = {**(bench.get("status") or {}), **out.status}
        kube.objects[("InferenceBenchmark", "ns", "sw")]["status"] = merged
        bench["status"] = merged
    return out, bench


def test_replica_sweep_scales_runs_each_level_and_restores(result_json: str) -> None:
    kube, bench = _sweep_cluster([2, 1])  # given unsorted: run ascending
    out, bench = _step(kube, bench)
    assert out.status["sweep"]["levels"] == [1, 2]
    assert out.status["sweep"]["restoreReplicas"] == 3
    svc = kube.get("InferenceService", "ns", "llama2-70b")
    assert svc is not None
    assert svc["metadata"]["annotations"][c.ANNOTATION_SCALING_HOLD] == "benchmark/sw"

    throughput = {1: 1000.0, 2: 1900.0}
    for n in (1, 2):
        out, bench = _step(kube, bench)  # writes /scale
        assert kube.get("InferenceService", "ns", "llama2-70b")["spec"]["replicas"] == n
        _engines(kube, ready=n, terminating=1)
        out, bench = _step(kube, bench)  # a pod still terminating: no Job yet
        assert kube.get("Job", "ns", f"sw-run-r{n}") is None
        assert "waiting for exactly" in out.status["conditions"][0]["message"]
        _engines(kube, ready=n)
        out, bench = _step(kube, bench)
        job = kube.get("Job", "ns", f"sw-run-r{n}")
        assert job is not None
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--replicas") + 1] == str(n)
        env = {
            e["name"]: e.get("value")
            for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["TOKENSCALE_BENCH_RUN"] == f"sw-run-r{n}"
        assert _step(kube, bench)[0].status == {}  # Job running
        kube.objects[("Job", "ns", f"sw-run-r{n}")]["status"] = {
            "conditions": [{"type": "Complete", "status": "True"}]
        }
        payload = _result_at(throughput[n], result_json)
        resultchannel.publish(kube, "ns", "sw", "uid", 0, payload, run=f"sw-run-r{n}")
        out, bench = _step(kube, bench)

    assert out.finished and out.status["phase"] == "Succeeded"
    points = out.status["sweep"]["points"]
    assert [p["replicas"] for p in points] == [1, 2]
    assert points[1]["tokensPerSecondPerReplica"] == 950.0
    assert points[1]["scalingEfficiency"] == 0.95  # 1900 / (2 * 1000)
    assert out.status["results"]["scalingEfficiency"] == 0.95
    svc = kube.get("InferenceService", "ns", "llama2-70b")
    assert svc is not None and svc["spec"]["replicas"] == 3  # restored
    assert c.ANNOTATION_SCALING_HOLD not in (svc["metadata"].get("annotations") or {})
    assert any(reason == "SweepFinished" and "95.0%" in msg for reason, msg, _ in out.events)


def test_sweep_levels_outside_the_pool_bounds_fail_with_the_fix() -> None:
    kube, bench = _sweep_cluster([1, 8])
    out, _ = _step(kube, bench)
    assert out.finished and out.status["phase"] == "Failed"
    message = out.status["reasons"][0]
    assert "spec.load.replicas" in message and "[8]" in message and "[1, 4]" in message
    svc = kube.get("InferenceService", "ns", "llama2-70b")
    assert svc is not None and c.ANNOTATION_SCALING_HOLD not in (
        svc["metadata"].get("annotations") or {}
    )


def test_failed_level_restores_the_target(result_json: str) -> None:
    kube, bench = _sweep_cluster([1, 2])
    _, bench = _step(kube, bench)
    _, bench = _step(kube, bench)
    _engines(kube, ready=1)
    _, bench = _step(kube, bench)
    kube.objects[("Job", "ns", "sw-run-r1")]["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]
    }
    out, _ = _step(kube, bench)
    assert out.status["phase"] == "Failed"
    svc = kube.get("InferenceService", "ns", "llama2-70b")
    assert svc is not None and svc["spec"]["replicas"] == 3
    assert c.ANNOTATION_SCALING_HOLD not in (svc["metadata"].get("annotations") or {})


def test_benchmark_wakes_a_service_scaled_to_zero() -> None:
    kube = FakeKube()
    svc = service(
        pools=[{"name": "mi300x", "gpu": "MI300X", "minReplicas": 0, "maxReplicas": 4}],
        scaling={"mode": "builtin", "targetPerReplica": 2500, "scaleToZero": True},
    )
    svc["metadata"] = {"name": "llama2-70b", "namespace": "ns"}
    svc["spec"]["replicas"] = 0
    svc["status"] = {
        "replicas": 0,
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "ScaledToZero"}],
    }
    kube.put(svc)
    bench = kube.put({**benchmark(), "metadata": {"name": "b", "namespace": "ns"}})
    out = reconcile_benchmark(bench, kube, CFG)
    assert out.status["phase"] == "WaitingForTarget"
    woke = kube.get("InferenceService", "ns", "llama2-70b")
    assert woke is not None and woke["spec"]["replicas"] == 1
    assert any(reason == "WokeFromZero" for reason, _, _ in kube.events)
    assert any(reason == "WokeTarget" for reason, _, _ in out.events)
    bench["status"] = out.status
    # The /scale write bumped the generation; until the reconcile catches up, the old
    # Ready=True/ScaledToZero must not start a run against no engines.
    kube.objects[("InferenceService", "ns", "llama2-70b")]["metadata"]["generation"] = 2
    out = reconcile_benchmark(bench, kube, CFG)  # woken, not Ready yet: wait, no second wake
    assert [r for r, _, _ in kube.events].count("WokeFromZero") == 1
    assert kube.get("Job", "ns", "b-run") is None


def _results(tokens_per_s: float) -> BenchmarkResults:
    lat = LatencySummary(p50=1.0, p90=2.0, p99=3.0)
    return BenchmarkResults(
        tokens_per_second=tokens_per_s, requests_per_second=1.0, goodput=1.0, requests=10,
        ttft_ms=lat, tpot_ms=lat, itl_ms=lat, e2e_ms=lat,
    )  # fmt: skip


def _history_after(
    runs: list[tuple[str, float, int, str, str]],
) -> list[dict[str, Any]]:
    """Apply runs (name, tok/s, ready replicas, gpu, image) in order; return the history."""
    status: dict[str, Any] = {}
    for name, tps, ready, gpu, image in runs:
        body = {"metadata": {"name": "s"}, "status": {**status, "readyReplicas": ready}}
        identity = EngineIdentity(image=image, engine_version="0.33.0", gpu=gpu)
        summary = service_summary(body, name, _results(tps), "Pass", CFG, _NOW, identity)
        status = merge_patch(summary)
    history: list[dict[str, Any]] = status["benchmarkHistory"]
    return history


_NOW = datetime(2026, 11, 28, tzinfo=UTC)


def test_history_flags_a_slower_image_on_the_same_gpu_per_replica() -> None:
    history = _history_after([
        ("old", 20_000.0, 2, "MI355X", "vllm:0.32"),   # 10,000 per replica
        ("new", 13_500.0, 3, "MI355X", "vllm:0.33"),   # 4,500 per replica: -55 %
    ])  # fmt: skip
    latest = history[-1]
    assert latest["regression"] is True
    assert latest["capacityPerReplica"] == 4500.0
    assert "old" in latest["baseline"] and "vllm:0.32" in latest["baseline"]
    assert latest["image"] == "vllm:0.33" and latest["engineVersion"] == "0.33.0"


def test_history_compares_per_replica_and_only_on_the_same_gpu() -> None:
    history = _history_after([
        ("mi355x", 40_000.0, 4, "MI355X", "img"),   # 10,000 per replica
        ("mi300x", 3_000.0, 1, "MI300X", "img"),    # another GPU: not comparable
        ("more", 49_000.0, 5, "MI355X", "img"),     # 9,800 per replica: within 5 %
    ])  # fmt: skip
    assert [h["regression"] for h in history] == [False, False, False]
    assert history[1].get("baseline") is None  # first run on MI300X: nothing to compare with
    assert history[2]["baseline"].startswith("mi355x")


def test_engine_identity_reads_images_and_gpu_without_reachable_pods() -> None:
    kube = FakeKube()
    for pool, image in (("a", "rocm/vllm:gfx942"), ("b", "rocm/vllm:gfx950")):
        kube.put({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"s-{pool}", "namespace": "ns", "labels": {c.LABEL_SERVICE: "s"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": c.ENGINE_CONTAINER, "image": image}, {"name": "sidecar", "image": "x"},
            ]}}},
        })  # fmt: skip
    svc = {"metadata": {"name": "s", "namespace": "ns"}, "status": {"gpuSummary": "MI300X,MI355X"}}
    identity = engine_identity(kube, svc)
    assert identity.image == "rocm/vllm:gfx942,rocm/vllm:gfx950"
    assert identity.engine_version is None and identity.gpu == "MI300X,MI355X"


def test_a_missing_target_fails_after_target_timeout_seconds() -> None:
    """Regression (issue 17): a benchmark whose target never appeared waited forever."""
    kube = FakeKube()
    body = benchmark(targetTimeoutSeconds=60)
    body["metadata"] = {"name": "b", "namespace": "ns"}
    bench = kube.put(body)
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    out = reconcile_benchmark(copy.deepcopy(bench), kube, CFG, now=t0)
    assert out.status["phase"] == "WaitingForTarget" and not out.finished
    for later in (30, 59):  # still inside the bound: waits, and waitingSince does not move
        bench["status"] = out.status
        out = reconcile_benchmark(
            copy.deepcopy(bench), kube, CFG, now=t0 + timedelta(seconds=later)
        )
        assert out.status["phase"] == "WaitingForTarget"
        assert out.status["waitingSince"] == "2026-12-01T00:00:00Z"
    bench["status"] = out.status
    out = reconcile_benchmark(copy.deepcopy(bench), kube, CFG, now=t0 + timedelta(seconds=61))
    assert out.status["phase"] == "Failed" and out.finished
    failed = next(x for x in out.status["conditions"] if x["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "TargetNotReady"
    assert "llama2-70b not found" in failed["message"]
    assert "targetTimeoutSeconds" in failed["message"]
    assert any(r == "TargetNotReady" and t == "Warning" for r, _, t in out.events)


def test_a_dead_url_never_ends_succeeded() -> None:
    """Regression (issue 17): every request failing used to end Succeeded with 0 tok/s."""
    kube = FakeKube()
    body = benchmark(target={"url": "http://127.0.0.1:1"})
    body["metadata"] = {"name": "b", "namespace": "ns"}
    bench = kube.put(body)
    out = reconcile_benchmark(bench, kube, CFG)
    assert out.status["phase"] == "Running"
    kube.objects[("Job", "ns", "b-run")]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}]
    }
    dead = [
        r.model_copy(
            update={
                "ttft_s": None,
                "e2e_s": None,
                "output_tokens": 0,
                "chunks": 0,
                "error": "connect",
            }
        )
        for r in make_records(20, seed=2)
    ]
    result = as_result(dead, [], 1_700_000_000.0, 1, 0)
    resultchannel.publish(kube, "ns", "b", "uid", 0, result.model_dump_json(), run="b-run")
    bench["status"] = out.status
    out = reconcile_benchmark(copy.deepcopy(bench), kube, CFG)
    assert out.status["phase"] == "Failed" and out.finished
    failed = next(x for x in out.status["conditions"] if x["type"] == "Failed")
    assert failed["reason"] == "NoResponses" and "20 failed" in failed["message"]
    assert out.status["results"]["requests"] == 0 and out.status["results"]["errors"] == 20
    assert out.service_status is None


def test_a_sweep_level_that_never_gets_its_replicas_fails_and_restores() -> None:
    """Regression (issue 17): a level waited forever for replicas that never became Ready."""
    kube, _ = _sweep_cluster([1, 2])
    kube.objects[("InferenceBenchmark", "ns", "sw")]["spec"]["targetTimeoutSeconds"] = 60
    t0 = datetime(2026, 12, 1, tzinfo=UTC)

    def step(seconds: float) -> Any:
        current = kube.get("InferenceBenchmark", "ns", "sw")
        assert current is not None
        out = reconcile_benchmark(current, kube, CFG, now=t0 + timedelta(seconds=seconds))
        if out.status:
            stored = kube.objects[("InferenceBenchmark", "ns", "sw")]
            stored["status"] = {**(stored.get("status") or {}), **out.status}
        return out

    step(0)  # begin: hold the target
    step(1)  # level 1: scale the target to 1
    _engines(kube, ready=0)  # ...which never becomes Ready
    assert step(30).status.get("phase", "Running") == "Running"
    out = step(62)
    assert out.status["phase"] == "Failed" and out.finished
    failed = next(x for x in out.status["conditions"] if x["type"] == "Failed")
    assert (
        failed["reason"] == "TargetNotReady" and "waiting for exactly 1 ready" in failed["message"]
    )
    svc = kube.get("InferenceService", "ns", "llama2-70b")
    assert svc is not None and svc["spec"]["replicas"] == 3
    assert c.ANNOTATION_SCALING_HOLD not in (svc["metadata"].get("annotations") or {})


def test_requests_lost_mid_run_mark_the_results_partial() -> None:
    """Regression (issue 17, benchmark-fault drill): engines killed mid-run failed some
    requests, and without an SLA the benchmark ended Succeeded/NoSLA with nothing saying the
    figures left those requests out. Now results.partial, the first reason and a Warning Event
    say how many failed and how."""
    kube = FakeKube()
    body = benchmark(target={"url": "http://127.0.0.1:1"})
    body["metadata"] = {"name": "b", "namespace": "ns"}
    bench = kube.put(body)
    out = reconcile_benchmark(bench, kube, CFG)
    kube.objects[("Job", "ns", "b-run")]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}]
    }
    records = [r for r in make_records(40, seed=3) if r.error is None][:20]
    cut = {"ttft_s": None, "e2e_s": None, "output_tokens": 0, "chunks": 0, "error": "reset"}
    records[-5:] = [r.model_copy(update=cut) for r in records[-5:]]
    result = as_result(records, [], 1_700_000_000.0, 1, 0)
    resultchannel.publish(kube, "ns", "b", "uid", 0, result.model_dump_json(), run="b-run")
    bench["status"] = out.status
    out = reconcile_benchmark(copy.deepcopy(bench), kube, CFG)
    assert out.status["phase"] == "Succeeded" and out.status["verdict"] == "NoSLA"
    assert out.status["results"]["partial"] is True
    assert out.status["results"]["errors"] == 5 and out.status["results"]["requests"] == 15
    assert out.status["reasons"][0] == (
        "partial: 5 of 20 requests failed (reset: 5); the figures cover the 15 that completed"
    )
    assert [(e.reason, e.type) for e in out.events] == [("Finished", "Warning")]
    assert "partial: 5 of 20" in out.events[0].message


def test_a_complete_run_is_not_partial() -> None:
    records = [r for r in make_records(40, seed=3) if r.error is None][:20]
    merged = as_result(records, [], 1_700_000_000.0, 1, 0)
    assert merged.metrics.requests_failed == 0
    assert partial_note(merged) is None and results_from(merged).partial is False

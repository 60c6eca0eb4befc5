"""The benchmark controller's pure parts: Job/args rendering, the ConfigMap result channel
(round trip, multi-part, incomplete shards) and the benchmark state machine on a fake API."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.invalid_manifests import benchmark, service
from tests.unit.fakekube import FakeKube
from tests.unit.test_bench_merge import as_result, make_records
from tokenscale import constants as c
from tokenscale.api.benchmark import InferenceBenchmarkSpec
from tokenscale.api.config import OperatorConfig
from tokenscale.api.sla import SLASpec
from tokenscale.bench import scenarios
from tokenscale.bench.models import BenchResult
from tokenscale.controller import benchjob, resultchannel
from tokenscale.controller.benchmark import reconcile_benchmark

CFG = OperatorConfig()


def _spec(**changes: Any) -> InferenceBenchmarkSpec:
    return InferenceBenchmarkSpec.model_validate(benchmark(**changes)["spec"])


def test_server_args_carry_qps_sla_and_dataset() -> None:
    spec = _spec(dataset={"input": {"kind": "openorca"}, "output": {"kind": "openorca"}})
    args = benchjob.bench_args(spec, "http://svc.ns.svc:8000", "m", spec.sla)
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
    args = " ".join(benchjob.bench_args(spec, "http://x:8000", "m", sla))
    assert "--scenario sweep" in args and "--concurrency 1,8" in args
    assert "--ttft-p99 450ms --tpot-p99 40ms" in args
    assert "--input-len uniform:10:20" in args and "--output-len 64" in args


def test_job_is_indexed_with_narrow_account() -> None:
    body = benchmark(shards=4)
    body["metadata"].update(namespace="ns", uid="u1")
    spec = InferenceBenchmarkSpec.model_validate(body["spec"])
    job = benchjob.job("b-run", body, spec, CFG, ["--url", "x"])
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == CFG.benchmark.service_account
    role = next(o for o in benchjob.rbac("ns", CFG) if o["kind"] == "Role")
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
    svc["status"] = {"conditions": [{"type": "Ready", "status": "True"}], "readyReplicas": 2}
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
    resultchannel.publish(kube, "ns", "b", "uid", 0, result_json)
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

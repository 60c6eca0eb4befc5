"""The thin autoscaling loop on a fake API: load above target writes /scale (with the per-pool
split hint first, then the total), records history and Events; external mode only publishes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.autoscale.collector import CollectResult, EnginePod
from tokenscale.autoscale.rates import PoolSignal, Sample
from tokenscale.controller.autoscaler import POD_PAGE, LoopState, cluster_pods, run_pass

CFG = OperatorConfig()
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class SteadyLoad:
    """A metrics source reporting a fixed generation tokens/s per pool."""

    def __init__(self, tokens_per_s: float) -> None:
        self.tokens_per_s = tokens_per_s

    async def collect(
        self, pods: Sequence[EnginePod], pools: Sequence[str], now: float
    ) -> CollectResult:
        signal = PoolSignal(generation_tps=self.tokens_per_s, pods_reporting=len(pods))
        return CollectResult(Sample(now, {p: signal for p in pools}), (), 0)


def _cluster(
    mode: str = "builtin", kube: FakeKube | None = None
) -> tuple[FakeKube, dict[str, Any]]:
    kube = kube or FakeKube()
    doc = service(
        scaling={"mode": mode, "targetPerReplica": 1000, "windowSeconds": 10},
        pools=[{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 8}],
    )
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    doc["status"] = {"pools": [{"name": "mi300x", "desiredReplicas": 1, "readyReplicas": 1}]}
    body = kube.put(doc)
    kube.put({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "llm-mi300x-a", "namespace": "ns",
                     "labels": {c.LABEL_SERVICE: "llm", c.LABEL_POOL: "mi300x"}},
        "status": {"phase": "Running", "podIP": "127.10.0.1",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip
    for i in range(2):
        kube.put({
            "apiVersion": "v1", "kind": "Node",
            # what the node labeller writes on an unpartitioned MI300X (device id and vram)
            "metadata": {"name": f"n{i}", "labels": {c.NODE_LABEL_DEVICE_ID: "74a1",
                                                     "amd.com/gpu.vram": "192G"}},
            "status": {"allocatable": {c.RESOURCE_GPU: "8"}},
        })  # fmt: skip
    return kube, body


async def test_load_above_target_scales_up_through_scale_subresource() -> None:
    kube, body = _cluster()
    loop, source = LoopState(), SteadyLoad(3500.0)
    decision = None
    for second in range(0, 20, 2):
        body = kube.get("InferenceService", "ns", "llm") or body
        decision = await run_pass(body, kube, CFG, source, loop, T0 + timedelta(seconds=second))
        if decision is not None and decision.changed:
            break
    assert decision is not None and decision.changed
    svc = kube.get("InferenceService", "ns", "llm")
    assert svc is not None
    assert svc["spec"]["replicas"] >= 4  # ceil(3500 / 1000)
    hint = json.loads(svc["metadata"]["annotations"][c.ANNOTATION_SCALER_STATE])
    assert sum(hint["split"].values()) == svc["spec"]["replicas"]
    history = svc["status"]["scalingHistory"]
    assert history[-1]["fromReplicas"] == 1 and history[-1]["toReplicas"] >= 4
    assert svc["status"]["metrics"]["tokensPerSecond"] == 3500.0
    assert any(reason == "Scaled" for reason, _, _ in kube.events)


async def test_external_mode_only_publishes_metrics() -> None:
    kube, body = _cluster(mode="external")
    loop = LoopState()
    for second in range(0, 20, 2):
        await run_pass(body, kube, CFG, SteadyLoad(9000.0), loop, T0 + timedelta(seconds=second))
    svc = kube.get("InferenceService", "ns", "llm")
    assert svc is not None
    assert "replicas" not in svc["spec"]
    assert svc["status"]["scaling"]["reason"] == "ExternalScaler"
    assert svc["status"]["metrics"]["tokensPerSecond"] == 9000.0


async def test_scaling_hold_leaves_replicas_to_the_sweep() -> None:
    kube, body = _cluster()
    body["metadata"]["annotations"] = {c.ANNOTATION_SCALING_HOLD: "benchmark/sweep"}
    kube.put({
        "apiVersion": "tokenscale.dev/v1alpha1", "kind": "InferenceBenchmark",
        "metadata": {"name": "sweep", "namespace": "ns"}, "status": {"phase": "Running"},
    })  # fmt: skip
    loop = LoopState()
    for second in range(0, 20, 2):
        await run_pass(body, kube, CFG, SteadyLoad(9000.0), loop, T0 + timedelta(seconds=second))
    svc = kube.get("InferenceService", "ns", "llm")
    assert svc is not None
    assert "replicas" not in svc["spec"]
    assert svc["status"]["scaling"]["reason"] == "Held"
    assert "benchmark/sweep" in svc["status"]["scaling"]["message"]
    assert svc["status"]["metrics"]["tokensPerSecond"] == 9000.0


async def test_stale_hold_is_lifted_and_scaling_resumes() -> None:
    kube, body = _cluster()
    body["metadata"]["annotations"] = {c.ANNOTATION_SCALING_HOLD: "benchmark/gone"}
    kube.put(body)
    loop, decision = LoopState(), None
    for second in range(0, 20, 2):
        body = kube.get("InferenceService", "ns", "llm") or body
        decision = await run_pass(
            body, kube, CFG, SteadyLoad(3500.0), loop, T0 + timedelta(seconds=second)
        )
        if decision is not None and decision.changed:
            break
    svc = kube.get("InferenceService", "ns", "llm")
    assert svc is not None
    assert c.ANNOTATION_SCALING_HOLD not in (svc["metadata"].get("annotations") or {})
    assert svc["spec"]["replicas"] >= 4


def _kubectl_scale(kube: FakeKube, replicas: int, at: datetime, manager: str = "kubectl") -> None:
    """What `kubectl scale` leaves behind: the count, owned by kubectl through /scale."""
    obj = kube.objects[("InferenceService", "ns", "llm")]
    obj["spec"]["replicas"] = replicas
    obj["metadata"]["managedFields"] = [
        {"manager": "tokenscale", "operation": "Update", "time": "2026-11-28T11:00:00Z",
         "fieldsV1": {"f:metadata": {"f:annotations": {}}}},
        {"manager": manager, "operation": "Update", "subresource": "scale",
         "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "fieldsV1": {"f:spec": {"f:replicas": {}}}},
    ]  # fmt: skip
    obj["status"]["pools"][0]["desiredReplicas"] = replicas


async def test_a_manual_scale_is_reported_and_left_standing_not_silently_undone() -> None:
    """Regression (issue 17): the builtin autoscaler undid `kubectl scale` on its next pass."""
    from tokenscale.autoscale.writers import HOLD_SECONDS

    kube, body = _cluster()
    loop, source = LoopState(), SteadyLoad(3500.0)
    t = T0
    for _ in range(10):  # load above target: the autoscaler scales up and owns the count
        body = kube.get("InferenceService", "ns", "llm") or body
        decision = await run_pass(body, kube, CFG, source, loop, t)
        t += timedelta(seconds=2)
        if decision is not None and decision.changed:
            break
    ours = kube.objects[("InferenceService", "ns", "llm")]["spec"]["replicas"]
    assert ours >= 4
    _kubectl_scale(kube, 2, t)
    for _ in range(5):
        body = kube.get("InferenceService", "ns", "llm") or body
        await run_pass(body, kube, CFG, source, loop, t)
        t += timedelta(seconds=2)
    svc = kube.get("InferenceService", "ns", "llm")
    assert svc is not None
    assert svc["spec"]["replicas"] == 2, "the manual count was undone"
    scaling = svc["status"]["scaling"]
    assert scaling["reason"] == "ConflictingWriter" and "'kubectl'" in scaling["message"]
    assert "scaling.mode external" in scaling["message"]
    warnings = [m for r, m, k in kube.events if r == "ConflictingWriter" and k == "Warning"]
    assert len(warnings) == 1 and "set to 2 through /scale by 'kubectl'" in warnings[0]
    # after the hold the autoscaler resumes from the count it found
    t += timedelta(seconds=HOLD_SECONDS)
    for _ in range(10):
        body = kube.get("InferenceService", "ns", "llm") or body
        await run_pass(body, kube, CFG, source, loop, t)
        t += timedelta(seconds=2)
    svc = kube.get("InferenceService", "ns", "llm")
    assert svc is not None and svc["spec"]["replicas"] >= 4
    assert svc["status"]["scaling"]["reason"] != "ConflictingWriter"
    assert len([r for r, _, _ in kube.events if r == "ConflictingWriter"]) == 1


def test_foreign_write_ignores_the_operator_and_wakes_from_zero() -> None:
    from tokenscale.autoscale.writers import foreign_write

    def meta(manager: str) -> dict[str, Any]:
        entry = {"manager": manager, "subresource": "scale", "time": "2026-11-28T12:00:00Z",
                 "fieldsV1": {"f:spec": {"f:replicas": {}}}}  # fmt: skip
        return {"managedFields": [entry]}

    hpa = foreign_write(meta("kube-controller-manager"), 3, {"a": 1})
    assert hpa is not None and hpa.manager == "kube-controller-manager" and hpa.via_scale
    assert hpa.at == T0.timestamp()
    assert foreign_write(meta("tokenscale"), 3, {"a": 1}) is None  # our own (activator, sweep)
    assert foreign_write(meta("kubectl"), 1, {"a": 1}) is None  # the count we decided
    assert foreign_write(meta("kubectl"), 2, {"a": 0}) is None  # a wake from zero
    assert foreign_write(meta("kubectl"), 2, None) is None  # the autoscaler has not decided yet
    unknown = foreign_write({}, 5, {"a": 2, "b": 1})
    assert unknown is not None and unknown.manager == "an unknown writer" and unknown.at is None


def test_the_cluster_wide_pod_list_is_paged_and_reduced() -> None:
    """A capacity count reads every pod of the cluster: in pages, kept reduced (a whole list
    of a busy cluster held tens of MB at once; see ``capacity.placement_fields``)."""
    pages: list[tuple[str, str | None, int, str]] = []

    class Recording(FakeKube):
        def list_pages(self, kind: str, namespace: str | None, selector: str = "",
                       limit: int = 100, field: str = "") -> Any:  # fmt: skip
            for page in super().list_pages(kind, namespace, selector, limit, field):
                pages.append((kind, namespace, limit, field))
                yield page

    kube = Recording()
    for i in range(600):
        kube.put({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": f"ns{i % 3}", "labels": {"a": "b"}},
            "spec": {"nodeName": "n0", "containers": [
                {"name": "c", "image": "i", "resources": {"limits": {c.RESOURCE_GPU: "1"}}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        })  # fmt: skip
    pods = cluster_pods(kube)
    assert len(pods) == 600
    assert pages == [("Pod", None, POD_PAGE, "status.phase!=Succeeded")] * 3
    assert pods[0] == {
        "spec": {"nodeName": "n0", "containers": [{"resources": {"limits": {c.RESOURCE_GPU: "1"}}}],
                 "initContainers": []},
        "status": {"phase": "Running"},
    }  # fmt: skip

"""Capacity-aware rollouts: the pure decision table, the SLA floor, and the reconcile hook that
renders the choice onto the Deployment (inPlace on a full fleet, surge with free GPUs, wait with
the live template held when one replica fewer cannot carry the load), plus stuck rollouts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.status import MetricsStatus
from tokenscale.autoscale.rollout import RolloutInput, decide, sla_floor
from tokenscale.controller import observe
from tokenscale.controller.reconcile import reconcile_service, refresh_status
from tokenscale.validation import InvalidManifest, parse_manifest

CFG = OperatorConfig()
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def inp(**changes: Any) -> RolloutInput:
    base: dict[str, Any] = {
        "pin": "auto",
        "gpus_per_replica": 8,
        "free_replicas": 0,
        "ready": 3,
        "floor": 1,
        "desired": 3,
        "pool_ready": 3,
    }
    return RolloutInput(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "strategy", "reason"),
    [
        ({"free_replicas": 1}, "surge", "CapacityFree"),
        ({"free_replicas": 0}, "inPlace", "NoFreeGPU"),
        ({"floor": 2}, "inPlace", "NoFreeGPU"),  # 3 ready, 2 left, load needs 2
        ({"floor": 3}, "wait", "BelowSLAFloor"),  # 2 left < 3 needed
        ({"ready": 1, "desired": 1, "pool_ready": 1}, "wait", "BelowSLAFloor"),  # the only one
        # a pool short of ready pods loses none of its ready ones (unready old pods go first)
        ({"floor": 3, "pool_ready": 2}, "inPlace", "NoFreeGPU"),
        ({"ready": 0, "pool_ready": 0, "floor": 1}, "inPlace", "NoFreeGPU"),
        # other pools carry the load: the service's ready count, not the pool's, is compared
        ({"ready": 5, "desired": 1, "pool_ready": 1, "floor": 4}, "inPlace", "NoFreeGPU"),
        ({"free_replicas": None}, "surge", "NoGPUs"),  # CPU pool
        ({"desired": 0, "pool_ready": 0}, "surge", "NoReplicas"),
        ({"pin": "surge", "floor": 3}, "surge", "Pinned"),
        ({"pin": "inPlace", "floor": 3, "free_replicas": 2}, "inPlace", "Pinned"),
    ],
)
def test_decision_table(changes: dict[str, Any], strategy: str, reason: str) -> None:
    got = decide(inp(**changes))
    assert (got.strategy, got.reason) == (strategy, reason)
    assert got.message


def test_wait_and_pinned_surge_messages_say_why_and_the_way_out() -> None:
    wait = decide(inp(floor=3))
    assert "no 8 GPUs free" in wait.message and "below the 3" in wait.message
    assert "spec.rollout.strategy: inPlace" in wait.message
    assert "stays Pending" in decide(inp(pin="surge")).message


def _metrics(**kw: Any) -> MetricsStatus:
    return MetricsStatus(target_per_replica=1000.0, observed_at=NOW, **kw)


def test_sla_floor_from_the_autoscalers_sample() -> None:
    gen = "generationTokensPerSecond"
    assert sla_floor(_metrics(tokens_per_second=2500.0), gen, 3, NOW) == 3
    assert sla_floor(_metrics(tokens_per_second=2000.0), gen, 3, NOW) == 2
    assert sla_floor(_metrics(tokens_per_second=0.0), gen, 3, NOW) == 1  # idle: keep one
    total = _metrics(tokens_per_second=1500.0, prompt_tokens_per_second=600.0)
    assert sla_floor(total, "totalTokensPerSecond", 3, NOW) == 3
    inflight = MetricsStatus(
        requests_running=7.0, requests_waiting=2.0, target_per_replica=4.0, observed_at=NOW
    )
    assert sla_floor(inflight, "requestsInFlight", 3, NOW) == 3
    kv = MetricsStatus(kv_cache_usage=0.5, target_per_replica=0.6, observed_at=NOW)
    assert sla_floor(kv, "kvCacheUsage", 4, NOW) == 4  # 0.5 x 4 / 0.6 = 3.3
    # unknown or stale load: at least one replica keeps serving
    assert sla_floor(None, gen, 3, NOW) == 1
    stale = _metrics(tokens_per_second=9000.0)
    assert sla_floor(stale, gen, 3, NOW + timedelta(minutes=10)) == 1
    assert sla_floor(MetricsStatus(tokens_per_second=9000.0), gen, 3, NOW) == 1


# --- the reconcile hook on a fake cluster ------------------------------------------------------

MI300X_NODE_LABELS = {"amd.com/gpu.device-id": "74a1", "amd.com/gpu.vram": "192G"}


def _node(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": MI300X_NODE_LABELS},
        "spec": {},
        "status": {
            "allocatable": {"amd.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _doc(image: str = "example.com/vllm:1", **spec: Any) -> dict[str, Any]:
    doc = service(
        model={"name": "l8", "source": {"huggingFace": "meta-llama/Llama-3.1-8B"}},
        pools=[
            {"name": "a", "gpu": "MI300X", "gpusPerReplica": 1, "minReplicas": 2, "maxReplicas": 2}
        ],
        engine={"image": image},
        scaling={"mode": "off"},
        **spec,
    )
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    return doc


def _deployment(kube: FakeKube) -> dict[str, Any]:
    dep = kube.get("Deployment", "ns", "llm-a")
    assert dep is not None
    return dep


def _template_hash(dep: dict[str, Any]) -> str:
    return str(dep["spec"]["template"]["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH])


def _running(kube: FakeKube, node: str) -> None:
    """The Deployment's pods run on ``node`` (one GPU each) and are ready."""
    dep = _deployment(kube)
    n = dep["spec"]["replicas"]
    for i in range(n):
        kube.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"llm-a-{i}",
                    "namespace": "ns",
                    "labels": dep["spec"]["template"]["metadata"]["labels"],
                    "annotations": {c.ANNOTATION_SPEC_HASH: _template_hash(dep)},
                },
                "spec": {
                    "nodeName": node,
                    "containers": [{"resources": {"limits": {"amd.com/gpu": "1"}}}],
                },
                "status": {"phase": "Running"},
            }
        )
    dep["status"] = {"replicas": n, "readyReplicas": n, "updatedReplicas": n}
    kube.put(dep)


def _pass(kube: FakeKube, doc: dict[str, Any], at: datetime = NOW) -> Any:
    stored = kube.get("InferenceService", "ns", "llm")
    meta = {**doc["metadata"], "uid": (stored or {}).get("metadata", {}).get("uid", "uid-llm")}
    body = kube.put({**doc, "metadata": meta, "status": (stored or {}).get("status") or {}})
    out = reconcile_service(body, kube, CFG, at)
    kube.put({**body, "status": {**(body.get("status") or {}), **out.status}})
    return out


def _cluster(gpus: int) -> tuple[FakeKube, dict[str, Any]]:
    kube = FakeKube()
    kube.put(_node("n1", gpus))
    _pass(kube, _doc())
    _running(kube, "n1")
    return kube, _deployment(kube)


def test_a_new_deployment_surges_and_an_unchanged_pass_decides_nothing() -> None:
    kube, dep = _cluster(gpus=2)
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert c.ANNOTATION_ROLLOUT not in dep["metadata"]["annotations"]  # nothing decided
    out = _pass(kube, _doc())
    assert not [e for e in out.events if e[0].startswith("Rollout")]
    assert "rollout" not in out.status["pools"][0]


def test_full_fleet_replaces_in_place_and_says_why() -> None:
    kube, before = _cluster(gpus=2)  # both GPUs taken by the two replicas
    out = _pass(kube, _doc("example.com/vllm:2"))
    dep = _deployment(kube)
    assert _template_hash(dep) != _template_hash(before)  # the change is applied
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    record = json.loads(dep["metadata"]["annotations"][c.ANNOTATION_ROLLOUT])
    assert record["strategy"] == "inPlace"  # recorded where status reads it back from
    rollout = out.status["pools"][0]["rollout"]
    assert rollout["strategy"] == "inPlace" and rollout["reason"] == "NoFreeGPU"
    assert rollout["revision"] == _template_hash(dep)
    assert [e for e in out.events if e[0] == "RolloutInPlace"]
    # the next pass (rollout in progress, same template) keeps the strategy and decides nothing
    kube.put(_node("n1", 4))  # even though GPUs freed up meanwhile
    again = _pass(kube, _doc("example.com/vllm:2"))
    assert _deployment(kube)["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert not [e for e in again.events if e[0].startswith("Rollout")]
    assert again.status["pools"][0]["rollout"] == rollout


def test_free_gpus_surge() -> None:
    kube, _ = _cluster(gpus=3)
    out = _pass(kube, _doc("example.com/vllm:2"))
    dep = _deployment(kube)
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert out.status["pools"][0]["rollout"]["reason"] == "CapacityFree"
    assert [e for e in out.events if e[0] == "RolloutSurge"]


def test_pinned_strategy_wins() -> None:
    kube, _ = _cluster(gpus=3)
    _pass(kube, _doc("example.com/vllm:2", rollout={"strategy": "inPlace"}))
    assert _deployment(kube)["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 1


def _loaded(kube: FakeKube, tokens_per_second: float) -> None:
    """The autoscaler's latest sample: the load and the per-replica target."""
    body = kube.get("InferenceService", "ns", "llm")
    assert body is not None
    body["status"]["metrics"] = {
        "tokensPerSecond": tokens_per_second,
        "targetPerReplica": 1000.0,
        "observedAt": "2026-12-03T12:00:00Z",
    }
    kube.put(body)


def test_wait_holds_the_live_template_until_load_or_capacity_allow_then_rolls() -> None:
    kube, before = _cluster(gpus=2)
    _loaded(kube, 1800.0)  # both replicas needed
    out = _pass(kube, _doc("example.com/vllm:2"))
    dep = _deployment(kube)
    assert _template_hash(dep) == _template_hash(before)  # nothing replaced
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "example.com/vllm:1"
    rollout = out.status["pools"][0]["rollout"]
    assert rollout["strategy"] == "wait" and rollout["reason"] == "BelowSLAFloor"
    progressing = next(x for x in out.status["conditions"] if x["type"] == c.COND_PROGRESSING)
    assert (progressing["status"], progressing["reason"]) == ("False", "RolloutWaiting")
    assert "below the 2" in progressing["message"]
    assert [e for e in out.events if e[0] == "RolloutWait" and e[2] == "Warning"]
    # a second pass with the same reason: no new Event
    again = _pass(kube, _doc("example.com/vllm:2"), NOW + timedelta(seconds=10))
    assert not [e for e in again.events if e[0].startswith("Rollout")]
    # the load drops: the next pass decides again and replaces in place
    _loaded(kube, 600.0)
    done = _pass(kube, _doc("example.com/vllm:2"), NOW + timedelta(seconds=20))
    dep = _deployment(kube)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "example.com/vllm:2"
    assert done.status["pools"][0]["rollout"]["strategy"] == "inPlace"


def test_reverting_while_waiting_clears_the_wait() -> None:
    kube, _ = _cluster(gpus=2)
    _loaded(kube, 1800.0)
    _pass(kube, _doc("example.com/vllm:2"))
    out = _pass(kube, _doc("example.com/vllm:1"), NOW + timedelta(seconds=10))
    assert "rollout" not in out.status["pools"][0]
    progressing = next(x for x in out.status["conditions"] if x["type"] == c.COND_PROGRESSING)
    assert progressing["reason"] == "Stable"


def test_the_decision_is_read_back_from_the_deployment_even_with_a_stale_status() -> None:
    kube, _ = _cluster(gpus=2)
    stale = kube.get("InferenceService", "ns", "llm")  # read before the change was decided
    assert stale is not None
    _pass(kube, _doc("example.com/vllm:2"))
    body = {**_doc("example.com/vllm:2"), "status": stale["status"]}
    body["metadata"] = stale["metadata"]
    out = refresh_status(body, kube, CFG, NOW + timedelta(seconds=5))
    assert out.status["pools"][0]["rollout"]["strategy"] == "inPlace"
    again = reconcile_service(body, kube, CFG, NOW + timedelta(seconds=6))
    assert again.status["pools"][0]["rollout"]["strategy"] == "inPlace"


# --- stuck rollouts --------------------------------------------------------------------------


def _pod(name: str, spec_hash: str, waiting: str | None = None) -> dict[str, Any]:
    state = {"waiting": {"reason": waiting, "message": "back-off pulling"}} if waiting else {}
    return {
        "metadata": {
            "name": name,
            "labels": {c.LABEL_POOL: "a"},
            "annotations": {c.ANNOTATION_SPEC_HASH: spec_hash},
        },
        "status": {"containerStatuses": [{"state": state}]},
    }


def _workload(spec_hash: str, **status: Any) -> dict[str, Any]:
    return {
        "spec": {"template": {"metadata": {"annotations": {c.ANNOTATION_SPEC_HASH: spec_hash}}}},
        "status": status,
    }


def test_new_version_failing_while_old_pods_serve_is_a_stuck_rollout() -> None:
    pods = [_pod("old-0", "v1"), _pod("old-1", "v1"), _pod("new-0", "v2", "ImagePullBackOff")]
    stuck = observe.stuck_rollout(pods, "a", _workload("v2"))
    assert stuck is not None
    reason, message = stuck
    assert reason == "ImagePullBackOff"
    assert "2 pod(s) of the previous version keep serving" in message
    assert "revert" in message and "back-off pulling" in message
    crash = [_pod("old-0", "v1"), _pod("new-0", "v2", "CrashLoopBackOff")]
    assert observe.stuck_rollout(crash, "a", _workload("v2")) is not None
    # a healthy new pod, a failing pod of the OLD version, or no old pods left: not stuck
    assert observe.stuck_rollout([_pod("o", "v1"), _pod("n", "v2")], "a", _workload("v2")) is None
    old_bad = [_pod("o", "v1", "CrashLoopBackOff"), _pod("n", "v2")]
    assert observe.stuck_rollout(old_bad, "a", _workload("v2")) is None
    alone = [_pod("n", "v2", "CrashLoopBackOff")]
    assert observe.stuck_rollout(alone, "a", _workload("v2")) is None
    deadline = _workload(
        "v2", conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]
    )
    found = observe.stuck_rollout([], "a", deadline)
    assert found is not None and found[0] == "ProgressDeadlineExceeded"


def test_stuck_rollout_is_progressing_false_and_suppresses_the_rollout_benchmark() -> None:
    kube, before = _cluster(gpus=3)
    doc = _doc("example.com/vllm:broken", benchmarkOnRollout={"enabled": True, "qps": 5})
    _pass(kube, doc)
    dep = _deployment(kube)
    kube.put(_pod("llm-a-new", _template_hash(dep), "ErrImagePull") | {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {**_pod("x", _template_hash(dep))["metadata"], "name": "llm-a-new",
                     "namespace": "ns", "labels": dep["spec"]["template"]["metadata"]["labels"]},
    })  # fmt: skip
    out = _pass(kube, doc, NOW + timedelta(seconds=5))
    progressing = next(x for x in out.status["conditions"] if x["type"] == c.COND_PROGRESSING)
    assert (progressing["status"], progressing["reason"]) == ("False", "ErrImagePull")
    ready = next(x for x in out.status["conditions"] if x["type"] == c.COND_READY)
    assert ready["status"] == "True"  # the old replicas still serve
    assert "rolloutBenchmarkGeneration" not in out.status
    assert _template_hash(before) != _template_hash(dep)


def test_bad_strategy_names_the_field() -> None:
    with pytest.raises(InvalidManifest) as err:
        parse_manifest(_doc(rollout={"strategy": "recreate"}))
    assert "spec.rollout.strategy" in str(err.value)

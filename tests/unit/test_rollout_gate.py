"""The SLA gate (benchmarkOnRollout.rollback): a new version whose post-rollout benchmark fails
the SLA gets its pool's previous ReplicaSet template back, says so (Event, Progressing), keeps
it while the spec still asks for the failed version, and rolls any other change as usual.
And multi-pool services: a change to several pools rolls one pool at a time."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.unit.fakekube import FakeKube
from tests.unit.test_rollout import (
    _cluster,
    _deployment,
    _doc,
    _node,
    _pass,
    _running,
    _template_hash,
)
from tokenscale import constants as c
from tokenscale.autoscale.rollout import one_pool_at_a_time
from tokenscale.controller import observe
from tokenscale.controller.reconcile import rollout_benchmark
from tokenscale.controller.rollout import mid_rollout, previous_template, rollout_benchmark_name
from tokenscale.validation import InvalidManifest, parse_manifest

GATE = {"enabled": True, "qps": 2, "rollback": True}
SLA = {"ttftP99Ms": 2000, "tpotP99Ms": 50}


def _gated(image: str) -> dict[str, Any]:
    return _doc(image, benchmarkOnRollout=GATE, sla=SLA)


def _replicaset(dep: dict[str, Any], revision: int) -> dict[str, Any]:
    """The ReplicaSet the Deployment controller made for ``dep``'s current template."""
    template = copy.deepcopy(dep["spec"]["template"])
    template["metadata"]["labels"]["pod-template-hash"] = f"h{revision}"
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"llm-a-h{revision}",
            "namespace": "ns",
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {"deployment.kubernetes.io/revision": str(revision)},
            "ownerReferences": [{"kind": "Deployment", "name": "llm-a"}],
        },
        "spec": {"template": template},
    }


def _benchmarked(kube: FakeKube, verdict: str, name: str | None = None) -> None:
    """The benchmark controller's summary of a run (default: the post-rollout run of the
    current generation), onto the service."""
    body = kube.get("InferenceService", "ns", "llm")
    assert body is not None
    body["status"]["benchmark"] = {
        "name": name or rollout_benchmark_name(body["metadata"]),
        "verdict": verdict,
        "ttftP99Ms": 450.0,
        "tpotP99Ms": 120.0,
    }
    kube.put(body)


def _rolled_out_v2() -> tuple[FakeKube, str, str]:
    """v1 runs (revision 1), the gated change to v2 has rolled out (revision 2)."""
    kube, v1 = _cluster(gpus=3)
    kube.put(_replicaset(v1, 1))
    _pass(kube, _gated("example.com/vllm:2"))
    _running(kube, "n1")
    v2 = _deployment(kube)
    kube.put(_replicaset(v2, 2))
    return kube, _template_hash(v1), _template_hash(v2)


def _progressing(out: Any) -> dict[str, Any]:
    found: dict[str, Any] = next(
        x for x in out.status["conditions"] if x["type"] == c.COND_PROGRESSING
    )
    return found


def test_failed_gate_restores_the_previous_version_and_holds_it_until_the_spec_changes() -> None:
    kube, v1, v2 = _rolled_out_v2()
    _benchmarked(kube, "Fail")
    out = _pass(kube, _gated("example.com/vllm:2"))
    dep = _deployment(kube)
    assert _template_hash(dep) == v1  # the previous ReplicaSet's template, as rollout undo
    assert "pod-template-hash" not in dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "example.com/vllm:1"
    record = json.loads(dep["metadata"]["annotations"][c.ANNOTATION_ROLLOUT])
    assert record["rolledBackFrom"] == v2 and record["revision"] == v1
    assert record["reason"] == "SLAGateFailed"
    [event] = [e for e in out.events if e[0] == "RolledBack"]
    assert event.type == "Warning"
    assert "-rollout-1 failed the SLA: TTFT p99 450 ms, TPOT p99 120 ms" in event.message
    assert "(SLA 2000 / 50 ms)" in event.message and f"{v2} rolled back to {v1}" in event.message
    progressing = _progressing(out)
    assert (progressing["status"], progressing["reason"]) == ("False", "RolledBack")
    assert out.status["pools"][0]["rollout"]["rolledBackFrom"] == v2

    # the spec still asks for v2: v1 stays, nothing is decided or announced again
    _running(kube, "n1")
    again = _pass(kube, _gated("example.com/vllm:2"))
    assert _template_hash(_deployment(kube)) == v1
    assert not [e for e in again.events if e[0].startswith(("Rolled", "Rollout"))]
    assert _progressing(again)["reason"] == "RolledBack"

    # a new change (the fixed engine) rolls as usual and clears the rollback
    fixed = _pass(kube, _gated("example.com/vllm:3"))
    dep = _deployment(kube)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "example.com/vllm:3"
    assert "rolledBackFrom" not in fixed.status["pools"][0]["rollout"]
    assert [e for e in fixed.events if e[0] == "RolloutSurge"]


def test_reverting_the_spec_after_a_rollback_clears_it() -> None:
    kube, v1, _ = _rolled_out_v2()
    _benchmarked(kube, "Fail")
    _pass(kube, _gated("example.com/vllm:2"))
    reverted = _gated("example.com/vllm:1")  # the spec now asks for what runs
    reverted["metadata"]["generation"] = 2
    out = _pass(kube, reverted)
    assert _template_hash(_deployment(kube)) == v1
    assert "rollout" not in out.status["pools"][0]
    assert _progressing(out)["reason"] != "RolledBack"


@pytest.mark.parametrize(
    ("verdict", "name", "gate"),
    [
        ("Pass", None, GATE),
        ("Unstable", None, GATE),  # says nothing about the version
        ("Fail", "manual-run", GATE),  # not the post-rollout run of this generation
        ("Fail", None, {"enabled": True, "qps": 2}),  # no rollback asked for
    ],
)
def test_no_rollback_unless_this_rollouts_gate_failed_and_rollback_is_on(
    verdict: str, name: str | None, gate: dict[str, Any]
) -> None:
    kube, _, v2 = _rolled_out_v2()
    _benchmarked(kube, verdict, name)
    doc = _doc("example.com/vllm:2", benchmarkOnRollout=gate, sla=SLA)
    out = _pass(kube, doc)
    assert _template_hash(_deployment(kube)) == v2
    assert not [e for e in out.events if e[0] == "RolledBack"]


def test_a_first_version_failing_the_gate_has_nothing_to_restore() -> None:
    kube, dep = _cluster(gpus=3)
    kube.put(_replicaset(dep, 1))  # its own ReplicaSet only
    _benchmarked(kube, "Fail")
    out = _pass(kube, _gated("example.com/vllm:1"))
    assert _template_hash(_deployment(kube)) == _template_hash(dep)
    assert not [e for e in out.events if e[0] == "RolledBack"]


def test_offline_gate_benchmark_keeps_its_concurrency() -> None:
    doc = _doc(benchmarkOnRollout={"enabled": True, "scenario": "offline", "concurrency": 2})
    doc["metadata"] |= {"generation": 3, "uid": "u1"}
    bench = rollout_benchmark(doc, parse_manifest(doc))
    assert bench["metadata"]["name"] == "llm-rollout-3"
    assert bench["spec"]["scenario"] == "offline" and bench["spec"]["load"]["concurrency"] == 2


def test_previous_template_is_the_newest_other_revision_of_that_deployment() -> None:
    _, v1 = _cluster(gpus=3)
    old = _replicaset(v1, 1)
    newer = _replicaset(v1, 3)
    newer["spec"]["template"]["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH] = "other"
    failed = _replicaset(v1, 4)
    failed["spec"]["template"]["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH] = "bad"
    foreign = copy.deepcopy(newer)
    foreign["metadata"]["ownerReferences"] = [{"kind": "Deployment", "name": "llm-b"}]
    foreign["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "9"
    found = previous_template([old, newer, failed, foreign], "llm-a", "bad")
    assert found is not None and found[0] == "other"
    assert "pod-template-hash" not in found[1]["metadata"]["labels"]
    assert previous_template([failed], "llm-a", "bad") is None


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"benchmarkOnRollout": GATE, "sla": None}, "spec", "rollback needs spec.sla"),
        (
            {"benchmarkOnRollout": {"rollback": True}, "sla": SLA},
            "spec.benchmarkOnRollout",
            "rollback needs enabled: true",
        ),
        (
            {"benchmarkOnRollout": {"enabled": True, "qps": 2, "concurrency": 2}, "sla": SLA},
            "spec.benchmarkOnRollout",
            "concurrency applies to scenario offline only",
        ),
    ],
)
def test_rollback_without_its_prerequisites_names_the_fix(
    spec: dict[str, Any], field: str, words: str
) -> None:
    doc = _doc(**spec)
    if doc["spec"]["sla"] is None:
        del doc["spec"]["sla"]
    with pytest.raises(InvalidManifest) as err:
        parse_manifest(doc)
    assert field in str(err.value) and words in str(err.value) and "fix:" in str(err.value)


# --- multi-pool services roll one pool at a time -----------------------------------------------


def test_one_pool_at_a_time_decision() -> None:
    assert one_pool_at_a_time("a", set()) is None
    assert one_pool_at_a_time("a", {"a"}) is None  # its own rollout is no reason to wait
    wait = one_pool_at_a_time("b", {"a", "c"})
    assert wait is not None and (wait.strategy, wait.reason) == ("wait", "OtherPoolRolling")
    assert "pool a, c is still rolling out" in wait.message


def _dep(want: int, **status: int) -> dict[str, Any]:
    return {"metadata": {"generation": 2}, "spec": {"replicas": want}, "status": status}


def _recorded(workload: dict[str, Any]) -> dict[str, Any]:
    record = json.dumps({"strategy": "inPlace", "reason": "NoFreeGPU", "revision": "x"})
    workload["metadata"]["annotations"] = {c.ANNOTATION_ROLLOUT: record}
    return workload


@pytest.mark.parametrize(
    ("workload", "rolling"),
    [
        (None, False),
        (_dep(2, observedGeneration=2, replicas=2, updatedReplicas=2, readyReplicas=2), False),
        (_dep(2, observedGeneration=1, replicas=2, updatedReplicas=2, readyReplicas=2), True),
        (_dep(2, observedGeneration=2, replicas=3, updatedReplicas=1, readyReplicas=2), True),
        (_dep(2, observedGeneration=2, replicas=2, updatedReplicas=1, readyReplicas=2), True),
        # all new but one not ready: rolling only after a change of ours (a record)
        (_dep(2, observedGeneration=2, replicas=2, updatedReplicas=2, readyReplicas=1), False),
        (
            _recorded(
                _dep(2, observedGeneration=2, replicas=2, updatedReplicas=2, readyReplicas=1)
            ),
            True,
        ),
    ],
)
def test_mid_rollout(workload: dict[str, Any] | None, rolling: bool) -> None:
    assert mid_rollout(workload) is rolling


def _two_pools(image: str) -> dict[str, Any]:
    doc = _doc(image)
    pool = dict(doc["spec"]["pools"][0])
    doc["spec"]["pools"] = [pool, {**pool, "name": "b"}]
    return doc


def _settle(kube: FakeKube, name: str) -> None:
    """The Deployment controller finished: every replica new and ready."""
    dep = kube.get("Deployment", "ns", name)
    assert dep is not None
    n = dep["spec"]["replicas"]
    dep["status"] = {"replicas": n, "readyReplicas": n, "updatedReplicas": n}
    kube.put(dep)


def test_two_changed_pools_roll_one_after_the_other() -> None:
    kube = FakeKube()
    kube.put(_node("n1", 8))
    _pass(kube, _two_pools("example.com/vllm:1"))
    for name in ("llm-a", "llm-b"):
        _settle(kube, name)
    before = {n: _template_hash(_get(kube, n)) for n in ("llm-a", "llm-b")}

    out = _pass(kube, _two_pools("example.com/vllm:2"))
    assert _template_hash(_get(kube, "llm-a")) != before["llm-a"]  # a rolls
    assert _template_hash(_get(kube, "llm-b")) == before["llm-b"]  # b keeps its version
    waits = [e for e in out.events if e[0] == "RolloutWait"]
    assert len(waits) == 1 and "pool b waits (OtherPoolRolling)" in waits[0].message
    assert waits[0].type == "Normal"  # sequencing, not a problem
    rollouts = {p["name"]: p["rollout"] for p in out.status["pools"]}
    assert rollouts["b"]["reason"] == "OtherPoolRolling"

    # a is mid-rollout (an old pod left): b still waits
    a = _get(kube, "llm-a")
    a["status"] = {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 1}
    kube.put(a)
    _pass(kube, _two_pools("example.com/vllm:2"))
    assert _template_hash(_get(kube, "llm-b")) == before["llm-b"]

    # a is done: b rolls
    _settle(kube, "llm-a")
    out = _pass(kube, _two_pools("example.com/vllm:2"))
    assert _template_hash(_get(kube, "llm-b")) != before["llm-b"]
    assert {p["name"]: p["rollout"]["reason"] for p in out.status["pools"]}["b"] == "CapacityFree"


def _get(kube: FakeKube, name: str) -> dict[str, Any]:
    found = kube.get("Deployment", "ns", name)
    assert found is not None
    return found


def test_a_change_the_deployment_controller_has_not_seen_yet_is_rolling_not_stable() -> None:
    """Found by the gate drill: the pass that applies a rollout read the Deployment's old status
    (all updated) as settled and started the post-rollout benchmark against the old version."""
    stale = {
        "metadata": {"generation": 3},
        "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2,
                   "updatedReplicas": 2},
    }  # fmt: skip
    obs = observe.observe_workload("a", "MI300X", 2, stale)
    conds = observe.service_conditions([obs], [], [], 3, [], None)
    progressing = next(x for x in conds if x.type == c.COND_PROGRESSING)
    assert (progressing.status, progressing.reason) == ("True", "RollingOut")
    stale["status"]["observedGeneration"] = 3
    obs = observe.observe_workload("a", "MI300X", 2, stale)
    conds = observe.service_conditions([obs], [], [], 3, [], None)
    assert next(x for x in conds if x.type == c.COND_PROGRESSING).reason == "Stable"


def test_a_failed_gate_rolls_back_only_the_pools_this_generation_changed() -> None:
    kube = FakeKube()
    kube.put(_node("n1", 8))

    def doc(generation: int, image: str, label: str | None = None) -> dict[str, Any]:
        out = _two_pools(image)
        out["spec"] |= {"benchmarkOnRollout": GATE, "sla": SLA}
        out["metadata"]["generation"] = generation
        if label:  # a change to pool a only
            out["spec"]["pools"][0]["podTemplate"] = {"labels": {"team": label}}
        return out

    _pass(kube, doc(1, "example.com/vllm:1"))
    for name in ("llm-a", "llm-b"):
        _settle(kube, name)
        kube.put(_owned_replicaset(_get(kube, name), 1))
    for _ in range(2):  # generation 2 changes both pools: a, then b
        _pass(kube, doc(2, "example.com/vllm:2"))
        for name in ("llm-a", "llm-b"):
            _settle(kube, name)
    b2 = _template_hash(_get(kube, "llm-b"))
    for name in ("llm-a", "llm-b"):
        kube.put(_owned_replicaset(_get(kube, name), 2))
    _pass(kube, doc(3, "example.com/vllm:2", label="x"))  # generation 3: pool a only
    _settle(kube, "llm-a")
    a3 = _template_hash(_get(kube, "llm-a"))
    _benchmarked(kube, "Fail", "llm-rollout-3")
    out = _pass(kube, doc(3, "example.com/vllm:2", label="x"))
    assert _template_hash(_get(kube, "llm-a")) != a3  # rolled back
    assert _template_hash(_get(kube, "llm-b")) == b2  # not changed by generation 3: kept
    assert [e.message.split(":")[0] for e in out.events if e[0] == "RolledBack"] == ["pool a"]


def _owned_replicaset(dep: dict[str, Any], revision: int) -> dict[str, Any]:
    rs = _replicaset(dep, revision)
    name = dep["metadata"]["name"]
    rs["metadata"] |= {"name": f"{name}-h{revision}",
                       "ownerReferences": [{"kind": "Deployment", "name": name}]}  # fmt: skip
    return rs

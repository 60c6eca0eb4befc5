"""The SLA gate (benchmarkOnRollout.rollback): a new version whose post-rollout benchmark fails
the SLA gets its pool's previous ReplicaSet template back, says so (Event, Progressing), keeps
it while the spec still asks for the failed version, and rolls any other change as usual."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.unit.fakekube import FakeKube
from tests.unit.test_rollout import _cluster, _deployment, _doc, _pass, _running, _template_hash
from tokenscale import constants as c
from tokenscale.controller.rollout import previous_template, rollout_benchmark_name
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

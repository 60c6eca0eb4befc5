"""The fleet-wide resync: quiet when nothing changed, a reconcile for whatever drifted.

Runs against the in-memory API with the real reconcile: a pass right after a reconcile finds
nothing to do; a deleted or edited child, a status that lags its workload, new pod problems, a
spec generation not yet observed, or a service this process never reconciled each make exactly
that service stale, and the reconcile the pass triggers makes the next pass quiet again.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale.api.config import OperatorConfig
from tokenscale.controller import resync
from tokenscale.controller.reconcile import CHILD_KINDS, reconcile_service

CFG = OperatorConfig()
KINDS = [k for k in CHILD_KINDS if k not in ("LeaderWorkerSet", "ServiceMonitor")]


def _refresher(
    kube: FakeKube, ledger: resync.Ledger, calls: list[str], cfg: OperatorConfig = CFG
) -> Any:
    def refresh(namespace: str, name: str) -> None:
        calls.append(name)
        body = kube.get("InferenceService", namespace, name)
        assert body is not None
        out = reconcile_service(body, kube, cfg)
        kube.patch_merge("InferenceService", namespace, name, {"status": out.status}, "status")
        assert out.children is not None
        ledger.record(body["metadata"]["uid"], out.children)

    return refresh


def _fleet(n: int = 3) -> tuple[FakeKube, resync.Ledger, list[str], Any]:
    kube, ledger, calls = FakeKube(), resync.Ledger(), []
    refresh = _refresher(kube, ledger, calls)
    for i in range(n):
        doc = service()
        doc["metadata"] = {"name": f"llm-{i}", "namespace": "ns"}
        kube.put(doc)
        refresh("ns", f"llm-{i}")
    calls.clear()
    return kube, ledger, calls, refresh


def _pass(kube: FakeKube, ledger: resync.Ledger, refresh: Any) -> list[tuple[str, str, str]]:
    return resync.resync_pass(kube, ["ns"], KINDS, ledger, refresh)  # type: ignore[arg-type]


def test_nothing_changed_means_no_reconcile() -> None:
    kube, ledger, calls, refresh = _fleet()
    assert _pass(kube, ledger, refresh) == []
    assert calls == []


def test_deleted_child_is_recreated_and_the_next_pass_is_quiet() -> None:
    kube, ledger, calls, refresh = _fleet()
    kube.delete("Service", "ns", "llm-1")
    stale = _pass(kube, ledger, refresh)
    assert [(n, "missing" in why) for _, n, why in stale] == [("llm-1", True)]
    assert ("Service", "ns", "llm-1") in kube.objects
    calls.clear()
    assert _pass(kube, ledger, refresh) == [] and calls == []


def test_child_edited_by_someone_else_is_reconciled() -> None:
    kube, ledger, _calls, refresh = _fleet()
    kube.objects[("Deployment", "ns", "llm-2-mi300x")]["metadata"]["generation"] = 7
    assert [n for _, n, _ in _pass(kube, ledger, refresh)] == ["llm-2"]


def test_status_lagging_the_workload_is_refreshed() -> None:
    kube, ledger, _calls, refresh = _fleet()
    kube.objects[("Deployment", "ns", "llm-0-mi300x")]["status"] = {
        "replicas": 1,
        "readyReplicas": 1,
    }
    stale = _pass(kube, ledger, refresh)
    assert [n for _, n, _ in stale] == ["llm-0"]
    status = kube.objects[("InferenceService", "ns", "llm-0")]["status"]
    assert status["pools"][0]["readyReplicas"] == 1
    assert _pass(kube, ledger, refresh) == []


def test_new_pod_problem_is_reported() -> None:
    kube, ledger, _calls, refresh = _fleet()
    kube.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": "llm-1-mi300x-abc",
                "namespace": "ns",
                "labels": {"tokenscale.dev/service": "llm-1", "tokenscale.dev/pool": "mi300x"},
            },
            "status": {
                "conditions": [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes"}]
            },
        }
    )
    assert [n for _, n, _ in _pass(kube, ledger, refresh)] == ["llm-1"]
    pools = kube.objects[("InferenceService", "ns", "llm-1")]["status"]["pools"]
    assert "Unschedulable" in pools[0]["message"]
    assert _pass(kube, ledger, refresh) == []


def test_unobserved_generation_and_unknown_services_are_reconciled() -> None:
    kube, ledger, _calls, refresh = _fleet()
    kube.objects[("InferenceService", "ns", "llm-0")]["metadata"]["generation"] = 2
    ledger.retain(
        kube.objects[("InferenceService", "ns", n)]["metadata"]["uid"] for n in ("llm-0", "llm-1")
    )
    assert sorted(n for _, n, _ in _pass(kube, ledger, refresh)) == ["llm-0", "llm-2"]
    assert _pass(kube, ledger, refresh) == []


def test_deleted_services_leave_the_ledger() -> None:
    kube, ledger, _calls, refresh = _fleet()
    assert len(ledger) == 3
    kube.delete("InferenceService", "ns", "llm-0")
    _pass(kube, ledger, refresh)
    assert len(ledger) == 2


def test_an_activator_that_comes_up_after_a_service_fell_asleep_gets_its_traffic() -> None:
    """Nothing watches pods, so only the resync notices a new activator: the sleeping service is
    reconciled once, its Service then selects the activator, and the next pass is quiet."""
    on = OperatorConfig.model_validate({"activator": {"enabled": True}})
    kube, ledger, calls = FakeKube(), resync.Ledger(), []
    refresh = _refresher(kube, ledger, calls, on)

    pool = {"name": "mi300x", "gpu": "MI300X", "minReplicas": 0, "maxReplicas": 2}
    scaling = {"mode": "builtin", "targetPerReplica": 2500, "scaleToZero": True}
    doc = service(pools=[pool], scaling=scaling, replicas=0)
    doc["metadata"] = {"name": "sleepy", "namespace": "ns"}
    kube.put(doc)
    refresh("ns", "sleepy")  # no activator yet: the Service keeps its engine selector
    calls.clear()
    selector = "app.kubernetes.io/component=activator,app.kubernetes.io/name=tokenscale"

    def routed() -> str:
        svc = kube.get("Service", "ns", "sleepy")
        assert svc is not None
        return str(svc["metadata"]["annotations"]["tokenscale.dev/route"])

    assert routed() == "engines"
    assert (
        resync.resync_pass(kube, ["ns"], KINDS, ledger, refresh, activator_selector=selector) == []
    )

    kube.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": "tokenscale-activator-1",
                "namespace": "ns",
                "labels": dict(on.activator.selector),
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.9",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )
    stale = resync.resync_pass(kube, ["ns"], KINDS, ledger, refresh, activator_selector=selector)
    assert [(name, "activator" in reason) for _, name, reason in stale] == [("sleepy", True)]
    assert routed() == "activator"
    assert (
        resync.resync_pass(kube, ["ns"], KINDS, ledger, refresh, activator_selector=selector) == []
    )
    assert calls == ["sleepy"]


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        # the examples of Kopf's own docstring for its (private) match_namespace
        (
            "myapp-*, !*-pr-*, *pr-123",
            ["myapp-test", "myapp-live", "myapp-pr-123"],
            ["myapp-pr-456", "otherapp-pr-123"],
        ),
        (
            "!*-pr-*, *pr-123",
            ["myapp-test", "myapp-pr-123", "anyapp-anything", "otherapp-pr-123"],
            ["myapp-pr-456"],
        ),
        ("team-?", ["team-a"], ["team-ab", "Team-a"]),
    ],
)
def test_namespace_patterns_read_as_kopf_reads_them(
    pattern: str, matching: list[str], not_matching: list[str]
) -> None:
    assert all(resync.namespace_matches(ns, pattern) for ns in matching)
    assert not any(resync.namespace_matches(ns, pattern) for ns in not_matching)


def test_a_service_waiting_for_the_node_labeller_is_retried_until_labels_appear() -> None:
    """The operator does not watch nodes: the pass re-reads them (fresh node facts) and
    reconciles a service whose status says a pool waits for labeller labels."""
    from tokenscale.controller import nodefacts

    kube, ledger, calls = FakeKube(), resync.Ledger(), []
    refresh = _refresher(kube, ledger, calls)
    bare = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-0", "labels": {}},
            "status": {"allocatable": {"amd.com/gpu": "8"}}}  # fmt: skip
    kube.put(bare)
    doc = service(pools=[{"name": "a", "gpu": "MI300A", "minReplicas": 1, "maxReplicas": 1}])
    doc["metadata"] = {"name": "apu", "namespace": "ns"}
    kube.put(doc)
    refresh("ns", "apu")
    calls.clear()
    assert [s[1] for s in _pass(kube, ledger, refresh)] == ["apu"]  # retried while waiting
    bare["metadata"]["labels"] = {"amd.com/gpu.device-id": "74a0"}  # the labeller ran
    kube.put(bare)
    nodefacts.for_client(kube).invalidate()  # type: ignore[arg-type]  # what each pass does
    _pass(kube, ledger, refresh)
    body = kube.get("InferenceService", "ns", "apu")
    assert body is not None
    ready = next(x for x in body["status"]["conditions"] if x["type"] == "Ready")
    assert "node labeller" not in ready["message"]
    calls.clear()
    assert _pass(kube, ledger, refresh) == [] and calls == []

"""Status refreshes after child events: coalesced per service, status-only when nothing drifted.

The queue merges the marks of one service, never hands one service to two threads at once, and
re-queues a service marked while its refresh ran (so the last event is always followed by a
refresh that started after it). A child event that only reflects status movement (the child is
the version the last reconcile applied) recomputes the owner's status without writing a child;
an edited, deleted or unknown child, or a spec generation not yet observed, still reconciles in
full.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale.api.config import OperatorConfig
from tokenscale.controller import refresh, resync
from tokenscale.controller.reconcile import reconcile_service, refresh_status
from tokenscale.k8s.kube import KubeError

CFG = OperatorConfig()


class CountingKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.applies: list[str] = []

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        self.applies.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return super().apply(obj, force=force)


def _service(kube: FakeKube, **spec: Any) -> dict[str, Any]:
    doc = service(**spec)
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    return kube.put(doc)


def _reconciled(kube: CountingKube, **spec: Any) -> dict[str, Any]:
    """A service reconciled once, its status written and its children in the ledger."""
    body = _service(kube, **spec)
    out = reconcile_service(body, kube, CFG)
    kube.patch_merge("InferenceService", "ns", "llm", {"status": out.status}, "status")
    assert out.children is not None
    resync.LEDGER.record(body["metadata"]["uid"], out.children)
    kube.applies.clear()
    found = kube.get("InferenceService", "ns", "llm")
    assert found is not None
    return found


def _mark_ready(kube: FakeKube) -> None:
    for (kind, _, _), obj in kube.objects.items():
        if kind == "Deployment":
            n = obj["spec"]["replicas"]
            obj["status"] = {"replicas": n, "readyReplicas": n, "updatedReplicas": n}


def _ready(body: dict[str, Any]) -> str:
    conds = {x["type"]: x for x in body["status"]["conditions"]}
    return str(conds["Ready"]["status"])


def test_marks_of_one_service_merge_and_full_wins() -> None:
    queue = refresh.RefreshQueue()
    queue.mark(("ns", "a"), full=False)
    queue.mark(("ns", "b"), full=False)
    queue.mark(("ns", "a"), full=True)
    queue.mark(("ns", "a"), full=False)
    assert len(queue) == 2
    assert queue.take(0) == (("ns", "a"), True)
    assert queue.take(0) == (("ns", "b"), False)
    assert queue.take(0) is None


def test_a_service_marked_during_its_refresh_is_refreshed_again_after_it() -> None:
    queue = refresh.RefreshQueue()
    queue.mark(("ns", "a"), full=False)
    assert queue.take(0) == (("ns", "a"), False)
    queue.mark(("ns", "a"), full=False)  # an event while the refresh runs
    assert queue.take(0) is None  # never two refreshes of one service at once
    queue.done(("ns", "a"))
    assert queue.take(0) == (("ns", "a"), False)
    queue.done(("ns", "a"))
    assert queue.take(0) is None


def test_refresh_threads_serve_marks_and_stop_when_closed() -> None:
    queue = refresh.RefreshQueue()
    seen: list[tuple[str, str, bool]] = []
    done = threading.Event()

    def work(namespace: str, name: str, full: bool) -> None:
        seen.append((namespace, name, full))
        if name == "boom":
            raise RuntimeError("one bad service must not stop the thread")
        done.set()

    refresh.start(queue, work, threads=1)
    queue.mark(("ns", "boom"), full=True)
    queue.mark(("ns", "ok"), full=False)
    assert done.wait(5)
    queue.close()
    assert seen == [("ns", "boom", True), ("ns", "ok", False)]


def test_status_refresh_writes_no_child_and_reports_readiness() -> None:
    kube = CountingKube()
    body = _reconciled(kube)
    assert _ready(body) == "False"
    _mark_ready(kube)
    out = refresh_status(body, kube, CFG)
    assert kube.applies == [] and out.children is None
    assert out.status["readyReplicas"] == 1 and out.status["observedGeneration"] == 1
    assert _ready({"status": out.status}) == "True"


def test_status_refresh_still_starts_the_benchmark_after_a_rollout() -> None:
    kube = CountingKube()
    body = _reconciled(kube, benchmarkOnRollout={"enabled": True, "durationSeconds": 30})
    _mark_ready(kube)
    out = refresh_status(body, kube, CFG)
    assert [a for a in kube.applies if a.startswith("InferenceBenchmark/")]
    assert out.status["rolloutBenchmarkGeneration"] == 1


def test_child_event_needs_a_reconcile_only_when_the_child_drifted() -> None:
    kube = CountingKube()
    _reconciled(kube)
    child = kube.get("Deployment", "ns", "llm-mi300x")
    assert child is not None
    assert refresh.child_needs_reconcile("MODIFIED", child) is False
    assert refresh.child_needs_reconcile(None, child) is False  # listed after a re-watch
    assert refresh.child_needs_reconcile("DELETED", child) is True
    edited = {**child, "metadata": {**child["metadata"], "generation": 2}}
    assert refresh.child_needs_reconcile("MODIFIED", edited) is True
    deleting = {**child, "metadata": {**child["metadata"], "deletionTimestamp": "now"}}
    assert refresh.child_needs_reconcile("MODIFIED", deleting) is True
    orphan = {**child, "metadata": {**child["metadata"], "ownerReferences": []}}
    assert refresh.child_needs_reconcile("MODIFIED", orphan) is True
    resync.LEDGER.retain([])  # an operator restart: the ledger knows no service
    assert refresh.child_needs_reconcile("MODIFIED", child) is True  # restarted: unknown


def test_refresh_service_applies_only_when_needed() -> None:
    kube = CountingKube()
    _reconciled(kube)
    _mark_ready(kube)
    refresh.refresh_service(kube, CFG, "ns", "llm", full=False)
    assert kube.applies == []
    found = kube.get("InferenceService", "ns", "llm")
    assert found is not None and _ready(found) == "True"

    refresh.refresh_service(kube, CFG, "ns", "llm", full=True)
    assert kube.applies, "a full refresh converges the children"

    kube.applies.clear()
    kube.objects[("InferenceService", "ns", "llm")]["metadata"]["generation"] = 2
    refresh.refresh_service(kube, CFG, "ns", "llm", full=False)
    assert kube.applies, "a spec generation not yet observed is reconciled in full"


def test_a_failed_refresh_runs_again_after_a_backoff(monkeypatch: Any) -> None:
    """Regression (API-faults drill): a refresh that hit an API error, a refused apply or a
    failed status patch was logged and dropped, leaving a stale status (Ready False on a ready
    service) or a deleted child missing until the 300 s resync."""
    monkeypatch.setattr(refresh, "RETRY_DELAYS", (0.05, 0.1))
    queue = refresh.RefreshQueue()
    calls: list[tuple[str, bool, float]] = []
    done = threading.Event()
    results: dict[str, list[Any]] = {
        "api-error": [KubeError(500, "injected"), True],
        "refused": [False, False, True],
        "bug": [RuntimeError("a bug is not retried")],
    }

    def work(namespace: str, name: str, full: bool) -> bool:
        calls.append((name, full, time.monotonic()))
        result = results[name].pop(0)
        if isinstance(result, Exception):
            raise result
        if not any(results.values()):
            done.set()
        return bool(result)

    refresh.start(queue, work, threads=1)
    for name in results:
        queue.mark(("ns", name), full=name != "refused")
    assert done.wait(5), calls
    time.sleep(0.3)  # nothing more comes: successes and bugs are not retried
    queue.close()
    by_name = {n: [(f, t) for m, f, t in calls if m == n] for n in results}
    assert [f for f, _ in by_name["api-error"]] == [True, True]  # the full flag is kept
    assert len(by_name["refused"]) == 3 and len(by_name["bug"]) == 1
    gaps = [b[1] - a[1] for a, b in zip(by_name["refused"], by_name["refused"][1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps  # backoff grows


def test_a_mark_while_a_retry_waits_refreshes_at_once_and_keeps_full() -> None:
    queue = refresh.RefreshQueue()
    assert queue.retry(("ns", "a"), full=True) == refresh.RETRY_DELAYS[0]
    assert queue.take(0) is None  # not due yet
    queue.mark(("ns", "a"), full=False)  # an event: now, and still a full reconcile
    assert queue.take(0) == (("ns", "a"), True)


def test_refresh_service_asks_for_a_retry_when_the_status_patch_fails() -> None:
    class FailingStatus(CountingKube):
        failing = False

        def patch_merge(
            self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], sub: str = ""
        ) -> dict[str, Any]:
            if self.failing and sub == "status":
                raise KubeError(500, "injected")
            return super().patch_merge(kind, namespace, name, patch, sub)

    kube = FailingStatus()
    _reconciled(kube)
    _mark_ready(kube)
    assert refresh.refresh_service(kube, CFG, "ns", "llm", full=False) is True
    kube.failing = True
    assert refresh.refresh_service(kube, CFG, "ns", "llm", full=False) is False


def test_a_service_whose_pods_are_not_all_ready_is_settling_until_ready() -> None:
    """Regression (issue 17, engine-fault drill): a crash loop changes no Deployment status, and
    the operator does not watch pods, so the service read Degraded False/Healthy until the 5-min
    resync. A service whose replicas are not all ready is now refreshed every SETTLING_SECONDS
    (the Kopf timer's ``when``), and the refresh names the crash loop."""
    kube = CountingKube()
    body = _reconciled(kube)
    assert refresh.settling(body["status"])  # created, nothing ready yet
    pool = body["spec"]["pools"][0]["name"]
    waiting = {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting engine"}
    kube.put({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "llm-a", "namespace": "ns",
                     "labels": {**_engine_labels(kube), "tokenscale.dev/pool": pool}},
        "status": {"phase": "Running", "containerStatuses": [{"state": {"waiting": waiting}}]},
    })  # fmt: skip
    out = refresh_status(body, kube, CFG)
    degraded = next(x for x in out.status["conditions"] if x["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "PodErrors")
    assert "CrashLoopBackOff" in degraded["message"]
    assert refresh.settling(out.status)
    assert kube.applies == []  # a status refresh writes no child

    _mark_ready(kube)
    kube.objects.pop(("Pod", "ns", "llm-a"))
    out = refresh_status(body, kube, CFG)
    assert _ready({"status": out.status}) == "True"
    assert not refresh.settling(out.status)


def test_settling_reads_only_ready_and_progressing() -> None:
    def conds(**by_type: tuple[str, str]) -> dict[str, Any]:
        return {"conditions": [{"type": t, "status": s, "reason": r} for t, (s, r) in
                               by_type.items()]}  # fmt: skip

    assert refresh.settling(conds(Ready=("False", "ReplicasNotReady")))
    assert refresh.settling(conds(Ready=("True", "ReplicasReady"),
                                  Progressing=("True", "RollingOut")))  # fmt: skip
    assert not refresh.settling(conds(Ready=("True", "ScaledToZero")))
    assert not refresh.settling(conds(Ready=("False", "PlanFailed")))  # no pods to look at
    assert not refresh.settling(conds(Ready=("True", "ReplicasReady"),
                                      Progressing=("False", "Stable")))  # fmt: skip
    assert not refresh.settling(None) and not refresh.settling({})


def _engine_labels(kube: FakeKube) -> dict[str, str]:
    """The labels the service's Deployment gives its pods (what status lists pods by)."""
    for (kind, _, _), obj in kube.objects.items():
        if kind == "Deployment":
            labels: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
            return labels
    raise AssertionError("no Deployment rendered")

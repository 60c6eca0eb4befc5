"""reconcile_service on an in-memory API: children applied and owned, a removed pool pruned,
and the optional benchmark after a finished rollout created exactly once per generation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale.api.config import OperatorConfig
from tokenscale.controller.reconcile import reconcile_service

CFG = OperatorConfig()


def _svc(kube: FakeKube, **spec: Any) -> dict[str, Any]:
    doc = service(**spec)
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    return kube.put(doc)


def _mark_ready(kube: FakeKube) -> None:
    for (kind, _, _), obj in kube.objects.items():
        if kind == "Deployment":
            n = obj["spec"]["replicas"]
            obj["status"] = {"replicas": n, "readyReplicas": n, "updatedReplicas": n}


def test_children_are_owned_and_a_removed_pool_is_pruned() -> None:
    kube = FakeKube()
    two = [
        {"name": "a", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 2},
        {"name": "b", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": 2},
    ]
    body = _svc(kube, pools=two)
    reconcile_service(body, kube, CFG)
    names = {n for (k, _, n) in kube.objects if k == "Deployment"}
    assert names == {"llm-a", "llm-b"}
    owner = kube.objects[("Deployment", "ns", "llm-a")]["metadata"]["ownerReferences"][0]
    assert owner["uid"] == body["metadata"]["uid"] and owner["controller"] is True
    body["spec"]["pools"] = two[:1]
    out = reconcile_service(body, kube, CFG)
    assert {n for (k, _, n) in kube.objects if k == "Deployment"} == {"llm-a"}
    assert any(reason == "Deleted" for reason, _, _ in out.events)


def test_benchmark_after_rollout_created_once_per_generation() -> None:
    kube = FakeKube()
    body = _svc(kube, benchmarkOnRollout={"enabled": True, "qps": 5, "durationSeconds": 30})
    first = reconcile_service(body, kube, CFG)
    assert not [k for k in kube.objects if k[0] == "InferenceBenchmark"]  # not Ready yet
    _mark_ready(kube)
    body["status"] = first.status
    second = reconcile_service(body, kube, CFG)
    benches = [o for (k, _, _), o in kube.objects.items() if k == "InferenceBenchmark"]
    assert len(benches) == 1
    assert benches[0]["spec"]["target"] == {"service": "llm"}
    assert benches[0]["spec"]["load"] == {"durationSeconds": 30, "qps": 5.0}
    assert second.status["rolloutBenchmarkGeneration"] == 1
    body["status"] = second.status
    reconcile_service(body, kube, CFG)
    assert len([k for k in kube.objects if k[0] == "InferenceBenchmark"]) == 1


def test_status_carries_the_in_cluster_url_and_validates() -> None:
    from tokenscale.api.status import InferenceServiceStatus
    from tokenscale.render.names import service_url

    kube = FakeKube()
    out = reconcile_service(_svc(kube), kube, CFG)
    assert out.status["url"] == "http://llm.ns.svc:8000"
    assert InferenceServiceStatus.model_validate(out.status).url == out.status["url"]
    assert service_url("a", "team-b") == "http://a.team-b.svc:8000"


class _RefusingKube(FakeKube):
    """Refuses every apply of one kind, as an admission policy, quota or 5xx would."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__()
        self.refuse: tuple[str, int, str] | None = None
        self._kind, self._status, self._message = kind, status, message
        self.deletes: list[tuple[str, str]] = []

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        if self.refuse is not None and obj["kind"] == self._kind:
            from tokenscale.k8s.kube import KubeError

            raise KubeError(self._status, self._message)
        return super().apply(obj, force=force)

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self.deletes.append((kind, name))
        super().delete(kind, namespace, name)


def test_a_refused_update_keeps_the_running_deployment_and_says_why() -> None:
    """Regression (issue 17): a refused apply used to prune the child as 'no longer in spec'."""
    for status, message in [(422, "denied by policy no-big-args"), (503, "apiserver down")]:
        kube = _RefusingKube("Deployment", status, message)
        body = _svc(kube)
        reconcile_service(body, kube, CFG)
        _mark_ready(kube)
        before = {n: o for (k, _, n), o in kube.objects.items() if k == "Deployment"}
        assert before
        kube.refuse = ("Deployment", status, message)
        body["spec"]["engine"] = {"args": ["--max-num-seqs", "512"]}
        body["metadata"]["generation"] = 2
        for _ in range(3):  # repeated passes must not turn into a delete/create loop
            out = reconcile_service(body, kube, CFG)
        assert kube.deletes == []
        after = {n: o for (k, _, n), o in kube.objects.items() if k == "Deployment"}
        assert after == before
        assert out.apply_failures and message in out.apply_failures[0]
        degraded = next(x for x in out.status["conditions"] if x["type"] == "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "ApplyFailed"
        assert message in degraded["message"] and "Deployment" in degraded["message"]
        assert any(r == "ApplyFailed" and message in m for r, m, _ in out.events)
        assert not any(r == "Deleted" for r, _, _ in out.events)
        # the kept Deployment is still observed: its ready replicas are not reported as gone
        assert out.status["pools"][0]["readyReplicas"] == 1
        ready = next(x for x in out.status["conditions"] if x["type"] == "Ready")
        assert ready["status"] == "True"


def test_a_simulated_service_with_an_unsupported_model_is_refused_naming_the_field() -> None:
    """Regression (issue 17): it was accepted and its engines crash-looped at start."""
    kube = FakeKube()
    body = _svc(
        kube,
        model={"name": "gpt-oss-120b", "source": {"huggingFace": "openai/gpt-oss-120b"}},
        engine={"mode": "simulated"},
    )
    out = reconcile_service(body, kube, CFG)
    assert out.invalid and out.error is not None
    assert out.error.startswith("model.name: ") and "llama-2-70b" in out.error
    assert not [k for k in kube.objects if k[0] == "Deployment"]


def test_a_simulated_pool_on_gpus_without_a_profile_needs_an_explicit_gpu_override() -> None:
    """MI350X has no simulator profile: refused naming the pool's GPU and the --gpu fix; with
    ``--gpu MI355X`` in the engine args (the simulator takes the last --gpu) it is accepted, and
    an override the simulator lacks is refused naming engine.args."""
    model = {"name": "llama-2-70b", "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"}}
    pools = [{"name": "a", "gpu": "MI350X", "gpusPerReplica": 2, "minReplicas": 1}]
    for args, field in (([], "pools[0].gpu: "), (["--gpu", "MI210"], "engine.args: ")):
        kube = FakeKube()
        body = _svc(kube, model=model, pools=pools, engine={"mode": "simulated", "args": args})
        out = reconcile_service(body, kube, CFG)
        assert out.invalid and out.error is not None and out.error.startswith(field), out.error
        assert "MI355X" in out.error
    kube = FakeKube()
    engine = {"mode": "simulated", "args": ["--gpu", "MI355X"]}
    body = _svc(kube, model=model, pools=pools, engine=engine)
    out = reconcile_service(body, kube, CFG)
    assert not out.invalid, out.error


def test_an_unset_spec_replicas_is_written_once_so_scale_is_readable() -> None:
    """Regression (issue 17): /scale of a fresh service was unreadable until spec.replicas was
    set (the scale subresource's specReplicasPath must resolve)."""
    kube = FakeKube()
    two = [
        {"name": "a", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 4},
        {"name": "b", "gpu": "MI355X", "minReplicas": 2, "maxReplicas": 4},
    ]
    body = _svc(kube, pools=two)
    assert "replicas" not in body["spec"]
    reconcile_service(body, kube, CFG)
    assert kube.objects[("InferenceService", "ns", "llm")]["spec"]["replicas"] == 3
    kube.objects[("InferenceService", "ns", "llm")]["spec"]["replicas"] = 5  # HPA scaled it
    body = kube.get("InferenceService", "ns", "llm")
    assert body is not None
    reconcile_service(body, kube, CFG)
    assert kube.objects[("InferenceService", "ns", "llm")]["spec"]["replicas"] == 5


def test_a_requested_count_capped_at_max_replicas_says_so() -> None:
    """Regression (issue 17): `kubectl scale --replicas=20` above maxReplicas was clamped
    silently."""
    kube = FakeKube()
    body = _svc(kube, replicas=20)  # one pool, maxReplicas 2
    body["metadata"]["generation"] = 3
    out = reconcile_service(body, kube, CFG)
    capped = [m for r, m, t in out.events if r == "ReplicasCapped" and t == "Warning"]
    assert capped and "spec.replicas 20 is capped at 2" in capped[0]
    assert kube.objects[("Deployment", "ns", "llm-mi300x")]["spec"]["replicas"] == 2
    body["status"] = out.status  # same generation again: no repeated Event
    again = reconcile_service(body, kube, CFG)
    assert not [r for r, _, _ in again.events if r == "ReplicasCapped"]
    body["spec"]["replicas"] = 2
    body["metadata"]["generation"] = 4
    assert not [r for r, _, _ in reconcile_service(body, kube, CFG).events if r == "ReplicasCapped"]


def test_a_refused_apply_counts_as_an_error_and_is_retried_with_its_status_written() -> None:
    """The handler: status and Events still written, the metric says error (it said ok)."""
    import kopf

    from tokenscale.controller import handlers, metrics

    kube = _RefusingKube("Deployment", 403, "exceeded quota: gpus")
    body = _svc(kube)
    reconcile_service(body, kube, CFG)
    kube.refuse = ("Deployment", 403, "exceeded quota: gpus")
    body["spec"]["engine"] = {"args": ["--max-num-seqs", "512"]}
    memo = kopf.Memo()
    memo.kube, memo.config = kube, CFG
    errors = metrics.RECONCILES.labels("InferenceService", "error")
    oks = metrics.RECONCILES.labels("InferenceService", "ok")
    before_err, before_ok = errors._value.get(), oks._value.get()
    with pytest.raises(kopf.TemporaryError, match="exceeded quota"):
        handlers._run(kopf.Body(body), memo)
    assert errors._value.get() == before_err + 1 and oks._value.get() == before_ok
    meta = body["metadata"]
    written = kube.get("InferenceService", meta["namespace"], meta["name"])
    assert written is not None
    degraded = next(x for x in written["status"]["conditions"] if x["type"] == "Degraded")
    assert degraded["reason"] == "ApplyFailed" and "exceeded quota" in degraded["message"]
    assert any(r == "ApplyFailed" for r, _, _ in kube.events)


def test_kopf_retries_api_errors_for_ever_with_a_capped_backoff() -> None:
    """Regression (API-server restart drill): Kopf gave up after 54 s of API errors, and a
    watch that gave up killed its watcher for good (the operator stayed blind to that kind)."""
    import itertools

    import kopf

    from tokenscale.controller import handlers

    settings = kopf.OperatorSettings()
    handlers.tune_networking(settings)
    backoffs = settings.networking.error_backoffs
    assert not isinstance(backoffs, (int, float))
    first = list(itertools.islice(iter(backoffs), 12))
    assert first == [1, 1, 2, 3, 5, 8, 13, 21, 30, 30, 30, 30]
    assert list(itertools.islice(iter(backoffs), 3)) == [1, 1, 2]  # afresh for each request
    assert not hasattr(backoffs, "__len__")  # Kopf then never runs out of attempts


def test_a_resync_pass_runs_soon_after_an_api_outage_ends(monkeypatch: Any) -> None:
    """Regression (API-server restart drill): a child deleted while a watch was reconnecting
    after an outage was missed (Kopf re-lists; a re-list has no DELETED event) until the
    regular pass five minutes later. Kopf's failed-attempt log lines now start a pass once
    they have been quiet for longer than its longest backoff."""
    import logging
    import threading
    import time

    import kopf

    from tokenscale.controller import handlers, resync

    handlers.tune_networking(kopf.OperatorSettings())
    resync.TROUBLE.clear()
    logging.getLogger("kopf._cogs.clients.watching").error(
        "Request attempt #3 failed; will retry: GET https://x/apis/apps/v1/deployments?watch=true"
    )
    failed = resync.TROUBLE.last_failure
    assert failed > 0
    assert not resync.TROUBLE.outage_over(failed + resync.AFTER_OUTAGE_SECONDS - 1)
    assert resync.TROUBLE.outage_over(failed + resync.AFTER_OUTAGE_SECONDS)

    passes: list[float] = []
    monkeypatch.setattr(resync, "TICK_SECONDS", 0.01)
    monkeypatch.setattr(resync, "AFTER_OUTAGE_SECONDS", 0.1)
    monkeypatch.setattr(resync, "RESYNC_SECONDS", 1000.0)
    monkeypatch.setattr(resync, "kind_available", lambda *_: False)
    monkeypatch.setattr(resync, "resync_pass", lambda *a, **k: passes.append(time.monotonic()))
    stop = threading.Event()
    resync.TROUBLE.last_failure = time.monotonic()
    thread = threading.Thread(
        target=resync.resync_forever,
        args=(FakeKube(), OperatorConfig(), [], stop, lambda ns, n: None),
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 5
    while not passes and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    stop.set()
    thread.join(5)
    assert len(passes) == 1, passes  # once, then the regular 1000 s period
    assert resync.TROUBLE.last_failure == 0.0

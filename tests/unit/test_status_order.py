"""A handler's reconcile and a refresh of the same service write status in the order they
observed the children (``controller/statusorder.py``).

The race this pins (issue 20, the multinode e2e's intermittent timeout): the spec-change
reconcile reads a LeaderWorkerSet whose group is not ready yet and is slow to finish; meanwhile
the group becomes ready and the LWS event's refresh writes ``readyReplicas: 1``; then the
handler's older observation (0) lands on top and stays, since no child event follows.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import kopf

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale.api.config import OperatorConfig
from tokenscale.controller import handlers, refresh, resync, statusorder
from tokenscale.controller.reconcile import reconcile_service

CFG = OperatorConfig.model_validate({"leaderWorkerSet": True})


class SlowLwsApplyKube(FakeKube):
    """An apply of the LeaderWorkerSet returns what it read, then stalls until released (a
    reconcile that is slow under load after its observation)."""

    def __init__(self) -> None:
        super().__init__()
        self.crds.add("leaderworkersets.leaderworkerset.x-k8s.io")
        self.stall = False
        self.observed = threading.Event()
        self.release = threading.Event()

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        out = copy.deepcopy(super().apply(obj, force=force))  # what the API server returned
        if self.stall and obj["kind"] == "LeaderWorkerSet":
            self.observed.set()
            assert self.release.wait(10), "test never released the handler"
        return out


def _multinode(kube: FakeKube) -> dict[str, Any]:
    doc = service(parallelism={"tensor": 8, "pipeline": 2, "nodes": 2})
    doc["metadata"] = {"name": "big", "namespace": "ns"}
    body = kube.put(doc)
    out = reconcile_service(body, kube, CFG)
    kube.patch_merge("InferenceService", "ns", "big", {"status": out.status}, "status")
    assert out.children is not None
    resync.LEDGER.record(body["metadata"]["uid"], out.children)
    found = kube.get("InferenceService", "ns", "big")
    assert found is not None
    return found


def _ready_replicas(kube: FakeKube) -> list[int | None]:
    svc = kube.get("InferenceService", "ns", "big")
    assert svc is not None
    return [p.get("readyReplicas") for p in svc["status"]["pools"]]


def test_a_slow_handler_cannot_overwrite_a_newer_refresh() -> None:
    kube = SlowLwsApplyKube()
    body = _multinode(kube)
    (lws_key,) = [k for k in kube.objects if k[0] == "LeaderWorkerSet"]
    assert _ready_replicas(kube) == [0]

    memo = kopf.Memo()
    memo.kube, memo.config = kube, CFG
    kube.stall = True
    handler = threading.Thread(target=handlers._run, args=(kopf.Body(body), memo))
    handler.start()
    assert kube.observed.wait(10)  # the handler has read the LWS: no group ready yet

    # The LWS controller's part: the group became ready; its event marks a status refresh.
    kube.objects[lws_key]["status"] = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}
    refresher = threading.Thread(
        target=refresh.refresh_service, args=(kube, CFG, "ns", "big"), kwargs={"full": False}
    )
    refresher.start()
    refresher.join(0.5)
    # Unordered, the refresh would be done by now and the handler's stale write still to come.
    assert refresher.is_alive(), "the refresh wrote while the handler's observation was pending"
    kube.release.set()
    handler.join(10)
    refresher.join(10)
    assert not handler.is_alive() and not refresher.is_alive()

    pools = [p["pools"][0]["readyReplicas"] for _, p in kube.status_patches[-2:]]
    assert pools == [0, 1]  # the handler's older observation first, the refresh's last
    assert _ready_replicas(kube) == [1]


def test_other_services_are_not_held() -> None:
    with statusorder.held("ns", "a"):
        done = threading.Event()

        def other() -> None:
            with statusorder.held("ns", "b"):
                done.set()

        t = threading.Thread(target=other)
        t.start()
        assert done.wait(5)
        t.join(5)

"""LeaderWorkerSet pools are watched like Deployment pools, when the operator config says the
LWS CRD is installed: an LWS event marks its owner for a prompt status refresh (status-only
when the LWS is the version the last reconcile applied), instead of waiting for the resync."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale.api.config import OperatorConfig
from tokenscale.controller import handlers, resync, watches
from tokenscale.controller.reconcile import reconcile_service


def _lws_handlers(registry: kopf.OperatorRegistry) -> list[Any]:
    found = registry._watching.get_all_handlers()
    return [
        h for h in found if h.selector is not None and h.selector.any_name == "leaderworkersets"
    ]


def test_registered_only_when_enabled_and_once() -> None:
    off, on = kopf.OperatorRegistry(), kopf.OperatorRegistry()
    assert watches.watch_leader_worker_sets(OperatorConfig(), handlers.child_changed, off) is False
    assert _lws_handlers(off) == []
    cfg = OperatorConfig.model_validate({"leaderWorkerSet": True})
    assert watches.watch_leader_worker_sets(cfg, handlers.child_changed, on) is True
    assert watches.watch_leader_worker_sets(cfg, handlers.child_changed, on) is True
    (handler,) = _lws_handlers(on)
    assert handler.fn is handlers.child_changed
    assert handler.selector.group == "leaderworkerset.x-k8s.io"
    assert handler.selector.version == "v1"
    assert handler.labels == {"app.kubernetes.io/managed-by": "tokenscale"}


class Marks:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, str], bool]] = []

    def mark(self, key: tuple[str, str], *, full: bool) -> None:
        self.calls.append((key, full))


def test_an_lws_event_marks_its_owner_for_refresh() -> None:
    cfg = OperatorConfig.model_validate({"leaderWorkerSet": True})
    registry = kopf.OperatorRegistry()
    watches.watch_leader_worker_sets(cfg, handlers.child_changed, registry)
    (handler,) = _lws_handlers(registry)

    kube = FakeKube()
    doc = service(parallelism={"tensor": 8, "pipeline": 2, "nodes": 2})
    doc["metadata"] = {"name": "big", "namespace": "ns"}
    body = kube.put(doc)
    out = reconcile_service(body, kube, cfg)
    assert out.children is not None
    resync.LEDGER.record(body["metadata"]["uid"], out.children)
    (lws,) = [o for (k, _, _), o in kube.objects.items() if k == "LeaderWorkerSet"]

    memo = kopf.Memo(refreshes=Marks())
    asyncio.run(handler.fn(body=lws, type="MODIFIED", memo=memo))
    edited = {**lws, "metadata": {**lws["metadata"], "generation": 7}}
    asyncio.run(handler.fn(body=edited, type="MODIFIED", memo=memo))
    assert memo.refreshes.calls == [(("ns", "big"), False), (("ns", "big"), True)]

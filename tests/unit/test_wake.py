"""Waking a service at zero is conditional on what was read: two waking writers (two activator
replicas, an activator and a benchmark) wake it once and post one WokeFromZero Event; a status
write landing in between does not stop the wake (issue 17, activator-fault drill)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale.api.service import InferenceServiceSpec
from tokenscale.k8s import wake
from tokenscale.k8s.kube import KubeError


class VersionedKube(FakeKube):
    """FakeKube with the API server's optimistic concurrency on resourceVersion."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def bump(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self.version += 1
        obj = self.objects[(kind, namespace, name)]
        obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(obj)

    def patch_merge(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], sub: str = ""
    ) -> dict[str, Any]:
        obj = self.objects[(kind, namespace, name)]
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != obj["metadata"].get("resourceVersion"):
            raise KubeError(409, "the object has been modified")
        patch = {k: v for k, v in patch.items() if k != "metadata"}
        super().patch_merge(kind, namespace, name, patch, sub)
        assert namespace is not None
        return self.bump(kind, namespace, name)


def _asleep(kube: VersionedKube) -> tuple[dict[str, Any], InferenceServiceSpec]:
    body = service(pools=[{"name": "mi300x", "gpu": "MI300X", "minReplicas": 0, "maxReplicas": 4}])
    body["metadata"] = {"name": "llama", "namespace": "ns"}
    body["spec"]["replicas"] = 0
    body["status"] = {"replicas": 0}
    kube.put(body)
    read = kube.bump("InferenceService", "ns", "llama")
    return read, InferenceServiceSpec.model_validate(read["spec"])


def test_two_wakers_that_read_the_same_version_wake_once() -> None:
    kube = VersionedKube()
    read, spec = _asleep(kube)
    first = wake.wake(kube, copy.deepcopy(read), spec, "for a request via the activator")
    second = wake.wake(kube, copy.deepcopy(read), spec, "for a request via the activator")
    assert first == "woke llama from zero to 1 replica(s) for a request via the activator"
    assert second is None
    assert [reason for reason, _, _ in kube.events] == ["WokeFromZero"]
    assert kube.objects[("InferenceService", "ns", "llama")]["spec"]["replicas"] == 1


def test_a_status_write_in_between_does_not_stop_the_wake() -> None:
    kube = VersionedKube()
    read, spec = _asleep(kube)
    kube.bump("InferenceService", "ns", "llama")  # the operator wrote status meanwhile
    assert wake.wake(kube, read, spec, "for benchmark b") is not None
    assert kube.objects[("InferenceService", "ns", "llama")]["spec"]["replicas"] == 1
    assert [reason for reason, _, _ in kube.events] == ["WokeFromZero"]


def test_a_service_that_keeps_changing_gives_up_with_a_clear_error() -> None:
    kube = VersionedKube()
    read, spec = _asleep(kube)
    real_get = kube.get

    def get_and_bump(kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = real_get(kind, namespace, name)
        kube.bump(kind, str(namespace), name)  # another status write right after every read
        return found

    kube.get = get_and_bump  # type: ignore[method-assign]
    kube.bump("InferenceService", "ns", "llama")
    with pytest.raises(KubeError, match="kept changing"):
        wake.wake(kube, read, spec, "for a request via the activator")
    assert kube.events == []

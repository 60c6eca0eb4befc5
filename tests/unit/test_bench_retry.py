"""A benchmark Job has one chance (``backoffLimit: 0``): its two API calls, publishing the result
and detecting the model, must ride out a blip (retry with backoff on connection errors, 409, 429
and 5xx), stop at a bound with an error that says what was lost, and not retry a real refusal."""

from __future__ import annotations

from typing import Any

import click
import httpx
import pytest

from tests.unit.fakekube import FakeKube
from tokenscale.bench import resultchannel
from tokenscale.bench.cli import _detect_model
from tokenscale.bench.retry import GaveUp, with_backoff
from tokenscale.k8s.kube import KubeError


class FlakyKube(FakeKube):
    """Fails the first ``failures`` applies with the given errors, then behaves."""

    def __init__(self, *errors: KubeError) -> None:
        super().__init__()
        self.errors = list(errors)
        self.calls = 0

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().apply(obj, force=force)


def test_publish_rides_out_connection_errors_throttling_and_5xx() -> None:
    kube = FlakyKube(KubeError(0, "connection refused"), KubeError(429, "slow down"),
                     KubeError(503, "etcd leader changed"), KubeError(409, "conflict"))  # fmt: skip
    slept: list[float] = []
    parts = resultchannel.publish(kube, "ns", "b", "uid", 0, '{"x": 1}', sleep=slept.append)
    assert parts == 1
    assert kube.calls == 5
    assert len(slept) == 4
    assert resultchannel.KEY in kube.list("ConfigMap", "ns", "")[0]["binaryData"]


def test_publish_gives_up_after_the_bound_naming_the_part_and_the_last_error() -> None:
    kube = FlakyKube(*[KubeError(500, f"boom {i}") for i in range(10)])
    slept: list[float] = []
    with pytest.raises(KubeError) as info:
        resultchannel.publish(kube, "ns", "b", None, 2, "{}", attempts=4, sleep=slept.append)
    assert kube.calls == 4
    assert len(slept) == 3
    assert info.value.status == 500
    message = str(info.value)
    assert "ns/b-r2-0" in message and "4 attempts" in message and "boom 3" in message


def test_publish_does_not_retry_a_refusal() -> None:
    kube = FlakyKube(KubeError(403, "forbidden: configmaps"))
    with pytest.raises(KubeError, match="forbidden"):
        resultchannel.publish(kube, "ns", "b", None, 0, "{}", sleep=pytest.fail)
    assert kube.calls == 1


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter() -> None:
    slept: list[float] = []

    def always_fails() -> None:
        raise OSError("down")

    with pytest.raises(GaveUp, match="thing: gave up after 7 attempts"):
        with_backoff(always_fails, what="thing", retryable=lambda e: True, attempts=7,
                     base_seconds=1, cap_seconds=8, sleep=slept.append,
                     jitter=lambda: 1.0)  # fmt: skip
    assert slept == [1, 2, 4, 8, 8, 8]
    halves: list[float] = []
    with pytest.raises(GaveUp):
        with_backoff(always_fails, what="thing", retryable=lambda e: True, attempts=3,
                     sleep=halves.append, jitter=lambda: 0.5)  # fmt: skip
    assert halves == [0.25, 0.5]


def models_server(failures: list[int | Exception]) -> httpx.MockTransport:
    """/v1/models that answers each queued failure (a status or a transport error) first."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure, json={"error": "not now"})
        return httpx.Response(200, json={"data": [{"id": "llama"}]})

    return httpx.MockTransport(handle)


def test_detect_model_retries_transient_failures() -> None:
    failures: list[int | Exception] = [httpx.ConnectError("refused"), 502, 429, 503]
    slept: list[float] = []
    got = _detect_model("http://e:8000", None, transport=models_server(failures),
                        sleep=slept.append)  # fmt: skip
    assert got == "llama"
    assert not failures and len(slept) == 4


def test_detect_model_gives_up_with_a_usage_error_after_the_bound() -> None:
    failures: list[int | Exception] = [503] * 10
    with pytest.raises(click.UsageError, match=r"gave up after 3 attempts.*503"):
        _detect_model("http://e:8000", None, transport=models_server(failures), attempts=3,
                      sleep=lambda _: None)  # fmt: skip
    assert len(failures) == 7


def test_detect_model_does_not_retry_a_wrong_key() -> None:
    failures: list[int | Exception] = [401]
    with pytest.raises(click.UsageError, match="401"):
        _detect_model("http://e:8000", "bad", transport=models_server(failures), sleep=pytest.fail)

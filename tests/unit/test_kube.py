"""The Kube facade through the real kubernetes client stack against a loopback fake API server:
the requests it sends (paths, query, content types), how API errors and dead connections become
:class:`KubeError`, that only two discovery GETs are made (never per kind), and Kopf peering
objects through the same facade."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes import client

from tokenscale.k8s import kube as kube_module
from tokenscale.k8s import peering
from tokenscale.k8s.kube import Kube, KubeError


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


@dataclass
class FakeApi:
    """Answers from ``routes`` ((method, path) -> (status, body)); records every request."""

    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    #: Answers given once each, in order, before ``routes`` (status, body, headers).
    once: dict[tuple[str, str], list[tuple[int, Any, dict[str, str]]]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        self.headers = {}
        if self.once.get((method, path)):
            status, body, self.headers = self.once[(method, path)].pop(0)
            return status, body
        if (method, path) in self.routes:
            return self.routes[(method, path)]
        if path == "/version":
            return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0"}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        return 404, {"kind": "Status", "message": f"{path} not found", "code": 404}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[tuple[FakeApi, Kube]]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the discovery cache file
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            fake.seen.append(
                Seen(self.command, url.path, dict(parse_qsl(url.query)),
                     self.headers.get("Content-Type", ""), json.loads(raw) if raw else None)
            )  # fmt: skip
            status, body = fake.answer(self.command, url.path)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in fake.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    api_client = client.ApiClient(config)
    try:
        yield fake, Kube(api_client)
    finally:
        api_client.close()
        server.shutdown()
        server.server_close()
        thread.join()


def _work(fake: FakeApi) -> list[Seen]:
    return [s for s in fake.seen if s.path not in ("/version", "/apis")]


def test_apply_is_server_side_apply_under_the_field_manager(api: tuple[FakeApi, Kube]) -> None:
    fake, kube = api
    path = "/apis/apps/v1/namespaces/ns/deployments/d"
    fake.routes[("PATCH", path)] = (200, {"kind": "Deployment", "metadata": {"name": "d"}})
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns"},
    }
    assert kube.apply(obj)["metadata"]["name"] == "d"
    (sent,) = _work(fake)
    assert (sent.method, sent.path) == ("PATCH", path)
    assert sent.query == {"fieldManager": "tokenscale", "force": "true"}
    assert sent.content_type == "application/apply-patch+yaml"
    assert sent.body == obj


def test_list_get_delete_patch_and_paging(api: tuple[FakeApi, Kube]) -> None:
    fake, kube = api
    pods = "/api/v1/namespaces/ns/pods"
    fake.routes[("GET", pods)] = (200, {"items": [{"metadata": {"name": "p"}}], "metadata": {}})
    assert kube.list("Pod", "ns", "a=b", "status.phase=Running") == [{"metadata": {"name": "p"}}]
    assert _work(fake)[-1].query == {
        "labelSelector": "a=b",
        "fieldSelector": "status.phase=Running",
    }
    assert list(kube.list_pages("Pod", "ns", limit=5)) == [[{"metadata": {"name": "p"}}]]
    assert _work(fake)[-1].query == {"limit": "5"}
    assert list(kube.list_pages("Pod", "ns", "a=b", 5, "status.phase!=Succeeded"))
    assert _work(fake)[-1].query == {
        "limit": "5",
        "labelSelector": "a=b",
        "fieldSelector": "status.phase!=Succeeded",
    }
    assert kube.get("Node", None, "gone") is None  # 404 is an answer, not an error
    kube.delete("ConfigMap", "ns", "gone")  # already gone is fine
    assert _work(fake)[-1].body == {"propagationPolicy": "Background"}
    scale = "/apis/tokenscale.dev/v1alpha1/namespaces/ns/inferenceservices/s/status"
    fake.routes[("PATCH", scale)] = (200, {"status": {"x": 1}})
    assert kube.patch_merge("InferenceService", "ns", "s", {"status": {"x": 1}}, sub="status")
    assert _work(fake)[-1].content_type == "application/merge-patch+json"


def test_api_errors_carry_status_and_the_servers_message(
    api: tuple[FakeApi, Kube], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, kube = api
    path = "/api/v1/namespaces/ns/configmaps/c"
    fake.routes[("PATCH", path)] = (
        422,
        {"kind": "Status", "message": "data: Too long", "code": 422},
    )
    with pytest.raises(KubeError, match="data: Too long") as info:
        kube.apply(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
        )
    assert info.value.status == 422
    fake.routes[("GET", path)] = (503, {"kind": "Status", "message": "etcd leader changed"})
    monkeypatch.setattr(kube_module, "RETRY_DELAYS", (0.01, 0.01))
    with pytest.raises(KubeError, match="etcd leader changed") as info:
        kube.get("ConfigMap", "ns", "c")
    assert info.value.status == 503


def _status(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "message": message, "code": code}


def test_refused_for_now_is_retried_with_backoff_and_retry_after(
    api: tuple[FakeApi, Kube], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (API-faults drill): one 429 or 500 in a reconcile's ten-odd requests failed
    the whole reconcile; now the request is repeated (a 429 after its Retry-After), twice."""
    fake, kube = api
    sleeps: list[float] = []
    monkeypatch.setattr(kube_module.time, "sleep", sleeps.append)
    path = "/api/v1/namespaces/ns/configmaps/c"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
    fake.routes[("GET", path)] = fake.routes[("PATCH", path)] = (200, {"metadata": {"name": "c"}})
    # (urllib3 itself repeats a GET's 429 that carries Retry-After; an apply it does not)
    fake.once[("PATCH", path)] = [
        (429, _status(429, "slow down"), {"Retry-After": "1"}),
        (500, _status(500, "etcd hiccup"), {}),
    ]
    assert kube.apply(cm) == {"metadata": {"name": "c"}}
    assert sleeps == [1.0, kube_module.RETRY_DELAYS[1]]  # Retry-After wins over 0.5 s
    assert len([s for s in _work(fake) if s.path == path]) == 3

    sleeps.clear()  # a POST that got a 500 may have landed: not repeated; a 429 is
    events = "/api/v1/namespaces/ns/events"
    fake.routes[("POST", events)] = (201, {})
    fake.once[("POST", events)] = [(500, _status(500, "boom"), {})]
    with pytest.raises(KubeError) as info:
        kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"namespace": "ns"}})
    assert info.value.status == 500 and sleeps == []
    fake.once[("POST", events)] = [(429, _status(429, "slow down"), {})]
    kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"namespace": "ns"}})
    assert sleeps == [kube_module.RETRY_DELAYS[0]]

    sleeps.clear()  # a long Retry-After and a final refusal go back to the caller
    fake.once[("PATCH", path)] = [(429, _status(429, "later"), {"Retry-After": "60"})]
    with pytest.raises(KubeError) as info:
        kube.apply(cm)
    assert (info.value.status, info.value.retry_after, sleeps) == (429, 60.0, [])
    fake.once[("GET", path)] = [(503, _status(503, "down"), {})] * 3
    with pytest.raises(KubeError, match="down"):
        kube.get("ConfigMap", "ns", "c")
    assert sleeps == list(kube_module.RETRY_DELAYS)
    fake.once[("GET", path)] = [(403, _status(403, "forbidden"), {})]
    with pytest.raises(KubeError, match="forbidden"):
        kube.get("ConfigMap", "ns", "c")  # not transient: no retry
    assert sleeps == list(kube_module.RETRY_DELAYS)


def test_discovery_is_two_gets_once_never_per_kind(api: tuple[FakeApi, Kube]) -> None:
    fake, kube = api
    for kind in ("Deployment", "Service", "Job", "InferenceService", "ServiceMonitor"):
        kube.get(kind, "ns", "x")
    discovery = [s.path for s in fake.seen if s.path in ("/version", "/apis")]
    assert discovery == ["/version", "/apis"]
    assert len(_work(fake)) == 5


def test_no_server_is_status_0_and_constructing_does_no_io(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Any) -> None:  # fmt: skip
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = client.Configuration(host="http://127.0.0.1:1")  # nothing listens on port 1
    config.retries = 0
    kube = Kube(client.ApiClient(config))  # no request yet: this must not raise
    with pytest.raises(KubeError) as info:
        kube.get("Pod", "ns", "p")
    assert info.value.status == 0


def test_peering_objects_are_created_once_and_read_through_the_facade(
    api: tuple[FakeApi, Kube],
) -> None:
    fake, kube = api
    fake.routes[("POST", "/apis/kopf.dev/v1/namespaces/a/kopfpeerings")] = (201, {})
    fake.routes[("POST", "/apis/kopf.dev/v1/namespaces/b/kopfpeerings")] = (409, {"code": 409})
    assert peering.ensure_peering_objects(kube, "tokenscale", ["a", "b"]) == [
        "KopfPeering a/tokenscale"
    ]
    posted = [s for s in fake.seen if s.method == "POST"]
    assert posted[0].body == {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": "tokenscale", "namespace": "a"},
    }
    with pytest.raises(KubeError, match=r"peering\.enabled=true"):
        peering.ensure_peering_objects(kube, "tokenscale", [])  # cluster CRD missing: 404

    now = datetime(2026, 12, 1, tzinfo=UTC)
    me = peering.Peering("tokenscale", (), "me", priority=5)
    path = "/apis/kopf.dev/v1/clusterkopfpeerings/tokenscale"
    assert not peering.is_active(kube, me, now)  # no peering object: stand by
    live = {"priority": 9, "lifetime": 60, "lastseen": now.isoformat()}
    fake.routes[("GET", path)] = (200, {"status": {"other": live}})
    assert not peering.is_active(kube, me, now)
    fake.routes[("GET", path)] = (200, {"status": {"other": {**live, "priority": 1}}})
    assert peering.is_active(kube, me, now)

"""The activator end to end on loopback: a fake cluster, a real aiohttp fake engine.

Why these cases: a burst at a sleeping service must cost one wake (not one per request); a
streamed completion must reach the client token by token through the proxy; every failure
must be an OpenAI-shaped error that tells the user what to do; a pod that refuses a
connection must not fail a request another pod could serve; and the metrics must count it.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale import constants as c
from tokenscale.activator.backend import KubeBackend
from tokenscale.activator.server import ACTIVATOR, create_app

HOST = "llama.ns:8000"
ENGINE = "127.0.0.1"
ENGINE2 = "127.0.0.3"  # the same fake engine, as a second pod
DEAD = "127.0.0.2"  # loopback too, but nothing listens there on the engine's port


def _service(replicas: int | None) -> dict[str, Any]:
    body = service(pools=[{"name": "mi300x", "gpu": "MI300X", "minReplicas": 0, "maxReplicas": 4}])
    body["metadata"] = {"name": "llama", "namespace": "ns"}
    body["spec"]["replicas"] = replicas
    body["status"] = {"replicas": replicas}
    return body


@dataclass
class FakeCluster:
    """The Backend protocol in memory: engines become ready ``ready_after`` polls after a
    wake (or at once if already up); wakes can be made to fail."""

    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    ips: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    ips_after_wake: list[str] = field(default_factory=lambda: [ENGINE])
    ready_after: int = 3
    wake_error: Exception | None = None
    get_error: Exception | None = None
    wakes: list[tuple[str, str]] = field(default_factory=list)
    polls: int = 0

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        if self.get_error:
            raise self.get_error
        found = self.services.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def wake(self, body: dict[str, Any]) -> str:
        await asyncio.sleep(0.01)  # long enough for the whole burst to arrive meanwhile
        if self.wake_error:
            raise self.wake_error
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        self.wakes.append(key)
        self.services[key]["spec"]["replicas"] = 1
        self._countdown = self.ready_after
        return f"woke {key[1]} from zero to 1 replica(s)"

    async def ready_ips(self, namespace: str, name: str) -> list[str]:
        self.polls += 1
        key = (namespace, name)
        if key not in self.ips and self.wakes.count(key):
            self._countdown -= 1
            if self._countdown <= 0:
                self.ips[key] = list(self.ips_after_wake)
        return list(self.ips.get(key, []))


@dataclass
class FakeEngine:
    """What the engine saw, and a gate that holds back the last SSE event."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    release_last: asyncio.Event = field(default_factory=asyncio.Event)


def _engine_app(engine: FakeEngine) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        record = {
            "method": request.method,
            "path_qs": request.raw_path,
            "body": (await request.read()).decode(),
            "headers": dict(request.headers),
            "pod": request.transport.get_extra_info("sockname")[0] if request.transport else "",
        }
        engine.seen.append(record)
        return web.json_response(record, status=201, headers={"X-Engine": "fake"})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in (1, 2):
                engine.order.append(f"sent {i}")
                await resp.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(0.05)
            # The last event waits until the client has the first: a buffering proxy deadlocks.
            await asyncio.wait_for(engine.release_last.wait(), 5)
        except asyncio.CancelledError:
            engine.order.append("engine saw the client leave")
            raise
        engine.order.append("sent 3")
        await resp.write(b"data: 3\n\n")
        await resp.write_eof()
        return resp

    async def broken(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()  # the engine dies mid-generation
        return resp

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/broken", broken)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@asynccontextmanager
async def _serve(app: web.Application, *also: str) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 at a free port, and on the same port at each of ``also``
    (more loopback addresses: more "pods" of one engine port)."""
    # As `tokenscale activator` runs it: a client hanging up cancels its handler.
    runner = web.AppRunner(app, shutdown_timeout=1, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, ENGINE, 0).start()
        port: int = runner.addresses[0][1]
        for host in also:
            await web.TCPSite(runner, host, port).start()
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    state = FakeEngine()
    async with _serve(_engine_app(state), ENGINE2) as port:
        state.port = port
        yield state


Activator = Callable[..., Awaitable[tuple[aiohttp.ClientSession, web.Application]]]


@pytest.fixture
async def activator(engine: FakeEngine) -> AsyncIterator[Activator]:
    """Starts the activator for a backend; returns a client session aimed at it."""
    started: list[Any] = []

    async def start(backend: Any, **kwargs: Any) -> tuple[aiohttp.ClientSession, web.Application]:
        kwargs = {"timeout_seconds": 5.0, "poll_seconds": 0.01, **kwargs}
        app = create_app(backend, engine_port=engine.port, **kwargs)
        serving = _serve(app)
        port = await serving.__aenter__()
        session = aiohttp.ClientSession(f"http://127.0.0.1:{port}", trust_env=False)
        started.append((serving, session))
        return session, app

    yield start
    for serving, session in started:
        await session.close()
        await serving.__aexit__(None, None, None)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _metrics(client: aiohttp.ClientSession) -> dict[Any, float]:
    async with client.get("/activator/metrics") as resp:
        assert resp.status == 200
        return _samples(await resp.text())


def _requests(samples: dict[Any, float], outcome: str, ns: str = "ns", svc: str = "llama") -> float:
    key = (
        "tokenscale_activator_requests_total",
        (("namespace", ns), ("outcome", outcome), ("service", svc)),
    )
    return samples.get(key, 0.0)


async def test_burst_at_zero_wakes_once_and_every_request_is_served(
    activator: Activator, engine: FakeEngine
) -> None:
    cluster = FakeCluster(services={("ns", "llama"): _service(0)})
    client, app = await activator(cluster)

    async def one(i: int) -> tuple[int, dict[str, Any]]:
        async with client.post(
            f"/v1/completions?n={i}", json={"prompt": f"hi {i}"}, headers={"Host": HOST}
        ) as resp:
            return resp.status, await resp.json()

    results = await asyncio.gather(*(one(i) for i in range(5)))
    assert cluster.wakes == [("ns", "llama")]
    assert [status for status, _ in results] == [201] * 5
    for i, (_, seen) in enumerate(results):
        assert seen["path_qs"] == f"/v1/completions?n={i}"
        assert json.loads(seen["body"]) == {"prompt": f"hi {i}"}
        assert seen["headers"]["X-Forwarded-Host"] == HOST
        assert seen["headers"]["Host"] == f"{ENGINE}:{engine.port}"
    assert app[ACTIVATOR].gate.waiting() == 0
    samples = await _metrics(client)
    assert _requests(samples, "proxied") == 5
    wakes = ("tokenscale_activator_wakes_total", (("namespace", "ns"), ("service", "llama")))
    assert samples[wakes] == 1
    assert samples[("tokenscale_activator_wait_seconds_count", ())] == 5


async def test_ready_service_is_proxied_without_a_wake_and_keeps_status_headers_method(
    activator: Activator, engine: FakeEngine
) -> None:
    cluster = FakeCluster(services={("ns", "llama"): _service(1)}, ips={("ns", "llama"): [ENGINE]})
    client, _ = await activator(cluster)
    headers = {
        "Host": "llama.ns.svc.cluster.local:8000",
        "Authorization": "Bearer token",
        "X-Custom": "kept",
        "Connection": "keep-alive, X-Per-Hop",
        "X-Per-Hop": "dropped",
        "Proxy-Authorization": "dropped",
    }
    path = URL("/v1/models/a%2Fb?a=1&b=%26", encoded=True)  # escapes must survive the hop
    async with client.put(path, data=b"raw", headers=headers, expect100=True) as resp:
        assert resp.status == 201
        assert resp.headers["X-Engine"] == "fake"
        seen = await resp.json()
    assert cluster.wakes == []
    assert seen["method"] == "PUT"
    assert seen["path_qs"] == "/v1/models/a%2Fb?a=1&b=%26"
    assert seen["body"] == "raw"
    forwarded = seen["headers"]
    assert forwarded["Authorization"] == "Bearer token"
    assert forwarded["X-Custom"] == "kept"
    assert "X-Per-Hop" not in forwarded and "Proxy-Authorization" not in forwarded
    assert "Expect" not in forwarded  # answered by the activator, which read the body
    assert forwarded["X-Forwarded-For"] == "127.0.0.1"
    assert "X-Forwarded-Host" in forwarded


async def test_sse_is_streamed_not_buffered(activator: Activator, engine: FakeEngine) -> None:
    cluster = FakeCluster(services={("ns", "llama"): _service(0)})
    client, _ = await activator(cluster)
    events: list[bytes] = []
    async with client.get("/stream", headers={"Host": HOST}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert "Content-Length" not in resp.headers
        async for line in resp.content:
            if line.startswith(b"data:"):
                events.append(line.strip())
                if len(events) == 1:
                    engine.order.append("client got 1")
                    engine.release_last.set()
    assert events == [b"data: 1", b"data: 2", b"data: 3"]
    assert engine.order.index("client got 1") < engine.order.index("sent 3")


async def test_client_leaving_mid_stream_stops_the_engine(
    activator: Activator, engine: FakeEngine
) -> None:
    cluster = FakeCluster(services={("ns", "llama"): _service(1)}, ips={("ns", "llama"): [ENGINE]})
    client, _ = await activator(cluster)
    async with client.get("/stream", headers={"Host": HOST}) as resp:
        assert await resp.content.readline() == b"data: 1\n"
        resp.close()
    for _ in range(200):
        if "engine saw the client leave" in engine.order:
            break
        await asyncio.sleep(0.01)
    assert "engine saw the client leave" in engine.order
    assert "sent 3" not in engine.order
    assert _requests(await _metrics(client), "client_gone") == 1


async def test_engine_breaking_off_mid_stream_truncates_the_client_response(
    activator: Activator,
) -> None:
    cluster = FakeCluster(services={("ns", "llama"): _service(1)}, ips={("ns", "llama"): [ENGINE]})
    client, _ = await activator(cluster)
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get("/broken", headers={"Host": HOST}) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received.append(chunk)
    assert b"".join(received) == b"data: 1\n\n"  # what came through, then a visible break
    assert _requests(await _metrics(client), "upstream_error") == 1


async def test_bad_host_unknown_service_and_never_ready(activator: Activator) -> None:
    cluster = FakeCluster(services={("ns", "llama"): _service(0)}, ready_after=10**9)
    client, app = await activator(cluster, timeout_seconds=0.2)

    async with client.post("/v1/completions", json={}, headers={"Host": "llama"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "NAME.NAMESPACE" in error["message"] and "'llama'" in error["message"]

    async with client.post("/v1/completions", json={}, headers={"Host": "other.ns"}) as resp:
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert "'other'" in error["message"] and "'ns'" in error["message"]

    async with client.post("/v1/completions", json={}, headers={"Host": HOST}) as resp:
        assert resp.status == 503
        error = (await resp.json())["error"]
    assert "waited 0.2 s" in error["message"]
    assert "did not become ready" in error["message"]
    assert "kubectl describe tsvc llama -n ns" in error["message"]
    assert cluster.wakes == [("ns", "llama")]
    await asyncio.sleep(0.05)
    assert app[ACTIVATOR].gate.waiting() == 0  # the last waiter left: the poll task stopped
    polls = cluster.polls
    await asyncio.sleep(0.1)
    assert cluster.polls == polls

    samples = await _metrics(client)
    assert _requests(samples, "bad_host", "", "") == 1
    assert _requests(samples, "not_found", "ns", "other") == 1
    assert _requests(samples, "timeout") == 1
    assert samples[("tokenscale_activator_wait_seconds_count", ())] == 1


async def test_request_during_a_scale_down_wakes_once_the_service_is_at_zero(
    activator: Activator,
) -> None:
    body = _service(0)
    body["status"]["replicas"] = 1  # /scale says 0, the reconcile has not applied it yet
    cluster = FakeCluster(services={("ns", "llama"): body})
    client, _ = await activator(cluster)
    request = asyncio.create_task(client.post("/v1/completions", json={}, headers={"Host": HOST}))
    await asyncio.sleep(0.1)
    assert cluster.wakes == []
    cluster.services[("ns", "llama")]["status"]["replicas"] = 0  # the pods are gone
    async with await request as resp:
        assert resp.status == 201
    assert cluster.wakes == [("ns", "llama")]


async def test_api_server_failure_is_a_503_without_internals(activator: Activator) -> None:
    cluster = FakeCluster(get_error=RuntimeError("secret internal detail"))
    client, _ = await activator(cluster)
    async with client.post("/v1/completions", json={}, headers={"Host": HOST}) as resp:
        assert resp.status == 503
        error = (await resp.json())["error"]
    assert "could not read InferenceService ns/llama" in error["message"]
    assert "secret" not in error["message"]
    assert _requests(await _metrics(client), "api_error") == 1


async def test_wake_failure_reaches_every_waiter(activator: Activator) -> None:
    cluster = FakeCluster(
        services={("ns", "llama"): _service(0)}, wake_error=RuntimeError("forbidden: scale")
    )
    client, _ = await activator(cluster)

    async def one() -> tuple[int, str]:
        async with client.post("/v1/completions", json={}, headers={"Host": HOST}) as resp:
            return resp.status, (await resp.json())["error"]["message"]

    results = await asyncio.gather(*(one() for _ in range(3)))
    assert results == [(503, "could not wake InferenceService ns/llama: forbidden: scale")] * 3
    assert _requests(await _metrics(client), "wake_failed") == 3


async def test_refused_connection_is_retried_on_another_pod(
    activator: Activator, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = FakeCluster(
        services={("ns", "llama"): _service(1)}, ips={("ns", "llama"): [DEAD, ENGINE]}
    )
    client, _ = await activator(cluster)
    for _ in range(2):  # round robin: the first request starts at the dead pod
        async with client.post("/v1/completions", json={"a": 1}, headers={"Host": HOST}) as resp:
            assert resp.status == 201
    assert len(engine.seen) == 2
    refused = [r for r in caplog.records if r.getMessage().startswith(f"engine {DEAD}:")]
    assert len(refused) == 1  # tried once, by the first request only
    assert _requests(await _metrics(client), "proxied") == 2

    cluster.ips[("ns", "llama")] = [DEAD]
    async with client.post("/v1/completions", json={}, headers={"Host": HOST}) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert DEAD in error["message"]
    assert _requests(await _metrics(client), "upstream_error") == 1


async def test_round_robin_over_ready_engines(activator: Activator, engine: FakeEngine) -> None:
    cluster = FakeCluster(
        services={("ns", "llama"): _service(2)}, ips={("ns", "llama"): [ENGINE, ENGINE2]}
    )
    client, _ = await activator(cluster)
    for _ in range(4):
        async with client.post("/v1/completions", json={}, headers={"Host": HOST}) as resp:
            assert resp.status == 201
    assert [seen["pod"] for seen in engine.seen] == [ENGINE, ENGINE2, ENGINE, ENGINE2]


async def test_health_and_metrics_are_not_proxied(activator: Activator) -> None:
    cluster = FakeCluster()
    client, _ = await activator(cluster)
    async with client.get("/activator/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"
    samples = await _metrics(client)
    assert not any(name == "tokenscale_activator_requests_total" for name, _ in samples)


def _pod(name: str, ip: str, role: str, ready: bool = True) -> dict[str, Any]:
    labels = {c.LABEL_SERVICE: "llama", c.LABEL_POOL: "mi300x", c.LABEL_ROLE: role}
    if role != c.ROLE_WORKER:
        labels[c.LABEL_ENDPOINT] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": labels},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


async def test_kube_backend_reads_wakes_and_lists_serving_pods() -> None:
    kube = FakeKube()
    kube.put(_service(0))
    kube.put(_pod("llama-a", "10.0.0.1", c.ROLE_ENGINE))
    kube.put(_pod("llama-b", "10.0.0.2", c.ROLE_LEADER))
    kube.put(_pod("llama-c", "10.0.0.3", c.ROLE_WORKER))  # no HTTP server
    kube.put(_pod("llama-d", "10.0.0.4", c.ROLE_ENGINE, ready=False))
    backend = KubeBackend(kube)  # type: ignore[arg-type]
    body = await backend.get_service("ns", "llama")
    assert body is not None
    assert await backend.get_service("ns", "missing") is None
    message = await backend.wake(body)
    assert message == "woke llama from zero to 1 replica(s) for a request via the activator"
    woken = kube.get("InferenceService", "ns", "llama")
    assert woken is not None and woken["spec"]["replicas"] == 1
    assert [reason for reason, _, _ in kube.events] == ["WokeFromZero"]
    assert await backend.ready_ips("ns", "llama") == ["10.0.0.1", "10.0.0.2"]


async def test_requests_waiting_at_shutdown_get_a_503_to_retry_before_the_grace_ends() -> None:
    """Regression (issue 17, activator-fault drill): SIGTERM while requests waited for a slow
    engine dropped their connections without an answer once the shutdown grace ran out
    ("Server disconnected without sending a response"). Now, ``drain_seconds`` into the
    shutdown, each gets a 503 naming the service and saying to retry, with Retry-After."""
    cluster = FakeCluster(services={("ns", "llama"): _service(0)}, ready_after=10**9)
    app = create_app(cluster, timeout_seconds=60, poll_seconds=0.01, drain_seconds=0.3)
    runner = web.AppRunner(app, shutdown_timeout=5, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]

    async def one(session: aiohttp.ClientSession) -> tuple[int, str, dict[str, Any]]:
        async with session.post(
            "/v1/completions", json={"prompt": "hi"}, headers={"Host": HOST}
        ) as resp:
            return resp.status, resp.headers.get("Retry-After", ""), await resp.json()

    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", trust_env=False) as session:
        waiting = [asyncio.create_task(one(session)) for _ in range(3)]
        for _ in range(500):  # every request inside the shared wait
            if app[ACTIVATOR].gate.waiting() and cluster.polls >= 3:
                break
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.create_task(runner.cleanup())  # what SIGTERM runs
        answers = await asyncio.gather(*waiting)
        took = loop.time() - started
        await stopping
    assert cluster.wakes == [("ns", "llama")]
    for status, retry_after, body in answers:
        assert (status, retry_after) == (503, "1")
        message = body["error"]["message"]
        assert "activator is shutting down" in message and "ns/llama" in message
        assert "retry" in message
    assert 0.3 <= took < 5  # after the drain, before the grace
    samples = _samples(generate_latest(app[ACTIVATOR].metrics.registry).decode())
    assert _requests(samples, "shutting_down") == 3

"""The activator's HTTP server: every request is for some scaled-to-zero service.

Why hold the request instead of answering 503 at once: OpenAI clients and load generators do
not retry a 503 for minutes, and a scaled-to-zero service is meant to look merely slow on its
first request, not down. Why proxy instead of redirect: the Service the client used is still
switched to the activator until the operator sees a ready engine, and a client cannot reach a
pod IP it was never told about.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenscale.activator.backend import Backend
from tokenscale.activator.gate import Gate, WakeFailed
from tokenscale.activator.hostname import target_from_host
from tokenscale.activator.metrics import Metrics
from tokenscale.activator.proxy import UpstreamUnavailable, forward
from tokenscale.constants import ENGINE_PORT
from tokenscale.k8s.wake import at_zero

log = logging.getLogger(__name__)

HEALTH_PATH = "/activator/healthz"
METRICS_PATH = "/activator/metrics"

#: Request bodies are read whole before the wait; long prompts and base64 images in chat
#: requests exceed aiohttp's 1 MiB default.
MAX_REQUEST_BYTES = 64 * 1024 * 1024

#: Connecting to a pod on the cluster network is quick or never; generation may take minutes,
#: so reads have no deadline (the client's own timeout governs).
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
UPSTREAM_KEEPALIVE = 4.0


class ShuttingDown(RuntimeError):
    """The activator is stopping and the service is still not ready: the request must go."""


class Activator:
    """Per-application state: the backend, the shared waits, round-robin counters, metrics."""

    def __init__(
        self,
        backend: Backend,
        *,
        timeout_seconds: float,
        poll_seconds: float,
        engine_port: int,
        metrics: Metrics,
        drain_seconds: float = 15.0,
    ) -> None:
        self.backend = backend
        self.timeout_seconds = timeout_seconds
        self.drain_seconds = drain_seconds
        self._leaving: asyncio.Event | None = None
        self.engine_port = engine_port
        self.metrics = metrics
        self.gate = Gate(backend, metrics, poll_seconds)
        self._next: dict[tuple[str, str], itertools.count[int]] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the activator's client session exists only while the app runs")
        return self._session

    async def lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the upstream session lives exactly as long as the server."""
        self._session = aiohttp.ClientSession(
            # Idle connections are dropped before uvicorn's (vLLM's) 5 s keep-alive closes
            # them, so a request is never sent on a connection the engine is closing.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE),
            timeout=UPSTREAM_TIMEOUT,
            trust_env=False,  # pod IPs must never go through an HTTP(S)_PROXY from the env
            auto_decompress=False,  # relay the engine's bytes as they are, Content-Encoding too
            skip_auto_headers=(hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE),
        )
        self._leaving = asyncio.Event()
        try:
            yield
        finally:
            await self.gate.close()
            await self._session.close()
            self._session = None

    async def draining(self, _app: web.Application) -> None:
        """aiohttp on_shutdown (SIGTERM: a pod deleted, a rollout): requests still waiting for
        an engine ``drain_seconds`` later get a 503 that says to retry, before the shutdown
        grace ends and aiohttp would drop their connections without a word (found by the
        activator-fault drill, issue 17: "Server disconnected without sending a response")."""
        leaving = self._leaving
        if leaving is not None:
            asyncio.get_running_loop().call_later(self.drain_seconds, leaving.set)

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def scrape(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST},
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Resolve the target, wake and wait if needed, then proxy; one outcome per request."""
        try:
            namespace, name = target_from_host(request.headers.get(hdrs.HOST, ""))
        except ValueError as exc:
            return self._fail("", "", "bad_host", 400, "invalid_request_error", str(exc))
        try:
            return await self._serve(request, namespace, name)
        except asyncio.CancelledError:  # the client hung up (or the server is stopping)
            self.metrics.request(namespace, name, "client_gone")
            raise

    async def _serve(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        body = await request.read()  # once: the body is replayed on a retry to a second pod
        try:
            service = await self.backend.get_service(namespace, name)
        except Exception as exc:  # noqa: BLE001 - any API failure is the same answer: retry
            log.warning("reading InferenceService %s/%s: %s", namespace, name, exc)
            return self._fail(
                namespace, name, "api_error", 503, "service_unavailable_error",
                f"could not read InferenceService {namespace}/{name} from the API server "
                f"(the activator's log has the cause); retry later",
            )  # fmt: skip
        if service is None:
            return self._fail(
                namespace, name, "not_found", 404, "not_found_error",
                f"there is no InferenceService {name!r} in namespace {namespace!r}",
            )  # fmt: skip
        ips = [] if at_zero(service) else await self._ready_now(namespace, name)
        if not ips:
            started = asyncio.get_running_loop().time()
            try:
                ips = await self._wait(namespace, name, service)
            except ShuttingDown:
                return self._fail(
                    namespace, name, "shutting_down", 503, "service_unavailable_error",
                    f"the activator is shutting down (restart or scale-in) and InferenceService "
                    f"{namespace}/{name} is not ready yet; it has been woken: retry the request",
                    retry_after=1,
                )  # fmt: skip
            except TimeoutError:
                self.metrics.wait_seconds.observe(asyncio.get_running_loop().time() - started)
                return self._fail(
                    namespace, name, "timeout", 503, "service_unavailable_error",
                    f"waited {self.timeout_seconds:g} s and InferenceService {namespace}/{name} "
                    f"did not become ready (no Running and Ready engine pod); check "
                    f"`kubectl describe tsvc {name} -n {namespace}`",
                )  # fmt: skip
            except WakeFailed as exc:
                return self._fail(
                    namespace, name, "wake_failed", 503, "service_unavailable_error", str(exc)
                )
            self.metrics.wait_seconds.observe(asyncio.get_running_loop().time() - started)
        try:
            relayed = await forward(
                self.session, request, body, self._rotated(namespace, name, ips), self.engine_port
            )
        except UpstreamUnavailable as exc:
            return self._fail(
                namespace, name, "upstream_error", 502, "upstream_error",
                f"no engine of InferenceService {namespace}/{name} accepted the request: {exc}",
            )  # fmt: skip
        outcome = "proxied" if relayed.complete else "upstream_error"
        self.metrics.request(namespace, name, outcome)
        return relayed.response

    async def _wait(self, namespace: str, name: str, service: dict[str, Any]) -> list[str]:
        """The gate's wait, cut short by :meth:`draining` (raises ShuttingDown then)."""
        waiting = asyncio.ensure_future(
            self.gate.ready_ips(namespace, name, service, self.timeout_seconds)
        )
        leaving = asyncio.ensure_future((self._leaving or asyncio.Event()).wait())
        try:
            done, _ = await asyncio.wait({waiting, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        if waiting in done:
            return waiting.result()
        raise ShuttingDown

    async def _ready_now(self, namespace: str, name: str) -> list[str]:
        """Ready engines without waiting (the Service not switched back yet); [] on an API
        error, which sends the request to the gate's patient polling instead of failing it."""
        try:
            return await self.backend.ready_ips(namespace, name)
        except Exception as exc:  # noqa: BLE001 - see docstring
            log.warning("listing engine pods of %s/%s: %s", namespace, name, exc)
            return []

    def _rotated(self, namespace: str, name: str, ips: list[str]) -> list[str]:
        """``ips`` starting at the next pod in round-robin order, the rest as retry targets."""
        start = next(self._next.setdefault((namespace, name), itertools.count())) % len(ips)
        return ips[start:] + ips[:start]

    def _fail(
        self,
        namespace: str,
        name: str,
        outcome: str,
        status: int,
        kind: str,
        message: str,
        retry_after: int | None = None,
    ) -> web.Response:
        self.metrics.request(namespace, name, outcome)
        log.info("%s %s: %s", status, f"{namespace}/{name}" if name else "-", message)
        return error_response(status, kind, message, retry_after)


def error_response(
    status: int, kind: str, message: str, retry_after: int | None = None
) -> web.Response:
    """An error in OpenAI's shape, so SDK clients show our message instead of a parse error;
    ``retry_after`` (seconds) as the header OpenAI's SDKs honour for their retries."""
    headers = {hdrs.RETRY_AFTER: str(retry_after)} if retry_after is not None else None
    return web.json_response(
        {"error": {"message": message, "type": kind}}, status=status, headers=headers
    )


ACTIVATOR = web.AppKey("activator", Activator)


def create_app(
    backend: Backend,
    *,
    timeout_seconds: float = 600.0,
    poll_seconds: float = 1.0,
    engine_port: int = ENGINE_PORT,
    metrics: Metrics | None = None,
    drain_seconds: float = 15.0,
) -> web.Application:
    """The activator application; ``app[ACTIVATOR]`` is its state (metrics, gate).

    ``drain_seconds``: after a shutdown starts, how long waiting requests keep waiting before
    they get a 503 (keep it below the server's shutdown timeout)."""
    activator = Activator(
        backend,
        timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
        engine_port=engine_port,
        metrics=metrics or Metrics(),
        drain_seconds=drain_seconds,
    )
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[ACTIVATOR] = activator
    app.cleanup_ctx.append(activator.lifecycle)
    app.on_shutdown.append(activator.draining)
    app.router.add_get(HEALTH_PATH, activator.health)
    app.router.add_get(METRICS_PATH, activator.scrape)
    app.router.add_route("*", "/{tail:.*}", activator.handle)
    return app

"""The HTTP side: many simulated engines, one aiohttp server each, in one asyncio process.

Why aiohttp (not raw asyncio): measured on the 2-core dev box, aiohttp's C HTTP parser keeps the
per-request cost low enough that 88 engines plus a load generator fit (numbers in
docs/simulator.md and benchmarks/results/fleet-scale.json), and it gives correct HTTP/1.1
keep-alive, chunked streaming and back-pressure for free.

Time: the engine model runs in *simulated* seconds; ``SimClock`` maps them to wall time divided by
``--speed``. Every latency the metrics and responses report is simulated, so an autoscaler or a
benchmark sees realistic values whatever the speed. Steps run back to back in simulated time as
long as the event loop is less than ``max_lag_s`` (wall) late - host jitter on a busy machine
must not slow the modelled GPU; tokens then reach clients up to that much late. If the process
falls further behind (CPU-bound), the next step starts at the current simulated time minus that
slack: throughput is lost rather than time compressed, and latencies stay consistent with what
clients observe.

Streaming: each token is its own SSE chunk (as vLLM), but chunks are *written* on the first token,
at the finish, and otherwise at most every ``stream_flush_s`` wall seconds (0: never in between,
everything else goes out with the last token). The first and last token therefore arrive on time
(client-side TTFT and MLPerf TPOT are exact), while the per-token wake-ups and socket sends that
would dominate CPU at node or fleet scale are coalesced: at 200 req/s, flushing every second cost
~45 sends per request and saturated a core in ``socket.send``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from . import openai, pd, workload
from .metrics import EngineCollector, exposition, new_registry
from .model import Engine, RequestError, Seq, StepResult

log = logging.getLogger(__name__)

VERSION = "0.33.0+tokenscale.sim"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SimClock:
    """Simulated seconds since start = wall seconds since start x speed."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._wall0 = time.monotonic()

    def now(self) -> float:
        """Current simulated time."""
        return (time.monotonic() - self._wall0) * self.speed

    async def sleep_until(self, sim_t: float) -> None:
        """Sleep until simulated time ``sim_t``; always yields to the event loop."""
        await asyncio.sleep(max(0.0, sim_t / self.speed - (time.monotonic() - self._wall0)))


class _Waiter:
    __slots__ = ("event", "seq")

    def __init__(self, seq: Seq) -> None:
        self.seq = seq
        self.event = asyncio.Event()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one engine listens and under which names it serves."""

    host: str
    port: int
    served_model_name: str
    model: str


@dataclass(frozen=True)
class PDRole:
    """This engine's side of prefill/decode disaggregation (``--pd-role``, sim/pd.py)."""

    role: str  # prefill | decode
    kv_bytes_per_token: float
    gbytes_per_s: float


#: NIXL's default side-channel port, reported in the hand-over like vLLM's prefill engines.
NIXL_SIDE_CHANNEL_PORT = 5600


class EngineHost:
    """One engine: its model, its stepping task and its aiohttp application."""

    def __init__(
        self,
        engine: Engine,
        clock: SimClock,
        endpoint: Endpoint,
        stream_flush_s: float = 0.05,
        background_qps: float = 0.0,
        background_seed: int = 0,
        max_lag_s: float = 0.25,
        on_step: Callable[[StepResult], None] | None = None,
        pd_role: PDRole | None = None,
    ) -> None:
        self.engine = engine
        self.pd_role = pd_role
        self.engine_id = uuid.uuid4().hex
        self.on_step = on_step  # e.g. the simulated exporter's power meter
        self.clock = clock
        self.endpoint = endpoint
        self.stream_flush_s = stream_flush_s
        self.background_qps = background_qps
        self.max_lag_s = max_lag_s
        self._background_rng = random.Random(background_seed)
        self.in_flight = 0
        self._waiters: dict[int, _Waiter] = {}
        self._streams: set[_Waiter] = set()
        self._wake = asyncio.Event()
        self._created = int(time.time())
        collector = EngineCollector(engine.metrics, engine, endpoint.served_model_name)
        self._registry = new_registry(collector)
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
                web.get("/v1/models", self._models),
                web.post("/tokenize", self._tokenize),
                web.get("/health", self._health),
                web.get("/ping", self._health),
                web.get("/load", self._load),
                web.get("/version", self._version),
                web.get("/metrics", self._metrics),
            ]
        )

    # -- stepping --------------------------------------------------------------------------
    async def background(self) -> None:
        """Inject Poisson requests (OpenOrca-like lengths) that bypass HTTP.

        Why: a fleet at MLPerf load holds ~1,000 sequences per engine; 88 engines would need
        ~80k open client streams, more than one machine's file descriptors, and the operator
        only reads ``/metrics`` anyway. Background requests cost ~20 us each, not ~1 ms.
        """
        rng = self._background_rng
        at = self.clock.now()
        while True:
            at += rng.expovariate(self.background_qps)
            await self.clock.sleep_until(at)
            prompt, output = workload.OPENORCA.draw(rng)
            output = min(output, self.engine.max_model_len - prompt)
            self.engine.submit(prompt, output, self.clock.now(), ignore_eos=True)
            self._wake.set()

    async def run(self) -> None:
        """Step the engine while it has work, sleeping each step's simulated duration."""
        loop = asyncio.get_running_loop()
        last_flush = loop.time()
        while True:
            if not self.engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                continue
            # Host jitter up to ``max_lag_s`` wall seconds does not cost the GPU time: a real
            # engine keeps computing while Python is late. Beyond it, time is lost (see module doc).
            result = self.engine.step(self.clock.now() - self.max_lag_s * self.clock.speed)
            if result is None:
                continue
            if self.on_step is not None:
                self.on_step(result)
            await self.clock.sleep_until(result.end)
            for seq in result.first_tokens:
                self._notify(seq)
            for seq in result.finished:
                self._notify(seq)
            if (
                self._streams
                and self.stream_flush_s > 0
                and loop.time() - last_flush >= self.stream_flush_s
            ):
                last_flush = loop.time()
                for waiter in self._streams:
                    waiter.event.set()

    def _notify(self, seq: Seq) -> None:
        waiter = self._waiters.get(seq.rid)
        if waiter is not None:
            waiter.event.set()

    # -- handlers --------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    def _error(self, message: str, status: int, kind: str = "BadRequestError") -> web.Response:
        return web.json_response(openai.error_body(message, status, kind), status=status)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            params = openai.parse(await request.json(), chat)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return self._error(f"invalid JSON: {err}", 400)
        except openai.BadRequest as err:
            return self._error(str(err), 400)
        name = self.endpoint.served_model_name
        if params.model is not None and params.model != name:
            return self._error(f"The model `{params.model}` does not exist.", 404, "NotFoundError")
        handed = await self._receive_kv(params)
        try:
            seq = self.engine.submit(
                params.prompt_tokens,
                params.max_tokens,
                self.clock.now(),
                ignore_eos=params.ignore_eos,
                min_tokens=params.min_tokens,
                block_hashes=self.engine.prompt_blocks(params.prompt_text),
                kv_transferred=handed,
            )
        except RequestError as err:
            return self._error(str(err), 400)
        waiter = _Waiter(seq)
        self._waiters[seq.rid] = waiter
        self.in_flight += 1
        self._wake.set()
        prefix = "chatcmpl-" if chat else "cmpl-"
        request_id = prefix + uuid.uuid4().hex
        try:
            if params.stream:
                try:
                    return await self._stream(request, params, waiter, request_id)
                except ConnectionResetError:  # client went away; the finally aborts the request
                    return web.Response(status=499)
            while not seq.done:
                await waiter.event.wait()
                waiter.event.clear()
            body = openai.completion_body(
                params, request_id, self._created, name, seq.rid, seq.generated, seq.finish_reason
            )
            handover = self._handover(params)
            if handover is not None:
                body["kv_transfer_params"] = handover
            return web.json_response(body)
        finally:
            self.in_flight -= 1
            self._waiters.pop(seq.rid, None)
            self._streams.discard(waiter)
            if not seq.done:
                self.engine.abort(seq, self.clock.now())

    async def _receive_kv(self, params: openai.Params) -> int:
        """Decode role, request handed over by a prefill engine: wait the KV transfer time
        (simulated) and return how many prompt tokens arrive computed; else 0."""
        transfer = params.kv_transfer_params or {}
        if self.pd_role is None or self.pd_role.role != "decode":
            return 0
        if not transfer.get("do_remote_prefill"):
            return 0
        delay = pd.transfer_seconds(
            params.prompt_tokens, self.pd_role.kv_bytes_per_token, self.pd_role.gbytes_per_s
        )
        await self.clock.sleep_until(self.clock.now() + delay)
        return pd.handed_over(params.prompt_tokens)

    def _handover(self, params: openai.Params) -> dict[str, object] | None:
        """Prefill role asked to leave decoding to another engine: the fields a decode engine
        needs to pull the KV, shaped as vLLM's NixlConnector answers them."""
        transfer = params.kv_transfer_params or {}
        if self.pd_role is None or self.pd_role.role != "prefill":
            return None
        if not transfer.get("do_remote_decode"):
            return None
        blocks = -(-params.prompt_tokens // 16)
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": self.engine_id,
            "remote_block_ids": list(range(blocks)),
            "remote_host": self.endpoint.host,
            "remote_port": NIXL_SIDE_CHANNEL_PORT,
            "tp_size": 1,
        }

    async def _stream(
        self, request: web.Request, params: openai.Params, waiter: _Waiter, request_id: str
    ) -> web.StreamResponse:
        seq = waiter.seq
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        fmt = openai.StreamFormatter(
            params.chat, request_id, self._created, self.endpoint.served_model_name, seq.rid
        )
        if params.chat:
            await response.write(fmt.role().encode())
        self._streams.add(waiter)
        sent = 0
        while True:
            await waiter.event.wait()
            waiter.event.clear()
            done = seq.done
            n = seq.generated if done else self.engine.generated(seq)
            out = fmt.tokens(sent, n, seq.finish_reason if done else None) if n > sent else ""
            sent = n
            if done:
                if params.include_usage:
                    out += fmt.usage(params.prompt_tokens, n)
                out += openai.DONE
            if out:
                await response.write(out.encode())
            if done:
                await response.write_eof()
                return response

    async def _tokenize(self, request: web.Request) -> web.Response:
        try:
            body = openai.tokenize_body(await request.json(), self.engine.max_model_len)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return self._error(f"invalid JSON: {err}", 400)
        except openai.BadRequest as err:
            return self._error(str(err), 400)
        return web.json_response(body)

    async def _models(self, _: web.Request) -> web.Response:
        card = {
            "id": self.endpoint.served_model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": self.endpoint.model,
            "parent": None,
            "max_model_len": self.engine.max_model_len,
            "permission": [],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _load(self, _: web.Request) -> web.Response:
        return web.json_response({"server_load": self.in_flight})

    async def _version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=exposition(self._registry), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )


class Fleet:
    """All engine hosts of one process: start them, serve, stop them."""

    def __init__(self, hosts: Sequence[EngineHost], shutdown_timeout: float = 0.0) -> None:
        self.hosts = list(hosts)
        #: like vLLM's ``--shutdown-timeout``: 0 aborts streams on stop, > 0 drains them first
        self.shutdown_timeout = shutdown_timeout
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Bind every endpoint and start the stepping tasks."""
        for host in self.hosts:
            # With vLLM's default ``--shutdown-timeout 0`` (abort) streams are not waited for.
            runner = web.AppRunner(
                host.app,
                access_log=None,
                handle_signals=False,
                shutdown_timeout=max(1.0, self.shutdown_timeout),
            )
            await runner.setup()
            site = web.TCPSite(runner, host.endpoint.host, host.endpoint.port, backlog=1024)
            await site.start()
            self._runners.append(runner)
            self._tasks.append(asyncio.create_task(host.run(), name=f"engine:{host.endpoint}"))
            if host.background_qps > 0:
                self._tasks.append(asyncio.create_task(host.background(), name="background"))
        log.info("serving %d simulated engine(s)", len(self.hosts))

    async def stop(self) -> None:
        """Close listeners and cancel the stepping tasks.

        With a shutdown timeout the engines keep stepping while aiohttp stops listening, closes
        idle keep-alive connections and waits (up to the timeout) for the requests in flight, as
        vLLM drains on SIGTERM; without one the streams are cut at once."""
        drain = self.shutdown_timeout > 0
        if drain:
            await asyncio.gather(*(r.cleanup() for r in self._runners))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not drain:
            for runner in self._runners:
                await runner.cleanup()
        self._tasks.clear()
        self._runners.clear()

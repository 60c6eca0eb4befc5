"""A loopback HTTPS proxy in front of the API server that counts and injects faults.

Why: the operator's behaviour during an API-server outage or under API errors (429 with
Retry-After, 500, requests that never answer, watch streams cut mid-way) can only be proved
by what it actually sends. The proxy terminates TLS with the test bed's own serving
certificate (valid for 127.0.0.1, signed by the test bed CA, so the operator's kubeconfig
only changes its ``server``), forwards each HTTP/1.1 request to the real API server over a
verified TLS connection, and records every request: when, what, whether a fault was
injected and what the client got. Faults are drawn per request from a seeded RNG at the
rates of a :class:`FaultPlan`, which tests may swap while the proxy runs.

When the API server is down the proxy still accepts (it is the client's endpoint), reads
the request, records it as ``upstream_down`` and closes the connection without an answer,
as a dying server would: the record is then the operator's request rate during the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

#: Fault kinds a plan can inject. ``timeout``: the request is read and never answered (the
#: connection is closed after ``FaultPlan.hold_seconds``); ``drop_watch``: a watch stream is
#: forwarded, then cut after a random 0.5-3 s; the others answer with that status.
KINDS = ("429", "500", "timeout", "drop_watch")
_NO_BODY = {204, 304}
_HEAD_LIMIT = 1 << 20


@dataclass(frozen=True)
class FaultPlan:
    """Per-request probabilities of each fault kind (their sum at most 1)."""

    rates: dict[str, float] = field(default_factory=dict)
    #: Only requests whose path starts with one of these (and, if set, whose method is one of
    #: ``methods``) are candidates; empty: every request. A sustained refusal of one object.
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    retry_after_seconds: int = 1
    hold_seconds: float = 40.0
    drop_after: tuple[float, float] = (0.5, 3.0)

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(KINDS)
        if unknown:
            raise ValueError(f"FaultPlan.rates: unknown kinds {sorted(unknown)}; known: {KINDS}")
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError("FaultPlan.rates: the probabilities sum to more than 1")


@dataclass
class Record:
    """One request as the proxy saw it."""

    start: float  # time.monotonic()
    method: str
    path: str  # without the query
    watch: bool
    fault: str = ""  # one of KINDS, or "" when forwarded
    status: int = 0  # what the client got (0: nothing; the connection was closed)
    upstream_down: bool = False
    end: float = 0.0

    def key(self) -> tuple[str, str, bool]:
        return (self.method, self.path, self.watch)


class FaultProxy:
    """Start with :meth:`start` (or as a context manager); stop with :meth:`stop`."""

    def __init__(
        self,
        upstream: str,
        *,
        ca: Path,
        cert: Path,
        key: Path,
        plan: FaultPlan | None = None,
        seed: int = 0,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 443
        self.plan = plan or FaultPlan()
        self.port = 0
        self.records: list[Record] = []
        self.connections: list[float] = []  # accept times
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ctx.load_cert_chain(str(cert), str(key))
        self._server_ctx.set_alpn_protocols(["http/1.1"])  # kubectl would pick h2 otherwise
        self._client_ctx = ssl.create_default_context(cafile=str(ca))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(
                        self._handle, "127.0.0.1", 0, ssl=self._server_ctx, limit=_HEAD_LIMIT
                    )
                )
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or self._thread is None:
            return

        async def shutdown() -> None:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = self._server = self._thread = None

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan

    def write_kubeconfig(self, source: Path, dest: Path) -> Path:
        """A copy of ``source`` whose clusters point at the proxy (same CA, same user)."""
        config: dict[str, Any] = yaml.safe_load(source.read_text())
        for entry in config.get("clusters") or []:
            entry["cluster"]["server"] = self.url
        dest.write_text(yaml.safe_dump(config))
        return dest

    # -- figures --------------------------------------------------------------------
    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    def between(self, start: float, end: float) -> list[Record]:
        return [r for r in self.snapshot() if start <= r.start < end]

    # -- the proxy ------------------------------------------------------------------
    def _draw(self, method: str, path: str, watch: bool) -> str:
        with self._lock:
            plan, roll = self.plan, self._rng.random()
        if plan.paths and not path.startswith(plan.paths):
            return ""
        if plan.methods and method not in plan.methods:
            return ""
        for kind in KINDS:
            rate = plan.rates.get(kind, 0.0)
            if kind == "drop_watch" and not watch:
                continue
            if roll < rate:
                return kind
            roll -= rate
        return ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self.connections.append(time.monotonic())
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return
                method, target, headers = _parse_head(head)
                body = await _read_body(reader, headers)
                parts = urlsplit(target)
                query = parse_qs(parts.query)
                watch = (query.get("watch") or [""])[0] in ("true", "1")
                rec = Record(time.monotonic(), method, parts.path, watch)
                rec.fault = self._draw(method, parts.path, watch)
                with self._lock:
                    self.records.append(rec)
                try:
                    if rec.fault in ("429", "500"):
                        await self._answer(writer, rec)
                        continue
                    if rec.fault == "timeout":
                        await asyncio.sleep(self.plan.hold_seconds)
                        return
                    keep: bool | None = None
                    for attempt in range(2):
                        fresh = upstream is None
                        if upstream is None:
                            upstream = await self._connect()
                            if upstream is None:
                                rec.upstream_down = True
                                return
                        keep = await self._forward(upstream, writer, head, body, rec)
                        if keep is not None:
                            break
                        # The API server closed the connection before answering: an idle
                        # keep-alive it had dropped (retry once on a new one) or a server
                        # that is going away (a fresh connection failed too).
                        upstream[1].close()
                        upstream = None
                        if fresh or attempt:
                            rec.upstream_down = True
                            return
                    if not keep:
                        return
                finally:
                    rec.end = time.monotonic()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            return
        except asyncio.CancelledError:  # stop(): the connection goes with the proxy
            return
        finally:
            if upstream is not None:
                upstream[1].close()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)
            self._tasks.discard(task)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    self.upstream_host, self.upstream_port, ssl=self._client_ctx,
                    limit=_HEAD_LIMIT,
                ),
                10,
            )  # fmt: skip
        except (OSError, TimeoutError, ssl.SSLError):
            return None

    async def _answer(self, writer: asyncio.StreamWriter, rec: Record) -> None:
        code = int(rec.fault)
        reason = "Too Many Requests" if code == 429 else "Internal Server Error"
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": f"injected by the test bed's fault proxy: {reason}",
            "reason": "TooManyRequests" if code == 429 else "InternalError",
            "code": code,
        }
        extra = ""
        if code == 429:
            status["details"] = {"retryAfterSeconds": self.plan.retry_after_seconds}
            extra = f"Retry-After: {self.plan.retry_after_seconds}\r\n"
        payload = json.dumps(status).encode()
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        rec.status = code

    async def _forward(
        self,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        writer: asyncio.StreamWriter,
        head: bytes,
        body: bytes,
        rec: Record,
    ) -> bool | None:
        """Send one request upstream and stream its response back; False closes the client,
        None means the API server closed the connection before it answered."""
        up_r, up_w = upstream
        try:
            up_w.write(head + body)
            await up_w.drain()
            resp_head = await up_r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, OSError):
            return None
        status_line, *lines = resp_head.decode("latin-1").split("\r\n")
        rec.status = int(status_line.split(" ", 2)[1])
        headers = _headers(lines)
        writer.write(resp_head)
        await writer.drain()
        relay = self._relay(up_r, writer, headers, rec)
        if rec.fault == "drop_watch":
            low, high = self.plan.drop_after
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(relay, self._uniform(low, high))
            return False  # cut: the client sees the stream end mid-chunk
        return await relay

    def _uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._rng.uniform(low, high)

    async def _relay(
        self,
        up_r: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        rec: Record,
    ) -> bool:
        if rec.method == "HEAD" or rec.status in _NO_BODY or rec.status < 200:
            return True
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                size_line = await up_r.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                writer.write(size_line)
                if size == 0:
                    while (trailer := await up_r.readuntil(b"\r\n")) != b"\r\n":
                        writer.write(trailer)
                    writer.write(b"\r\n")
                    await writer.drain()
                    return "close" not in headers.get("connection", "")
                writer.write(await up_r.readexactly(size + 2))
                await writer.drain()
        if "content-length" in headers:
            writer.write(await up_r.readexactly(int(headers["content-length"])))
            await writer.drain()
            return "close" not in headers.get("connection", "")
        while chunk := await up_r.read(65536):  # framed by the connection's end
            writer.write(chunk)
            await writer.drain()
        return False


def _headers(lines: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            found[name.strip().lower()] = value.strip().lower()
    return found


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    return method, target, _headers(lines)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ValueError("chunked request bodies are not supported by the fault proxy")
    return await reader.readexactly(int(headers.get("content-length", "0") or 0))


def retries(records: list[Record], window: float = 60.0) -> list[float]:
    """For each injected fault, the delay until the client sent the same request again (within
    ``window`` seconds): the retries a client made and the backoff it waited."""
    delays: list[float] = []
    for i, rec in enumerate(records):
        if not rec.fault:
            continue
        after = rec.end or rec.start
        for later in records[i + 1 :]:
            if later.start - after > window:
                break
            if later.key() == rec.key() and later.start >= after:
                delays.append(later.start - after)
                break
    return delays

"""A minimal keep-alive HTTP/1.1 client on raw ``asyncio.Protocol``, for streamed POSTs only.

Why not aiohttp or httpx: measured on one core against the same fake server (docs/benchmarks.md,
benchmarks/results/loadgen-per-core.json) the per-request and per-chunk overhead of a general
client (StreamReader, header multidicts, per-request coroutines and timeouts) dominates once the
server streams ~1,000 requests/s x 128 chunks. Here a request is a callback chain instead: write
pre-encoded bytes, decode ``Transfer-Encoding: chunked`` in ``data_received`` and feed the body
straight into :class:`~tokenscale.bench.sse.SSEStream`. No task per request on a warm connection.

Scope is deliberately narrow: ``POST`` with a JSON body, response bodies chunked, sized or
read-to-close; TLS via ``ssl=``; no redirects, no proxies, no compression.

One retry, and only one kind: a request sent on a *reused* keep-alive connection that the server
closed (EOF or reset) before any byte of a response arrived is sent once more on a fresh
connection. That is the stale-connection race of HTTP/1.1 (RFC 9112 section 9.3.1): a server
closes an idle keep-alive connection (an engine draining on SIGTERM does, as vLLM's server and
the simulator do) while the client's next request is already on its way, so the server never
read it. Go's net/http, curl and urllib3 resend in the same case. A completion has no side
effect but its compute, so a resend can at worst duplicate work the server then discards; it is
counted (``ConnectionPool.resent``, the run's ``self_check.requests_resent``) and the latency
still runs from the first send. Nothing else is retried: a fresh connection that fails, a
response cut after its first byte, a timeout and every HTTP status stay failures.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import time
from collections.abc import Callable
from typing import Final, NamedTuple, cast
from urllib.parse import urlsplit

from tokenscale.bench.sse import SSEStream

_HEAD, _CHUNKED, _SIZED, _TO_EOF = range(4)
_MAX_HEAD: Final = 64 * 1024


class Exchange:
    """One request's outcome, filled in by the connection as bytes arrive."""

    __slots__ = ("end", "error_kind", "error_text", "resent", "status", "stream", "t_sent")

    def __init__(self, t_sent: float) -> None:
        self.t_sent = t_sent
        #: sent once more on a fresh connection after a stale keep-alive one (module docstring)
        self.resent = False
        self.status = 0
        self.stream = SSEStream()
        self.end = 0.0
        self.error_kind: str | None = None
        self.error_text: str | None = None


DoneCallback = Callable[[Exchange], None]


class HttpTarget:
    """Where requests go: parsed once so the hot path only concatenates bytes."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported URL {url!r}: need http(s)://host[:port]")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: _ssl.SSLContext | None = (
            _ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.base_path = parts.path.rstrip("/")
        host_header = self.host if parts.port is None else f"{self.host}:{parts.port}"
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self._head_tail = (
            f"Host: {host_header}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nUser-Agent: tokenscale-bench\r\n{auth}"
        ).encode()

    def request_bytes(self, path: str, body: bytes) -> bytes:
        """Encode a complete ``POST`` request (done ahead of the run, not per send)."""
        start = f"POST {self.base_path}{path} HTTP/1.1\r\n".encode()
        return b"%s%sContent-Length: %d\r\n\r\n%s" % (start, self._head_tail, len(body), body)


class ResponseHead(NamedTuple):
    """What the client needs from a response head: status, connection reuse, body framing."""

    status: int
    keep_alive: bool
    framing: int
    """``_CHUNKED``, ``_SIZED`` (``length`` bytes) or ``_TO_EOF`` (read until the close)."""
    length: int = 0


def parse_head(head: bytes) -> ResponseHead:
    """Parse a response head (status line and header lines, without the blank line).

    Once per response, so it reads every header line rather than searching for exact byte
    strings: names are case-insensitive and the space after the colon optional;
    ``Transfer-Encoding`` and ``Connection`` are comma-separated lists and may repeat; repeated
    or listed ``Content-Length`` values must agree. Framing follows RFC 9112 section 6.3:
    chunked when it is the final transfer coding, else the declared length, else until the
    server closes. Raises ``ValueError`` naming what is wrong (reported as ``protocol_error``).
    """
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    codings: list[bytes] = []
    lengths: set[int] = set()
    tokens: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"bad header line {line[:80]!r}")
        key = name.lower()
        if key == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        elif key == b"content-length":
            for item in value.split(b","):
                if not item.strip().isdigit():
                    raise ValueError(f"bad Content-Length {value.strip()[:40]!r}")
                lengths.add(int(item))
        elif key == b"connection":
            tokens += [t.strip().lower() for t in value.split(b",")]
    status = int(code)
    keep_alive = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
    if codings:
        unsupported = [c for c in codings if c not in (b"chunked", b"identity")]
        if unsupported:
            coding = unsupported[0].decode("ascii", "replace")
            raise ValueError(f"unsupported transfer coding {coding!r} (the client asks for none)")
        if codings[-1] == b"chunked":
            return ResponseHead(status, keep_alive, _CHUNKED)
        return ResponseHead(status, False, _TO_EOF)
    if len(lengths) > 1:
        raise ValueError(f"conflicting Content-Length values {sorted(lengths)}")
    if lengths:
        return ResponseHead(status, keep_alive, _SIZED, lengths.pop())
    return ResponseHead(status, False, _TO_EOF)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; serves one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._ex: Exchange | None = None
        self._done: DoneCallback | None = None
        self._state = _HEAD
        self._raw = b""
        self._left = 0
        self._skip = 0
        self._keep_alive = True
        self._error_body = b""
        self._request = b""
        #: exchanges completed on this connection: > 0 means the next one reuses it
        self._served = 0
        #: whether any byte of the current exchange's response has arrived
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self, request: bytes, ex: Exchange, done: DoneCallback) -> None:
        assert self.transport is not None
        self._ex, self._done = ex, done
        self._state, self._raw, self._left = _HEAD, b"", 0  # _skip may carry a late CRLF
        self._error_body = b""
        self._request, self._answered = request, False
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        ex = self._ex
        if self._skip and (ex is None or self._state == _HEAD):
            # The CRLF that ends the previous chunked body arrived late.
            step = min(self._skip, len(data))
            data, self._skip = data[step:], self._skip - step
            if not data:
                return
        if ex is None:
            if self.transport is not None:
                self.transport.close()  # unsolicited bytes: connection is unusable
            return
        self._answered = True
        now = time.perf_counter()
        state = self._state
        if state == _CHUNKED:
            self._chunked(data, now, ex)
        elif state == _HEAD:
            self._head(data, now, ex)
        elif state == _SIZED:
            self._left -= len(data)
            self._body(data, now, ex)
            if self._left <= 0:
                self._finish(now)
        else:
            self._body(data, now, ex)

    def _head(self, data: bytes, now: float, ex: Exchange) -> None:
        buf = self._raw + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._fail("protocol_error", "response head too large")
            else:
                self._raw = buf
            return
        self._raw = b""
        rest = buf[end + 4 :]
        try:
            head = parse_head(buf[:end])
        except ValueError as exc:
            self._fail("protocol_error", str(exc))
            return
        if head.status < 200:
            # Interim response (100 Continue, 103 Early Hints): the final head follows.
            if rest:
                self._head(rest, now, ex)
            return
        ex.status, self._keep_alive = head.status, head.keep_alive
        if head.status in (204, 304):  # never a body, whatever the headers say
            self._keep_alive = self._keep_alive and not rest
            self._finish(now)
            return
        self._state = head.framing
        if head.framing == _CHUNKED:
            if rest:
                self._chunked(rest, now, ex)
        elif head.framing == _SIZED:
            self._left = head.length - len(rest)
            self._body(rest, now, ex)
            if self._left <= 0:
                self._finish(now)
        elif rest:
            self._body(rest, now, ex)

    def _chunked(self, data: bytes, now: float, ex: Exchange) -> None:
        """Decode ``Transfer-Encoding: chunked``; whole chunks take the short path (one ``find``,
        one ``int``, one slice each), a chunk cut by the read is carried over with ``_left``."""
        buf = self._raw + data if self._raw else data
        n, pos = len(buf), 0
        out: list[bytes] = []
        final = False
        left, skip = self._left, self._skip
        if left:  # finish a chunk whose data was cut by the previous read
            take = min(left, n)
            out.append(buf[:take])
            pos, left = take, left - take
            if not left:
                skip = 2
        if skip and pos < n:
            step = min(skip, n - pos)
            pos, skip = pos + step, skip - step
        while not left and not skip and pos < n:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(buf[pos:eol], 16)
            except ValueError:
                try:
                    size = int(buf[pos:eol].split(b";", 1)[0], 16)  # chunk extensions
                except ValueError:
                    self._fail("protocol_error", "bad chunk size")
                    return
            start = eol + 2
            if size == 0:
                final = True
                skip = max(0, 2 - (n - start))  # the empty trailer's CRLF may come later
                break
            end = start + size
            if end + 2 <= n:
                out.append(buf[start:end])
                pos = end + 2
                continue
            out.append(buf[start : min(end, n)])  # partial chunk: keep the rest for later
            left = max(0, end - n)
            skip = 2 - max(0, n - end) if not left else 0
            pos = n
        self._left, self._skip = left, skip
        self._raw = b"" if final or left or skip else buf[pos:]
        if out:
            self._body(out[0] if len(out) == 1 else b"".join(out), now, ex)
        if final:
            self._finish(now)

    def _body(self, data: bytes, now: float, ex: Exchange) -> None:
        if ex.status == 200:
            ex.stream.feed(data, now)
        elif len(self._error_body) < 4096:
            self._error_body += data

    def _finish(self, now: float) -> None:
        ex, done = self._ex, self._done
        assert ex is not None and done is not None
        self._ex = self._done = None
        self._served += 1
        ex.end = now
        ex.stream.finish(now)
        if ex.status != 200:
            ex.error_kind = f"http_{ex.status}"
            ex.error_text = self._error_body[:512].decode("utf-8", "replace")
        elif ex.stream.error is not None:
            ex.error_kind, ex.error_text = "stream_error", ex.stream.error
        if self._keep_alive and self.transport is not None and not self.transport.is_closing():
            self._pool.release(self)
        elif self.transport is not None:
            self.transport.close()
        done(ex)

    def _fail(self, kind: str, text: str) -> None:
        ex, done = self._ex, self._done
        self._ex = self._done = None
        if self.transport is not None:
            self.transport.close()
        if ex is not None and done is not None:
            ex.end = time.perf_counter()
            ex.error_kind, ex.error_text = kind, text
            done(ex)

    def owns(self, ex: Exchange) -> bool:
        """Whether ``ex`` is the exchange this connection is serving."""
        return self._ex is ex

    def abort(self, kind: str, text: str) -> None:
        """Give up on the current exchange (timeout); the connection is not reused."""
        self._fail(kind, text)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.forget(self)
        ex, done = self._ex, self._done
        if ex is None or done is None:
            return
        if self._served and not self._answered and not ex.resent:
            # The stale keep-alive race (module docstring): the server closed this idle
            # connection as the request went out, so it never read it; once more, fresh.
            self._ex = self._done = None
            self._pool.resend(self._request, ex, done)
            return
        if self._state == _TO_EOF and exc is None:
            self._finish(time.perf_counter())
        else:
            self._fail("disconnected", str(exc) if exc else "connection closed mid-response")


class ConnectionPool:
    """Idle keep-alive connections to one endpoint; opens more on demand (no upper bound:
    the caller's scenario bounds concurrency, exactly as a real client fleet would)."""

    def __init__(self, endpoint: HttpTarget, timeout_s: float = 600.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self.opened = 0
        #: requests sent again after a stale keep-alive connection (module docstring)
        self.resent = 0

    def submit(self, request: bytes, done: DoneCallback) -> Exchange:
        """Send ``request`` now; ``done`` is called exactly once with the filled exchange."""
        ex = Exchange(time.perf_counter())
        loop = asyncio.get_running_loop()

        def finished(ex: Exchange) -> None:
            timer.cancel()
            done(ex)

        timer = loop.call_at(loop.time() + self.timeout_s, self._on_timeout, ex, finished)

        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.start(request, ex, finished)
                return ex
        self._connect(request, ex, finished)
        return ex

    def _connect(self, request: bytes, ex: Exchange, done: DoneCallback) -> None:
        task = asyncio.get_running_loop().create_task(self._open_and_start(request, ex, done))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def resend(self, request: bytes, ex: Exchange, done: DoneCallback) -> None:
        """Send ``request`` again on a new connection (never a pooled one, which could be just
        as stale); called by a connection only for the stale keep-alive case."""
        ex.resent = True
        self.resent += 1
        self._connect(request, ex, done)

    def _conn_factory(self) -> _Conn:
        return _Conn(self)

    async def _open_and_start(self, request: bytes, ex: Exchange, done: DoneCallback) -> None:
        ep = self.endpoint
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(self._conn_factory, ep.host, ep.port, ssl=ep.ssl)
        except OSError as exc:
            if ex.error_kind is not None:
                return  # already reported as a timeout
            ex.end = time.perf_counter()
            ex.error_kind, ex.error_text = "connect_error", str(exc)
            done(ex)
            return
        self.opened += 1
        self._all.add(conn)
        if ex.error_kind is None:  # not timed out while connecting
            conn.start(request, ex, done)
        else:
            self.release(conn)

    def _on_timeout(self, ex: Exchange, done: DoneCallback) -> None:
        text = f"no complete response within {self.timeout_s:g} s"
        for conn in self._all:
            if conn.owns(ex):
                conn.abort("timeout", text)
                return
        # Still connecting: report now; _open_and_start sees error_kind and stands down.
        ex.end = time.perf_counter()
        ex.error_kind, ex.error_text = "timeout", text
        done(ex)

    def release(self, conn: _Conn) -> None:
        self._idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def close(self) -> None:
        """Close every connection and wait for in-flight connects to settle."""
        for task in list(self._pending):
            task.cancel()
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        await asyncio.sleep(0)

"""A fast fake OpenAI-compatible streaming server, for tests and for the per-core client benchmark.

It must be cheaper than any client it is measured against, so it is a bare ``asyncio.Protocol``
with pre-encoded events and one ticker that advances every active stream by one token per tick
(one ``write`` per token per stream, as a real server sends them). It honours ``max_tokens``
(always generates exactly that many, i.e. behaves as if ``ignore_eos`` were set), reports
``usage`` when asked with ``stream_options.include_usage`` and can inject latency and failures.
Loopback use only: ``python -m tokenscale.bench.fakeserver --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Final, cast

_MAX_TOKENS_RE: Final = re.compile(rb'"max_tokens" ?: ?(\d+)')
_INCLUDE_USAGE_RE: Final = re.compile(rb'"include_usage" ?: ?true')
_STREAM_RE: Final = re.compile(rb'"stream" ?: ?true')
_PROMPT_WORDS_RE: Final = re.compile(rb" ")


def _chunk(payload: bytes) -> bytes:
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


_HEAD_SSE: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_TOKEN_COMPLETIONS: Final = _chunk(
    b'{"id":"cmpl-fake","object":"text_completion","created":0,"model":"fake",'
    b'"choices":[{"index":0,"text":" tok","logprobs":null,"finish_reason":null}]}'
)
_TOKEN_CHAT: Final = _chunk(
    b'{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,"model":"fake",'
    b'"choices":[{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":null}]}'
)
_ROLE_CHAT: Final = _chunk(
    b'{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,"model":"fake",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}]}'
)
_DONE: Final = _chunk(b"[DONE]") + b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class FakeConfig:
    """Server behaviour; defaults are "as fast as possible"."""

    default_tokens: int = 128
    ttft_s: float = 0.0
    itl_s: float = 0.0
    fail_every: int = 0  #: every Nth request gets HTTP 500 (0 = never)


class _Stream:
    __slots__ = ("chat", "prompt_tokens", "remaining", "total", "transport", "usage")

    def __init__(
        self, transport: asyncio.Transport, total: int, chat: bool, usage: bool, prompt: int
    ) -> None:
        self.transport = transport
        self.total = self.remaining = total
        self.chat, self.usage, self.prompt_tokens = chat, usage, prompt


class FakeServer:
    """Owns the active streams and the ticker that advances them."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.active: list[_Stream] = []
        self.requests = 0
        #: Streams finished and tokens sent: lets a benchmark harness measure any client.
        self.completed = 0
        self.tokens = 0
        self._wake = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None

    def start_ticker(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def stop(self) -> None:
        """Cancel the ticker (call before closing the loop)."""
        if self._ticker is not None:
            self._ticker.cancel()

    def add(self, stream: _Stream) -> None:
        self.active.append(stream)
        self._wake.set()

    async def _tick_forever(self) -> None:
        itl = self.config.itl_s
        while True:
            if not self.active:
                self._wake.clear()
                await self._wake.wait()
            still: list[_Stream] = []
            for s in self.active:
                if s.transport.is_closing():
                    continue
                s.transport.write(_TOKEN_CHAT if s.chat else _TOKEN_COMPLETIONS)
                s.remaining -= 1
                if s.remaining > 0:
                    still.append(s)
                else:
                    s.transport.write(_final(s))
                    self.completed += 1
                    self.tokens += s.total
            self.active = still
            await asyncio.sleep(itl)


def _final(s: _Stream) -> bytes:
    if not s.usage:
        return _DONE
    usage = (
        b'{"id":"fake","object":"chunk","created":0,"model":"fake","choices":[],'
        b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}'
        % (s.prompt_tokens, s.prompt_tokens + s.total, s.total)
    )
    return _chunk(usage) + _DONE


class _Conn(asyncio.Protocol):
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            idx = head.find(b"content-length:")
            length = int(head[idx + 15 :].split(b"\r\n", 1)[0]) if idx >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self._handle(head.split(b" ", 2), body)

    def _handle(self, line: list[bytes], body: bytes) -> None:
        assert self.transport is not None
        server, cfg = self.server, self.server.config
        method, path = line[0], line[1] if len(line) > 1 else b"/"
        if method == b"get" and path.endswith(b"/stats"):
            self._json(
                200,
                b'{"completed":%d,"tokens":%d}' % (server.completed, server.tokens),
            )
            return
        if method == b"get" and path.endswith(b"/health"):
            self._json(200, b"{}")
            return
        if method == b"get" and path.endswith(b"/models"):
            self._json(200, b'{"object":"list","data":[{"id":"fake","object":"model"}]}')
            return
        if method != b"post" or not path.endswith(b"completions"):
            self._json(404, b'{"error":{"message":"not found"}}')
            return
        server.requests += 1
        if cfg.fail_every and server.requests % cfg.fail_every == 0:
            self._json(500, b'{"error":{"message":"injected failure"}}')
            return
        m = _MAX_TOKENS_RE.search(body)
        total = max(1, int(m.group(1))) if m else cfg.default_tokens
        chat = path.endswith(b"chat/completions")
        prompt = len(_PROMPT_WORDS_RE.findall(body))
        if not _STREAM_RE.search(body):
            text = json.dumps(" tok" * total).encode()
            self._json(
                200,
                b'{"choices":[{"index":0,"text":%s}],"usage":{"prompt_tokens":%d,'
                b'"completion_tokens":%d}}' % (text, prompt, total),
            )
            return
        usage = _INCLUDE_USAGE_RE.search(body) is not None
        self.transport.write(_HEAD_SSE + (_ROLE_CHAT if chat else b""))
        stream = _Stream(self.transport, total, chat, usage, prompt)
        if cfg.ttft_s > 0:
            asyncio.get_running_loop().call_later(cfg.ttft_s, server.add, stream)
        else:
            server.add(stream)

    def _json(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, reason, len(body), body)
        )


async def start(host: str, port: int, config: FakeConfig) -> tuple[asyncio.Server, FakeServer]:
    """Start listening (port 0 picks a free one); returns the asyncio server and the state."""
    state = FakeServer(config)
    state.start_ticker()
    server = await asyncio.get_running_loop().create_server(
        lambda: _Conn(state), host, port, backlog=4096
    )
    return server, state


async def _main(args: argparse.Namespace) -> None:
    cfg = FakeConfig(args.tokens, args.ttft, args.itl, args.fail_every)
    server, _ = await start(args.host, args.port, cfg)
    print(f"listening on {args.host}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Command-line entry: a standalone fake server for manual runs and benchmarks."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tokens", type=int, default=128, help="tokens when max_tokens is absent")
    p.add_argument("--ttft", type=float, default=0.0)
    p.add_argument("--itl", type=float, default=0.0)
    p.add_argument("--fail-every", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()

"""The stale keep-alive race, on real loopback sockets: a server closes an idle keep-alive
connection (as a draining engine does) while the client's next request is already on it.

Found by the rollout drill (issue 18, docs/rollouts.md): during an in-place rollout 1-3 of 165
benchmark requests failed as ``disconnected`` although the leaving engine drained its streams.
The client resends such a request once on a fresh connection, and only that case: every other
failure stays a failure (the checks below that nothing else is retried can fail).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tokenscale.bench.httpclient import ConnectionPool, Exchange, HttpTarget

BODY = (
    b'data: {"choices":[{"index":0,"text":" Hello","finish_reason":null}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\n'
    b"data: [DONE]\n\n"
)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


@dataclass
class Server:
    """Answers requests; ``close_after[k]`` = after how many answers connection k is closed
    (without reading further), ``cut_head`` = on that close, send the first bytes of a head."""

    close_after: dict[int, int] = field(default_factory=dict)
    cut_head: bool = False
    requests: list[int] = field(default_factory=list)  # connection index of each request read
    port: int = 0
    _conns: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        k, self._conns = self._conns, self._conns + 1
        answered = 0
        try:
            while True:
                if answered == self.close_after.get(k, -1):
                    if self.cut_head:
                        # what a reset mid-answer looks like
                        await reader.readuntil(b"\r\n\r\n")
                        writer.write(OK[:10])
                        await writer.drain()
                    return
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests.append(k)
                writer.write(OK)
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield srv


async def two_back_to_back(srv: Server) -> tuple[list[Exchange], ConnectionPool]:
    """The second request goes out on the first one's connection in the callback that reports
    the first answer: before the client can have seen the server's close (the race)."""
    target = HttpTarget(f"http://127.0.0.1:{srv.port}")
    pool = ConnectionPool(target, timeout_s=10)
    request = target.request_bytes("/v1/completions", b"{}")
    done: list[Exchange] = []
    finished = asyncio.get_running_loop().create_future()

    def second(ex: Exchange) -> None:
        done.append(ex)
        if len(done) == 2:
            finished.set_result(None)

    def first(ex: Exchange) -> None:
        done.append(ex)
        pool.submit(request, second)

    pool.submit(request, first)
    await asyncio.wait_for(finished, 10)
    await pool.close()
    return done, pool


async def test_request_on_a_connection_closed_before_any_answer_is_resent_once(
    server: Server,
) -> None:
    server.close_after = {0: 1}  # the draining engine closes the idle connection
    done, pool = await two_back_to_back(server)
    assert [ex.error_kind for ex in done] == [None, None]
    assert [ex.resent for ex in done] == [False, True]
    assert pool.resent == 1 and pool.opened == 2
    assert server.requests == [0, 1]  # the stale connection never read it: served once, fresh


async def test_only_once_a_fresh_connection_closed_unanswered_is_a_failure(
    server: Server,
) -> None:
    server.close_after = {0: 1, 1: 0}  # the resend's fresh connection is closed unanswered too
    done, pool = await two_back_to_back(server)
    assert done[0].error_kind is None and done[1].error_kind == "disconnected"
    assert pool.resent == 1 and server.requests == [0]


async def test_a_close_after_the_first_byte_of_an_answer_is_never_resent(server: Server) -> None:
    server.close_after, server.cut_head = {0: 1}, True
    done, pool = await two_back_to_back(server)
    assert done[1].error_kind == "disconnected" and not done[1].resent
    assert pool.resent == 0


async def test_first_request_on_a_new_connection_is_never_resent(server: Server) -> None:
    server.close_after = {0: 0}
    target = HttpTarget(f"http://127.0.0.1:{server.port}")
    pool = ConnectionPool(target, timeout_s=10)
    got: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
    pool.submit(target.request_bytes("/v1/completions", b"{}"), got.set_result)
    ex = await asyncio.wait_for(got, 10)
    await pool.close()
    assert ex.error_kind == "disconnected" and pool.resent == 0

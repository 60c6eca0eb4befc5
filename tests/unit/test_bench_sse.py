"""SSE and chunked-transfer parsing at every possible split point.

TCP delivers bytes, not events: a read can end mid-line, mid-"data:", between the CR and LF of a
CRLF or inside a chunk-size line. Parsing must give the same tokens, usage and [DONE] whatever
the split, and only output-bearing events may count as tokens.
"""

from __future__ import annotations

import asyncio

import pytest

from tokenscale.bench.httpclient import ConnectionPool, Exchange, HttpTarget
from tokenscale.bench.sse import SSEStream

COMPLETIONS = (
    b'data: {"choices":[{"index":0,"text":" Hello","finish_reason":null}]}\n\n'
    b'data: {"choices":[{"index":0,"text":"","finish_reason":null}]}\n\n'
    b'data: {"choices":[{"index":0,"text":" wor\\"ld","finish_reason":null}]}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}\n\n'
    b"data: [DONE]\n\n"
)
CHAT = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content": "Hi"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def parse(chunks: list[bytes]) -> SSEStream:
    s = SSEStream()
    for k, c in enumerate(chunks):
        s.feed(c, float(k))
    s.finish(float(len(chunks)))
    return s


@pytest.mark.parametrize("payload", [COMPLETIONS, COMPLETIONS.replace(b"\n", b"\r\n")])
def test_every_two_way_split_gives_the_same_result(payload: bytes) -> None:
    whole = parse([payload])
    assert len(whole.arrivals) == 3
    assert (whole.prompt_tokens, whole.completion_tokens, whole.done) == (5, 3, True)
    for cut in range(1, len(payload)):
        s = parse([payload[:cut], payload[cut:]])
        assert len(s.arrivals) == 3, cut
        assert (s.prompt_tokens, s.completion_tokens, s.done, s.error) == (5, 3, True, None)


def test_byte_at_a_time_stamps_each_event_with_its_completing_read() -> None:
    s = parse([bytes([b]) for b in COMPLETIONS])
    first_end = COMPLETIONS.index(b"\n\n") + 1  # index of the read that completed event 1
    assert s.arrivals[0] == float(first_end)
    assert s.done


def test_completions_chunk_with_empty_text_is_a_token_for_ttft() -> None:
    """vLLM streams a completions chunk only for a generated token; a token the detokenizer
    holds back (partial UTF-8, skipped special token) arrives as ``"text":""``. It is the first
    token for TTFT, as in the engine's histogram and ``vllm bench serve`` (measured: 13 of 300
    tiny-model requests started that way, benchmarks/real_engine_agreement.py)."""
    first = b'data: {"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":null}]}\n\n'
    second = b'data: {"choices":[{"index":0,"text":"ab","finish_reason":"length"}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    s = parse([first, second, usage + b"data: [DONE]\n\n"])
    assert list(s.arrivals) == [0.0, 1.0]  # TTFT at the empty-text chunk, not the next one
    assert s.completion_tokens == 2
    # logprobs' "text_offset" key is not a "text" field
    s = parse([b'data: {"choices":[{"text":"x","logprobs":{"text_offset":[0]}}]}\n\n'])
    assert len(s.arrivals) == 1


def test_chat_role_preamble_is_not_a_token_but_reasoning_and_tools_are() -> None:
    s = parse([CHAT])
    assert len(s.arrivals) == 3  # "Hi", reasoning, tool call
    assert s.done and s.completion_tokens is None


def test_multiline_data_error_event_and_missing_final_blank_line() -> None:
    s = parse([b'data: {"error":\ndata: {"message":"boom","code":500}}\n\n', b"data: [DONE]"])
    assert s.error == "boom"
    assert s.done  # flushed by finish()


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def chunked(payload: bytes, size: int) -> bytes:
    out = b""
    for k in range(0, len(payload), size):
        part = payload[k : k + size]
        out += b"%x;ext=1\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


async def exchange_over(raw: bytes, split: int) -> tuple[Exchange, FakeTransport]:
    pool = ConnectionPool(HttpTarget("http://127.0.0.1:9"))
    conn = pool._conn_factory()
    tr = FakeTransport()
    conn.connection_made(tr)
    done: list[Exchange] = []
    ex = Exchange(0.0)
    conn.start(b"REQ", ex, done.append)
    for k in range(0, len(raw), split):
        conn.data_received(raw[k : k + split])
    assert len(done) == 1
    return done[0], tr


@pytest.mark.parametrize("split", [1, 2, 3, 7, 50, 10_000])
async def test_chunked_body_split_anywhere(split: int) -> None:
    raw = RESPONSE_HEAD + chunked(COMPLETIONS, 37)
    ex, tr = await exchange_over(raw, split)
    assert ex.status == 200 and ex.error_kind is None
    assert len(ex.stream.arrivals) == 3 and ex.stream.completion_tokens == 3 and ex.stream.done
    assert tr.written == [b"REQ"] and not tr.closed


async def test_sized_error_response_is_reported_with_status() -> None:
    body = b'{"error":{"message":"overloaded"}}'
    raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    ex, _ = await exchange_over(raw, 5)
    assert (
        ex.error_kind == "http_503" and ex.error_text is not None and "overloaded" in ex.error_text
    )


def test_endpoint_request_bytes() -> None:
    ep = HttpTarget("http://127.0.0.1:8000/base/", api_key="k")
    req = ep.request_bytes("/v1/completions", b"{}")
    assert req.startswith(b"POST /base/v1/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Authorization: Bearer k\r\n" in req and req.endswith(b"Content-Length: 2\r\n\r\n{}")
    with pytest.raises(ValueError):
        HttpTarget("ftp://x")


def test_one_event_line_counts_once_even_with_two_output_fields() -> None:
    s = parse([b'data: {"choices":[{"delta":{"reasoning_content":"a","content":"b"}}]}\n\n'])
    assert len(s.arrivals) == 1


def test_continuous_usage_keeps_the_last_value() -> None:
    events = b"".join(
        b'data: {"choices":[{"text":"x"}],"usage":{"prompt_tokens":3,"completion_tokens":%d}}\n\n'
        % k
        for k in (1, 2, 3)
    )
    s = parse([events + b"data: [DONE]\n\n"])
    assert len(s.arrivals) == 3 and s.completion_tokens == 3 and s.prompt_tokens == 3


async def test_random_chunkings_and_read_splits_agree() -> None:
    import random

    rng = random.Random(7)
    for _ in range(200):
        raw = RESPONSE_HEAD + chunked(COMPLETIONS, rng.randint(1, 80))
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 12)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        pool = ConnectionPool(HttpTarget("http://127.0.0.1:9"))
        conn = pool._conn_factory()
        tr = FakeTransport()
        conn.connection_made(tr)
        done: list[Exchange] = []
        conn.start(b"REQ", Exchange(0.0), done.append)
        for p in pieces:
            conn.data_received(p)
        assert len(done) == 1 and done[0].error_kind is None, cuts
        s = done[0].stream
        assert (len(s.arrivals), s.completion_tokens, s.done) == (3, 3, True), cuts
        assert not tr.closed


async def test_keep_alive_reuse_with_late_trailer_crlf() -> None:
    raw = RESPONSE_HEAD + chunked(COMPLETIONS, 30)
    pool = ConnectionPool(HttpTarget("http://127.0.0.1:9"))
    conn = pool._conn_factory()
    tr = FakeTransport()
    conn.connection_made(tr)
    done: list[Exchange] = []
    conn.start(b"REQ1", Exchange(0.0), done.append)
    conn.data_received(raw[:-2])  # "0\r\n" arrived, the final CRLF not yet
    assert len(done) == 1 and done[0].stream.done
    conn.start(b"REQ2", Exchange(0.0), done.append)
    conn.data_received(raw[-2:] + raw)  # late CRLF glued to the next response
    assert len(done) == 2 and done[1].error_kind is None and done[1].status == 200
    assert len(done[1].stream.arrivals) == 3 and not tr.closed


# Response heads as real servers write them: the client reads header lines, not exact bytes.

BODY = chunked(COMPLETIONS, 40)


async def one_response(head: bytes, body: bytes = BODY) -> tuple[Exchange | None, FakeTransport]:
    """Feed ``head`` + ``body`` at every split; the outcome of the first split (all must agree)."""
    raw = head + body
    outcomes = []
    for split in (1, 5, len(raw)):
        pool = ConnectionPool(HttpTarget("http://127.0.0.1:9"))
        conn = pool._conn_factory()
        tr = FakeTransport()
        conn.connection_made(tr)
        done: list[Exchange] = []
        conn.start(b"REQ", Exchange(0.0), done.append)
        for k in range(0, len(raw), split):
            conn.data_received(raw[k : k + split])
        ex = done[0] if done else None
        outcomes.append(
            (ex and (ex.status, ex.error_kind, len(ex.stream.arrivals)), tr.closed, len(done))
        )
    assert outcomes.count(outcomes[0]) == len(outcomes), outcomes
    return ex, tr


@pytest.mark.parametrize(
    "headers",
    [
        b"transfer-encoding:chunked",  # no space after the colon
        b"TRANSFER-ENCODING:   Chunked  ",
        b"Transfer-Encoding: identity, chunked",  # a list: chunked is the final coding
        b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",  # repeated header
    ],
)
async def test_chunked_framing_from_any_spelling_of_the_header(headers: bytes) -> None:
    ex, tr = await one_response(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n\r\n")
    assert ex is not None and (ex.status, ex.error_kind) == (200, None)
    assert len(ex.stream.arrivals) == 3 and ex.stream.done and not tr.closed


async def test_content_length_without_space_and_connection_list_with_close() -> None:
    body = b'{"error":"busy"}'
    head = b"HTTP/1.1 429 Too Many\r\ncontent-length:%d\r\nConnection: keep-alive, Close\r\n\r\n"
    ex, tr = await one_response(head % len(body), body)
    assert ex is not None and ex.error_kind == "http_429" and ex.error_text == '{"error":"busy"}'
    assert tr.closed  # "close" in the Connection list: never reused


async def test_interim_100_and_103_responses_are_skipped() -> None:
    head = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + RESPONSE_HEAD
    )
    ex, tr = await one_response(head)
    assert ex is not None and (ex.status, ex.error_kind) == (200, None)
    assert len(ex.stream.arrivals) == 3 and not tr.closed


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_bodiless_statuses_finish_at_the_head_and_keep_the_connection(status: bytes) -> None:
    # 304 may carry the Content-Length of the representation it stands for: still no body.
    ex, tr = await one_response(b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n", b"")
    assert ex is not None and ex.error_kind == f"http_{status[:3].decode()}"
    assert not tr.closed


async def test_http_1_0_without_keep_alive_reads_to_close() -> None:
    pool = ConnectionPool(HttpTarget("http://127.0.0.1:9"))
    conn = pool._conn_factory()
    tr = FakeTransport()
    conn.connection_made(tr)
    done: list[Exchange] = []
    conn.start(b"REQ", Exchange(0.0), done.append)
    conn.data_received(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + COMPLETIONS)
    assert not done  # the body ends when the server closes
    conn.connection_lost(None)
    assert len(done) == 1 and done[0].error_kind is None and len(done[0].stream.arrivals) == 3


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked", "unsupported transfer coding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: five", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Type : text/plain", "bad header line"),
        (b"ICY 200 OK", "bad status line"),
    ],
)
async def test_malformed_or_unsupported_heads_are_protocol_errors(
    head: bytes, message: str
) -> None:
    ex, tr = await one_response(head + b"\r\n\r\n")
    assert ex is not None and ex.error_kind == "protocol_error"
    assert ex.error_text is not None and message in ex.error_text and tr.closed

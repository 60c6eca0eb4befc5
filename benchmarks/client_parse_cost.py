"""CPU per streamed response spent parsing it: the bench client's own HTTP parser vs httptools.

Why this exists: the review of December 2026 asked whether ``httptools`` (llhttp, the parser
uvicorn uses) should replace ``bench/httpclient.py``'s hand-written head and chunk parsing. The
end-to-end figure (``loadgen_per_core.py``) mixes parsing with the event loop and syscalls and
varies with the machine's load; this isolates the parsing, in one process with no sockets: a
fixed 128-token chunked response (the Go fake server's bytes) is fed read by read into

* ``tokenscale``: ``httpclient._Conn.data_received`` on a dummy transport (the real code path:
  head parse, chunk decoding, one ``SSEStream.feed`` per read);
* ``httptools``: ``HttpResponseParser.feed_data`` with ``on_body`` collecting the pieces of a read
  and one ``SSEStream.feed`` per read (the same SSE work), if ``httptools`` is importable.

Reads carry 1, 8 or 32 chunks (a busy client reads several events at once). Rounds alternate the
two parsers; the median microseconds per response of each is reported. httptools is not a
dependency; to include it: ``pip install --target /tmp/ht httptools`` and
``PYTHONPATH=/tmp/ht .venv/bin/python benchmarks/client_parse_cost.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenscale.bench import httpclient
from tokenscale.bench.sse import SSEStream

RESULT = Path(__file__).parent / "results" / "client-parse-cost.json"
TOKENS = 128
_TOKEN = (
    b'data: {"id":"cmpl-fake","object":"text_completion","created":0,"model":"fake",'
    b'"choices":[{"index":0,"text":" tok","logprobs":null,"finish_reason":null}]}\n\n'
)
_USAGE = (
    b'data: {"id":"fake","object":"chunk","created":0,"model":"fake","choices":[],'
    b'"usage":{"prompt_tokens":17,"completion_tokens":128,"total_tokens":145}}\n\n'
)
_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Date: Thu, 03 Dec 2026 04:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def response_reads(per_read: int) -> list[bytes]:
    """The response as the client's reads see it: the head, then ``per_read`` chunks a read."""
    body = [_chunk(_TOKEN)] * TOKENS
    reads = [b"".join(body[i : i + per_read]) for i in range(0, TOKENS, per_read)]
    return [_HEAD, *reads, _chunk(_USAGE) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"]


class _Transport(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def tokenscale_parse(reads: list[bytes], n: int) -> float:
    """Microseconds of CPU per response through the bench client's connection protocol."""
    pool = httpclient.ConnectionPool(httpclient.HttpTarget("http://127.0.0.1:9"))
    conn = pool._conn_factory()
    conn.connection_made(_Transport())
    done: list[httpclient.Exchange] = []
    start = time.process_time()
    for _ in range(n):
        conn.start(b"R", httpclient.Exchange(0.0), done.append)
        for data in reads:
            conn.data_received(data)
    cpu = time.process_time() - start
    if len(done) != n or any(len(e.stream.arrivals) != TOKENS for e in done):
        raise RuntimeError("tokenscale parser lost tokens")
    return cpu / n * 1e6


def httptools_parse(module: Any) -> Callable[[list[bytes], int], float]:
    """The same work on httptools: pieces of one read are joined and fed to SSEStream once."""

    class Protocol:
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.done = 0

        def on_body(self, body: bytes) -> None:
            self.parts.append(body)

        def on_message_complete(self) -> None:
            self.done += 1

    def run(reads: list[bytes], n: int) -> float:
        proto = Protocol()
        parser = module.HttpResponseParser(proto)
        streams: list[SSEStream] = []
        start = time.process_time()
        for _ in range(n):
            stream = SSEStream()
            streams.append(stream)
            for data in reads:
                now = time.perf_counter()
                parser.feed_data(data)
                parts = proto.parts
                if parts:
                    stream.feed(parts[0] if len(parts) == 1 else b"".join(parts), now)
                    parts.clear()
            stream.finish(time.perf_counter())
        cpu = time.process_time() - start
        if proto.done != n or any(len(s.arrivals) != TOKENS for s in streams):
            raise RuntimeError("httptools parser lost tokens")
        return cpu / n * 1e6

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--responses", type=int, default=2000, help="responses per round")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    parsers: dict[str, Callable[[list[bytes], int], float]] = {"tokenscale": tokenscale_parse}
    versions: dict[str, str | None] = {"tokenscale": None}
    try:
        ht = importlib.import_module("httptools")
        parsers["httptools"] = httptools_parse(ht)
        versions["httptools"] = f"{getattr(ht, '__version__', 'unknown')} from {ht.__file__}"
    except ImportError as exc:
        versions["httptools"] = f"not importable: {exc}"
    results: dict[str, Any] = {}
    for per_read in (1, 8, 32):
        reads = response_reads(per_read)
        runs: dict[str, list[float]] = {name: [] for name in parsers}
        for r in range(args.rounds):
            order = list(parsers) if r % 2 == 0 else list(reversed(parsers))
            for name in order:
                runs[name].append(parsers[name](reads, args.responses))
        row = {
            name: {
                "us_per_response_median": round(statistics.median(v), 1),
                "us_per_response_min_max": [round(min(v), 1), round(max(v), 1)],
            }
            for name, v in runs.items()
        }
        if "httptools" in runs:
            row["httptools_over_tokenscale"] = round(
                statistics.median(runs["httptools"]) / statistics.median(runs["tokenscale"]), 3
            )
        results[f"{per_read}_chunks_per_read"] = row
        print(per_read, json.dumps(row), flush=True)
    report = {
        "benchmark": "client parse cost",
        "what": f"CPU microseconds per {TOKENS}-token chunked SSE response spent in HTTP parsing "
        "plus SSEStream (one feed per read), in process, no sockets; median of rounds, "
        "parsers alternated",
        "command": ".venv/bin/python benchmarks/client_parse_cost.py"
        + (f" --rounds {args.rounds}" if args.rounds != 7 else "")
        + (f" --responses {args.responses}" if args.responses != 2000 else ""),
        "versions": versions,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

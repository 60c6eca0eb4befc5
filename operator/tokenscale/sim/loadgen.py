"""A small MLPerf-Server-like HTTP load generator for simulated (or real) vLLM engines.

Why in the package: both simulator benchmarks (calibration, fleet scale) and users checking a
simulated pool need the same client: Poisson arrivals, round-robin dispatch over engines (AMD's
MLPerf harness dispatches per GPU), streamed ``/v1/completions`` with ``ignore_eos`` so output
lengths are exact, and client-side TTFT/TPOT as MLPerf defines them. It reads the stream as raw
bytes (no per-token JSON parsing) so it can keep thousands of streams open on one core.
Times are converted to simulated seconds with the server's ``--speed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass

import aiohttp

from .summary import RunSummary
from .workload import Request


def prompt_text(tokens: int) -> str:
    """A prompt the simulator counts as exactly ``tokens`` tokens (4 characters each)."""
    return "tok " * tokens


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """One request as the client saw it (simulated seconds from the run start)."""

    issued: float
    lag: float
    ttft: float
    e2e: float
    output_tokens: int
    error: str = ""

    @property
    def tpot(self) -> float | None:
        """MLPerf TPOT: (latency - first token latency) / (tokens - 1)."""
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def summarise(outcomes: Sequence[RequestOutcome]) -> RunSummary:
    """Tokens/s = output tokens / time the last request finished (LoadGen's Server formula)."""
    ok = [o for o in outcomes if not o.error]
    tokens = sum(o.output_tokens for o in ok)
    end = max((o.issued + o.e2e for o in ok), default=0.0)
    return RunSummary.of(
        requests=len(outcomes),
        completed=len(ok),
        output_tokens=tokens,
        duration_s=end,
        tokens_per_s=tokens / end if end > 0 else 0.0,
        ttfts=[o.ttft for o in ok],
        tpots=[t for o in ok if (t := o.tpot) is not None],
        errors=len(outcomes) - len(ok),
        issue_lags=[o.lag for o in outcomes],
    )


def _usage_tokens(tail: bytes) -> int:
    """``completion_tokens`` from the usage chunk near the end of the stream."""
    start = tail.rfind(b'data: {"id"')
    while start >= 0:
        end = tail.find(b"\n\n", start)
        try:
            chunk = json.loads(tail[start + 6 : end])
        except ValueError:
            chunk = {}
        if isinstance(chunk, dict) and "usage" in chunk:
            return int(chunk["usage"]["completion_tokens"])
        start = tail.rfind(b'data: {"id"', 0, start)
    return 0


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    req: Request,
    t0: float,
    speed: float,
) -> RequestOutcome:
    loop = asyncio.get_running_loop()
    body = {
        "model": model,
        "prompt": prompt_text(req.prompt_tokens),
        "max_tokens": req.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = loop.time()
    issued = (sent - t0) * speed
    lag = issued - req.at
    first = -1.0
    tail = b""
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                return RequestOutcome(issued, lag, 0.0, 0.0, 0, f"HTTP {resp.status}")
            async for data in resp.content.iter_any():
                if first < 0:
                    first = loop.time()
                tail = (tail + data)[-2048:]
    except aiohttp.ClientError as err:
        return RequestOutcome(issued, lag, 0.0, 0.0, 0, repr(err))
    done = loop.time()
    return RequestOutcome(
        issued, lag, (first - sent) * speed, (done - sent) * speed, _usage_tokens(tail)
    )


async def run(
    urls: Sequence[str],
    requests: Sequence[Request],
    *,
    model: str,
    speed: float = 1.0,
    max_in_flight: int = 15_000,
) -> list[RequestOutcome]:
    """Issue ``requests`` at their (simulated) arrival times, round robin over engine base URLs.

    Requests that would exceed ``max_in_flight`` open streams are not sent and count as errors
    (each stream is a socket; past the descriptor limit everything fails at once).
    """
    loop = asyncio.get_running_loop()
    with quiet_gc():
        return await _run(loop, urls, requests, model, speed, max_in_flight)


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Make full garbage collections (seconds long with 10k open streams) rare during a run.

    Measured: with ~8k concurrent streams the default thresholds caused 0.3-1.2 s pauses that
    showed up as client-side TTFT. Objects alive at the start are frozen; thresholds restored.
    """
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 1_000, 1_000)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


async def _run(
    loop: asyncio.AbstractEventLoop,
    urls: Sequence[str],
    requests: Sequence[Request],
    model: str,
    speed: float,
    max_in_flight: int,
) -> list[RequestOutcome]:
    targets = [u.rstrip("/") + "/v1/completions" for u in urls]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = loop.time()
        tasks = []
        in_flight = [0]
        for i, req in enumerate(requests):
            delay = t0 + req.at / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight[0] >= max_in_flight:
                skipped = RequestOutcome(
                    (loop.time() - t0) * speed, 0.0, 0.0, 0.0, 0, "in-flight cap"
                )
                tasks.append(asyncio.create_task(_done(skipped)))
                continue
            in_flight[0] += 1
            target = targets[i % len(targets)]
            tasks.append(
                asyncio.create_task(
                    _counted(in_flight, _one(session, target, model, req, t0, speed))
                )
            )
        return list(await asyncio.gather(*tasks))


async def _counted(in_flight: list[int], request: Awaitable[RequestOutcome]) -> RequestOutcome:
    try:
        return await request
    finally:
        in_flight[0] -= 1


async def _done(outcome: RequestOutcome) -> RequestOutcome:
    return outcome

"""Executes one run: sends pre-encoded requests on schedule, records everything, checks itself.

Open loop (server/interactive): each request leaves at its planned offset whatever the server
does, so a slow server shows up as latency, not as a lower offered rate. Closed loop (offline):
at most ``concurrency`` requests in flight, the next one leaves when one finishes. Completion is
callback-driven (no task per request) to keep the client's own cost per request small; the
client's CPU time, requests in flight and schedule lag are recorded so the result can say when
the client, not the server, was the bottleneck.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from tokenscale.bench.httpclient import ConnectionPool, Exchange, HttpTarget
from tokenscale.bench.metrics import ITLSketch
from tokenscale.bench.models import RequestRecord, ScheduleLag, SelfCheck, Thresholds
from tokenscale.bench.progress import Progress
from tokenscale.percentiles import percentile_linear


@dataclass(slots=True)
class RunPlan:
    """Everything a run needs, prepared before the clock starts."""

    endpoint: HttpTarget
    requests: Sequence[bytes]  #: complete HTTP requests; send i uses requests[i % len]
    planned: Sequence[float]  #: planned offsets (s) from the run start
    input_tokens: Sequence[int | None] = ()
    concurrency: int | None = None  #: closed-loop bound; None = open loop
    duration_s: float | None = None  #: stop sending after this (closed loop)
    timeout_s: float = 600.0
    label: str = "run"


@dataclass(slots=True)
class RunOutput:
    """Raw outcome of one run."""

    started_at_unix: float
    records: list[RequestRecord]
    itl: ITLSketch
    cpu_seconds: float
    wall_seconds: float
    max_in_flight: int
    mean_in_flight: float
    connections_opened: int
    open_loop: bool
    requests_resent: int = 0


class _State:
    """Mutable counters touched by the completion callback (hot path)."""

    __slots__ = ("area", "done", "in_flight", "last_change", "max_in_flight", "next", "out_tokens")

    def __init__(self, t0: float) -> None:
        self.in_flight = self.max_in_flight = self.done = self.next = self.out_tokens = 0
        self.area = 0.0
        self.last_change = t0


async def execute(
    plan: RunPlan, *, progress: bool = False, trace: IO[str] | None = None
) -> RunOutput:
    """Run ``plan`` to completion and return raw records and self-check figures. With
    ``trace``, also write one JSON line per request with every output-chunk arrival."""
    loop = asyncio.get_running_loop()
    pool = ConnectionPool(plan.endpoint, plan.timeout_s)
    n = len(plan.planned)
    reqs = plan.requests
    n_bodies = len(reqs)
    finished = loop.create_future()
    results: list[tuple[int, float, Exchange]] = []
    started_at_unix = time.time()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    st = _State(t0)
    open_loop = plan.concurrency is None
    deadline = t0 + plan.duration_s if plan.duration_s else None

    def send(i: int) -> None:
        now = time.perf_counter()
        st.area += st.in_flight * (now - st.last_change)
        st.last_change = now
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        ex = pool.submit(reqs[i % n_bodies], lambda ex: on_done(i, ex))
        results.append((i, plan.planned[i], ex))

    def on_done(i: int, ex: Exchange) -> None:
        now = ex.end or time.perf_counter()
        st.area += st.in_flight * (now - st.last_change)
        st.last_change = now
        st.in_flight -= 1
        st.done += 1
        st.out_tokens += ex.stream.completion_tokens or len(ex.stream.arrivals)
        if not open_loop and st.next < n and (deadline is None or now < deadline):
            st.next += 1
            send(st.next - 1)
        if st.in_flight == 0 and (st.next >= n or not open_loop) and not finished.done():
            finished.set_result(None)

    ticker = Progress(plan.label, n, lambda: (st.next, st.done, st.in_flight, st.out_tokens), t0)
    if progress:
        ticker.start()
    try:
        if open_loop:
            for i, offset in enumerate(plan.planned):
                delay = t0 + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                st.next = i + 1
                send(i)
        else:
            first = min(plan.concurrency or 1, n)
            st.next = first
            for i in range(first):
                send(i)
        if n and not finished.done():
            await finished
    finally:
        ticker.stop()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        await pool.close()

    itl = ITLSketch()
    records = [_record(i, planned, ex, t0, itl, plan.input_tokens) for i, planned, ex in results]
    if trace is not None:
        _write_trace(trace, plan.label, results, t0)
    records.sort(key=lambda r: r.i)
    return RunOutput(
        started_at_unix=started_at_unix,
        records=records,
        itl=itl,
        cpu_seconds=cpu,
        wall_seconds=wall,
        max_in_flight=st.max_in_flight,
        mean_in_flight=st.area / wall if wall > 0 else 0.0,
        connections_opened=pool.opened,
        requests_resent=pool.resent,
        open_loop=open_loop,
    )


def _write_trace(
    out: IO[str], label: str, results: Sequence[tuple[int, float, Exchange]], t0: float
) -> None:
    """Per-request chunk timeline: offsets (ms) from the send, for offline analysis."""
    for i, planned, ex in sorted(results, key=lambda r: r[0]):
        sent = ex.t_sent
        line = {
            "run": label,
            "i": i,
            "planned_s": round(planned, 6),
            "sent_s": round(sent - t0, 6),
            "chunks_ms": [round((t - sent) * 1000, 3) for t in ex.stream.arrivals],
            "end_ms": round((ex.end - sent) * 1000, 3) if ex.end else None,
            "error": ex.error_kind,
        }
        out.write(json.dumps(line, separators=(",", ":")) + "\n")


def _record(
    i: int,
    planned: float,
    ex: Exchange,
    t0: float,
    itl: ITLSketch,
    input_tokens: Sequence[int | None],
) -> RequestRecord:
    s = ex.stream
    arr = s.arrivals
    error = ex.error_kind
    if error is None and not s.done and not arr:
        error = "empty_stream"
    elif error is None and not s.done:
        error = "incomplete_stream"
    if len(arr) > 1:
        itl.add_many(b - a for a, b in itertools.pairwise(arr))
    from_usage = s.completion_tokens is not None
    return RequestRecord(
        i=i,
        planned_s=planned,
        sent_s=ex.t_sent - t0,
        ttft_s=(arr[0] - ex.t_sent) if arr else None,
        last_token_s=(arr[-1] - ex.t_sent) if arr else None,
        e2e_s=(ex.end - ex.t_sent) if ex.end else None,
        input_tokens=s.prompt_tokens
        if s.prompt_tokens is not None
        else (input_tokens[i % len(input_tokens)] if input_tokens else None),
        output_tokens=s.completion_tokens if s.completion_tokens is not None else len(arr),
        from_usage=from_usage,
        chunks=len(arr),
        error=error,
    )


def self_check(out: RunOutput, thresholds: Thresholds) -> SelfCheck:
    """Turn raw run figures into the self-check, with reasons when the client was the limit."""
    reasons: list[str] = []
    cpu_frac = out.cpu_seconds / out.wall_seconds if out.wall_seconds > 0 else 0.0
    if cpu_frac >= thresholds.max_cpu_fraction:
        reasons.append(
            f"client CPU {cpu_frac:.0%} of a core >= {thresholds.max_cpu_fraction:.0%}: "
            "the load generator was the bottleneck (add shards or cores)"
        )
    lag: ScheduleLag | None = None
    offered = delivered = None
    recs = out.records
    if out.open_loop and recs:
        lags = sorted(max(0.0, r.sent_s - r.planned_s) for r in recs)
        lag = ScheduleLag(
            p50=percentile_linear(lags, 50), p99=percentile_linear(lags, 99), max=lags[-1]
        )
        if lag.p99 > thresholds.max_lag_p99_s:
            reasons.append(
                f"p99 schedule lag {lag.p99 * 1000:.1f} ms > "
                f"{thresholds.max_lag_p99_s * 1000:g} ms: requests left late"
            )
        if len(recs) > 1:
            p_span = recs[-1].planned_s - recs[0].planned_s
            s_span = max(r.sent_s for r in recs) - min(r.sent_s for r in recs)
            offered = (len(recs) - 1) / p_span if p_span > 0 else None
            delivered = (len(recs) - 1) / s_span if s_span > 0 else None
            if offered and delivered and delivered < thresholds.min_delivered_fraction * offered:
                reasons.append(
                    f"delivered {delivered:.1f} req/s < "
                    f"{thresholds.min_delivered_fraction:.0%} of offered {offered:.1f} req/s"
                )
    return SelfCheck(
        cpu_seconds=out.cpu_seconds,
        wall_seconds=out.wall_seconds,
        cpu_fraction=cpu_frac,
        max_in_flight=out.max_in_flight,
        mean_in_flight=out.mean_in_flight,
        schedule_lag=lag,
        offered_rps=offered,
        delivered_rps=delivered,
        connections_opened=out.connections_opened,
        requests_resent=out.requests_resent,
        valid=not reasons,
        reasons=reasons,
    )

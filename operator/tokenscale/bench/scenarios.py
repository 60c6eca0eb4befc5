"""Scenarios (offline, server, interactive, concurrency sweep), repeats and shard merging.

Turns a :class:`BenchConfig` into run plans, runs them, and assembles the one
:class:`BenchResult` shape every path produces, so a single run, N repeats, a sweep and merged
shards are all read the same way by the report and by the operator.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import IO

from tokenscale import __version__
from tokenscale.bench import arrivals, datasets, metrics, verdict
from tokenscale.bench import energy as bench_energy
from tokenscale.bench.httpclient import HttpTarget
from tokenscale.bench.models import (
    BenchConfig,
    BenchResult,
    ConcurrencyPoint,
    RepeatSummary,
    RequestRecord,
    RunResult,
    ScheduleLag,
    SelfCheck,
)
from tokenscale.bench.runner import RunOutput, RunPlan, execute, self_check
from tokenscale.percentiles import percentile_linear

PromptSource = Callable[[int], list[datasets.Prompt]]
_OFFLINE_DURATION_CAP = 1_000_000
_MAX_UNIQUE_PROMPTS = 100_000
SPREAD_FIGURES = ("tokens_per_s", "requests_per_s", "ttft_p99_s", "tpot_p99_s")


def _bodies(config: BenchConfig, prompts: Sequence[datasets.Prompt], ep: HttpTarget) -> list[bytes]:
    path = "/v1/chat/completions" if config.api == "chat" else "/v1/completions"
    return [
        ep.request_bytes(
            path,
            datasets.encode(p, api=config.api, model=config.model, ignore_eos=config.ignore_eos),
        )
        for p in prompts
    ]


def _plan(
    config: BenchConfig, source: PromptSource, ep: HttpTarget, concurrency: int | None
) -> RunPlan:
    seed = arrivals.shard_seed(config.seed, config.shard_index)
    if config.scenario in ("server", "interactive"):
        if not config.qps:
            raise ValueError(f"scenario {config.scenario} needs a target qps")
        planned = arrivals.poisson(
            config.requests, config.qps / config.shard_count, seed, config.duration_s
        )
        prompts = source(len(planned))
        return RunPlan(
            ep,
            _bodies(config, prompts, ep),
            planned,
            [p.input_tokens for p in prompts],
            None,
            None,
            config.timeout_s,
            config.scenario,
        )
    n = config.requests or (_OFFLINE_DURATION_CAP if config.duration_s else 1000)
    prompts = source(min(n, _MAX_UNIQUE_PROMPTS))  # longer runs cycle through them
    label = f"offline c={concurrency}" if concurrency else "offline"
    # "All at once" means one connection per request over HTTP/1.1: bounded by open files.
    concurrency = concurrency or min(n, max(1, open_file_budget()))
    return RunPlan(
        ep,
        _bodies(config, prompts, ep),
        arrivals.offline(n),
        [p.input_tokens for p in prompts],
        concurrency,
        config.duration_s,
        config.timeout_s,
        label,
    )


def open_file_budget(reserve: int = 64) -> int:
    """Connections the process may open: raise the soft RLIMIT_NOFILE to the hard limit (as
    load generators do) and keep ``reserve`` descriptors for everything else."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft - reserve


def _run_result(config: BenchConfig, out: RunOutput, concurrency: int | None) -> RunResult:
    duration = metrics.run_duration(out.records)
    return RunResult(
        started_at_unix=out.started_at_unix,
        metrics=metrics.compute(out.records, out.itl, duration, config.sla),
        self_check=self_check(out, config.thresholds),
        concurrency=concurrency,
    )


def _figures(run: RunResult) -> dict[str, float | None]:
    m = run.metrics
    return {
        "tokens_per_s": m.tokens_per_s,
        "requests_per_s": m.requests_per_s,
        "ttft_p99_s": m.ttft.p99,
        "tpot_p99_s": m.tpot.p99,
    }


def repeat_summary(runs: Sequence[RunResult], margin: float) -> RepeatSummary:
    """Spread of each headline figure across repeats; unstable when over ``margin``."""
    figures = {}
    for name in SPREAD_FIGURES:
        values = [_figures(r)[name] for r in runs]
        if all(v is not None for v in values):
            figures[name] = metrics.spread([v for v in values if v is not None])
    unstable = [k for k, f in figures.items() if f.rel_range > margin]
    return RepeatSummary(
        runs=len(runs),
        margin=margin,
        figures=figures,
        stable=not unstable,
        unstable_figures=unstable,
    )


def assemble(
    config: BenchConfig,
    outputs: Sequence[tuple[RunOutput, int | None]],
    *,
    sweep: bool = False,
) -> BenchResult:
    """Build the result from raw run outputs (repeats or sweep points)."""
    runs = [_run_result(config, out, c) for out, c in outputs]
    if sweep:
        head = max(range(len(runs)), key=lambda k: runs[k].metrics.tokens_per_s)
    else:
        order = sorted(range(len(runs)), key=lambda k: runs[k].metrics.tokens_per_s)
        head = order[(len(order) - 1) // 2]  # median (lower median for even counts)
    rep = None
    if len(runs) > 1 and not sweep:
        rep = repeat_summary(runs, config.thresholds.stability_margin)
    valid = all(r.self_check.valid for r in runs)
    reasons = [reason for r in runs for reason in r.self_check.reasons]
    stable = rep.stable if rep else True
    head_out = outputs[head][0]
    v = verdict.decide(
        sla=config.sla,
        metrics=runs[head].metrics,
        records=head_out.records,
        valid=valid,
        invalid_reasons=reasons,
        stable=stable,
        unstable_figures=rep.unstable_figures if rep else (),
    )
    points = None
    if sweep:
        points = [
            ConcurrencyPoint(
                concurrency=r.concurrency or 0,
                tokens_per_s=r.metrics.tokens_per_s,
                requests_per_s=r.metrics.requests_per_s,
                ttft_p50_s=r.metrics.ttft.p50,
                ttft_p99_s=r.metrics.ttft.p99,
                tpot_p99_s=r.metrics.tpot.p99,
                valid=r.self_check.valid,
            )
            for r in runs
        ]
    first, last = outputs[0][0], outputs[-1][0]
    return BenchResult(
        tool_version=__version__,
        config=config,
        started_at=datetime.fromtimestamp(first.started_at_unix, UTC),
        finished_at=datetime.fromtimestamp(last.started_at_unix + last.wall_seconds, UTC),
        metrics=runs[head].metrics,
        self_check=runs[head].self_check,
        valid=valid,
        stable=stable,
        verdict=v,
        runs=runs,
        repeats=rep,
        sweep=points,
        records=head_out.records,
        records_started_at_unix=head_out.started_at_unix,
        itl_histogram=head_out.itl.to_model(),
    )


async def run(
    config: BenchConfig,
    source: PromptSource,
    *,
    progress: bool = False,
    api_key: str | None = None,
    trace: IO[str] | None = None,
) -> BenchResult:
    """Run the configured scenario (with repeats or sweep points) and assemble the result."""
    ep = HttpTarget(config.url, api_key)
    open_file_budget()  # open loop has no cap in flight: allow as many sockets as permitted
    outputs: list[tuple[RunOutput, int | None]] = []
    if config.scenario == "sweep":
        for c in config.concurrency or [1]:
            plan = _plan(config, source, ep, c)
            outputs.append((await execute(plan, progress=progress, trace=trace), c))
        return assemble(config, outputs, sweep=True)
    conc = config.concurrency[0] if config.concurrency else None
    if config.scenario in ("server", "interactive"):
        conc = None
    for _ in range(config.repeats):
        plan = _plan(config, source, ep, conc)
        outputs.append((await execute(plan, progress=progress, trace=trace), conc))
    return assemble(config, outputs)


def merge(results: Sequence[BenchResult]) -> BenchResult:
    """Combine shard results exactly: pool per-request records on one clock, add ITL sketches,
    recompute every figure and the verdict with the same code as a single run; energy is
    combined on the same clock (:func:`tokenscale.bench.energy.merge`)."""
    if not results:
        raise ValueError("nothing to merge")
    t_min = min(_records_start(r) for r in results)
    records: list[RequestRecord] = []
    itl = metrics.ITLSketch()
    checks: list[SelfCheck] = []
    for r in results:
        shift = _records_start(r) - t_min
        base = len(records)
        records.extend(
            rec.model_copy(
                update={
                    "i": base + rec.i,
                    "planned_s": rec.planned_s + shift,
                    "sent_s": rec.sent_s + shift,
                }
            )
            for rec in r.records
        )
        itl.merge(metrics.ITLSketch.from_model(r.itl_histogram))
        checks.append(r.self_check)
    cfg0 = results[0].config
    config = cfg0.model_copy(
        update={
            "shard_index": 0,
            "shard_count": len(results),
            "requests": sum(r.config.requests or len(r.records) for r in results),
        }
    )
    m = metrics.compute(records, itl, metrics.run_duration(records), config.sla)
    check = _merge_checks(checks, records)
    stable = all(r.stable for r in results)
    v = verdict.decide(
        sla=config.sla,
        metrics=m,
        records=records,
        valid=check.valid,
        invalid_reasons=check.reasons,
        stable=stable,
        unstable_figures=["shard repeats"] if not stable else (),
    )
    return BenchResult(
        tool_version=__version__,
        config=config,
        started_at=min(r.started_at for r in results),
        finished_at=max(r.finished_at for r in results),
        metrics=m,
        self_check=check,
        valid=check.valid,
        stable=stable,
        verdict=v,
        runs=[run for r in results for run in r.runs[:1]],
        shards_merged=len(results),
        records=records,
        records_started_at_unix=t_min,
        itl_histogram=itl.to_model(),
        energy=bench_energy.merge([(_records_start(r) - t_min, r.energy) for r in results]),
    )


def _records_start(result: BenchResult) -> float:
    """When the clock of ``result.records`` started (offsets are relative to it)."""
    if result.records_started_at_unix is not None:
        return result.records_started_at_unix
    return result.runs[0].started_at_unix if result.runs else result.started_at.timestamp()


def _merge_checks(checks: Sequence[SelfCheck], records: Sequence[RequestRecord]) -> SelfCheck:
    lags = sorted(max(0.0, r.sent_s - r.planned_s) for r in records)
    open_loop = any(c.schedule_lag is not None for c in checks)
    offered = [c.offered_rps for c in checks if c.offered_rps is not None]
    delivered = [c.delivered_rps for c in checks if c.delivered_rps is not None]
    reasons = [f"shard {k}: {why}" for k, c in enumerate(checks) for why in c.reasons]
    return SelfCheck(
        cpu_seconds=sum(c.cpu_seconds for c in checks),
        wall_seconds=max(c.wall_seconds for c in checks),
        cpu_fraction=max(c.cpu_fraction for c in checks),
        max_in_flight=sum(c.max_in_flight for c in checks),
        mean_in_flight=sum(c.mean_in_flight for c in checks),
        schedule_lag=ScheduleLag(
            p50=percentile_linear(lags, 50), p99=percentile_linear(lags, 99), max=lags[-1]
        )
        if open_loop and lags
        else None,
        offered_rps=sum(offered) if offered else None,
        delivered_rps=sum(delivered) if delivered else None,
        connections_opened=sum(c.connections_opened for c in checks),
        requests_resent=sum(c.requests_resent for c in checks),
        valid=all(c.valid for c in checks),
        reasons=reasons,
    )

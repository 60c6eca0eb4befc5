"""SLA verdict: pass / fail / invalid / unstable, with the failing percentile and value.

Order matters and is deliberate: a result measured by a saturated client says nothing about the
server, so ``invalid`` wins over everything; an unreproducible result is ``unstable`` even if it
happens to be under the limits; only then are the limits checked. Percentiles for the verdict
are computed from exact per-request values at whatever percentile the SLA names, by MLPerf
LoadGen's nearest rank (:func:`~tokenscale.percentiles.percentile_nearest_rank`), so a limit
passes or fails as LoadGen would judge it; the reported figures interpolate (see that module).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenscale.bench.metrics import tpot
from tokenscale.bench.models import BenchSLA, RequestRecord, RunMetrics, SLAFailure, Verdict
from tokenscale.percentiles import percentile_nearest_rank


def fmt_seconds(value: float) -> str:
    """``2.31 s`` or ``212 ms``: the unit a person reads limits in."""
    if value >= 1.0:
        return f"{value:.3g} s"
    return f"{value * 1000:.3g} ms"


def _pct_label(p: float) -> str:
    return f"p{p:g}"


def check_sla(
    sla: BenchSLA, metrics: RunMetrics, records: Sequence[RequestRecord]
) -> list[SLAFailure]:
    """Every limit that ``metrics``/``records`` exceed (empty list = all met)."""
    failures: list[SLAFailure] = []
    ok = [r for r in records if r.error is None]
    p = sla.percentile
    if not ok:
        return [
            SLAFailure(
                metric="errors",
                value=1.0,
                limit=sla.max_error_fraction,
                message="no request completed successfully",
            )
        ]
    series = {
        "TTFT": (sla.ttft_s, sorted(r.ttft_s for r in ok if r.ttft_s is not None)),
        "TPOT": (sla.tpot_s, sorted(t for t in map(tpot, ok) if t is not None)),
    }
    for name, (limit, values) in series.items():
        if limit is None or not values:
            continue
        value = percentile_nearest_rank(values, p)
        if value > limit:
            failures.append(
                SLAFailure(
                    metric=name.lower(),
                    percentile=p,
                    value=value,
                    limit=limit,
                    message=f"{_pct_label(p)} {name} {fmt_seconds(value)} > {fmt_seconds(limit)}",
                )
            )
    if sla.min_tokens_per_s is not None and metrics.tokens_per_s < sla.min_tokens_per_s:
        failures.append(
            SLAFailure(
                metric="tokens_per_s",
                value=metrics.tokens_per_s,
                limit=sla.min_tokens_per_s,
                message=f"{metrics.tokens_per_s:.1f} tok/s < {sla.min_tokens_per_s:g} tok/s",
            )
        )
    err_frac = metrics.requests_failed / max(1, metrics.requests_total)
    if err_frac > sla.max_error_fraction:
        kinds = ", ".join(f"{k}: {v}" for k, v in metrics.errors.items())
        failures.append(
            SLAFailure(
                metric="errors",
                value=err_frac,
                limit=sla.max_error_fraction,
                message=f"{metrics.requests_failed} of {metrics.requests_total} requests "
                f"failed ({kinds})",
            )
        )
    return failures


def decide(
    *,
    sla: BenchSLA | None,
    metrics: RunMetrics,
    records: Sequence[RequestRecord],
    valid: bool,
    invalid_reasons: Sequence[str],
    stable: bool,
    unstable_figures: Sequence[str] = (),
) -> Verdict:
    """The verdict; never ``pass`` for an invalid or unstable result."""
    if not valid:
        return Verdict(status="invalid", reasons=list(invalid_reasons))
    if not stable:
        return Verdict(
            status="unstable",
            reasons=[f"spread across repeats above margin: {', '.join(unstable_figures)}"],
        )
    if sla is None:
        return Verdict(status="no_sla", reasons=["no SLA given; figures only"])
    failures = check_sla(sla, metrics, records)
    if failures:
        return Verdict(status="fail", reasons=[f.message for f in failures], failures=failures)
    label = f"preset {sla.preset}" if sla.preset else "given limits"
    return Verdict(
        status="pass", reasons=[f"all {_pct_label(sla.percentile)} limits met ({label})"]
    )

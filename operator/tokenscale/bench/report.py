"""HTML report from a :class:`BenchResult`: Jinja2 (autoescaped, StrictUndefined) + inline SVG.

The template is package data (``templates/report.html.j2``); plots are computed here from the
per-request records so the report needs nothing but the result file. Jinja is only imported by
this module, which the CLI loads lazily, so running a benchmark does not require it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2
from markupsafe import Markup

from tokenscale.bench import svg
from tokenscale.bench.metrics import tpot
from tokenscale.bench.models import BenchResult, Percentiles, RequestRecord
from tokenscale.percentiles import percentile_linear


def _ms(v: float) -> str:
    return f"{v * 1000:.3g} ms" if v < 1 else f"{v:.3g} s"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tokenscale.bench", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ms"] = lambda v: "-" if v is None else _ms(float(v))
    env.filters["num"] = lambda v, d=1: "-" if v is None else f"{float(v):,.{d}f}"
    env.filters["pct"] = lambda v: "-" if v is None else f"{float(v):.1%}"
    return env


def timeline(
    records: Sequence[RequestRecord], windows: int = 20
) -> dict[str, tuple[list[float], list[float]]]:
    """Latency percentiles per time window (by send time): series name -> (xs, ys)."""
    ok = [r for r in records if r.error is None and r.ttft_s is not None]
    if len(ok) < 2:
        return {}
    t0, t1 = min(r.sent_s for r in ok), max(r.sent_s for r in ok)
    width = (t1 - t0) / windows or 1.0
    buckets: list[list[RequestRecord]] = [[] for _ in range(windows)]
    for r in ok:
        buckets[min(windows - 1, int((r.sent_s - t0) / width))].append(r)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for name, q, fn in (
        ("TTFT p50", 50.0, lambda r: r.ttft_s),
        ("TTFT p99", 99.0, lambda r: r.ttft_s),
        ("TPOT p50", 50.0, tpot),
        ("TPOT p99", 99.0, tpot),
    ):
        xs, ys = [], []
        for k, rs in enumerate(buckets):
            vals = sorted(v for v in map(fn, rs) if v is not None)
            if vals:
                xs.append(t0 + (k + 0.5) * width)
                ys.append(percentile_linear(vals, q))
        series[name] = (xs, ys)
    return series


def charts(result: BenchResult) -> dict[str, Markup]:
    """Every plot of the report as a safe SVG fragment."""
    recs = result.records
    tl = timeline(recs)

    def ms_axis(v: float) -> str:
        return f"{v * 1000:.3g}"

    def sec_axis(v: float) -> str:
        return f"{v:.3g}"

    sla = result.config.sla
    out: dict[str, str] = {
        "ttft_time": svg.line_chart(
            "TTFT percentiles over time", "send time (s)", "TTFT (ms)",
            [(k, *tl[k]) for k in ("TTFT p50", "TTFT p99") if k in tl],
            y_fmt=ms_axis, x_fmt=sec_axis,
        ),
        "tpot_time": svg.line_chart(
            "TPOT percentiles over time", "send time (s)", "TPOT (ms)",
            [(k, *tl[k]) for k in ("TPOT p50", "TPOT p99") if k in tl],
            y_fmt=ms_axis, x_fmt=sec_axis,
        ),
    }  # fmt: skip
    ok = [r for r in recs if r.error is None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpots = [t for t in map(tpot, ok) if t is not None]
    ttft_marks = _marks(result.metrics.ttft, sla.ttft_s if sla else None)
    tpot_marks = _marks(result.metrics.tpot, sla.tpot_s if sla else None)
    out["ttft_hist"] = svg.histogram(
        "TTFT distribution", "TTFT (ms)", ttfts, x_fmt=_ms_span(ttfts), marks=ttft_marks,
    )  # fmt: skip
    out["tpot_hist"] = svg.histogram(
        "TPOT distribution", "TPOT (ms)", tpots, x_fmt=_ms_span(tpots), marks=tpot_marks,
    )  # fmt: skip
    if result.sweep:
        pts = sorted(result.sweep, key=lambda p: p.concurrency)
        out["sweep"] = svg.line_chart(
            "Throughput vs concurrency", "requests in flight (max)", "output tokens/s",
            [("tokens/s", [float(p.concurrency) for p in pts], [p.tokens_per_s for p in pts])],
            markers=True,
        )  # fmt: skip
    if result.replica_sweep:
        pts_r = result.replica_sweep
        t1 = next((p.tokens_per_s for p in pts_r if p.replicas == 1), None)
        series = [("measured", [float(p.replicas) for p in pts_r], [p.tokens_per_s for p in pts_r])]
        if t1:
            series.append(("linear (N·T1)", [float(p.replicas) for p in pts_r],
                           [p.replicas * t1 for p in pts_r]))  # fmt: skip
        out["replicas"] = svg.line_chart(
            "Throughput vs replicas", "replicas", "output tokens/s", series, markers=True
        )
    energy = result.energy
    if energy is not None:  # an empty chart says "no data" when the exporter failed
        out["power"] = svg.line_chart(
            "GPU power over time (mean per GPU)", "time (s)", "power (W)",
            [("W per GPU", energy.power_t_s, energy.power_w_per_gpu)],
            x_fmt=sec_axis,
        )  # fmt: skip
    return {k: Markup(v) for k, v in out.items()}  # noqa: S704 - built from escaped parts


def _ms_span(values: Sequence[float]) -> svg.Fmt:
    if not values:
        return svg.span_format(0.0, 1.0, 1000.0)
    data = sorted(values)
    return svg.span_format(data[0], data[min(len(data) - 1, int(len(data) * 0.999))], 1000.0)


def _marks(p: Percentiles, limit: float | None) -> list[tuple[str, float]]:
    marks = [(f"p50 {_ms(p.p50)}", p.p50)] if p.p50 is not None else []
    if p.p99 is not None:
        marks.append((f"p99 {_ms(p.p99)}", p.p99))
    if limit is not None:
        marks.append((f"limit {_ms(limit)}", limit))
    return marks


def render(result: BenchResult) -> str:
    """The complete, self-contained HTML document."""
    m = result.metrics
    latency_rows: list[tuple[str, Percentiles, str]] = [
        ("TTFT", m.ttft, "send → first output chunk"),
        ("TPOT", m.tpot, "(E2E - TTFT) / (output tokens - 1), per request"),
        ("ITL", m.itl, "every gap between output chunks (±0.5 %)"),
        ("E2E", m.e2e, "send → end of stream"),
    ]
    context: dict[str, Any] = {
        "r": result,
        "s": result.summary(),
        "m": m,
        "latency_rows": latency_rows,
        "charts": charts(result),
    }
    return _env().get_template("report.html.j2").render(**context)

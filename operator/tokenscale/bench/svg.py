"""Tiny inline-SVG charts for the HTML report (no plotting dependency).

Only what the report needs: line charts with several series and a histogram. Every text that
reaches the SVG goes through ``html.escape``; the output is a complete ``<svg>`` element that
the report marks safe.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

W, H = 640, 280
ML, MR, MT, MB = 64, 16, 28, 44
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")

Fmt = Callable[[float], str]


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return float(m * exp)
    return float(10 * exp)


def _axes(title: str, x_label: str, y_label: str, y_max: float, y_fmt: Fmt) -> list[str]:
    e = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{e(title)}" class="chart">',
        f'<text x="{W / 2}" y="16" text-anchor="middle" class="title">{e(title)}</text>',
        f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle">{e(x_label)}</text>',
        f'<text x="14" y="{H / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {H / 2})">{e(y_label)}</text>',
    ]
    for k in range(5):
        y = MT + (H - MT - MB) * (1 - k / 4)
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{ML - 4}" y="{y + 4:.1f}" text-anchor="end">{e(y_fmt(y_max * k / 4))}</text>'
        )
    return out


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    y_fmt: Fmt = lambda v: f"{v:g}",
    x_fmt: Fmt = lambda v: f"{v:g}",
    markers: bool = False,
) -> str:
    """Lines (one per series: name, xs, ys) on shared axes starting at y = 0."""
    xs_all = [x for _, xs, _ in series for x in xs]
    ys_all = [y for _, _, ys in series for y in ys]
    if not xs_all:
        return empty(title)
    x0, x1 = min(xs_all), max(xs_all)
    x1 = x1 if x1 > x0 else x0 + 1
    y_max = _nice_max(max(ys_all))
    pw, ph = W - ML - MR, H - MT - MB

    def px(x: float) -> float:
        return ML + pw * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return MT + ph * (1 - y / y_max)

    out = _axes(title, x_label, y_label, y_max, y_fmt)
    for k in range(5):
        xv = x0 + (x1 - x0) * k / 4
        out.append(
            f'<text x="{px(xv):.1f}" y="{H - MB + 16}" text-anchor="middle">'
            f"{html.escape(x_fmt(xv))}</text>"
        )
    for idx, (name, xs, ys) in enumerate(series):
        color = COLORS[idx % len(COLORS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        if markers:
            out.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>'
                for x, y in zip(xs, ys, strict=True)
            )
        out.append(
            f'<text x="{ML + 8 + 150 * idx}" y="{MT + 12}" fill="{color}">'
            f"&#9632; {html.escape(name)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def histogram(
    title: str,
    x_label: str,
    values: Sequence[float],
    *,
    bins: int = 30,
    x_fmt: Fmt | None = None,
    marks: Sequence[tuple[str, float]] = (),
) -> str:
    """Histogram of ``values`` (clipped at the 99.9th percentile) with labelled vertical marks;
    ``x_fmt`` defaults to a span-aware formatter."""
    if not values:
        return empty(title)
    data = sorted(values)
    lo, hi = data[0], data[min(len(data) - 1, int(len(data) * 0.999))]
    hi = hi if hi > lo else lo + max(abs(lo) * 0.1, 1e-6)
    x_fmt = x_fmt or span_format(lo, hi)
    counts = [0] * bins
    for v in data:
        counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
    y_max = _nice_max(max(counts))
    pw, ph = W - ML - MR, H - MT - MB
    out = _axes(title, x_label, "requests", y_max, lambda v: f"{v:g}")
    bw = pw / bins
    for i, c in enumerate(counts):
        h = ph * c / y_max
        out.append(
            f'<rect x="{ML + i * bw:.1f}" y="{MT + ph - h:.1f}" width="{bw - 1:.1f}" '
            f'height="{h:.1f}" fill="{COLORS[0]}"/>'
        )
    for k in range(5):
        xv = lo + (hi - lo) * k / 4
        out.append(
            f'<text x="{ML + pw * k / 4:.1f}" y="{H - MB + 16}" text-anchor="middle">'
            f"{html.escape(x_fmt(xv))}</text>"
        )
    for idx, (name, xv) in enumerate(marks):
        if lo <= xv <= hi:
            x = ML + pw * (xv - lo) / (hi - lo)
            color = COLORS[(idx + 1) % len(COLORS)]
            right = x > ML + 0.7 * pw  # keep labels near the right edge inside the plot
            out.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MT}" y2="{MT + ph}" stroke="{color}" '
                f'stroke-dasharray="4 3"/><text x="{x - 3 if right else x + 3:.1f}" '
                f'y="{MT + 12 + 14 * idx}" text-anchor="{"end" if right else "start"}" '
                f'fill="{color}">{html.escape(name)}</text>'
            )
    out.append("</svg>")
    return "\n".join(out)


def span_format(lo: float, hi: float, scale: float = 1.0) -> Fmt:
    """Tick formatter with as many decimals as the axis span needs (``scale``: e.g. 1000 for
    seconds shown as ms), so a narrow axis does not print the same label five times."""
    span = abs(hi - lo) * scale
    decimals = 0 if span <= 0 else max(0, min(6, 2 - math.floor(math.log10(span))))
    return lambda v: f"{v * scale:.{decimals}f}"


def empty(title: str) -> str:
    """A placeholder panel when there is nothing to plot."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 60" class="chart">'
        f'<text x="{W / 2}" y="34" text-anchor="middle">{html.escape(title)}: no data</text></svg>'
    )

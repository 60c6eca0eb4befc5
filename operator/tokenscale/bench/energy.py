"""Energy over a benchmark's measured window, from AMD Device Metrics Exporter endpoints.

Why sampled during the run and not read once at both ends: the report plots power over time,
and the peak per GPU needs the samples; the joules still come from the exporter's energy counter
(differences between consecutive samples, a decrease being a reset), so they do not depend on the
sampling interval. The window is the whole benchmark call (every repeat), and so are the output
tokens it is divided by.

Never fatal: an exporter that is down or answers garbage leaves ``EnergyResult.reason`` set and
the benchmark's own figures untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, ConfigDict, Field

from tokenscale.power import EnergyParseError, GpuReading, joules_between, parse_exporter


class EnergyResult(BaseModel):
    """Energy of the GPUs serving the benchmark over its measured window."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(default=0, description="GPUs whose readings were used.")
    window_s: float = Field(default=0.0, description="First to last reading (s).")
    joules: float | None = Field(default=None, description="Energy over the window (J).")
    output_tokens: int = Field(default=0, description="Output tokens of every run.")
    tokens_per_joule: float | None = Field(default=None, description="Output tokens per joule.")
    joules_per_token: float | None = Field(default=None, description="Joules per output token.")
    avg_watts_per_gpu: float | None = Field(
        default=None,
        description="Mean of the sampled gpu_power_usage per GPU (W); not joules / wall time, "
        "which a simulator running faster than real time would inflate.",
    )
    peak_watts_per_gpu: float | None = Field(
        default=None, description="Highest reading of any one GPU (W)."
    )
    power_t_s: list[float] = Field(
        default_factory=list, description="Sample times from the window start (s)."
    )
    power_w_per_gpu: list[float] = Field(
        default_factory=list, description="Mean power per GPU at each sample time (W)."
    )
    reason: str = Field(default="", description="Why figures are missing, when they are.")


@dataclass
class EnergyRecorder:
    """Samples exporter ``/metrics`` URLs every ``interval_s`` until stopped."""

    client: httpx.AsyncClient
    urls: Sequence[str]
    pods: frozenset[str] = frozenset()
    """Only GPUs held by these pods (empty: every GPU the exporters report)."""
    interval_s: float = 1.0
    timeout_s: float = 2.0
    samples: list[tuple[float, list[GpuReading]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def _read(self, url: str) -> list[GpuReading]:
        response = await self.client.get(url, timeout=self.timeout_s)
        response.raise_for_status()
        return parse_exporter(response.text)

    async def sample(self) -> None:
        """One reading of every URL; a failure is recorded, never raised."""
        t = time.monotonic()
        readings: list[GpuReading] = []
        for url, got in zip(
            self.urls,
            await asyncio.gather(*(self._read(u) for u in self.urls), return_exceptions=True),
            strict=True,
        ):
            if isinstance(got, httpx.HTTPError | EnergyParseError):
                self.errors.append(f"{url}: {type(got).__name__}: {got}")
                return
            if isinstance(got, BaseException):
                raise got
            readings.extend(r for r in got if not self.pods or r.pod in self.pods)
        self.samples.append((t, readings))

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set, then once more (the window's end)."""
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        await self.sample()


def summarise(
    samples: Sequence[tuple[float, Sequence[GpuReading]]], output_tokens: int, errors: Sequence[str]
) -> EnergyResult:
    """The figures from complete samples (pure)."""
    if errors:
        return EnergyResult(output_tokens=output_tokens, reason=f"exporter: {errors[0]}")
    if len(samples) < 2:
        return EnergyResult(output_tokens=output_tokens, reason="fewer than two exporter readings")
    keys = {r.key for _, readings in samples for r in readings}
    if not keys:
        return EnergyResult(output_tokens=output_tokens, reason="no exporter series for the pods")
    joules = 0.0
    last: dict[tuple[str, str], float] = {}
    peak = 0.0
    times: list[float] = []
    watts: list[float] = []
    t0 = samples[0][0]
    for t, readings in samples:
        per_gpu = [r.watts for r in readings if r.watts is not None]
        if per_gpu:
            times.append(round(t - t0, 3))
            watts.append(round(sum(per_gpu) / len(per_gpu), 1))
            peak = max(peak, *per_gpu)
        for r in readings:
            if r.energy_uj is None:
                continue
            if r.key in last:
                joules += joules_between(last[r.key], r.energy_uj)
            last[r.key] = r.energy_uj
    window = samples[-1][0] - t0
    gpus = len(keys)
    return EnergyResult(
        gpus=gpus,
        window_s=round(window, 3),
        joules=round(joules, 3),
        output_tokens=output_tokens,
        tokens_per_joule=round(output_tokens / joules, 5) if joules else None,
        joules_per_token=round(joules / output_tokens, 5) if output_tokens else None,
        avg_watts_per_gpu=round(sum(watts) / len(watts), 1) if watts else None,
        peak_watts_per_gpu=round(peak, 1) if watts else None,
        power_t_s=times,
        power_w_per_gpu=watts,
    )


def merge(parts: Sequence[tuple[float, EnergyResult | None]]) -> EnergyResult | None:
    """Energy of shards run against one service, each given as (its clock start minus the
    earliest shard's, s; its energy); None when no shard recorded energy (pure).

    Every shard of one benchmark reads the same exporters for the same engine pods, so shards
    whose windows overlap measured the same GPUs at the same time: adding their joules would
    count those GPUs once per shard. Overlapping windows therefore count the largest shard's
    joules once; shards that ran one after another add. Output tokens always add: every
    shard's tokens came from those GPUs. Power samples are put on one clock and ordered by time;
    the peak is the highest of any shard.
    """
    if all(e is None for _, e in parts):
        return None
    tokens = sum(e.output_tokens for _, e in parts if e is not None)
    known: list[tuple[float, EnergyResult]] = []
    spans: list[tuple[float, float, float]] = []  # (start, end, joules) on the common clock
    for k, (offset, e) in enumerate(parts):
        if e is None or e.joules is None:
            why = "no energy recorded" if e is None else e.reason or "no joules"
            return EnergyResult(output_tokens=tokens, reason=f"shard {k}: {why}")
        known.append((offset, e))
        spans.append((offset, offset + e.window_s, e.joules))
    joules, group_joules, group_end = 0.0, 0.0, float("-inf")
    for begin, end, shard_joules in sorted(spans):
        if begin > group_end:  # a later shard, after every earlier one finished
            joules, group_joules = joules + group_joules, 0.0
        group_joules = max(group_joules, shard_joules)
        group_end = max(group_end, end)
    joules += group_joules
    points = sorted(
        (round(offset + t, 3), w)
        for offset, e in known
        for t, w in zip(e.power_t_s, e.power_w_per_gpu, strict=True)
    )
    start = min(span[0] for span in spans)
    peaks = [e.peak_watts_per_gpu for _, e in known if e.peak_watts_per_gpu is not None]
    return EnergyResult(
        gpus=max(e.gpus for _, e in known),
        window_s=round(max(span[1] for span in spans) - start, 3),
        joules=round(joules, 3),
        output_tokens=tokens,
        tokens_per_joule=round(tokens / joules, 5) if joules else None,
        joules_per_token=round(joules / tokens, 5) if tokens else None,
        avg_watts_per_gpu=round(sum(w for _, w in points) / len(points), 1) if points else None,
        peak_watts_per_gpu=max(peaks) if peaks else None,
        power_t_s=[round(t - start, 3) for t, _ in points],
        power_w_per_gpu=[w for _, w in points],
    )

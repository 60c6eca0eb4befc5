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

"""Energy per output token from AMD Device Metrics Exporter readings (pure, no I/O).

Why a separate signal and not part of the scaling sample: power data comes from another
component (a DaemonSet, or Prometheus) that may be absent, down or wrong; it must never change a
scaling decision. This module only turns readings into figures and says why when it cannot.

Joules come from the exporter's accumulated energy (``gpu_energy_consumed``, µJ) by differences
between passes, like Prometheus ``increase()``: a value lower than the previous one is a reset
(driver reload, node reboot) and counts from zero. Output tokens over the same pass interval come
from the engines' generation rate of that pass, so both sides of tokens/J cover the same time.
The figures are sums over a sliding window of passes (``window_seconds``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tokenscale.power import GpuReading, joules_between


@dataclass(frozen=True)
class Figures:
    """Energy figures of one pool or of the whole service over the window."""

    watts: float | None = None
    joules: float | None = None
    output_tokens: float | None = None
    window_seconds: float = 0.0
    gpus: int = 0
    reason: str = ""

    @property
    def tokens_per_joule(self) -> float | None:
        """Output tokens per joule (None while unknown or no energy was used)."""
        if self.joules and self.output_tokens is not None:
            return self.output_tokens / self.joules
        return None

    @property
    def joules_per_token(self) -> float | None:
        """Joules per output token (None while unknown or no token was generated)."""
        if self.joules is not None and self.output_tokens:
            return self.joules / self.output_tokens
        return None


@dataclass
class _Pass:
    time: float
    seconds: float
    joules: dict[str, float]
    tokens: dict[str, float]


@dataclass
class EnergyTracker:
    """Per-GPU counter history and a window of per-pool joules and tokens (one per service).

    In memory: losing it on an operator restart costs one pass of "warming".
    """

    window_seconds: float = 60.0
    _last: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    _passes: deque[_Pass] = field(default_factory=deque)
    _watts: dict[str, tuple[float, int]] = field(default_factory=dict)

    def update(
        self,
        now: float,
        readings: Iterable[GpuReading],
        pod_pool: Mapping[str, str],
        namespace: str,
        pool_tokens_per_s: Mapping[str, float | None],
    ) -> None:
        """Fold one pass: ``readings`` from every exporter, ``pod_pool`` this service's pods."""
        joules: dict[str, float] = {}
        watts: dict[str, tuple[float, int]] = {}
        incomplete: set[str] = set()
        seen: set[tuple[str, str]] = set()
        interval = 0.0
        for reading in readings:
            pool = pod_pool.get(reading.pod) if reading.namespace == namespace else None
            if pool is None:
                continue
            seen.add(reading.key)
            w, n = watts.get(pool, (0.0, 0))
            watts[pool] = (w + (reading.watts or 0.0), n + 1)
            if reading.energy_uj is None:
                incomplete.add(pool)
                continue
            previous = self._last.get(reading.key)
            self._last[reading.key] = (now, reading.energy_uj)
            if previous is None:
                incomplete.add(pool)  # a GPU new to the window: the pool counts from next pass
                continue
            interval = max(interval, now - previous[0])
            joules[pool] = joules.get(pool, 0.0) + joules_between(previous[1], reading.energy_uj)
        for key in set(self._last) - seen:
            del self._last[key]
        self._watts = watts
        joules = {p: j for p, j in joules.items() if p not in incomplete}
        if joules and interval > 0:
            tokens = {p: (pool_tokens_per_s.get(p) or 0.0) * interval for p in joules}
            self._passes.append(_Pass(now, interval, joules, tokens))
        while self._passes and self._passes[0].time <= now - self.window_seconds:
            self._passes.popleft()

    def figures(self, pool: str | None = None) -> Figures:
        """Figures of ``pool`` (None: the whole service) over the window."""
        pools = [pool] if pool is not None else sorted(self._watts)
        gpus = sum(self._watts.get(p, (0.0, 0))[1] for p in pools)
        if not gpus:
            return Figures(reason="NoExporterData: no exporter series names this pool's pods")
        watts = sum(self._watts[p][0] for p in pools if p in self._watts)
        passes = [p for p in self._passes if any(q in p.joules for q in pools)]
        if not passes:
            return Figures(
                watts=watts,
                gpus=gpus,
                reason="Warming: fewer than two energy readings of every GPU",
            )
        joules = sum(p.joules.get(q, 0.0) for p in passes for q in pools)
        tokens = sum(p.tokens.get(q, 0.0) for p in passes for q in pools)
        seconds = sum(p.seconds for p in passes)
        return Figures(watts, joules, tokens, seconds, gpus)

"""Energy per output token from AMD Device Metrics Exporter readings (pure, no I/O).

Why a separate signal and not part of the scaling sample: power data comes from another
component (a DaemonSet, or Prometheus) that may be absent, down or wrong; it must never change a
scaling decision. This module only turns readings into figures and says why when it cannot.

Joules come from the exporter's accumulated energy (``gpu_energy_consumed``, µJ) by differences
between passes. Output tokens over the same pass interval come
from the engines' generation rate of that pass, so both sides of tokens/J cover the same time.
The figures are sums over a sliding window of passes (``window_seconds``). A counter that went
down (driver reload, node reboot) restarts that GPU's interval: the energy it used before the
reset is unknown, and counting from zero would make tokens/J too good for that pass.
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

    In memory: losing it on an operator restart costs one pass of "warming". A GPU counts from
    its second reading; a reading that cannot be used (the exporter failed: :meth:`gap`, a
    counter reset, an unusable value) starts it over, so no interval mixes a guess with a
    measurement. A pool with a GPU the exporter stopped naming, or a GPU without a usable
    energy value, has unknown figures this pass (the reason names the GPU): a partial sum would
    publish joules too small and tokens/J too good.
    """

    window_seconds: float = 60.0
    _last: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    _passes: deque[_Pass] = field(default_factory=deque)
    #: per pool: board power summed over its GPUs (None: a GPU's power is unknown), GPUs
    _watts: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    #: per live pod: the GPUs the exporter has named for it (a pod keeps its GPUs)
    _gpus: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    #: per pool: why its figures are unknown this pass
    _faults: dict[str, str] = field(default_factory=dict)

    def gap(self) -> None:
        """No readings this pass (the exporter failed): the next reading of every GPU starts a
        new interval instead of spanning the outage with tokens extrapolated from one pass."""
        self._last.clear()

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
        watts: dict[str, tuple[float | None, int]] = {}
        incomplete: set[str] = set()
        faults: dict[str, str] = {}
        seen: set[tuple[str, str]] = set()
        interval = 0.0
        self._gpus = {pod: keys for pod, keys in self._gpus.items() if pod in pod_pool}
        for reading in readings:
            pool = pod_pool.get(reading.pod) if reading.namespace == namespace else None
            if pool is None:
                continue
            seen.add(reading.key)
            self._gpus.setdefault(reading.pod, set()).add(reading.key)
            w, n = watts.get(pool, (0.0, 0))
            watts[pool] = (None if w is None or reading.watts is None else w + reading.watts, n + 1)
            previous = self._last.pop(reading.key, None)
            if reading.energy_uj is None:
                why = "reports no usable energy (NaN, infinite or negative)"
                faults.setdefault(pool, f"EnergyUnknown: {_gpu(reading.key, reading.pod)} {why}")
                continue
            self._last[reading.key] = (now, reading.energy_uj)
            if previous is None or reading.energy_uj < previous[1]:
                # new to the window, or its counter reset at an unknown point of the interval
                # (counting from zero would miss the energy before it): next pass
                incomplete.add(pool)
                continue
            interval = max(interval, now - previous[0])
            joules[pool] = joules.get(pool, 0.0) + joules_between(previous[1], reading.energy_uj)
        for pod, keys in sorted(self._gpus.items()):
            for key in sorted(keys - seen):
                faults.setdefault(
                    pod_pool[pod], f"GpuMissing: {_gpu(key, pod)} is missing from the exporter"
                )
        for key in set(self._last) - seen:
            del self._last[key]
        self._watts, self._faults = watts, faults
        joules = {p: j for p, j in joules.items() if p not in incomplete and p not in faults}
        if joules and interval > 0:
            tokens = {p: (pool_tokens_per_s.get(p) or 0.0) * interval for p in joules}
            self._passes.append(_Pass(now, interval, joules, tokens))
        while self._passes and self._passes[0].time <= now - self.window_seconds:
            self._passes.popleft()

    def figures(self, pool: str | None = None) -> Figures:
        """Figures of ``pool`` (None: the whole service) over the window."""
        pools = [pool] if pool is not None else sorted(set(self._watts) | set(self._faults))
        gpus = sum(self._watts.get(p, (0.0, 0))[1] for p in pools)
        faults = [self._faults[p] for p in pools if p in self._faults]
        if faults:
            return Figures(gpus=gpus, reason="; ".join(faults))
        if not gpus:
            return Figures(reason="NoExporterData: no exporter series names this pool's pods")
        power = [self._watts[p][0] for p in pools if p in self._watts]
        watts = None if None in power else sum(w for w in power if w is not None)
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


def _gpu(key: tuple[str, str], pod: str) -> str:
    return f"GPU {key[1]} on {key[0]} (pod {pod})"

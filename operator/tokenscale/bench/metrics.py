"""Metric arithmetic over per-request records, as vLLM and MLPerf define it.

Kept pure (records in, models out) so it is table-tested by hand and so merged shards and a
single run go through exactly the same code. Reported TTFT/TPOT/E2E percentiles are exact
(sorted per-request values, :func:`~tokenscale.percentiles.percentile_linear` like
``numpy.percentile`` and ``vllm bench serve``; SLA verdicts use LoadGen's nearest rank instead,
see :mod:`tokenscale.percentiles`); ITL has one sample per token, so it is kept in a mergeable
log histogram with bounded relative error instead.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from tokenscale.bench.models import (
    BenchSLA,
    FigureSpread,
    LogHistogram,
    Percentiles,
    ReplicaPoint,
    RequestRecord,
    RunMetrics,
)
from tokenscale.percentiles import percentile_linear

QUANTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
ITL_ACCURACY = 0.005
_ZERO = 1e-6


def summarize(values: Iterable[float]) -> Percentiles:
    """Count, mean, min, max and the standard percentiles of ``values``."""
    data = sorted(values)
    if not data:
        return Percentiles(count=0)
    p50, p90, p95, p99, p999 = (percentile_linear(data, q) for q in QUANTILES)
    return Percentiles(
        count=len(data),
        mean=math.fsum(data) / len(data),
        min=data[0],
        max=data[-1],
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        p99_9=p999,
    )


class ITLSketch:
    """Log-bucketed histogram: bucket ``i`` holds (g^(i-1), g^i], g = (1+a)/(1-a).

    Merging adds counts, so the merge of shards is identical to the sketch of the union; any
    quantile is within a = 0.5 % of an exact sample value.
    """

    def __init__(self, accuracy: float = ITL_ACCURACY) -> None:
        self.accuracy = accuracy
        self._log_gamma = math.log((1 + accuracy) / (1 - accuracy))
        self.zeros = 0
        self.buckets: Counter[int] = Counter()
        self.total = 0.0
        self.min: float | None = None
        self.max: float | None = None

    def add_many(self, values: Iterable[float]) -> None:
        """Add samples (seconds)."""
        log_gamma, buckets = self._log_gamma, self.buckets
        for v in values:
            self.total += v
            if self.min is None or v < self.min:
                self.min = v
            if self.max is None or v > self.max:
                self.max = v
            if v <= _ZERO:
                self.zeros += 1
            else:
                buckets[math.ceil(math.log(v) / log_gamma)] += 1

    def merge(self, other: ITLSketch) -> None:
        """Add another sketch's samples (same accuracy required)."""
        if other.accuracy != self.accuracy:
            raise ValueError("cannot merge sketches of different accuracy")
        self.zeros += other.zeros
        self.buckets.update(other.buckets)
        self.total += other.total
        for v in (other.min, other.max):
            if v is not None:
                self.min = v if self.min is None else min(self.min, v)
                self.max = v if self.max is None else max(self.max, v)

    @property
    def count(self) -> int:
        return self.zeros + sum(self.buckets.values())

    def quantile(self, q: float) -> float | None:
        """Value at percentile ``q`` (0-100), the bucket's representative value."""
        n = self.count
        if n == 0:
            return None
        rank = math.floor((n - 1) * q / 100.0 + 0.5)
        if rank < self.zeros:
            return 0.0
        seen = self.zeros
        gamma = math.exp(self._log_gamma)
        for idx in sorted(self.buckets):
            seen += self.buckets[idx]
            if seen > rank:
                value = 2 * gamma**idx / (gamma + 1)
                lo, hi = self.min or value, self.max or value
                return min(max(value, lo), hi)
        return self.max

    def summary(self) -> Percentiles:
        n = self.count
        if n == 0:
            return Percentiles(count=0)
        p50, p90, p95, p99, p999 = (self.quantile(q) for q in QUANTILES)
        return Percentiles(
            count=n,
            mean=self.total / n,
            min=self.min,
            max=self.max,
            p50=p50,
            p90=p90,
            p95=p95,
            p99=p99,
            p99_9=p999,
        )

    def to_model(self) -> LogHistogram:
        return LogHistogram(
            relative_accuracy=self.accuracy,
            zeros=self.zeros,
            buckets=dict(sorted(self.buckets.items())),
            sum=self.total,
            min=self.min,
            max=self.max,
        )

    @classmethod
    def from_model(cls, model: LogHistogram) -> ITLSketch:
        sketch = cls(model.relative_accuracy)
        sketch.zeros = model.zeros
        sketch.buckets.update(model.buckets)
        sketch.total, sketch.min, sketch.max = model.sum, model.min, model.max
        return sketch


def tpot(rec: RequestRecord) -> float | None:
    """MLPerf/vLLM per-request TPOT; None when undefined (error or a single output token)."""
    if rec.error is not None or rec.ttft_s is None or rec.e2e_s is None:
        return None
    if rec.output_tokens <= 1:
        return None
    return (rec.e2e_s - rec.ttft_s) / (rec.output_tokens - 1)


def meets_sla(rec: RequestRecord, sla: BenchSLA) -> bool:
    """Whether one request met every latency limit (for goodput)."""
    if rec.error is not None or rec.ttft_s is None:
        return False
    if sla.ttft_s is not None and rec.ttft_s > sla.ttft_s:
        return False
    t = tpot(rec)
    return not (sla.tpot_s is not None and t is not None and t > sla.tpot_s)


def compute(
    records: Sequence[RequestRecord],
    itl: ITLSketch,
    duration_s: float,
    sla: BenchSLA | None = None,
) -> RunMetrics:
    """All headline metrics from per-request records (the one path for runs and merges)."""
    ok = [r for r in records if r.error is None]
    errors = Counter(r.error for r in records if r.error is not None)
    out_tokens = sum(r.output_tokens for r in ok)
    dur = duration_s if duration_s > 0 else float("nan")
    good: float | None = None
    good_frac: float | None = None
    if sla is not None:
        n_good = sum(1 for r in ok if meets_sla(r, sla))
        good = n_good / dur if ok else 0.0
        good_frac = n_good / len(records) if records else 0.0
    return RunMetrics(
        requests_total=len(records),
        requests_ok=len(ok),
        requests_failed=len(records) - len(ok),
        errors=dict(sorted(errors.items())),
        duration_s=duration_s,
        input_tokens=sum(r.input_tokens or 0 for r in records),
        output_tokens=out_tokens,
        output_tokens_from_usage=(sum(r.from_usage for r in ok) / len(ok)) if ok else 0.0,
        tokens_per_s=out_tokens / dur if ok else 0.0,
        requests_per_s=len(ok) / dur if ok else 0.0,
        goodput_requests_per_s=good,
        goodput_fraction=good_frac,
        ttft=summarize(r.ttft_s for r in ok if r.ttft_s is not None),
        tpot=summarize(t for t in map(tpot, ok) if t is not None),
        itl=itl.summary(),
        e2e=summarize(r.e2e_s for r in ok if r.e2e_s is not None),
    )


def run_duration(records: Sequence[RequestRecord]) -> float:
    """First planned send (the run start, offset 0 or earlier) to the last completion."""
    ends = [r.sent_s + r.e2e_s for r in records if r.e2e_s is not None]
    start = min((r.planned_s for r in records), default=0.0)
    return max(ends, default=0.0) - min(0.0, start)


def spread(values: Sequence[float]) -> FigureSpread:
    """Relative range and coefficient of variation of one figure across repeats."""
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / len(values)
    scale = abs(mean) if mean else float("inf")
    return FigureSpread(
        values=list(values),
        mean=mean,
        min=min(values),
        max=max(values),
        rel_range=(max(values) - min(values)) / scale,
        cv=math.sqrt(var) / scale,
    )


def replica_points(throughput_by_replicas: dict[int, float]) -> list[ReplicaPoint]:
    """Per-replica throughput and scaling efficiency ``T_N / (N * T_1)`` (vendor style)."""
    t1 = throughput_by_replicas.get(1)
    return [
        ReplicaPoint(
            replicas=n,
            tokens_per_s=t,
            tokens_per_s_per_replica=t / n,
            scaling_efficiency=(t / (n * t1)) if t1 else None,
        )
        for n, t in sorted(throughput_by_replicas.items())
    ]

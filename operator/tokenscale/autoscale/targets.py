"""Where the per-replica target comes from: the spec, the latest passing benchmark, or config.

Why a separate helper: the target is the single number that trades SLA against GPU-hours, and
status must say where it came from (``MetricsStatus.target_source``). A measured capacity at the
SLA is the honest source; the spec value is the user's word; the GPU catalogue's rough
``tokens_per_second_per_gpu`` is only a bootstrap until a benchmark exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenscale.api.config import GPUSpec
from tokenscale.api.service import ScalingSpec
from tokenscale.api.status import BenchmarkSummary

TOKEN_METRICS = ("generationTokensPerSecond", "totalTokensPerSecond")


@dataclass(frozen=True)
class Target:
    """A per-replica target in the policy metric's unit and where it came from."""

    value: float | None
    source: str
    capacity_per_replica: float | None = None


def latest_passing(history: Sequence[BenchmarkSummary]) -> BenchmarkSummary | None:
    """The most recent benchmark with verdict Pass and a measured per-replica capacity."""
    passing = [
        b
        for b in history
        if b.verdict == "Pass" and b.capacity_per_replica and b.capacity_per_replica > 0
    ]
    if not passing:
        return None
    return max(passing, key=lambda b: (b.completed_at is not None, b.completed_at or 0, b.name))


def target_from_benchmark(benchmark: BenchmarkSummary, headroom: float) -> Target:
    """Capacity at the SLA x headroom, e.g. 12,000 tok/s x 0.8 -> 9,600 tok/s per replica."""
    capacity = benchmark.capacity_per_replica or 0.0
    return Target(capacity * headroom, f"benchmark/{benchmark.name}", capacity)


def resolve_target(
    policy: ScalingSpec,
    *,
    benchmarks: Sequence[BenchmarkSummary] = (),
    gpu: GPUSpec | None = None,
    gpus_per_replica: int = 1,
) -> Target:
    """The per-replica target for one pool.

    Order: ``targetFromBenchmark`` with a passing benchmark (token metrics only, since the
    benchmark measures tokens/s); then ``targetPerReplica``; then, for token metrics, the GPU
    catalogue's ``tokens_per_second_per_gpu`` x GPUs per replica x headroom (source
    ``config/<arch>``). ``value=None`` means no target: the decision holds (``NoTarget``).
    ``capacity_per_replica`` (tokens/s) is filled whenever known, for ranking pools by cost.
    """
    config_capacity = (
        gpu.tokens_per_second_per_gpu * gpus_per_replica
        if gpu is not None and gpu.tokens_per_second_per_gpu
        else None
    )
    bench = latest_passing(benchmarks)
    if policy.target_from_benchmark and bench is not None and policy.metric in TOKEN_METRICS:
        return target_from_benchmark(bench, policy.headroom)
    capacity = bench.capacity_per_replica if bench is not None else config_capacity
    if policy.target_per_replica is not None:
        return Target(policy.target_per_replica, "spec", capacity)
    if config_capacity is not None and policy.metric in TOKEN_METRICS:
        source = f"config/{gpu.arch if gpu else 'unknown'}"
        return Target(config_capacity * policy.headroom, source, config_capacity)
    return Target(None, "none", capacity)

"""How to roll a pool's Deployment to a new pod template, decided from free GPUs and the load.

Why not a fixed knob: ``maxSurge 1, maxUnavailable 0`` needs one spare replica's worth of GPUs,
and a full AMD fleet (the normal, expensive state) has none, so the surge pod stays Pending until
the progress deadline and the change never lands. ``maxSurge 0, maxUnavailable 1`` always
finishes but serves with one replica fewer while each new one loads. The operator knows both the
free GPUs per model and the replicas the current load needs, so it picks per change:

1. a user pin (``spec.rollout.strategy: surge | inPlace``) wins;
2. a replica's worth of GPUs free (device plugin or DRA) → ``surge``: no capacity is lost;
3. otherwise ``inPlace`` when one replica fewer still covers the SLA floor (the replicas the
   current load needs at the scaling target, at least one so the service keeps answering);
4. otherwise ``wait`` (the Deployment is paused on the old version) with the reason, and the
   decision is taken again on every pass until GPUs free up or the load drops.

A service of several pools rolls one pool at a time (:func:`one_pool_at_a_time`): while one
pool's Deployment replaces pods, a change to another pool waits, so the pools not being replaced
carry the load at full strength (and the SLA floor, computed service-wide, stays true).

Pure functions: the controller (:mod:`tokenscale.controller.rollout`) gathers the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from tokenscale.api.service import ScalingMetric
from tokenscale.api.status import MetricsStatus

Strategy = Literal["surge", "inPlace", "wait"]
Pin = Literal["auto", "surge", "inPlace"]

#: A metrics sample older than this says nothing about the load now (the autoscaler is off or
#: stuck); the floor then falls back to one serving replica.
METRICS_MAX_AGE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class RolloutInput:
    """What one pool's decision needs.

    ``free_replicas``: how many more replicas the free GPUs of the pool's model(s) hold (the
    autoscaler's own count); ``None`` when the pool uses no GPUs (CPU). ``ready``: ready replicas
    of the whole service (other pools absorb load while one is replaced); ``pool_ready``: ready
    replicas of this pool. ``floor``: replicas the current load needs (:func:`sla_floor`)."""

    pin: Pin
    gpus_per_replica: int
    free_replicas: int | None
    ready: int
    floor: int
    desired: int
    pool_ready: int


def serving_after_one_down(inp: RolloutInput) -> int:
    """Ready replicas of the service while one is replaced in place.

    ``maxUnavailable 1`` keeps ``desired - 1`` of the pool available, and the Deployment
    controller removes unready old pods first, so a pool already short of ready pods loses none
    of its ready ones."""
    return inp.ready - max(0, min(1, inp.pool_ready - (inp.desired - 1)))


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    """The strategy and why (``reason`` CamelCase for conditions, ``message`` for people)."""

    strategy: Strategy
    reason: str
    message: str


def decide(inp: RolloutInput) -> RolloutDecision:
    """Surge, replace in place, or wait (see the module rules, in order)."""
    gpus = inp.gpus_per_replica
    if inp.pin == "surge":
        note = ""
        if inp.free_replicas == 0:
            note = f"; no {gpus} GPUs free, so the surge pod stays Pending until some free up"
        return RolloutDecision("surge", "Pinned", f"spec.rollout.strategy is surge{note}")
    if inp.pin == "inPlace":
        return RolloutDecision(
            "inPlace",
            "Pinned",
            "spec.rollout.strategy is inPlace: one replica at a time is replaced, serving with "
            "one fewer while it loads",
        )
    if inp.free_replicas is None:
        return RolloutDecision("surge", "NoGPUs", "the pool uses no GPUs: surge one new replica")
    if inp.desired == 0:
        return RolloutDecision("surge", "NoReplicas", "no replicas to replace")
    if inp.free_replicas >= 1:
        return RolloutDecision(
            "surge",
            "CapacityFree",
            f"{inp.free_replicas} replica(s) worth of GPUs free ({gpus} per replica): a new "
            "replica starts before an old one stops",
        )
    left = serving_after_one_down(inp)
    if left == inp.ready:
        return RolloutDecision(
            "inPlace",
            "NoFreeGPU",
            f"no {gpus} GPUs free for a surge replica: replacing in place takes no ready replica "
            "out of service (the pool's unready pods go first)",
        )
    if left >= inp.floor:
        return RolloutDecision(
            "inPlace",
            "NoFreeGPU",
            f"no {gpus} GPUs free for a surge replica: replacing one replica at a time keeps "
            f"{left} ready, at or above the {inp.floor} the current load needs",
        )
    return RolloutDecision(
        "wait",
        "BelowSLAFloor",
        f"no {gpus} GPUs free for a surge replica, and replacing one of {inp.ready} ready "
        f"replicas would leave {left}, below the {inp.floor} the current load needs; waiting for "
        "free GPUs or less load (pin spec.rollout.strategy: inPlace to replace anyway)",
    )


def one_pool_at_a_time(pool: str, rolling: Collection[str]) -> RolloutDecision | None:
    """A ``wait`` for ``pool``'s change while another pool of the service still rolls out
    (``rolling``: pools whose Deployment still replaces pods, or that this pass starts); None
    when the pool may be decided now. The pools roll in spec order as each one finishes."""
    others = sorted(set(rolling) - {pool})
    if not others:
        return None
    names = ", ".join(others)
    return RolloutDecision(
        "wait",
        "OtherPoolRolling",
        f"one pool at a time: pool {names} is still rolling out; this pool follows once it is "
        "done, so the other pools carry the load at full strength meanwhile",
    )


def load_value(metrics: MetricsStatus, metric: ScalingMetric, ready: int) -> float | None:
    """The service's current value of the scaling metric from status.metrics (None: unknown).

    ``kvCacheUsage`` is reported as a mean over ready pods; the target is per replica, so the
    total is the mean times the ready count."""
    if metric == "generationTokensPerSecond":
        return metrics.tokens_per_second
    if metric == "totalTokensPerSecond":
        if metrics.tokens_per_second is None:
            return None
        return metrics.tokens_per_second + (metrics.prompt_tokens_per_second or 0.0)
    if metric == "promptTokensPerSecond":
        return metrics.prompt_tokens_per_second
    if metric == "requestsInFlight":
        if metrics.requests_running is None:
            return None
        return metrics.requests_running + (metrics.requests_waiting or 0.0)
    if metrics.kv_cache_usage is None:
        return None
    return metrics.kv_cache_usage * ready


def sla_floor(
    metrics: MetricsStatus | None, metric: ScalingMetric, ready: int, now: datetime
) -> int:
    """Replicas the current load needs at the scaling target, at least 1.

    From the autoscaler's latest sample in status (the same signal and target it scales on); a
    missing, stale or targetless sample counts as "at least one replica must keep serving"."""
    if metrics is None or not metrics.target_per_replica or metrics.observed_at is None:
        return 1
    if (now - metrics.observed_at).total_seconds() > METRICS_MAX_AGE_SECONDS:
        return 1
    load = load_value(metrics, metric, ready)
    if load is None:
        return 1
    return max(1, math.ceil(load / metrics.target_per_replica - 1e-9))

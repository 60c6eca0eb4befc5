"""The autoscaling decision: a pure function from signal, policy, pools and state to replicas.

``decide`` does no I/O and reads no clock; the loop passes ``now`` (wall-clock seconds, so state
persisted in an annotation survives restarts). Everything the policy promises is here and
table-tested in ``tests/unit/test_autoscale_decision.py``:

1. Load is the policy metric summed over pools and averaged over a window. Served tokens/s
   saturates at capacity and would hide an overload, so token metrics add the queue: its growth
   and its drain over one window, converted to tokens with the window's tokens per finished
   request (:func:`~tokenscale.autoscale.load.window_load`, in :mod:`.load`).
2. HPA ratio rule on the stable window average, with a tolerance band around the ready capacity.
   With a startup time, a rising load is projected that far ahead, a falling one a window ahead.
3. Knative panic mode: when the short-window load is ``panic_threshold`` x the ready capacity,
   scale on the larger of both windows and never scale down until a stable window passes calm.
4. HPA stabilisation: scale up to the lowest, down to the highest recommendation in the windows;
   then step limits, never below what the current (short-window) load needs, never down on
   missing data, min/max clamps, and at most what the cluster can place (``InsufficientGPU``).
5. Several pools: needed capacity fills pools cheapest-per-token first, each up to its max and
   what the cluster can place, after every pool has its ``minReplicas``.
6. Scale to zero only when enabled and the load was zero for the whole grace period; otherwise
   at least one replica is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tokenscale.api.service import ScalingSpec
from tokenscale.autoscale.load import TREND_SECONDS, all_reported, has_data, trend, window_load
from tokenscale.autoscale.rates import Sample
from tokenscale.autoscale.state import Decision, PoolDecision, PoolInput, ReasonCode, ScalerState

_EPS = 1e-9
UNITS: dict[str, str] = {
    "generationTokensPerSecond": "tok/s",
    "totalTokensPerSecond": "tok/s",
    "promptTokensPerSecond": "prompt tok/s",
    "requestsInFlight": "requests",
    "kvCacheUsage": "KV fraction",
}


def history_seconds(policy: ScalingSpec) -> float:
    """How much sample history the loop should pass to :func:`decide`."""
    return float(max(policy.window_seconds, TREND_SECONDS))


def split(capacity: float, pools: Sequence[PoolInput]) -> tuple[dict[str, int], float, bool]:
    """Replicas per pool that provide ``capacity``, cheapest per token first.

    Every pool first gets ``minReplicas``; the rest fills pools in order of cost per unit of
    capacity (ties by name), each up to :attr:`PoolInput.placeable_max`. Returns the replicas,
    the capacity still missing after every pool is full, and whether the cluster's allocatable
    GPUs (not ``maxReplicas``) were what stopped it.
    """
    replicas = {p.name: p.min_replicas for p in pools}
    remaining = capacity - sum(p.min_replicas * p.target_per_replica for p in pools)
    gpu_limited = False
    for pool in sorted(pools, key=lambda p: (p.cost_per_unit, p.name)):
        if remaining <= _EPS:
            break
        need = math.ceil(remaining / pool.target_per_replica - _EPS)
        room = max(0, pool.placeable_max - replicas[pool.name])
        add = min(need, room)
        replicas[pool.name] += add
        remaining -= add * pool.target_per_replica
        if add < need and pool.placeable_max < pool.max_replicas:
            gpu_limited = True
    return replicas, max(0.0, remaining), gpu_limited


def _stabilise(
    history: list[tuple[float, int]], current: int, now: float, policy: ScalingSpec
) -> int:
    """HPA: up to the lowest recommendation in the up window, down to the highest in the down."""
    up = [r for t, r in history if t > now - policy.scale_up_stabilization_seconds]
    down = [r for t, r in history if t > now - policy.scale_down_stabilization_seconds]
    value = current
    up_rec = min(up) if up else history[-1][1]
    down_rec = max(down) if down else history[-1][1]
    if value < up_rec:
        value = up_rec
    if value > down_rec:
        value = down_rec
    return value


def _hold(
    pools: Sequence[PoolInput],
    policy: ScalingSpec,
    state: ScalerState,
    code: ReasonCode,
    why: str,
) -> Decision:
    """Keep current replicas (clamped to min/max), e.g. without metrics or a target."""
    desired = {p.name: min(max(p.replicas, p.min_replicas), p.max_replicas) for p in pools}
    _ensure_one(desired, pools, policy, allow_zero=False)
    decisions = tuple(
        PoolDecision(p.name, p.replicas, desired[p.name], code, f"{p.name}: {why}") for p in pools
    )
    return Decision(pools=decisions, state=state, reason=why)


def _ensure_one(
    desired: dict[str, int],
    pools: Sequence[PoolInput],
    policy: ScalingSpec,
    *,
    allow_zero: bool,
) -> str | None:
    """Keep one replica in the cheapest pool unless scaling to zero is allowed right now."""
    if sum(desired.values()) > 0 or (policy.scale_to_zero and allow_zero):
        return None
    if policy.scale_to_zero and all(p.replicas == 0 for p in pools):
        return None  # already at zero: waking up needs demand from outside the engines
    for pool in sorted(pools, key=lambda p: (p.cost_per_unit, p.name)):
        if pool.max_replicas >= 1:
            desired[pool.name] = 1
            return pool.name
    return None


def _sanitise(state: ScalerState, policy: ScalingSpec, now: float) -> ScalerState:
    """A copy of ``state`` without entries from the future (clock change, other clock base).

    Guards restart safety: if a previous operator used a different clock, stale future times
    would otherwise pin the stabilisation windows and panic mode indefinitely.
    """
    state = state.model_copy(deep=True)
    state.recommendations = {
        pool: [(t, r) for t, r in history if t <= now]
        for pool, history in state.recommendations.items()
    }
    if state.panic_until is not None and state.panic_until > now + policy.window_seconds:
        state.panic_until, state.panic_replicas = None, {}
    if state.idle_since is not None and state.idle_since > now:
        state.idle_since = None
    return state


@dataclass(frozen=True, slots=True)
class _Signal:
    """What the window says about load (rule 1) and where it is heading (rule 2)."""

    complete: bool
    """Every ready pod reported in the latest sample: the load is exact, not a lower bound."""
    stable_load: float
    panic_load: float
    slope: float
    lead: float
    """Longest pool startup: how far ahead a rising load is projected."""
    fall: float
    """How far ahead a falling load is projected."""
    forecast: float
    ready_capacity: float


@dataclass(frozen=True, slots=True)
class _Recommendation:
    """Replicas per pool before stabilisation and limits (rules 2, 3 and 5)."""

    panicking: bool
    within: bool
    needed: float
    replicas: dict[str, int]
    shortage: float
    gpu_limited: bool
    floor: dict[str, int]
    """Replicas the short-window load needs: never scale down below them."""


def decide(
    window: Sequence[Sample],
    policy: ScalingSpec,
    pools: Sequence[PoolInput],
    state: ScalerState,
    now: float,
) -> Decision:
    """Desired replicas per pool with reasons, and the state to persist for the next pass.

    Four phases, each its own function: :func:`_signal` (load and forecast),
    :func:`_recommend` (ratio rule, panic mode, split over pools), :func:`_limit_pool`
    (stabilisation, steps, floors and clamps per pool) and :func:`_explain` (reason codes and
    the message). ``state`` is a sanitised copy that the phases update in this order.
    """
    state = _sanitise(state, policy, now)
    names = [p.name for p in pools]
    if policy.mode != "builtin":
        return _hold(pools, policy, state, "Hold", f"scaling mode is {policy.mode}")
    if not any(p.ready_replicas for p in pools):
        # No engine serves: no evidence of idleness. A service woken from zero (by a benchmark
        # or `kubectl scale`) gets its whole grace period once its engines are up.
        state.idle_since = None
    if any(p.target_per_replica <= 0 for p in pools):
        return _hold(pools, policy, state, "NoTarget", "no target per replica; holding")
    current = [s for s in window if s.time <= now]
    stable = [s for s in current if s.time > now - policy.window_seconds and has_data(s, names)]
    if not stable:
        return _hold(pools, policy, state, "NoMetrics", "no metrics in the window; holding")
    signal = _signal(current, stable, pools, policy, now)
    allow_zero = _track_idle(signal, policy, state, now)
    rec = _recommend(signal, pools, policy, state, now)
    desired: dict[str, int] = {}
    codes: dict[str, ReasonCode] = {}
    for pool in pools:
        desired[pool.name], codes[pool.name] = _limit_pool(pool, signal, rec, policy, state, now)
    kept = _ensure_one(desired, pools, policy, allow_zero=allow_zero)
    if kept is not None:
        codes[kept] = "AtMin"
    return _explain(pools, desired, codes, signal, rec, policy, state)


def _signal(
    current: Sequence[Sample],
    stable: Sequence[Sample],
    pools: Sequence[PoolInput],
    policy: ScalingSpec,
    now: float,
) -> _Signal:
    """Stable and panic-window load, the trend and the forecast (rules 1 and 2)."""
    names = [p.name for p in pools]
    latest = max(current, key=lambda s: s.time)
    drain = float(policy.window_seconds)
    stable_load = window_load(stable, names, policy.metric, drain)
    short = [s for s in stable if s.time > now - policy.panic_window_seconds] or [stable[-1]]
    panic_load = window_load(short, names, policy.metric, drain)
    lead = max((p.startup_seconds for p in pools), default=0.0)
    trend_samples = [s for s in current if s.time > now - TREND_SECONDS and has_data(s, names)]
    slope = trend(trend_samples, names, policy.metric) if lead > 0 else 0.0
    # Up: a new replica serves only after ``lead``, so a rising load is projected that far.
    # Down: removal is immediate, so a falling load is projected one averaging window (the mean
    # lags the load by half of it), never below zero; the stabilisation window still applies.
    fall = min(lead, float(policy.window_seconds))
    forecast = max(0.0, stable_load + max(0.0, slope) * lead + min(0.0, slope) * fall)
    return _Signal(
        complete=all_reported(latest, pools),
        stable_load=stable_load,
        panic_load=panic_load,
        slope=slope,
        lead=lead,
        fall=fall,
        forecast=forecast,
        ready_capacity=sum(p.ready_replicas * p.target_per_replica for p in pools),
    )


def _track_idle(signal: _Signal, policy: ScalingSpec, state: ScalerState, now: float) -> bool:
    """Update ``state.idle_since``; True when scaling to zero is allowed now (rule 6)."""
    idle = signal.stable_load <= _EPS and signal.panic_load <= _EPS and signal.complete
    state.idle_since = (state.idle_since if state.idle_since is not None else now) if idle else None
    return state.idle_since is not None and (
        now - state.idle_since >= policy.scale_to_zero_grace_seconds
    )


def _recommend(
    signal: _Signal,
    pools: Sequence[PoolInput],
    policy: ScalingSpec,
    state: ScalerState,
    now: float,
) -> _Recommendation:
    """Enter, stay in or leave panic mode (updates ``state``), then the replicas per pool."""
    ready_capacity, panic_load = signal.ready_capacity, signal.panic_load
    if ready_capacity > 0:
        panic_ratio = panic_load / ready_capacity
    else:
        panic_ratio = math.inf if panic_load > _EPS else 0.0
    if panic_ratio >= policy.panic_threshold:
        state.panic_until = now + policy.window_seconds
    panicking = state.panic_until is not None and now < state.panic_until
    if not panicking:
        state.panic_until = None
        state.panic_replicas = {}

    ratio = signal.forecast / ready_capacity if ready_capacity > 0 else None
    within = ratio is not None and abs(ratio - 1) <= policy.tolerance and not panicking
    needed = max(signal.forecast, panic_load) if panicking else signal.forecast
    replicas, shortage, gpu_limited = split(needed, pools)
    if within:
        replicas = {p.name: p.replicas for p in pools}
    floor, _, _ = split(panic_load, pools)
    return _Recommendation(
        panicking=panicking,
        within=within,
        needed=needed,
        replicas=replicas,
        shortage=shortage,
        gpu_limited=gpu_limited,
        floor=floor,
    )


def _limit_pool(
    pool: PoolInput,
    signal: _Signal,
    rec: _Recommendation,
    policy: ScalingSpec,
    state: ScalerState,
    now: float,
) -> tuple[int, ReasonCode]:
    """One pool's replicas after stabilisation, steps, panic, floors and clamps (rule 4).

    Records the recommendation in ``state.recommendations`` (and the panic high-water mark in
    ``state.panic_replicas``). The last limit that changed the value names the code.
    """
    keep = max(policy.scale_up_stabilization_seconds, policy.scale_down_stabilization_seconds)
    remembered = pool.name in state.recommendations
    history = [(t, r) for t, r in state.recommendations.get(pool.name, []) if t > now - keep]
    if not remembered:
        # No memory of this pool (autoscaler just turned on, another writer set the count):
        # the current count counts as recommended now, so a scale-down waits out its window
        # instead of dropping at once to the first low recommendation. (Entries that merely
        # aged out are not "no memory": the persisted state lags the loop by up to
        # PERSIST_EVERY_SECONDS, longer than a short window.)
        history.append((now, pool.replicas))
    history.append((now, rec.replicas[pool.name]))
    state.recommendations[pool.name] = history
    cur = pool.replicas
    value = _stabilise(history, cur, now, policy)
    code: ReasonCode = "WithinTolerance" if rec.within else "Hold"
    if value != rec.replicas[pool.name] and not rec.within:
        code = "Stabilizing"
    value = min(value, cur + policy.max_scale_up_step)
    value = max(value, cur - policy.max_scale_down_step)
    if rec.panicking:
        value = max(value, cur, state.panic_replicas.get(pool.name, 0))
        state.panic_replicas[pool.name] = value
        code = "Panic"
    floor = rec.floor[pool.name]
    if value < cur and value < floor:
        value, code = min(cur, floor), "LoadFloor"
    if value < cur and not signal.complete:
        value, code = cur, "MissingData"
    if value > pool.max_replicas:
        value, code = pool.max_replicas, "AtMax"
    if value < pool.min_replicas:
        value, code = pool.min_replicas, "AtMin"
    if value > pool.placeable_max and value > cur:
        value, code = max(cur, pool.placeable_max), "InsufficientGPU"
    return value, code


def _explain(
    pools: Sequence[PoolInput],
    desired: dict[str, int],
    codes: dict[str, ReasonCode],
    signal: _Signal,
    rec: _Recommendation,
    policy: ScalingSpec,
    state: ScalerState,
) -> Decision:
    """The final reason code per pool, the human-readable reasons and the :class:`Decision`."""
    insufficient = rec.gpu_limited and rec.shortage > _EPS
    min_capacity = sum(p.min_replicas * p.target_per_replica for p in pools)
    unit = UNITS[policy.metric]
    decisions = []
    for pool in pools:
        value, code = desired[pool.name], codes[pool.name]
        if code in ("Hold", "Stabilizing", "WithinTolerance") and value != pool.replicas:
            code = "ScaleUp" if value > pool.replicas else "ScaleDown"
        if value == 0 and pool.replicas > 0 and sum(desired.values()) == 0:
            code = "ScaleToZero"
        if rec.shortage > _EPS and not rec.gpu_limited and value >= pool.max_replicas:
            code = "AtMax"
        if value == pool.min_replicas == pool.replicas and rec.needed < min_capacity - _EPS:
            code = "AtMin"
        if insufficient and value >= pool.placeable_max and rec.replicas[pool.name] >= value:
            code = "InsufficientGPU"
        why = (
            f"{pool.name} {pool.replicas}->{value} ({code}): load {signal.stable_load:.4g} {unit} "
            f"({policy.window_seconds}s avg), {signal.panic_load:.4g} "
            f"({policy.panic_window_seconds}s), target {pool.target_per_replica:.4g}/replica"
        )
        if signal.forecast > signal.stable_load + _EPS:
            why += f", forecast {signal.forecast:.4g} in {signal.lead:.0f}s"
        elif signal.forecast < signal.stable_load - _EPS:
            why += f", falling to {signal.forecast:.4g} in {signal.fall:.0f}s"
        decisions.append(PoolDecision(pool.name, pool.replicas, value, code, why))
    summary = "; ".join(f"{d.pool} {d.current}->{d.desired} {d.code}" for d in decisions)
    if insufficient:
        summary += f"; InsufficientGPU: {rec.shortage:.4g} {unit} of capacity cannot be placed"
    if rec.panicking:
        summary += "; panic mode"
    return Decision(
        pools=tuple(decisions),
        state=state,
        reason=summary,
        load=signal.stable_load,
        target_capacity=sum(desired[p.name] * p.target_per_replica for p in pools),
        panic=rec.panicking,
        insufficient_gpu=insufficient,
        details={
            "stable_load": signal.stable_load,
            "panic_load": signal.panic_load,
            "ready_capacity": signal.ready_capacity,
            "needed": rec.needed,
            "slope_per_s": signal.slope,
            "forecast": signal.forecast,
        },
    )

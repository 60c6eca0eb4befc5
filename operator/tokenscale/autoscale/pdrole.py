"""Per-role autoscaling of a disaggregated service (``spec.disaggregation``).

Why one decision per role: prefill and decode engines saturate on different work. A prefill
engine is busy with prompt tokens (``vllm:prompt_tokens_total``), a decode engine with generated
tokens (``vllm:generation_tokens_total``); a single service-wide signal would scale both roles
together and starve whichever the workload leans on. So each role runs the ordinary decision
(:func:`tokenscale.autoscale.decision.decide`: windows, panic mode, stabilisation, step limits,
bounds, and the cluster-capacity check per pool) over its own pools, with its own metric and
target; the results are merged into one :class:`Decision` so the loop writes and persists as for
any service. Pools never share a role (validation), so the per-pool memory merges without
conflict; the service-wide parts (panic, idleness) take the union.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tokenscale.api.disaggregation import PD_ROLES, DisaggregationSpec, PDRoleName
from tokenscale.api.service import ScalingMetric, ScalingSpec
from tokenscale.autoscale import decision
from tokenscale.autoscale.rates import Sample
from tokenscale.autoscale.state import Decision, PoolInput, ScalerState

#: The signal each role scales on.
ROLE_METRIC: dict[PDRoleName, ScalingMetric] = {
    "prefill": "promptTokensPerSecond",
    "decode": "generationTokensPerSecond",
}


def role_policy(policy: ScalingSpec, role: PDRoleName) -> ScalingSpec:
    """The service's policy with the role's metric and target."""
    return policy.model_copy(update={"metric": ROLE_METRIC[role]})


def role_inputs(
    pools: Sequence[PoolInput], disagg: DisaggregationSpec, role: PDRoleName
) -> list[PoolInput]:
    """The role's pools with the role's target per replica (0: no target, the role holds)."""
    target = disagg.role(role).target_per_replica or 0.0
    names = disagg.role(role).pools
    return [
        dataclasses.replace(p, target_per_replica=target, capacity_per_replica=None)
        for p in pools
        if p.name in names
    ]


def decide(
    window: Sequence[Sample],
    policy: ScalingSpec,
    pools: Sequence[PoolInput],
    disagg: DisaggregationSpec,
    state: ScalerState,
    now: float,
) -> Decision:
    """Both roles' decisions, each on its own signal, target and bounds, merged."""
    parts: list[tuple[PDRoleName, Decision]] = []
    for role in PD_ROLES:
        inputs = role_inputs(pools, disagg, role)
        if not inputs:
            continue
        own = state.model_copy(deep=True)
        own.recommendations = {
            k: v for k, v in state.recommendations.items() if k in {p.name for p in inputs}
        }
        parts.append((role, decision.decide(window, role_policy(policy, role), inputs, own, now)))
    return merge(parts, state)


def merge(parts: Sequence[tuple[PDRoleName, Decision]], previous: ScalerState) -> Decision:
    """One decision from the roles': pools and per-pool memory side by side, reasons prefixed
    with the role, panic/insufficient if either role is, load and capacity per role in
    ``details``."""
    state = previous.model_copy(deep=True)
    state.recommendations = {}
    state.panic_replicas = {}
    panic_until: list[float] = []
    idle: list[float | None] = []
    details: dict[str, float] = {}
    for role, part in parts:
        state.recommendations.update(part.state.recommendations)
        state.panic_replicas.update(part.state.panic_replicas)
        if part.state.panic_until is not None:
            panic_until.append(part.state.panic_until)
        idle.append(part.state.idle_since)
        state.foreign_write = part.state.foreign_write
        state.foreign_until = part.state.foreign_until
        state.foreign_message = part.state.foreign_message
        details.update({f"{role}_{k}": v for k, v in part.details.items()})
        if part.load is not None:
            details[f"{role}_load"] = part.load
        if part.target_capacity is not None:
            details[f"{role}_target_capacity"] = part.target_capacity
    state.panic_until = max(panic_until, default=None)
    stamps = [t for t in idle if t is not None]
    state.idle_since = max(stamps) if idle and len(stamps) == len(idle) else None
    return Decision(
        pools=tuple(p for _, part in parts for p in part.pools),
        state=state,
        reason="; ".join(f"{role}: {part.reason}" for role, part in parts),
        load=None,
        target_capacity=None,
        panic=any(part.panic for _, part in parts),
        insufficient_gpu=any(part.insufficient_gpu for _, part in parts),
        details=details,
    )

"""Per-role autoscaling of a P/D service: each role follows its own tokens/s, target and bounds,
driven in virtual time through the pure decision (as test_autoscale_decision.py does)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from tokenscale.api.disaggregation import DisaggregationSpec
from tokenscale.api.service import ScalingSpec
from tokenscale.autoscale import pdrole
from tokenscale.autoscale.rates import PoolSignal, Sample
from tokenscale.autoscale.state import Decision, PoolInput, ScalerState

POLICY = ScalingSpec(mode="builtin", target_per_replica=1)  # ignored for P/D: roles' targets
PD = DisaggregationSpec.model_validate(
    {
        "prefill": {"pools": ["p"], "targetPerReplica": 40000},
        "decode": {"pools": ["d"], "targetPerReplica": 10000},
    }
)
STEP = 5.0


def _inputs(prefill: int, decode: int, **kw: object) -> list[PoolInput]:
    pools = [
        PoolInput("p", 1, 8, prefill, prefill, 0.0),
        PoolInput("d", 1, 16, decode, decode, 0.0),
    ]
    return [replace(p, **kw) for p in pools]  # type: ignore[arg-type]


def run(
    prompt_tps: Callable[[float], float],
    generation_tps: Callable[[float], float],
    pools: list[PoolInput],
    duration: float = 900,
) -> tuple[dict[str, int], list[Decision]]:
    """Replicas become ready at once. Prefill pods report prompt tokens (and one generated token
    per request), decode pods report generation tokens (and the handed-over prompts, which must
    not drive them)."""
    current = {p.name: p for p in pools}
    state = ScalerState()
    window: list[Sample] = []
    decisions = []
    t = 0.0
    while t < duration:
        signals = {
            "p": PoolSignal(
                prompt_tps=prompt_tps(t),
                generation_tps=prompt_tps(t) / 600,
                pods_reporting=current["p"].replicas,
            ),
            "d": PoolSignal(
                prompt_tps=prompt_tps(t),
                generation_tps=generation_tps(t),
                pods_reporting=current["d"].replicas,
            ),
        }
        window.append(Sample(t, signals))
        window = [s for s in window if s.time > t - 300]
        verdict = pdrole.decide(window, POLICY, list(current.values()), PD, state, t)
        decisions.append(verdict)
        state = verdict.state
        for name, n in verdict.desired().items():
            current[name] = replace(current[name], replicas=n, ready_replicas=n)
        t += STEP
    return {n: p.replicas for n, p in current.items()}, decisions


def test_each_role_follows_its_own_signal_and_target() -> None:
    # 160k prompt tokens/s -> 4 prefill replicas at 40k; 30k generated tokens/s -> 3 decode
    final, decisions = run(lambda t: 160_000, lambda t: 30_000, _inputs(1, 1))
    assert final == {"p": 4, "d": 3}
    last = decisions[-1]
    assert "prefill:" in last.reason and "decode:" in last.reason
    assert last.details["prefill_load"] > 100_000 and last.details["decode_load"] < 40_000


def test_a_prompt_heavy_load_scales_prefill_only() -> None:
    final, _ = run(lambda t: 300_000 if t > 100 else 40_000, lambda t: 9_000, _inputs(1, 1))
    assert final == {"p": 8, "d": 1}  # prefill at its maxReplicas, decode untouched


def test_decode_scales_down_on_its_own_while_prefill_holds() -> None:
    final, _ = run(
        lambda t: 80_000, lambda t: 50_000 if t < 200 else 12_000, _inputs(2, 5), duration=1500
    )
    assert final["p"] == 2
    assert final["d"] == 2


def test_capacity_check_is_per_role() -> None:
    # one pass: the cluster can place one more decode replica only; prefill is not limited
    pools = _inputs(1, 1)
    pools[1] = replace(pools[1], allocatable_replicas=1)
    signals = {
        "p": PoolSignal(prompt_tps=120_000, pods_reporting=1),
        "d": PoolSignal(prompt_tps=120_000, generation_tps=60_000, pods_reporting=1),
    }
    window = [Sample(t, signals) for t in range(0, 65, 5)]
    verdict = pdrole.decide(window, POLICY, pools, PD, ScalerState(), 60.0)
    assert verdict.desired() == {"p": 3, "d": 2}
    codes = {p.pool: p.code for p in verdict.pools}
    assert codes["d"] == "InsufficientGPU" and codes["p"] != "InsufficientGPU"
    assert verdict.insufficient_gpu


def test_a_role_without_target_holds() -> None:
    pd = DisaggregationSpec.model_validate(
        {"prefill": {"pools": ["p"]}, "decode": {"pools": ["d"], "targetPerReplica": 1000}}
    )
    window = [Sample(0.0, {"p": PoolSignal(prompt_tps=1e6, pods_reporting=1)})]
    verdict = pdrole.decide(window, POLICY, _inputs(1, 1), pd, ScalerState(), 0.0)
    codes = {p.pool: p.code for p in verdict.pools}
    assert codes["p"] == "NoTarget"
    assert verdict.desired()["p"] == 1

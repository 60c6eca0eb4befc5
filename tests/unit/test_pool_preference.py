"""spec.scaling.poolPreference: which pool the split and the autoscaler fill first.

Two pools from the default catalogue: MI300X (2.0/GPU-hour, 2600 tokens/s, 750 W prior) and
MI325X (2.4/GPU-hour, 4000 tokens/s, 1000 W prior). Per token, MI325X is cheaper by GPU-hour
cost (6.0e-4 vs 7.7e-4) and by rated power (0.25 vs 0.29 W per token/s). When the exporter
measures the MI300X pool at 300 W per GPU, energy per token prefers MI300X (0.115) while cost
still prefers MI325X. The reconcile's split and the autoscaler's pool ordering must agree.
"""

from __future__ import annotations

import pytest

from tests.factories import service
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.api.status import EnergyStatus, InferenceServiceStatus, PoolEnergy
from tokenscale.autoscale import targets
from tokenscale.autoscale.poolweight import measured_watts_per_gpu, replica_hour_weight
from tokenscale.controller.autoscaler import pool_inputs
from tokenscale.controller.reconcile import cost_per_token
from tokenscale.controller.split import split_replicas
from tokenscale.plan import plan_service

MEASURED_300W = EnergyStatus(pools=[PoolEnergy(name="a", gpus=2, watts=600.0)])
NO_POWER_YET = EnergyStatus(pools=[PoolEnergy(name="a", gpus=0, reason="NoExporterData")])


def _svc(preference: str) -> InferenceService:
    doc = service(
        pools=[
            {"name": "a", "gpu": "MI300X", "minReplicas": 0, "maxReplicas": 4},
            {"name": "b", "gpu": "MI325X", "minReplicas": 0, "maxReplicas": 4},
        ],
        scaling={"mode": "builtin", "targetPerReplica": 2500, "poolPreference": preference},
    )
    return InferenceService.model_validate(doc)


def _orders(preference: str, energy: EnergyStatus | None, cfg: OperatorConfig) -> list[str]:
    """The pool the reconcile's split fills first, then the autoscaler's order; both returned."""
    svc = _svc(preference)
    plans = plan_service(svc, cfg)
    split = split_replicas(2, svc.spec.pools, cost_per_token(cfg, svc, plans, energy))
    split_first = max(split, key=lambda name: split[name])
    capacity = {"a": 2600.0, "b": 4000.0}  # the catalogue's tokens/s, as the reconcile uses
    target = {n: targets.Target(2500.0, "spec", capacity[n]) for n in capacity}
    status = InferenceServiceStatus(energy=energy)
    inputs = pool_inputs(svc, cfg, plans, status, {"a": 0, "b": 0}, target)
    scaler_first = min(inputs, key=lambda p: (p.cost_per_unit, p.name)).name
    return [split_first, scaler_first]


@pytest.mark.parametrize(
    ("preference", "energy", "first"),
    [
        ("cost", None, "b"),
        ("cost", MEASURED_300W, "b"),  # cost ignores power entirely
        ("energy", None, "b"),  # rated power per token: MI325X
        ("energy", NO_POWER_YET, "b"),  # no measured GPUs: falls back to the prior
        ("energy", MEASURED_300W, "a"),  # measured MI300X power beats MI325X's prior
        ("costAndEnergy", None, "b"),
    ],
)
def test_split_and_autoscaler_agree_on_the_first_pool(
    preference: str, energy: EnergyStatus | None, first: str
) -> None:
    assert _orders(preference, energy, OperatorConfig()) == [first, first]


def test_cost_and_energy_follows_the_electricity_price() -> None:
    """At a high kWh price the measured-frugal MI300X pool wins; at zero, cost alone decides."""
    cheap = OperatorConfig.model_validate({"energy": {"pricePerKwh": 0}})
    dear = OperatorConfig.model_validate({"energy": {"pricePerKwh": 20}})
    assert _orders("costAndEnergy", MEASURED_300W, cheap) == ["b", "b"]
    assert _orders("costAndEnergy", MEASURED_300W, dear) == ["a", "a"]


def test_weight_formulas() -> None:
    gpu = OperatorConfig().gpus["MI300X"]
    assert replica_hour_weight("cost", gpu, 2, 300.0, 0.15) == pytest.approx(4.0)
    assert replica_hour_weight("energy", gpu, 2, None, 0.15) == pytest.approx(1500.0)
    assert replica_hour_weight("energy", gpu, 2, 300.0, 0.15) == pytest.approx(600.0)
    assert replica_hour_weight("costAndEnergy", gpu, 2, 300.0, 0.5) == pytest.approx(4.3)


def test_unknown_power_ranks_last_instead_of_guessing() -> None:
    """CPU has no rated power in the catalogue: unmeasured, it must not look free."""
    cpu = OperatorConfig().gpus["CPU"]
    assert cpu.board_power_watts is None
    assert replica_hour_weight("energy", cpu, 1, None, 0.15) == float("inf")
    assert replica_hour_weight("energy", cpu, 1, 90.0, 0.15) == pytest.approx(90.0)
    assert replica_hour_weight("cost", cpu, 1, None, 0.15) == pytest.approx(0.1)


def test_measured_watts_per_gpu_reads_only_the_named_pool() -> None:
    assert measured_watts_per_gpu(MEASURED_300W, "a") == pytest.approx(300.0)
    assert measured_watts_per_gpu(MEASURED_300W, "b") is None
    assert measured_watts_per_gpu(NO_POWER_YET, "a") is None
    assert measured_watts_per_gpu(None, "a") is None

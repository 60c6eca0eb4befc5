"""What one replica-hour of a pool weighs when pools are ordered (cheapest first).

Both the reconcile's split of ``spec.replicas`` and the autoscaler's decision rank pools by
this weight divided by a replica's tokens/s. One function serves both so they never disagree
about which pool to fill first. ``spec.scaling.poolPreference`` picks what the weight means:

* ``cost``: GPU-hour cost x GPUs per replica (the catalogue's ``costPerGpuHour``).
* ``energy``: watts one replica draws: the pool's measured board power per GPU from
  ``status.energy`` when the exporter reports it, else the catalogue's ``boardPowerWatts``
  (a prior, the board's rated power), x GPUs per replica. Unknown on both counts ranks the
  pool last: guessing a wattage would silently prefer an unmeasured pool.
* ``costAndEnergy``: cost + the electricity of that hour (watts / 1000 x
  ``energy.pricePerKwh``), in the same currency weight as ``costPerGpuHour``.

Pure: no I/O, callers pass what they read.
"""

from __future__ import annotations

from typing import Literal

from tokenscale.api.config import GPUSpec
from tokenscale.api.status import EnergyStatus

PoolPreference = Literal["cost", "energy", "costAndEnergy"]


def measured_watts_per_gpu(energy: EnergyStatus | None, pool: str) -> float | None:
    """The pool's current board power per GPU from ``status.energy`` (None when not reported)."""
    if energy is None:
        return None
    for figures in energy.pools:
        if figures.name == pool and figures.gpus > 0 and figures.watts is not None:
            return figures.watts / figures.gpus
    return None


def replica_hour_weight(
    preference: PoolPreference,
    gpu: GPUSpec | None,
    gpus_per_replica: int,
    watts_per_gpu: float | None,
    price_per_kwh: float,
) -> float:
    """The ordering weight of one replica-hour (smaller is preferred; inf ranks last)."""
    gpus = max(gpus_per_replica, 1)
    cost = (gpu.cost_per_gpu_hour if gpu else 1.0) * gpus
    if preference == "cost":
        return cost
    per_gpu = watts_per_gpu
    if per_gpu is None and gpu is not None:
        per_gpu = gpu.board_power_watts
    if per_gpu is None:
        return float("inf")
    watts = per_gpu * gpus
    if preference == "energy":
        return watts
    return cost + watts / 1000.0 * price_per_kwh

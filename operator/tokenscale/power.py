"""AMD Device Metrics Exporter readings: parsing and counter arithmetic (pure, no I/O).

Why a module of its own at the bottom of the layers: the operator's energy figures
(``autoscale.energy``) and the benchmark's (``bench.energy``) read the same exposition and must
agree on what a reading and a counter reset are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

ENERGY = "gpu_energy_consumed"
POWER = "gpu_power_usage"
PACKAGE_POWER = "gpu_package_power"


class EnergyParseError(ValueError):
    """The exporter's answer is not a usable Prometheus exposition."""


@dataclass(frozen=True)
class GpuReading:
    """One GPU's power and energy as the exporter labels it."""

    hostname: str
    gpu_id: str
    pod: str
    namespace: str
    watts: float | None
    energy_uj: float | None

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the GPU across passes (not the pod: pods come and go)."""
        return (self.hostname, self.gpu_id)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) and value >= 0 else None


def parse_exporter(text: str) -> list[GpuReading]:
    """Readings from one exporter ``/metrics`` body.

    Raises :class:`EnergyParseError` when the body does not parse or has no energy series (an
    HTML error page, a truncated answer, another program on the port). A body without its final
    line feed was cut: its last value may be a counter's first digits, which would read as a
    reset. NaN, infinite and negative values become ``None`` (unknown) rather than numbers.
    """
    watts: dict[tuple[str, str], float | None] = {}
    package: dict[tuple[str, str], float | None] = {}
    energy: dict[tuple[str, str], float | None] = {}
    who: dict[tuple[str, str], tuple[str, str]] = {}
    try:
        for family in text_string_to_metric_families(text):
            target = {ENERGY: energy, POWER: watts, PACKAGE_POWER: package}.get(family.name)
            if target is None:
                continue
            for sample in family.samples:
                labels = sample.labels
                key = (labels.get("hostname", ""), labels.get("gpu_id", ""))
                target[key] = _finite(sample.value)
                if labels.get("pod"):
                    who[key] = (labels["pod"], labels.get("namespace", ""))
    except (ValueError, IndexError) as err:
        raise EnergyParseError(f"unparsable exporter body: {err}") from err
    if text and not text.endswith("\n"):  # checked after parsing: an HTML page is not "cut"
        raise EnergyParseError("truncated exporter body (no final line feed)")
    if not energy:
        raise EnergyParseError(f"no {ENERGY} series in the exporter body; not the exporter?")
    out = []
    for key in sorted(energy):
        pod, namespace = who.get(key, ("", ""))
        power = watts.get(key)
        out.append(
            GpuReading(
                key[0],
                key[1],
                pod,
                namespace,
                power if power is not None else package.get(key),
                energy[key],
            )
        )
    return out


def joules_between(previous_uj: float, current_uj: float) -> float:
    """Energy between two counter readings; a decrease is a reset (counts from zero)."""
    if current_uj >= previous_uj:
        return (current_uj - previous_uj) / 1e6
    return current_uj / 1e6

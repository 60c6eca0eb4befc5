"""Who else writes the replica count: detecting a second writer of ``spec.replicas``.

In ``builtin`` mode the autoscaler owns ``/scale``. A manual ``kubectl scale``, an HPA or KEDA
left pointed at the service, or a manifest that sets ``spec.replicas`` also write it; before
this module the autoscaler silently undid such a write on its next pass, and an HPA and the
autoscaler fought (a pod created and killed every ~15 s) with no condition saying so.

A write is foreign when ``spec.replicas`` differs from the total the autoscaler last decided
(the ``split`` of its state annotation) and the field's manager in ``managedFields`` is not the
operator (whose activator and benchmark wakes use the same field manager). A wake from zero is
never foreign: raising a sleeping service is what the activator and benchmarks are for.

The autoscaler then holds the new count for :data:`HOLD_SECONDS` from the write (an HPA that
keeps disagreeing keeps renewing it, so the two flip at most once per hold instead of every
15 s), says who wrote it in ``status.scaling`` and an Event, and afterwards resumes from the
count it finds, through its stabilisation window. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tokenscale.constants import FIELD_MANAGER

#: How long a foreign write of the replica count is left standing (HPA's default
#: scale-down stabilisation: an HPA re-asserting its count does so well within it).
HOLD_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class ForeignWrite:
    """A write of ``spec.replicas`` the autoscaler did not make."""

    manager: str
    """Field manager that owns ``spec.replicas`` (``kubectl``, ``kube-controller-manager``…)."""
    replicas: int
    """The count it wrote."""
    at: float | None
    """When (epoch seconds, from managedFields); None when the API did not say."""
    via_scale: bool
    """Written through the /scale subresource (kubectl scale, HPA, KEDA)."""

    def describe(self) -> str:
        """The sentence the Event and status.scaling carry, with the fix."""
        how = "through /scale" if self.via_scale else "in the spec"
        return (
            f"spec.replicas was set to {self.replicas} {how} by {self.manager!r}, not by the "
            f"builtin autoscaler: holding that count for {HOLD_SECONDS:.0f} s, then scaling "
            "from it; fix: set spec.scaling.mode external when HPA/KEDA or you own the count, "
            "or remove the other writer"
        )


def replicas_owner(managed_fields: Sequence[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
    """The managedFields entry that owns ``spec.replicas`` (the latest one if several)."""
    owners = [
        entry
        for entry in managed_fields or []
        if "f:replicas" in (((entry.get("fieldsV1") or {}).get("f:spec")) or {})
    ]
    if not owners:
        return None
    return max(owners, key=lambda e: str(e.get("time") or ""))


def foreign_write(
    meta: Mapping[str, Any], spec_replicas: int | None, last_split: Mapping[str, int] | None
) -> ForeignWrite | None:
    """The write of ``spec.replicas`` another writer made since the autoscaler's last decision.

    ``last_split`` is the per-pool count the autoscaler last decided (its annotation); with
    none yet there is nothing to compare with (the count is the operator's initial one).
    """
    if spec_replicas is None or not last_split:
        return None
    ours = sum(last_split.values())
    if spec_replicas == ours or ours == 0:
        return None
    owner = replicas_owner(meta.get("managedFields"))
    manager = str(owner.get("manager") or "") if owner else ""
    if manager == FIELD_MANAGER:
        return None
    return ForeignWrite(
        manager=manager or "an unknown writer",
        replicas=spec_replicas,
        at=_epoch(owner.get("time")) if owner else None,
        via_scale=bool(owner and owner.get("subresource") == "scale"),
    )


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

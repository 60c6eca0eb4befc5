"""Types shared by the decision and its callers: pool inputs, the decision, persisted state.

The state is the only memory the autoscaler has between passes (recommendation history for the
stabilisation windows, panic mode, idle timer). It is persisted on the InferenceService in the
``tokenscale.dev/scaler-state`` annotation as JSON, so an operator restart or leader change
resumes with the same windows instead of forgetting a pending scale-down delay. All times are
wall-clock epoch seconds for that reason (monotonic clocks do not survive a restart).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

STATE_VERSION = 1

ReasonCode = Literal[
    "ScaleUp",
    "ScaleDown",
    "Hold",
    "WithinTolerance",
    "Panic",
    "Stabilizing",
    "NoMetrics",
    "MissingData",
    "LoadFloor",
    "InsufficientGPU",
    "AtMax",
    "AtMin",
    "ScaleToZero",
    "NoTarget",
]


@dataclass(frozen=True)
class PoolInput:
    """What the decision needs to know about one pool right now.

    ``target_per_replica`` is in the policy metric's unit (tokens/s, requests, or a KV fraction);
    see :func:`tokenscale.autoscale.targets.resolve_target`. ``capacity_per_replica`` is tokens/s
    one replica sustains at the SLA (benchmark or config) and ranks pools by cost per token;
    ``None`` falls back to the target. ``allocatable_replicas`` is how many more replicas the
    cluster can place (:func:`tokenscale.autoscale.capacity.replicas_that_fit`); ``None`` means
    unknown / unlimited. ``startup_seconds`` is how long a new replica takes to become ready
    (measured by the loop from recent pods); when rising, the load is forecast that far ahead.
    """

    name: str
    min_replicas: int
    max_replicas: int
    replicas: int
    ready_replicas: int
    target_per_replica: float
    capacity_per_replica: float | None = None
    cost_per_replica_hour: float = 1.0
    allocatable_replicas: int | None = None
    startup_seconds: float = 0.0

    @property
    def cost_per_unit(self) -> float:
        """Cost per hour of one unit of capacity: the pool ordering key (cheapest first)."""
        capacity = self.capacity_per_replica or self.target_per_replica
        return self.cost_per_replica_hour / capacity if capacity > 0 else float("inf")

    @property
    def placeable_max(self) -> int:
        """Most replicas this pool can have: maxReplicas and what the cluster can still place."""
        if self.allocatable_replicas is None:
            return self.max_replicas
        return min(self.max_replicas, self.replicas + max(0, self.allocatable_replicas))


@dataclass(frozen=True)
class PoolDecision:
    """Desired replicas for one pool and why."""

    pool: str
    current: int
    desired: int
    code: ReasonCode
    reason: str

    @property
    def changed(self) -> bool:
        """Whether the loop has to write ``/scale``."""
        return self.desired != self.current


class ScalerState(BaseModel):
    """Persisted autoscaler memory. Unknown keys are ignored so older operators can read it."""

    model_config = ConfigDict(extra="ignore")

    version: int = Field(default=STATE_VERSION, description="Schema version.")
    recommendations: dict[str, list[tuple[float, int]]] = Field(
        default_factory=dict, description="Per pool: (time, recommended replicas), oldest first."
    )
    panic_until: float | None = Field(default=None, description="Panic mode lasts until then.")
    panic_replicas: dict[str, int] = Field(
        default_factory=dict, description="Highest replicas per pool reached in this panic."
    )
    idle_since: float | None = Field(default=None, description="Load has been zero since.")
    foreign_write: str | None = Field(
        default=None, description="Identity of the last spec.replicas write by another writer."
    )
    foreign_until: float | None = Field(
        default=None, description="That write's count is left standing until then."
    )
    foreign_message: str | None = Field(default=None, description="Who wrote it, and the fix.")

    def to_json(self) -> str:
        """Compact JSON for the annotation value."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | None) -> ScalerState:
        """Parse the annotation; a missing or corrupt value starts fresh (never fails a pass)."""
        if not text:
            return cls()
        try:
            state = cls.model_validate_json(text)
        except ValidationError:
            return cls()
        return state if state.version == STATE_VERSION else cls()


_SPLIT = TypeAdapter(dict[str, int])


class ScalerAnnotation(BaseModel):
    """The ``tokenscale.dev/scaler-state`` annotation: ``{"split": {pool: replicas}, "state": …}``.

    ``split`` is the per-pool desired replicas the autoscaler last decided, which the reconcile
    follows when it splits ``spec.replicas`` over the pools; ``state`` is :class:`ScalerState`.
    Anyone can edit an annotation, so :meth:`parse` never fails: a value that is not JSON, not
    an object, or has a malformed part reads as that part missing.
    """

    model_config = ConfigDict(extra="ignore")

    split: dict[str, int] | None = Field(default=None, description="Desired replicas per pool.")
    state: ScalerState = Field(default_factory=ScalerState, description="Decision memory.")

    @classmethod
    def parse(cls, text: str | None) -> ScalerAnnotation:
        """The annotation's parts that are usable (the rest as if absent)."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            return cls()
        try:
            split = _SPLIT.validate_python(data["split"]) if data.get("split") is not None else None
        except ValidationError:
            split = None
        state = data.get("state")
        parsed = ScalerState.from_json(json.dumps(state)) if isinstance(state, dict) else None
        return cls(split=split, state=parsed or ScalerState())

    def to_json(self) -> str:
        """Compact JSON for the annotation value."""
        return self.model_dump_json()


@dataclass(frozen=True)
class Decision:
    """The result of one :func:`tokenscale.autoscale.decision.decide` call."""

    pools: tuple[PoolDecision, ...]
    state: ScalerState
    reason: str
    load: float | None = None
    target_capacity: float | None = None
    panic: bool = False
    insufficient_gpu: bool = False
    details: dict[str, float] = field(default_factory=dict)

    def desired(self) -> dict[str, int]:
        """Desired replicas by pool name."""
        return {p.pool: p.desired for p in self.pools}

    @property
    def changed(self) -> bool:
        """Whether any pool's replicas change."""
        return any(p.changed for p in self.pools)

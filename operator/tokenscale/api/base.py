"""Shared building blocks for the API models.

Every model is strict (unknown fields are errors, because a typo in a CR silently ignored is a
production incident) and camelCase on the wire (Kubernetes convention) while staying snake_case
in Python. CEL rules are attached next to the fields they guard with :func:`cel`, so the CRD
generator and the Python validators are reviewed together.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tokenscale.api.wire import Timestamp

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

#: Longest InferenceService / InferenceBenchmark name: children append "-<pool>" (≤ 12) and
#: controllers append hashes; pod hostnames and label values must stay ≤ 63 characters.
MAX_NAME_LENGTH = 40
MAX_POOL_NAME_LENGTH = 12


class StrictModel(BaseModel):
    """Base for every API model: forbid unknown fields, camelCase aliases, validate defaults.

    No infinite or NaN floats: JSON cannot carry them to the API server, yet YAML (``.inf``)
    and lax string parsing (``"1e400"``) produce them, and an infinite target or SLA passed
    validation and reached the planner and autoscaler (found by tests/unit/test_fuzz_cli.py).
    """

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        validate_default=True,
        use_attribute_docstrings=False,
    )

    def to_k8s(self) -> dict[str, Any]:
        """Serialise as Kubernetes expects it: camelCase, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """JSON-schema extra carrying CEL rules (``rule``, ``message``) into the CRD."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def list_map(*keys: str) -> dict[str, Any]:
    """JSON-schema extra making a list an associative list keyed by ``keys``.

    Why: the API server then rejects two entries with one key, and server-side apply merges
    entries by key instead of replacing the whole list (what ``kubectl apply --server-side``
    users and other field managers expect of conditions and pools). The keys must be
    required (or defaulted) scalar fields of the items; :mod:`tokenscale.crdgen` checks it.
    """
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


#: ``conditions`` lists are keyed by ``type`` (metav1.Condition convention).
CONDITIONS_LIST = list_map("type")


class ObjectMeta(StrictModel):
    """The part of Kubernetes object metadata that manifests carry."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=DNS_LABEL,
        description=(
            f"Object name: a DNS label of at most {MAX_NAME_LENGTH} characters, so that the "
            "names of child objects (which append pool names and hashes) stay valid."
        ),
    )
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    labels: dict[str, str] | None = Field(default=None, description="Labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StrictModel):
    """A Kubernetes-style status condition (metav1.Condition shape)."""

    type: str = Field(description="Condition type, e.g. Ready, Progressing, Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", description="CamelCase machine-readable reason for the last transition."
    )
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: Timestamp | None = Field(
        default=None, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was computed from."
    )

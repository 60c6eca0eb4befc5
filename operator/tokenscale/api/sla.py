"""The SLA block shared by InferenceService and InferenceBenchmark."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator

from tokenscale.api.base import StrictModel, cel
from tokenscale.sla import PRESET_NAMES, PRESETS, SLALimits


class SLASpec(StrictModel):
    """Latency and throughput objectives: an MLPerf preset, or explicit p99 limits."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.preset) || (!has(self.ttftP99Ms) && !has(self.tpotP99Ms))",
                "use either preset or explicit ttftP99Ms/tpotP99Ms limits, not both",
            ),
            (
                "has(self.preset) || (has(self.ttftP99Ms) && has(self.tpotP99Ms))",
                "set preset, or both ttftP99Ms and tpotP99Ms",
            ),
        )
    }

    preset: str | None = Field(
        default=None,
        json_schema_extra={"enum": list(PRESET_NAMES)},
        description=(
            "MLPerf Inference preset whose p99 TTFT/TPOT limits apply, e.g. llama2-70b-server "
            "(2000/200 ms) or llama2-70b-interactive (450/40 ms). Excludes explicit limits."
        ),
    )
    ttft_p99_ms: float | None = Field(
        default=None, gt=0, description="Explicit p99 time-to-first-token limit in milliseconds."
    )
    tpot_p99_ms: float | None = Field(
        default=None,
        gt=0,
        description="Explicit p99 time-per-output-token limit in milliseconds (MLPerf TPOT).",
    )
    min_tokens_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Optional floor on output tokens/s for the whole service or benchmark.",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(
                f"unknown SLA preset {value!r}; fix: use one of {', '.join(PRESET_NAMES)} "
                "or explicit ttftP99Ms/tpotP99Ms"
            )
        return value

    @model_validator(mode="after")
    def _preset_or_limits(self) -> Self:
        explicit = self.ttft_p99_ms is not None or self.tpot_p99_ms is not None
        if self.preset is not None and explicit:
            raise ValueError(
                "use either preset or explicit ttftP99Ms/tpotP99Ms limits, not both; "
                "fix: remove preset or remove the explicit limits"
            )
        if self.preset is None and (self.ttft_p99_ms is None or self.tpot_p99_ms is None):
            raise ValueError(
                "set preset (e.g. llama2-70b-server), or both ttftP99Ms and tpotP99Ms; "
                "fix: add the missing limit"
            )
        return self

    def limits(self) -> SLALimits:
        """Resolve the preset or explicit values to concrete limits in seconds."""
        if self.preset is not None:
            base = PRESETS[self.preset]
            if self.min_tokens_per_second is None:
                return base
            return SLALimits(
                base.ttft_p99_s,
                base.tpot_p99_s,
                self.min_tokens_per_second,
                base.percentile,
                base.e2e_limit_s,
            )
        assert self.ttft_p99_ms is not None and self.tpot_p99_ms is not None
        return SLALimits(
            self.ttft_p99_ms / 1000.0, self.tpot_p99_ms / 1000.0, self.min_tokens_per_second
        )

"""MLPerf latency limits as named SLA presets.

The numbers are the p99 limits that MLPerf Inference's submission checker enforces
(``mlperf.conf`` / ``LLM_LATENCY_LIMITS``), so a preset means the same thing here as in a
published result. gpt-oss-120b Interactive uses the enforced 15 ms TPOT, not the 20 ms the
rules text states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class SLALimits:
    """p99 latency limits (seconds) plus optional throughput floor (output tokens/s)."""

    ttft_p99_s: float
    tpot_p99_s: float
    min_tokens_per_s: float | None = None
    percentile: float = 99.0
    #: MLPerf's early-stopping e2e bound; informational, not part of the verdict.
    e2e_limit_s: float | None = None


PRESETS: Final[dict[str, SLALimits]] = {
    "llama2-70b-server": SLALimits(2.0, 0.200, e2e_limit_s=20.0),
    "llama2-70b-interactive": SLALimits(0.450, 0.040, e2e_limit_s=20.0),
    "mixtral-8x7b-server": SLALimits(2.0, 0.200, e2e_limit_s=20.0),
    "llama3.1-8b-server": SLALimits(2.0, 0.100, e2e_limit_s=20.0),
    "llama3.1-8b-interactive": SLALimits(0.500, 0.030, e2e_limit_s=20.0),
    "llama3.1-405b-server": SLALimits(6.0, 0.175, e2e_limit_s=60.0),
    "llama3.1-405b-interactive": SLALimits(4.5, 0.080, e2e_limit_s=60.0),
    "deepseek-r1-server": SLALimits(2.0, 0.080, e2e_limit_s=60.0),
    "deepseek-r1-interactive": SLALimits(1.5, 0.015, e2e_limit_s=60.0),
    "gpt-oss-120b-server": SLALimits(3.0, 0.080, e2e_limit_s=60.0),
    "gpt-oss-120b-interactive": SLALimits(2.0, 0.015, e2e_limit_s=60.0),
}

PRESET_NAMES: Final[tuple[str, ...]] = tuple(sorted(PRESETS))


def limits_for(
    preset: str | None = None,
    *,
    ttft_p99_s: float | None = None,
    tpot_p99_s: float | None = None,
) -> SLALimits | None:
    """Limits from a preset name, with explicit values overriding it; None when neither given.

    Raises KeyError naming the known presets for a typo, since a silently missing SLA would
    turn every verdict into "no SLA".
    """
    if preset is not None:
        if preset not in PRESETS:
            raise KeyError(f"unknown SLA preset {preset!r}; known: {', '.join(PRESET_NAMES)}")
        base = PRESETS[preset]
        return SLALimits(
            ttft_p99_s if ttft_p99_s is not None else base.ttft_p99_s,
            tpot_p99_s if tpot_p99_s is not None else base.tpot_p99_s,
            base.min_tokens_per_s,
            base.percentile,
            base.e2e_limit_s,
        )
    if ttft_p99_s is None and tpot_p99_s is None:
        return None
    return SLALimits(
        ttft_p99_s if ttft_p99_s is not None else float("inf"),
        tpot_p99_s if tpot_p99_s is not None else float("inf"),
    )

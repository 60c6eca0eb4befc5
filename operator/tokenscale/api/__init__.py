"""The tokenscale API: pydantic models that are the single source of truth for the CRDs."""

from tokenscale.api.benchmark import InferenceBenchmark, InferenceBenchmarkSpec
from tokenscale.api.config import GPUSpec, OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService, InferenceServiceSpec, ScalingSpec
from tokenscale.api.sla import SLASpec

__all__ = [
    "GPUPool",
    "GPUSpec",
    "InferenceBenchmark",
    "InferenceBenchmarkSpec",
    "InferenceService",
    "InferenceServiceSpec",
    "OperatorConfig",
    "SLASpec",
    "ScalingSpec",
]

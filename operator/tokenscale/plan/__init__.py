"""Capacity planning: GPUs, tensor/pipeline parallelism and nodes per replica, before any pod.

Pure functions (no Kubernetes client, no I/O); the reconciler writes the result to status and
the renderer turns it into vLLM arguments and resource requests.
"""

from tokenscale.plan.catalog import CATALOG, ModelArch, resolve
from tokenscale.plan.planner import PlanError, plan_pool, plan_service

__all__ = ["CATALOG", "ModelArch", "PlanError", "plan_pool", "plan_service", "resolve"]

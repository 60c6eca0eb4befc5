"""Local Kubernetes test bed: real control plane + KWOK fake AMD GPU nodes, no Docker.

Why a package: pytest fixtures (tests/conftest.py), ``make testbed-up`` and ``make demo``
all drive the same code.  See docs/testbed.md.
"""

from __future__ import annotations

from .cluster import Cluster, ClusterError, ExtraComponent
from .nodes import DEFAULT_POOLS, GpuModel, NodePool, scale_pools

__all__ = [
    "DEFAULT_POOLS",
    "Cluster",
    "ClusterError",
    "ExtraComponent",
    "GpuModel",
    "NodePool",
    "scale_pools",
]

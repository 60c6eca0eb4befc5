"""Local Kubernetes test bed: real control plane + KWOK fake AMD GPU nodes, no Docker.

Why a package: pytest fixtures (tests/conftest.py), ``make testbed-up`` and ``make demo``
all drive the same code.  See docs/testbed.md.  Exports are resolved lazily so that
``python -m tests.testbed.build`` and the process kubelet do not import the Kubernetes
client (or re-import their own module) just by importing the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Cluster": "cluster",
    "ClusterError": "cluster",
    "ExtraComponent": "cluster",
    "DEFAULT_POOLS": "nodes",
    "GpuModel": "nodes",
    "NodePool": "nodes",
    "scale_pools": "nodes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

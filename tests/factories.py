"""Valid custom resources for tests to start from: change one thing, test one thing.

Kept apart from ``tests/invalid_manifests.py`` (the shared table of *invalid* objects, which is
built from these) so that a test needing a valid object does not import the invalid table.
"""

from __future__ import annotations

import copy
from typing import Any


def service(**spec_changes: Any) -> dict[str, Any]:
    """A valid InferenceService; keyword arguments replace top-level spec keys."""
    spec: dict[str, Any] = {
        "model": {"name": "llama-2-70b", "source": {"huggingFace": "meta-llama/Llama-2-70b-hf"}},
        "pools": [{"name": "mi300x", "gpu": "MI300X", "minReplicas": 1, "maxReplicas": 2}],
        "scaling": {"mode": "builtin", "targetPerReplica": 2500},
        "sla": {"preset": "llama2-70b-server"},
    }
    spec.update(copy.deepcopy(spec_changes))
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "bad"},
        "spec": spec,
    }


def benchmark(**spec_changes: Any) -> dict[str, Any]:
    """A valid InferenceBenchmark; keyword arguments replace top-level spec keys."""
    spec: dict[str, Any] = {
        "target": {"service": "llama2-70b"},
        "scenario": "server",
        "load": {"qps": 10, "durationSeconds": 60},
        "sla": {"preset": "llama2-70b-server"},
    }
    spec.update(copy.deepcopy(spec_changes))
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceBenchmark",
        "metadata": {"name": "bad-bench"},
        "spec": spec,
    }

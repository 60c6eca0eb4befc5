"""Demand for scale from zero: a simulated service asleep at zero, and a Job that sends one
streamed completion to a service by its DNS name, as an in-cluster application would (used by
the e2e tests and by the demo).

Why a pod and not a request from the test process: the Service address only resolves inside
pods (the process kubelet writes their /etc/hosts), and the point is to show the path a real
client takes: Service name -> Service -> whatever it selects (engines or the activator).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

SIMULATED_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "simulated-llama2-70b.yaml"

PROJECT_IMAGE = "ghcr.io/tokenscale/tokenscale:0.1.0"

#: Exits non-zero unless the answer is 200 with streamed tokens; prints one JSON line.
CLIENT = textwrap.dedent(
    """
    import json, os, sys, time
    import httpx
    url = f"http://{os.environ['TARGET']}:8000/v1/completions"
    body = {"model": os.environ["MODEL"], "prompt": "wake up", "max_tokens": 16, "stream": True}
    t0 = time.monotonic()
    chunks, status = 0, None
    with httpx.Client(timeout=300, trust_env=False) as client:
        with client.stream("POST", url, json=body) as resp:
            status = resp.status_code
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks += 1
            if status != 200:
                print(resp.read().decode(errors="replace"), file=sys.stderr)
    print(json.dumps({"status": status, "chunks": chunks, "seconds": time.monotonic() - t0}))
    sys.exit(0 if status == 200 and chunks > 0 else 1)
    """
)


def request_job(name: str, namespace: str, target: str, model: str) -> dict[str, Any]:
    """One completion request to ``http://TARGET.NAMESPACE:8000`` from a pod, no retries."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "client",
                            "image": PROJECT_IMAGE,
                            "command": ["python", "-c", CLIENT],
                            "env": [
                                {"name": "TARGET", "value": f"{target}.{namespace}"},
                                {"name": "MODEL", "value": model},
                            ],
                        }
                    ],
                },
            },
        },
    }


def sleeping_service(name: str, grace_seconds: int, **scaling: Any) -> dict[str, Any]:
    """The simulated Llama-2-70B example at zero replicas: one MI355X pool (0..2) that may
    scale to zero after ``grace_seconds`` idle; ``scaling`` adds or overrides policy keys."""
    doc: dict[str, Any] = yaml.safe_load(SIMULATED_EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["pools"] = [{"name": "mi355x", "gpu": "MI355X", "minReplicas": 0, "maxReplicas": 2}]
    doc["spec"]["replicas"] = 0
    doc["spec"]["scaling"] = {
        "mode": "builtin",
        "targetPerReplica": 100000,
        "scaleToZero": True,
        "scaleToZeroGraceSeconds": grace_seconds,
        **scaling,
    }
    return doc

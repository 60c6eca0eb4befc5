"""Helpers every e2e test module shares: kubectl get/apply, the examples, conditions, polling.

Here rather than in a test module so that importing them does not also import (and, with
``from ... import``, re-collect) another module's tests. Polls run to a deadline and fail with the
last value seen, never sleep a fixed time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.testbed.cluster import Cluster
from tokenscale import constants as c

EXAMPLES = Path(__file__).parents[2] / "examples"


def wait_for(check: Callable[[], Any], timeout: float = 90, what: str = "condition") -> Any:
    """Poll ``check`` every second until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def get(cluster: Cluster, *args: str) -> Any:
    """``kubectl get ... -o json`` as a dict; None when the object does not exist (yet)."""
    out = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    """``kubectl apply`` one object into ``namespace``."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def example(name: str) -> dict[str, Any]:
    """One manifest from ``examples/``, so the e2e tests run what users are shown."""
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The ``type_`` condition of ``obj``'s status; empty when absent."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            found: dict[str, Any] = cond
            return found
    return {}


def wait_condition(
    cluster: Cluster,
    namespace: str,
    name: str,
    type_: str,
    accept: Callable[[dict[str, Any]], bool],
    timeout: float = 90,
) -> dict[str, Any]:
    """Poll an InferenceService until its ``type_`` condition satisfies ``accept``."""
    found: dict[str, Any] = wait_for(
        lambda: (
            (cd := condition(get(cluster, "tsvc", name, "-n", namespace), type_))
            and accept(cd)
            and cd
        ),
        timeout=timeout,
        what=f"{name} {type_}",
    )
    return found


def pods_of(cluster: Cluster, namespace: str, service: str) -> list[dict[str, Any]]:
    """Every pod labelled as belonging to the InferenceService ``service``."""
    found = get(cluster, "pods", "-n", namespace, "-l", f"{c.LABEL_SERVICE}={service}")
    return list((found or {}).get("items") or [])

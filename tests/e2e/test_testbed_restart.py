"""The test bed's restart command and the process kubelet across it (issue 17): a pod being
started while the API server is down still reaches Running with its status reported (the
kubelet used to lose it), and a crash-looping pod is deleted, not left Terminating."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e

IMAGE = "ghcr.io/tokenscale/tokenscale:dev"  # image map: -> the project's venv
RUN_LABEL = {"testbed.tokenscale.dev/run": "process"}


def _pod(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": RUN_LABEL},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": IMAGE, "command": command}],
        },
    }


def _get(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_pod_started_across_an_api_server_restart_runs(cluster: Cluster, namespace: str) -> None:
    pod = _pod("sleeper", ["python", "-c", "import time; print('up', flush=True); time.sleep(600)"])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    _until(lambda: (_get(cluster, namespace, "sleeper") or {}).get("spec", {}).get("nodeName"),
           30, "scheduled")  # fmt: skip
    cluster.restart("apiserver", down_seconds=3)
    running = _until(
        lambda: (
            (p := _get(cluster, namespace, "sleeper"))
            and p.get("status", {}).get("phase") == "Running"
            and p
        ),
        60,
        "sleeper Running after the restart",
    )
    statuses = running["status"]["containerStatuses"]
    assert statuses[0]["state"].get("running"), statuses
    assert cluster.health()["kube-apiserver"]


def test_a_crash_looping_pod_is_deleted_not_left_terminating(
    cluster: Cluster, namespace: str
) -> None:
    pod = _pod("crasher", ["python", "-c", "import sys; sys.exit(1)"])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    _until(
        lambda: ((_get(cluster, namespace, "crasher") or {}).get("status", {})
                 .get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 2,
        60, "crash loop",
    )  # fmt: skip
    out = cluster.kubectl("delete", "pod", "crasher", "-n", namespace, "--timeout=30s",
                          check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert _get(cluster, namespace, "crasher") is None

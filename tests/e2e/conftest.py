"""e2e fixtures: the operator running against the test bed under the chart's RBAC."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.operator_proc import OperatorProcess, install_crds_and_rbac
from tests.testbed import build
from tests.testbed.cluster import Cluster, ClusterError
from tests.testbed.lws import LwsController


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[OperatorProcess]:
    """One operator for the session (tests that restart it start it again)."""
    install_crds_and_rbac(cluster)
    proc = OperatorProcess(cluster).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log (tail):\n{proc.tail(40)}")


@pytest.fixture(scope="session")
def lws(cluster: Cluster) -> LwsController:
    """The real LeaderWorkerSet controller, built (~2 min cold) and started on first use only."""
    if not build.go_available() and not (build.lws_dir() / ".lws.ok").exists():
        pytest.skip("Go toolchain not found (needed once to build the LWS manager)")
    try:
        return LwsController(cluster).start()
    except (build.BuildError, ClusterError, TimeoutError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        pytest.fail(f"LWS controller failed to start: {exc}\n{detail}", pytrace=False)

"""e2e fixtures: the operator running against the test bed under the chart's RBAC."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.operator_proc import OperatorProcess, install_crds_and_rbac
from tests.testbed.cluster import Cluster


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

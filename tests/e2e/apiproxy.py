"""The operator behind the test bed's fault proxy, for the API-server drills (issue 17).

Shared by ``test_drill_apiserver.py`` and ``test_drill_api_faults.py`` (a helper module, so
that importing it does not re-collect another module's tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.e2e.operator_proc import OperatorProcess
from tests.testbed.cluster import Cluster
from tests.testbed.faultproxy import FaultPlan, FaultProxy


@contextlib.contextmanager
def proxied_operator(
    cluster: Cluster, session_operator: OperatorProcess, name: str, plan: FaultPlan | None = None
) -> Iterator[tuple[FaultProxy, OperatorProcess]]:
    """The session's operator steps aside; one whose kubeconfig points at a fault proxy in
    front of the API server runs (same ServiceAccount token, same CA); afterwards the
    session's operator starts again."""
    session_operator.stop()
    pki_dir = cluster.work_dir / "pki"
    proxy = FaultProxy(
        cluster.api_url, ca=cluster.ca_path, cert=pki_dir / "apiserver.crt",
        key=pki_dir / "apiserver.key", plan=plan,
    ).start()  # fmt: skip
    proc = OperatorProcess(cluster, name=name)
    proc.kubeconfig = proxy.write_kubeconfig(
        proc.kubeconfig, cluster.work_dir / f"{name}.kubeconfig"
    )
    try:
        proc.start()
        yield proxy, proc
    finally:
        proc.stop()
        proxy.stop()
        session_operator.start()

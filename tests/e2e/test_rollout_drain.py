"""A node drained with ``kubectl drain`` and a node tainted ``amd-dcm=up:NoExecute`` (the GPU
Operator's repartition), under a benchmark's load (issue 18, docs/rollouts.md "Drain"): the
leaving replica finishes its requests in flight (0 failed), and comes back on a free node; with
no node left the replacement stays Pending and ``Degraded`` says why, until capacity returns.

``kubectl drain`` goes through the eviction API (the service's PDB allows one engine at a time);
the taint goes through the taint manager, which deletes pods without it. Both reach the same
graceful deletion: endpoints drop the pod, preStop, SIGTERM, the engine drains.
"""

from __future__ import annotations

import pytest

from tests.e2e import rollout_drill as drill
from tests.e2e.helpers import get
from tests.e2e.operator_proc import OperatorProcess
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e


def test_drain_and_dcm_taint_finish_in_flight_and_come_back_elsewhere(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    names = drill.add_nodes(cluster, range(3))  # one node free
    try:
        drill.start_service(cluster, namespace, "v1")
        pdb = get(cluster, "pdb", drill.NAME, "-n", namespace)
        assert pdb["spec"]["maxUnavailable"] == 1, pdb
        seen = drill.drain_under_load(cluster, namespace, load_seconds=20)
        print(f"\ndrain: {seen.drain}\ntaint: {seen.taint}\nno capacity: {seen.unschedulable}")
        for case in (seen.drain, seen.taint):
            assert case.requests_total > 30, case
            assert case.requests_failed == 0, case
        # no capacity: the condition names the scheduler's reasons, one replica keeps serving
        message = seen.unschedulable["message"]
        assert "Unschedulable" in message and "untolerated taint" in message, message
        assert seen.ready_while_unschedulable == 1
    finally:
        cluster.kubectl("delete", "tsvc", drill.NAME, "-n", namespace, "--wait=false", check=False)
        drill.remove_nodes(cluster, names)

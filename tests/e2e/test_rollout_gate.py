"""The SLA gate with rollback (issue 18, docs/rollouts.md "SLA gate"): a deliberately slower
engine version (the simulator at a fifth of its speed) rolls out, fails the benchmark the
operator runs after the rollout, and the previous version is restored; an Event and the
Progressing condition say so, and the spec, left as written, does not roll it out again."""

from __future__ import annotations

import time

import pytest

from tests.e2e import rollout_drill as drill
from tests.e2e.operator_proc import OperatorProcess
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e


def test_slower_version_fails_the_sla_gate_and_is_rolled_back(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    names = drill.add_nodes(cluster, range(3))
    try:
        seen = drill.sla_gate(cluster, namespace, "v1", "v2")
        print(f"\ngate: {seen}")
        assert seen.passed["verdict"] == "Pass", seen.passed
        assert seen.failed["verdict"] == "Fail", seen.failed
        tpot = seen.failed["results"]["tpotMs"]["p99"]
        assert tpot > drill.GATE_SLA["tpotP99Ms"], seen.failed  # the slower engine, measured
        assert seen.failed["results"]["errors"] == 0  # slower, not broken
        assert len(seen.events) == 1 and "failed the SLA" in seen.events[0], seen.events
        assert seen.progressing["reason"] == "RolledBack", seen.progressing
        assert seen.rolled_back_from and seen.rolled_back_from in seen.progressing["message"]
        # held: the spec still names v2, the pass after pass keeps v1
        time.sleep(5)
        dep = drill.deployment(cluster, namespace)
        assert drill.rolled_out(dep, f"{drill.IMAGE}:v1"), dep.get("status")
    finally:
        cluster.kubectl("delete", "tsvc", drill.NAME, "-n", namespace, "--wait=false", check=False)
        drill.remove_nodes(cluster, names)

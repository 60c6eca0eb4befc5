"""Rollout time and failed requests per rollout case, on the test bed (issue 18).

Starts a test bed and the operator (as the e2e tests do), then runs the drills of
tests/e2e/rollout_drill.py on simulated engines with an InferenceBenchmark's load running
through each change:

- ``full_fleet_in_place``: two 2-GPU replicas on two 2-GPU nodes (no GPU free): the image
  change is replaced in place, one replica at a time;
- ``free_gpus_surge``: a third node frees a replica's worth of GPUs: the same change surges;
- ``broken_image``: the new image cannot start; ``rollout_seconds`` is the time until the
  operator reports the rollout stuck (Progressing=False), the load keeps running on the old
  replicas, then the spec is reverted (``rollback_seconds``);
- ``node_drain``: ``kubectl drain`` of a node with a replica (eviction API, the PDB) under load;
  ``rollout_seconds`` runs from the load's start (3 s before the drain) to two ready replicas
  off that node;
- ``amd_dcm_taint``: the GPU Operator's ``amd-dcm=up:NoExecute`` on a node with a replica, the
  same measure; then, with no node left, ``Degraded`` is recorded and the time for the replica
  to come back once the taint is removed (``came_back_seconds``);
- ``sla_gate_rollback``: a version five times slower (the simulator's ``--speed 0.2``) behind
  ``benchmarkOnRollout.rollback``: ``rollout_seconds`` to the slow version rolled out,
  ``rollback_seconds`` to the previous one back; requests are the failing gate benchmark's.

Usage: ``.venv/bin/python -m benchmarks.rollouts [--out benchmarks/results/rollouts.json]``
Writes ``{"cases": {name: {rollout_seconds, requests_total, requests_failed, ...}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.e2e import rollout_drill as drill
from tests.e2e.operator_proc import OperatorProcess, install_crds_and_rbac
from tests.testbed.cluster import Cluster

OUT = Path(__file__).parent / "results" / "rollouts.json"


def run(load_seconds: int) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    with Cluster() as cluster:
        install_crds_and_rbac(cluster)
        operator = OperatorProcess(cluster).start()
        namespace = f"rollouts-{uuid.uuid4().hex[:6]}"
        core = client.CoreV1Api(cluster.api_client())
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        cluster.wait_default_sa(namespace)
        try:
            drill.add_nodes(cluster, range(2))
            drill.start_service(cluster, namespace, "v1")
            full = drill.change_under_load(cluster, namespace, "full", "v2", load_seconds)
            cases["full_fleet_in_place"] = full.numbers()
            drill.add_nodes(cluster, range(2, 3))
            free = drill.change_under_load(cluster, namespace, "free", "v3", load_seconds)
            cases["free_gpus_surge"] = free.numbers()
            drill.settle(cluster, namespace)
            broken, rollback, stuck, ready = drill.broken_under_load(
                cluster, namespace, "broken", "v3", load_seconds
            )
            cases["broken_image"] = {
                **broken.numbers(),
                "rollback_seconds": round(rollback, 1),
                "ready_replicas_while_stuck": ready,
                "condition": f"Progressing=False {stuck['reason']}: {stuck['message']}",
            }
            for name, case in (("full_fleet_in_place", full), ("free_gpus_surge", free)):
                cases[name]["load_covered_rollout"] = case.load_covered_rollout
            drained = drill.drain_under_load(cluster, namespace, load_seconds=20)
            for name, case in (("node_drain", drained.drain), ("amd_dcm_taint", drained.taint)):
                cases[name] = {**case.numbers(), "event": case.strategy}
                del cases[name]["strategy"], cases[name]["reason"]
            cases["amd_dcm_taint"]["no_capacity"] = {
                "condition": f"Degraded=True {drained.unschedulable['reason']}: "
                f"{drained.unschedulable['message']}",
                "ready_replicas_meanwhile": drained.ready_while_unschedulable,
                "came_back_seconds": round(drained.came_back_seconds, 1),
            }
            gate = drill.sla_gate(cluster, namespace, "v4", "v5", replicas=2)
            results = gate.failed.get("results") or {}
            cases["sla_gate_rollback"] = {
                "rollout_seconds": round(gate.rollout_seconds, 1),
                "requests_total": int(results.get("requests") or 0)
                + int(results.get("errors") or 0),
                "requests_failed": int(results.get("errors") or 0),
                "rollback_seconds": round(gate.rollback_seconds, 1),
                "verdict_before": gate.passed.get("verdict"),
                "verdict_slow": gate.failed.get("verdict"),
                "tpot_p99_ms_before": ((gate.passed.get("results") or {}).get("tpotMs") or {}).get(
                    "p99"
                ),
                "tpot_p99_ms_slow": (results.get("tpotMs") or {}).get("p99"),
                "sla": drill.GATE_SLA,
                "event": gate.events[0] if gate.events else None,
                "progressing": f"{gate.progressing.get('reason')}",
            }
        finally:
            operator.stop()
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--load-seconds", type=int, default=45)
    args = parser.parse_args(argv)
    cases = run(args.load_seconds)
    doc = {
        "benchmark": "rollouts",
        "command": "python -m benchmarks.rollouts",
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {
            "engines": "simulated (tokenscale sim engine, MI355X profile), process kubelet",
            "replicas": 2,
            "gpus_per_replica": 2,
            "nodes": "2 (full fleet) then 3 fake MI350X nodes x 2 GPUs",
            "load": f"InferenceBenchmark server scenario, 4 req/s, {args.load_seconds} s, "
            "64 in / 768 out tokens",
            "engine_startup_seconds": 3,
            "prestop_sleep_seconds": 1,
            "shutdown_timeout_seconds": 60,
            "drain_load": "the same at 20 s per case; 3 nodes, one free",
            "gate": "benchmarkOnRollout offline, 2 in flight, 10 s, default dataset, SLA "
            f"{drill.GATE_SLA}; the slow version runs the simulator with --speed 0.2",
        },
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    json.dump(cases, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Rollout drills on the test bed, shared by tests/e2e/test_rollout.py and benchmarks/rollouts.py.

A dedicated fleet of fake MI350X nodes (a model no other test uses, so nothing else takes its
GPUs) of two GPUs each carries a simulated service of two-GPU replicas: two nodes, two
replicas, no GPU free. An InferenceBenchmark's load runs through the Service while the engine
image changes, and the drill measures how long the Deployment takes to have only new, ready
replicas, and how many of the benchmark's requests failed.

Not a test module (no ``test_`` functions), so importing it collects nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.helpers import apply, example, get
from tests.testbed import nodes
from tests.testbed.cluster import Cluster
from tokenscale.bench.models import BenchResult

MI350X = nodes.GpuModel("MI350X", "75a0", "AMD_Instinct_MI350X_OAM", "288G", 256, 1024)
FLEET = nodes.NodePool("rollout-mi350x", 3, MI350X, gpus_per_node=2)
#: The project image the simulated engines run from (the image map keys on the prefix, so any
#: tag runs the same program: a tag change is a real image change that still starts).
IMAGE = "ghcr.io/tokenscale/tokenscale"
BROKEN_IMAGE = "registry.invalid/tokenscale/engine:does-not-exist"
NAME = "roll"
#: The process kubelet runs pods with this label, whatever their image (KWOK would otherwise
#: report a pod with an unknown image Running and Ready).
RUN_LABEL = {nodes.PROCESS_LABEL: nodes.PROCESS_LABEL_VALUE}


def fleet_node(index: int) -> dict[str, Any]:
    """Node ``rollout-mi350x-<index>``: two MI350X GPUs, labelled as AMD's labeller does."""
    return nodes.node_manifest(FLEET, index)


def add_nodes(cluster: Cluster, indexes: range) -> list[str]:
    return nodes.create_manifests(cluster.api_client(), [fleet_node(i) for i in indexes])


def remove_nodes(cluster: Cluster, names: list[str]) -> None:
    nodes.delete_nodes(cluster.api_client(), names)


#: The SLA the gate drill's post-rollout benchmark judges against: the simulated MI355X answers
#: at about 5 ms per output token, ``--speed 0.2`` (five times slower) at about 25 ms.
GATE_SLA = {"ttftP99Ms": 5000, "tpotP99Ms": 12}


def service(
    tag: str,
    strategy: str = "auto",
    *,
    gate: bool = False,
    speed: float | None = None,
    replicas: int = 2,
) -> dict[str, Any]:
    """Two replicas of two MI350X GPUs, simulated; only the image tag changes between versions.
    ``gate``: benchmark every rollout against GATE_SLA and roll back on Fail; ``speed``: the
    simulator's simulated seconds per wall second (below 1: a slower engine version)."""
    doc = example("simulated-llama2-70b.yaml")
    doc["metadata"]["name"] = NAME
    doc["spec"]["engine"] = {
        "mode": "simulated",
        "image": f"{IMAGE}:{tag}" if ":" not in tag else tag,
        "shutdownTimeoutSeconds": 60,
        # a few seconds of model loading, so that a replica's start is visible in the timing;
        # the simulator has no MI350X profile: its gfx950 sibling's (the last --gpu wins)
        "args": ["--startup-seconds", "3", "--gpu", "MI355X"],
    }
    doc["spec"]["pools"] = [
        {"name": "mi350x", "gpu": "MI350X", "gpusPerReplica": 2, "minReplicas": replicas,
         "maxReplicas": replicas}
    ]  # fmt: skip
    doc["spec"]["scaling"] = {"mode": "off"}
    doc["spec"]["replicas"] = replicas
    doc["spec"]["rollout"] = {"strategy": strategy}
    doc["spec"]["podTemplate"] = {"labels": RUN_LABEL}
    if speed is not None:  # the same 3 s of loading in wall time (the last value wins)
        doc["spec"]["engine"]["args"] += ["--speed", f"{speed:g}", "--startup-seconds",
                                          f"{3 * speed:g}"]  # fmt: skip
    if gate:
        doc["spec"]["sla"] = dict(GATE_SLA)
        # closed loop, two in flight: per-request latency, and no send schedule that a busy
        # 2-core test bed could fall behind (an Invalid verdict is never acted on)
        doc["spec"]["benchmarkOnRollout"] = {
            "enabled": True,
            "scenario": "offline",
            "concurrency": 2,
            "durationSeconds": 10,
            "rollback": True,
        }
    return doc


def load(name: str, seconds: int, qps: float = 4.0) -> dict[str, Any]:
    """A server-scenario benchmark against the drill's service."""
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceBenchmark",
        "metadata": {"name": name},
        "spec": {
            "target": {"service": NAME},
            "scenario": "server",
            "load": {"qps": qps, "durationSeconds": seconds},
            # long answers (~4 s each) that a replica leaving has streams to drain
            "dataset": {
                "input": {"kind": "fixed", "mean": 64},
                "output": {"kind": "fixed", "mean": 768},
            },
            "sla": {"ttftP99Ms": 60000, "tpotP99Ms": 5000},
        },
    }


def poll(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """Like helpers.wait_for, at a finer step (rollout times are measured with it)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def deployment(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = get(cluster, "deploy", f"{NAME}-mi350x", "-n", namespace) or {}
    return found


def rolled_out(dep: dict[str, Any], image: str) -> bool:
    """Only new, ready replicas: the Deployment controller has finished the rollout."""
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    containers = (spec.get("template") or {}).get("spec", {}).get("containers") or [{}]
    want = int(spec.get("replicas") or 0)
    return bool(
        containers[0].get("image") == image
        and status.get("observedGeneration") == (dep.get("metadata") or {}).get("generation")
        and status.get("updatedReplicas") == want
        and status.get("readyReplicas") == want
        and status.get("replicas") == want
    )


def pods_running(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    found = get(cluster, "pods", "-n", namespace, "-l", f"tokenscale.dev/service={NAME}")
    return [
        p
        for p in (found or {}).get("items") or []
        if p["metadata"].get("deletionTimestamp") is None
    ]


@dataclass
class Case:
    """One measured rollout: what was chosen, how long it took, what the load saw."""

    strategy: str
    reason: str
    rollout_seconds: float
    requests_total: int
    requests_failed: int
    load_covered_rollout: bool
    #: failures by kind and stale keep-alive resends, from the benchmark's full result
    errors: dict[str, int] = field(default_factory=dict)
    requests_resent: int = 0

    def numbers(self) -> dict[str, Any]:
        return {
            "rollout_seconds": round(self.rollout_seconds, 1),
            "requests_total": self.requests_total,
            "requests_failed": self.requests_failed,
            "errors": self.errors,
            "requests_resent": self.requests_resent,
            "strategy": self.strategy,
            "reason": self.reason,
        }


def bench_details(
    cluster: Cluster, namespace: str, bench: str
) -> tuple[dict[str, int], int] | None:
    """(failures by kind, requests resent) from the merged result the operator stores next to
    the report (status has only the count): what tells a drain cut short (``disconnected``
    mid-answer, ``incomplete_stream``) from a stale keep-alive connection (resent)."""
    cm = get(cluster, "cm", f"{bench}-report", "-n", namespace) or {}
    raw = (cm.get("data") or {}).get("result.json")
    if not raw:
        return None
    result = BenchResult.model_validate_json(raw)
    return dict(result.metrics.errors), result.self_check.requests_resent


def start_service(cluster: Cluster, namespace: str, tag: str) -> None:
    apply(cluster, namespace, service(tag))
    poll(
        lambda: rolled_out(deployment(cluster, namespace), f"{IMAGE}:{tag}"),
        timeout=120,
        what="two ready replicas",
    )


def change_under_load(
    cluster: Cluster, namespace: str, bench: str, tag: str, load_seconds: int
) -> Case:
    """Start ``bench``'s load, change the image to ``tag`` once it runs, measure the rollout."""
    apply(cluster, namespace, load(bench, load_seconds))
    poll(
        lambda: (
            (get(cluster, "tsbench", bench, "-n", namespace) or {}).get("status", {}).get("phase")
            == "Running"
            and _job_pod_running(cluster, namespace, bench)
        ),
        timeout=60,
        what="benchmark load running",
    )
    load_from = time.monotonic()
    time.sleep(3)  # the load generator's first requests are in flight
    image = f"{IMAGE}:{tag}"
    started = time.monotonic()
    apply(cluster, namespace, service(tag))
    poll(lambda: rolled_out(deployment(cluster, namespace), image), 150, f"rollout to {tag}")
    finished = time.monotonic()
    svc = get(cluster, "tsvc", NAME, "-n", namespace)
    rollout = svc["status"]["pools"][0].get("rollout") or {}
    done = poll(
        lambda: (
            (b := get(cluster, "tsbench", bench, "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=load_seconds + 90,
        what=f"benchmark {bench} finished",
    )
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    results = status["results"]
    errors, resent = wait_details(cluster, namespace, bench)
    return Case(
        strategy=str(rollout.get("strategy")),
        reason=str(rollout.get("reason")),
        rollout_seconds=finished - started,
        requests_total=int(results["requests"]) + int(results.get("errors") or 0),
        requests_failed=int(results.get("errors") or 0),
        # the load (from its pod's start) lasted past the end of the rollout
        load_covered_rollout=finished <= load_from + load_seconds,
        errors=errors,
        requests_resent=resent,
    )


def _job_pod_running(cluster: Cluster, namespace: str, bench: str) -> bool:
    found = get(cluster, "pods", "-n", namespace, "-l", f"job-name={bench}-run")
    return any(
        (p.get("status") or {}).get("phase") == "Running" for p in (found or {}).get("items") or []
    )


def settle(cluster: Cluster, namespace: str, replicas: int = 2) -> None:
    """Wait until the previous version's pods are gone (a surge finishes while they still drain
    and hold their GPUs, which the next decision would rightly count as taken)."""
    poll(
        lambda: len(_all_pods(cluster, namespace)) == replicas,
        timeout=60,
        what="old pods gone",
    )


def _all_pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    found = get(cluster, "pods", "-n", namespace, "-l", f"tokenscale.dev/service={NAME}")
    return list((found or {}).get("items") or [])


def ready_replicas(cluster: Cluster, namespace: str) -> int:
    svc = get(cluster, "tsvc", NAME, "-n", namespace) or {}
    return int((svc.get("status") or {}).get("readyReplicas") or 0)


def progressing(cluster: Cluster, namespace: str) -> dict[str, Any]:
    svc = get(cluster, "tsvc", NAME, "-n", namespace) or {}
    for cond in (svc.get("status") or {}).get("conditions") or []:
        if cond["type"] == "Progressing":
            found: dict[str, Any] = cond
            return found
    return {}


def broken_under_load(
    cluster: Cluster, namespace: str, bench: str, good_tag: str, load_seconds: int
) -> tuple[Case, float, dict[str, Any], int]:
    """A broken image under load, then the spec reverted: (the case, seconds to roll back after
    the revert, the Progressing condition while stuck, ready replicas while stuck).
    ``rollout_seconds`` is the time until the operator reported the rollout stuck."""
    apply(cluster, namespace, load(bench, load_seconds))
    poll(lambda: _job_pod_running(cluster, namespace, bench), timeout=60, what="benchmark running")
    time.sleep(3)
    started = time.monotonic()
    apply(cluster, namespace, service(BROKEN_IMAGE))
    stuck = poll(
        lambda: (
            (cd := progressing(cluster, namespace)).get("status") == "False"
            and cd.get("reason") != "Stable"
            and cd
        ),
        timeout=60,
        what="rollout reported stuck",
    )
    detected = time.monotonic() - started
    chosen = (get(cluster, "tsvc", NAME, "-n", namespace) or {})["status"]["pools"][0]
    broken_rollout = chosen.get("rollout") or {}
    time.sleep(5)  # the load keeps running against the old replicas while stuck
    ready_while_stuck = ready_replicas(cluster, namespace)
    reverted = time.monotonic()
    apply(cluster, namespace, service(good_tag))
    poll(
        lambda: (
            rolled_out(deployment(cluster, namespace), f"{IMAGE}:{good_tag}")
            and all(
                p["spec"]["containers"][0]["image"] != BROKEN_IMAGE
                for p in pods_running(cluster, namespace)
            )
        ),
        timeout=60,
        what="rolled back",
    )
    rollback = time.monotonic() - reverted
    done = poll(
        lambda: (
            (b := get(cluster, "tsbench", bench, "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=load_seconds + 90,
        what=f"benchmark {bench} finished",
    )
    results = done["status"]["results"]
    case = Case(
        strategy=str(broken_rollout.get("strategy")),
        reason=str(stuck.get("reason")),
        rollout_seconds=detected,
        requests_total=int(results["requests"]) + int(results.get("errors") or 0),
        requests_failed=int(results.get("errors") or 0),
        load_covered_rollout=True,
    )
    return case, rollback, stuck, ready_while_stuck


# ---- node drain and the GPU Operator's repartition taint ---------------------------------------

#: The taint the GPU Operator's device-config manager puts on a node it repartitions.
DCM_TAINT = "amd-dcm=up:NoExecute"


def engine_nodes(cluster: Cluster, namespace: str) -> dict[str, str]:
    """Engine pod name -> node, for the pods not being deleted."""
    return {
        p["metadata"]["name"]: p["spec"].get("nodeName") or ""
        for p in pods_running(cluster, namespace)
    }


def _bench_node(cluster: Cluster, namespace: str, bench: str) -> str:
    found = get(cluster, "pods", "-n", namespace, "-l", f"job-name={bench}-run") or {}
    return next((p["spec"].get("nodeName") or "" for p in found.get("items") or []), "")


def _start_load(cluster: Cluster, namespace: str, bench: str, seconds: int) -> float:
    apply(cluster, namespace, load(bench, seconds))
    poll(lambda: _job_pod_running(cluster, namespace, bench), timeout=60, what="benchmark running")
    time.sleep(3)  # requests in flight on every replica
    return time.monotonic()


def finish(
    cluster: Cluster, namespace: str, bench: str, seconds: int = 120
) -> tuple[dict[str, Any], dict[str, int], int]:
    """(status results, failures by kind, requests resent) once ``bench`` has finished."""
    done = poll(
        lambda: (
            (b := get(cluster, "tsbench", bench, "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=seconds,
        what=f"benchmark {bench} finished",
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    results: dict[str, Any] = done["status"]["results"]
    return (results, *wait_details(cluster, namespace, bench))


def _back_to_two(cluster: Cluster, namespace: str, avoid: set[str], timeout: float = 90) -> None:
    """Two ready engine pods, none on the ``avoid`` nodes, nothing else left terminating."""

    def ok() -> bool:
        where = engine_nodes(cluster, namespace)
        return (
            ready_replicas(cluster, namespace) == 2
            and len(where) == 2
            and not set(where.values()) & avoid
            and len(_all_pods(cluster, namespace)) == 2
        )

    poll(ok, timeout=timeout, what=f"two ready replicas off {sorted(avoid)}")


def _case(name: str, seconds: float, results: dict[str, Any], errors: dict[str, int],
          resent: int) -> Case:  # fmt: skip
    return Case(
        strategy=name,
        reason="",
        rollout_seconds=seconds,
        requests_total=int(results["requests"]) + int(results.get("errors") or 0),
        requests_failed=int(results.get("errors") or 0),
        load_covered_rollout=True,
        errors=errors,
        requests_resent=resent,
    )


@dataclass
class DrainDrill:
    """What the drain drill saw: the two measured cases and the no-capacity condition."""

    drain: Case
    taint: Case
    unschedulable: dict[str, Any]
    ready_while_unschedulable: int
    came_back_seconds: float


def drain_under_load(cluster: Cluster, namespace: str, load_seconds: int = 30) -> DrainDrill:
    """Three nodes of two GPUs, two replicas of two (one node free), the load running:

    1. ``kubectl drain`` a node with a replica (eviction API, the PDB): its replica finishes its
       streams and comes back on the free node;
    2. the drained node is uncordoned; ``amd-dcm=up:NoExecute`` on a node with a replica (the
       taint manager deletes the pod, no eviction API): it comes back on the free node;
    3. with no node left (one tainted, one cordoned by a second drain), the evicted replica stays
       Pending and ``Degraded`` says why; removing the taint brings it back.

    The caller adds the nodes and starts the service; the drill leaves every node untainted and
    schedulable."""
    tainted: list[str] = []
    cordoned: list[str] = []
    selector = f"--pod-selector=tokenscale.dev/service={NAME}"
    try:
        # 1. kubectl drain
        start = _start_load(cluster, namespace, "drain", load_seconds)
        # a node with a replica (the benchmark's own pod is not an engine: the selector skips it)
        node_a = sorted(engine_nodes(cluster, namespace).values())[0]
        cordoned.append(node_a)
        cluster.kubectl("drain", node_a, selector, "--ignore-daemonsets",
                        "--delete-emptydir-data", "--timeout=120s", timeout=150)  # fmt: skip
        _back_to_two(cluster, namespace, {node_a})
        drain_seconds = time.monotonic() - start
        drain = _case("kubectl drain", drain_seconds, *finish(cluster, namespace, "drain"))

        # 2. the repartition taint, with a free node
        cluster.kubectl("uncordon", node_a)
        cordoned.remove(node_a)
        start = _start_load(cluster, namespace, "taint", load_seconds)
        bench_node = _bench_node(cluster, namespace, "taint")
        # not the benchmark pod's node: it tolerates no taint either and would be evicted too
        candidates = sorted(n for n in engine_nodes(cluster, namespace).values() if n != bench_node)
        node_b = candidates[0]
        tainted.append(node_b)
        cluster.kubectl("taint", "node", node_b, DCM_TAINT)
        _back_to_two(cluster, namespace, {node_b})
        taint_seconds = time.monotonic() - start
        taint = _case(DCM_TAINT, taint_seconds, *finish(cluster, namespace, "taint"))

        # 3. no capacity left: node_b tainted, drain another node with a replica
        node_c = sorted(engine_nodes(cluster, namespace).values())[0]
        cordoned.append(node_c)
        cluster.kubectl("drain", node_c, selector, "--ignore-daemonsets",
                        "--delete-emptydir-data", "--timeout=120s", timeout=150)  # fmt: skip
        degraded = poll(
            lambda: (
                (cd := _condition(cluster, namespace, "Degraded")).get("reason") == "Unschedulable"
                and cd
            ),
            timeout=60,
            what="Degraded=Unschedulable",
        )
        ready_while = ready_replicas(cluster, namespace)
        back = time.monotonic()
        cluster.kubectl("taint", "node", node_b, f"{DCM_TAINT}-")
        tainted.remove(node_b)
        _back_to_two(cluster, namespace, {node_c})
        came_back = time.monotonic() - back
        return DrainDrill(drain, taint, degraded, ready_while, came_back)
    finally:
        for node in tainted:
            cluster.kubectl("taint", "node", node, f"{DCM_TAINT}-", check=False)
        for node in cordoned:
            cluster.kubectl("uncordon", node, check=False)


def wait_details(cluster: Cluster, namespace: str, bench: str) -> tuple[dict[str, int], int]:
    """bench_details once the operator has stored the finished benchmark's result."""
    found: tuple[dict[str, int], int] = poll(
        lambda: bench_details(cluster, namespace, bench), timeout=30, what=f"{bench} result"
    )
    return found


def _condition(cluster: Cluster, namespace: str, type_: str) -> dict[str, Any]:
    svc = get(cluster, "tsvc", NAME, "-n", namespace) or {}
    for cond in (svc.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            found: dict[str, Any] = cond
            return found
    return {}


# ---- the SLA gate -------------------------------------------------------------------------------


@dataclass
class GateDrill:
    """A slower version rolled out behind the SLA gate: the gate's verdicts and the rollback."""

    passed: dict[str, Any]  # the first version's post-rollout benchmark status
    failed: dict[str, Any]  # the slower version's
    rollout_seconds: float  # change applied -> the slower version rolled out
    rollback_seconds: float  # change applied -> the previous version back, rolled out
    events: list[str]  # RolledBack Events, "reason: message"
    progressing: dict[str, Any]
    rolled_back_from: str | None


def _generation(cluster: Cluster, namespace: str) -> int:
    svc = get(cluster, "tsvc", NAME, "-n", namespace) or {}
    return int((svc.get("metadata") or {}).get("generation") or 0)


def _gate_result(cluster: Cluster, namespace: str, generation: int) -> dict[str, Any]:
    name = f"{NAME}-rollout-{generation}"
    done = poll(
        lambda: (
            (b := get(cluster, "tsbench", name, "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=150,
        what=f"post-rollout benchmark {name}",
    )
    status: dict[str, Any] = done["status"]
    return status


def sla_gate(
    cluster: Cluster, namespace: str, good: str, slow: str, replicas: int = 1
) -> GateDrill:
    """``good`` passes the gate; ``slow`` (the simulator at a fifth of the speed) fails it and
    is rolled back to ``good``. The caller provides the nodes; the service is (re)applied."""
    apply(cluster, namespace, service(good, gate=True, replicas=replicas))
    poll(lambda: rolled_out(deployment(cluster, namespace), f"{IMAGE}:{good}"), 120, "v1 ready")
    passed = _gate_result(cluster, namespace, _generation(cluster, namespace))
    started = time.monotonic()
    apply(cluster, namespace, service(slow, gate=True, speed=0.2, replicas=replicas))
    poll(lambda: rolled_out(deployment(cluster, namespace), f"{IMAGE}:{slow}"), 150, "slow out")
    rollout_seconds = time.monotonic() - started
    failed = _gate_result(cluster, namespace, _generation(cluster, namespace))
    poll(
        lambda: rolled_out(deployment(cluster, namespace), f"{IMAGE}:{good}"),
        timeout=150,
        what=f"rolled back to {good}",
    )
    rollback_seconds = time.monotonic() - started
    found = get(cluster, "events", "-n", namespace, "--field-selector", "reason=RolledBack") or {}
    events = [f"{e['reason']}: {e['message']}" for e in found.get("items") or []]
    svc = get(cluster, "tsvc", NAME, "-n", namespace) or {}
    pool = ((svc.get("status") or {}).get("pools") or [{}])[0]
    return GateDrill(
        passed=passed,
        failed=failed,
        rollout_seconds=rollout_seconds,
        rollback_seconds=rollback_seconds,
        events=events,
        progressing=progressing(cluster, namespace),
        rolled_back_from=(pool.get("rollout") or {}).get("rolledBackFrom"),
    )

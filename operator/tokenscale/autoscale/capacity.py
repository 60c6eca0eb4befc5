"""Capacity-aware scale-up and drain-safe scale-down, as pure functions over API dicts.

Why check before scaling: a replica that cannot be placed becomes a Pending pod that holds a
quota, confuses ``kubectl get``, and never serves a token. Counting allocatable GPUs on matching
nodes (minus what bound pods already request) lets the decision cap the scale-up and report
``InsufficientGPU`` instead. Why deletion costs: when a ReplicaSet shrinks it removes the pod with
the lowest ``controller.kubernetes.io/pod-deletion-cost`` first (after unready pods), so giving
the least-loaded pods the lowest cost drains the fewest in-flight requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tokenscale.api.config import GPUSpec
from tokenscale.constants import (
    ANNOTATION_POD_DELETION_COST,
    NODE_LABEL_DEVICE_ID,
    NODE_LABEL_PREFIX,
    NODE_LABEL_PREFIX_LEGACY,
    NODE_LABEL_PRODUCT_NAME,
    RESOURCE_GPU,
    RESOURCE_PREFIX,
)

_TERMINAL_PHASES = ("Succeeded", "Failed")
_INT32_MAX = 2**31 - 1
_SUFFIX = {"k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_count(value: Any) -> int:
    """An integer resource quantity ("8", 8, "1k"); garbage counts as 0, never raises."""
    text = str(value).strip()
    for suffix, factor in sorted(_SUFFIX.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            text, mult = text[: -len(suffix)], factor
            break
    else:
        mult = 1
    try:
        return int(float(text) * mult)
    except ValueError:
        return 0


def resource_name(partition: str | None = None) -> str:
    """``amd.com/gpu``, or ``amd.com/<profile>`` for partitions (mixed naming strategy)."""
    return f"{RESOURCE_PREFIX}{partition}" if partition else RESOURCE_GPU


def node_matches(labels: Mapping[str, str], gpu: GPUSpec) -> bool:
    """Whether a node carries the GPU model, by AMD node-labeller device-id or product name.

    Handles the homogeneous keys (``amd.com/gpu.device-id=75a3``), the heterogeneous-node keys
    (``amd.com/gpu.device-id.75a3=8``) and the legacy ``beta.amd.com/gpu.*`` prefix.
    """
    ids = {d.lower() for d in gpu.device_ids}
    names = set(gpu.product_names)
    for prefix in (NODE_LABEL_PREFIX, NODE_LABEL_PREFIX_LEGACY):
        dev_key = prefix + NODE_LABEL_DEVICE_ID.removeprefix(NODE_LABEL_PREFIX)
        name_key = prefix + NODE_LABEL_PRODUCT_NAME.removeprefix(NODE_LABEL_PREFIX)
        for key, value in labels.items():
            if key == dev_key and value.lower() in ids:
                return True
            if key.startswith(dev_key + ".") and key[len(dev_key) + 1 :].lower() in ids:
                return True
            if key == name_key and value in names:
                return True
            if key.startswith(name_key + ".") and key[len(name_key) + 1 :] in names:
                return True
    return False


def _schedulable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions")
    if not conditions:
        return True  # no conditions reported (e.g. fake nodes): trust allocatable
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_request(pod: Mapping[str, Any], resource: str) -> int:
    """Effective request of ``resource``: max(sum over containers, any init container)."""

    def one(container: Mapping[str, Any]) -> int:
        res = container.get("resources") or {}
        value = (res.get("requests") or {}).get(resource)
        if value is None:  # extended resources: requests default to limits
            value = (res.get("limits") or {}).get(resource)
        return parse_count(value) if value is not None else 0

    spec = pod.get("spec") or {}
    main = sum(one(c) for c in spec.get("containers") or [])
    init = max((one(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def placement_fields(pod: Mapping[str, Any]) -> dict[str, Any]:
    """Only what :func:`free_per_node` reads of a pod: its node, phase and container requests.

    Why: capacity is counted over every pod of the cluster (a real one has thousands, most of
    them not ours), and a whole pod is ~5 KB of JSON; kept whole, one count held tens of MB of
    small objects at once, and CPython keeps the arenas of such a peak (the churn drill at
    1,000 services: +12 MiB RSS per cluster-wide pod list, stepwise)."""
    spec = pod.get("spec") or {}

    def requests(containers: Any) -> list[dict[str, Any]]:
        return [{"resources": c.get("resources") or {}} for c in containers or []]

    return {
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": requests(spec.get("containers")),
            "initContainers": requests(spec.get("initContainers")),
        },
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


def free_per_node(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    gpu: GPUSpec,
    resource: str = RESOURCE_GPU,
) -> dict[str, int]:
    """Free ``resource`` per schedulable node that matches ``gpu``: allocatable minus the
    requests of non-terminated pods bound to it."""
    free: dict[str, int] = {}
    for node in nodes:
        meta = node.get("metadata") or {}
        if not node_matches(meta.get("labels") or {}, gpu) or not _schedulable(node):
            continue
        allocatable = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
        free[str(meta.get("name"))] = parse_count(allocatable) if allocatable else 0
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if node_name in free and phase not in _TERMINAL_PHASES:
            free[node_name] -= pod_request(pod, resource)
    return {name: max(0, value) for name, value in sorted(free.items())}


def replicas_that_fit(
    free: Mapping[str, int], gpus_per_replica: int, nodes_per_replica: int = 1
) -> int:
    """How many more replicas fit, bin-packing whole per-node shares of a replica.

    A replica spanning ``nodes_per_replica`` nodes needs ``gpus_per_replica / nodes`` on each of
    that many distinct nodes; GPUs are never split across replicas on one node's remainder.
    """
    if gpus_per_replica <= 0:
        return 0
    per_node = max(1, -(-gpus_per_replica // max(1, nodes_per_replica)))
    slots = [value // per_node for value in free.values()]
    if nodes_per_replica <= 1:
        return sum(slots)
    # Greedy: each replica takes one slot on the nodes_per_replica nodes with most slots left.
    count = 0
    while True:
        slots.sort(reverse=True)
        if len(slots) < nodes_per_replica or slots[nodes_per_replica - 1] <= 0:
            return count
        for i in range(nodes_per_replica):
            slots[i] -= 1
        count += 1


def deletion_costs(pods_in_flight: Mapping[str, float | None]) -> dict[str, int]:
    """``pod-deletion-cost`` per pod: the in-flight request count (running + waiting).

    Least-loaded pods get the lowest cost, so the ReplicaSet removes them first. A pod without a
    scrape (starting) gets 0. Values are clamped to int32 as the annotation requires.
    """
    return {
        pod: min(_INT32_MAX, max(0, round(value or 0.0)))
        for pod, value in sorted(pods_in_flight.items())
    }


def deletion_cost_patches(
    pods: Iterable[Mapping[str, Any]], costs: Mapping[str, int]
) -> dict[str, str]:
    """Only the pods whose annotation differs from ``costs`` (to keep API writes minimal)."""
    out: dict[str, str] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name"))
        if name not in costs:
            continue
        current = (meta.get("annotations") or {}).get(ANNOTATION_POD_DELETION_COST)
        if current != str(costs[name]):
            out[name] = str(costs[name])
    return out

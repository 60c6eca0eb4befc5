"""Declarative pools of fake AMD Instinct GPU nodes (and CPU nodes) for the test bed.

Why: the operator's placement logic keys on the labels AMD's node labeller and GPU
operator publish, and on ``amd.com/*`` extended resources.  Creating Node objects with
exactly those labels and capacities lets the *real* scheduler decide placement, while
KWOK (annotation ``kwok.x-k8s.io/node: fake``) keeps them Ready with heartbeats and leases.
Label rules follow ../shared/facts/amd-gpus.md §2-§5 (KDP ``cmd/k8s-node-labeller``):
single-valued properties get ``amd.com/gpu.<name>=<v>`` plus the legacy
``beta.amd.com/gpu.<name>=<v>`` and counter form ``beta.amd.com/gpu.<name>.<v>=<count>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .build import KWOK_STAGES
from .runimages import run_images

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
POOL_LABEL = "testbed.tokenscale.dev/pool"
# Pods carrying this label are run for real by the process kubelet; KWOK must skip them.
PROCESS_LABEL = "testbed.tokenscale.dev/run"
PROCESS_LABEL_VALUE = "process"
_POD_STAGES = {"pod-ready", "pod-complete", "pod-delete"}


@dataclass(frozen=True)
class GpuModel:
    """What the node labeller reads from sysfs/KFD for one GPU model."""

    name: str
    device_id: str
    product_name: str
    vram: str
    cu_count: int
    simd_count: int
    family: str = "AI"


MI300X = GpuModel("MI300X", "74a1", "AMD_Instinct_MI300X_OAM", "192G", 304, 1216)
MI325X = GpuModel("MI325X", "74a5", "AMD_Instinct_MI325_OAM", "256G", 304, 1216)
MI355X = GpuModel("MI355X", "75a3", "AMD_Instinct_MI355X_OAM", "288G", 256, 1024)
GPU_MODELS = {m.name: m for m in (MI300X, MI325X, MI355X)}


@dataclass(frozen=True)
class DraLayout:
    """How a node running AMD's DRA driver (``gpu.amd.com``) publishes its GPUs.

    ``whole`` GPUs stay in SPX and are published as ``type: amdgpu`` devices; the next
    ``partitioned`` GPUs are split into ``profile`` (compute mode per GPU, memory mode
    node-wide, so every profile on one node shares the ``_nps<N>`` part) and published as
    ``type: amdgpu-partition`` devices. No ``amd.com/*`` extended resource and no node-labeller
    label exists on such a node: the device plugin does not run there. See tests/testbed/dra.py.
    """

    whole: int = 8
    partitioned: int = 0
    profile: str = "cpx_nps1"


@dataclass(frozen=True)
class NodePool:
    """``count`` identical nodes named ``<name>-<i>``.

    ``partition`` (e.g. ``"cpx_nps4"``) models the device plugin's *mixed* naming strategy:
    the node advertises ``amd.com/<partition>`` (``partitions_per_gpu`` per GPU) and no
    ``amd.com/gpu``.
    """

    name: str
    count: int
    gpu: GpuModel | None = None
    gpus_per_node: int = 8
    partition: str | None = None
    partitions_per_gpu: int = 8
    instance_type: str = ""
    cpu: str = "64"
    memory: str = "512Gi"
    pods: str = "110"
    extra_labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    #: GPUs published as DRA ResourceSlices instead of extended resources (``gpu`` required).
    dra: DraLayout | None = None


DEFAULT_POOLS: tuple[NodePool, ...] = (
    NodePool("mi300x", 2, MI300X, instance_type="testbed.mi300x.8"),
    NodePool("mi325x", 2, MI325X, instance_type="testbed.mi325x.8"),
    NodePool("mi355x", 2, MI355X, instance_type="testbed.mi355x.8"),
    NodePool("mi300x-cpx", 1, MI300X, partition="cpx_nps4", instance_type="testbed.mi300x.8"),
    NodePool("cpu", 2, None, instance_type="testbed.cpu.64"),
    # DRA pools (issue 16): few nodes, no amd.com/* labels or resources, so no device-plugin
    # test can land on them. The MI300X node mixes whole GPUs and CPX partitions on purpose:
    # a whole-GPU claim must never get a partition there, and vice versa.
    NodePool("mi355x-dra", 1, MI355X, instance_type="testbed.mi355x.8", dra=DraLayout(8)),
    NodePool(
        "mi300x-dra",
        1,
        MI300X,
        instance_type="testbed.mi300x.8",
        dra=DraLayout(whole=4, partitioned=4, profile="cpx_nps1"),
    ),
)


def scale_pools(n: int, pools: Sequence[NodePool] = DEFAULT_POOLS) -> tuple[NodePool, ...]:
    """Spread ``n`` GPU nodes over the whole-GPU pools (for scheduling benchmarks)."""
    gpu_pools = [p for p in pools if p.gpu is not None and p.partition is None and p.dra is None]
    base, extra = divmod(n, len(gpu_pools))
    scaled = [replace(p, count=base + (1 if i < extra else 0)) for i, p in enumerate(gpu_pools)]
    return tuple(p for p in scaled if p.count > 0)


def gpu_labels(model: GpuModel, count: int, partition: str | None = None) -> dict[str, str]:
    """Labels of a homogeneous node with ``count`` GPUs of ``model``."""
    props = {
        "family": model.family,
        "device-id": model.device_id,
        "product-name": model.product_name,
        "vram": model.vram,
        "cu-count": str(model.cu_count),
        "simd-count": str(model.simd_count),
    }
    labels = {"feature.node.kubernetes.io/amd-gpu": "true"}
    for name, value in props.items():
        labels[f"amd.com/gpu.{name}"] = value
        labels[f"beta.amd.com/gpu.{name}"] = value
        labels[f"beta.amd.com/gpu.{name}.{value}"] = str(count)
    if partition:
        # The labeller emits the first spelling; AMD's docs/GPU operator use the second.
        labels["amd.com/gpu.compute-memory-partition"] = partition
        labels["amd.com/compute-memory-partition"] = partition
        labels["amd.com/gpu.compute-partitioning-supported"] = "true"
        labels["amd.com/gpu.memory-partitioning-supported"] = "true"
        labels["amd.com/compute-partitioning-supported"] = "true"
        labels["amd.com/memory-partitioning-supported"] = "true"
    return labels


def node_manifest(pool: NodePool, index: int) -> dict[str, Any]:
    name = f"{pool.name}-{index}"
    labels = {
        "type": "kwok",
        POOL_LABEL: pool.name,
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": pool.instance_type or f"testbed.{pool.name}",
    }
    capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": pool.pods}
    if pool.dra is not None:
        # NFD still sees the AMD PCI device; the GPUs themselves are in ResourceSlices.
        labels["feature.node.kubernetes.io/amd-gpu"] = "true"
    elif pool.gpu is not None:
        # A partitioned GPU shows up as several devices, which the labeller counts.
        devices = pool.gpus_per_node * (pool.partitions_per_gpu if pool.partition else 1)
        labels.update(gpu_labels(pool.gpu, devices, pool.partition))
        if pool.partition:
            capacity[f"amd.com/{pool.partition}"] = str(
                pool.gpus_per_node * pool.partitions_per_gpu
            )
        else:
            capacity["amd.com/gpu"] = str(pool.gpus_per_node)
    labels.update(pool.extra_labels)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [dict(t) for t in pool.taints]} if pool.taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def manifests(pools: Iterable[NodePool] = DEFAULT_POOLS) -> list[dict[str, Any]]:
    return [node_manifest(p, i) for p in pools for i in range(p.count)]


def create_nodes(
    api_client: client.ApiClient, pools: Iterable[NodePool] = DEFAULT_POOLS
) -> list[str]:
    """Create (or leave in place) one Node per pool member; returns the node names.

    ``status`` is accepted on create; KWOK's node-initialize stage keeps capacity and
    addresses and adds the Ready condition, nodeInfo and daemon endpoints.
    """
    core = client.CoreV1Api(api_client)
    names = []
    for manifest in manifests(pools):
        try:
            core.create_node(manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
        names.append(manifest["metadata"]["name"])
    return names


def delete_nodes(api_client: client.ApiClient, names: Iterable[str]) -> None:
    core = client.CoreV1Api(api_client)
    for name in names:
        try:
            core.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def write_kwok_config(path: Path, stages_dir: Path) -> Path:
    """KwokConfiguration + KWOK's stock stages; the pod stages skip process-run pods.

    Standalone ``kwok`` has no built-in stages ("no stages found"), so we feed it the
    stock YAMLs of the pinned KWOK version (extracted from the module cache by
    :mod:`.build`) plus one selector term: KWOK selector keys are jq expressions, and
    ``NotIn`` also matches when the label is absent (kwok ``pkg/utils/expression``).
    """
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            # KWOK only defaults these when it builds the config itself, so spell them out.
            "options": {
                "nodeLeaseDurationSeconds": 40,
                "nodeIP": "127.0.0.1",
                # Loopback on purpose: KWOK pods run nothing, and anything that
                # connects to their IPs (e.g. a metrics scrape) must stay on this host.
                "cidr": "127.244.0.0/16",
                "manageAllNodes": False,
                "enableDebuggingHandlers": False,
                "enableProfilingHandler": False,
                "enableContentionProfiling": False,
                "podPlayStageParallelism": 4,
                "nodePlayStageParallelism": 4,
                "nodeLeaseParallelism": 4,
                "podsOnNodeSyncParallelism": 1,
                "enablePodsOnNodeSyncListPager": True,
                "enablePodsOnNodeSyncStreamWatch": False,
            },
        }
    ]
    for rel in KWOK_STAGES:
        stage = yaml.safe_load((stages_dir / rel).read_text())
        if stage["metadata"]["name"] in _POD_STAGES:
            stage["spec"]["selector"].setdefault("matchExpressions", []).extend(
                [
                    {
                        "key": f'.metadata.labels["{PROCESS_LABEL}"]',
                        "operator": "NotIn",
                        "values": [PROCESS_LABEL_VALUE],
                    },
                    {
                        "key": ".spec.containers[0].image",
                        "operator": "NotIn",
                        "values": list(run_images()),
                    },
                ]
            )
        docs.append(stage)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path

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
# Shapes of real clusters (node_shapes below); product names as the labeller writes them.
MI355X_GOP = GpuModel("MI355X", "75a3", "AMD_Instinct_MI355_OAM", "288G", 256, 1024)
MI210 = GpuModel("MI210", "740f", "Instinct_MI210", "64G", 104, 416)
MI250X = GpuModel("MI250X", "740c", "AMD_Instinct_MI250X", "64G", 110, 440)
#: Every node a test bed creates has room for checkpoints (HF cache emptyDirs request it).
EPHEMERAL_STORAGE = "3Ti"


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


def _props(model: GpuModel, vram: str | None = None) -> dict[str, str]:
    return {
        "family": model.family,
        "device-id": model.device_id,
        "product-name": model.product_name,
        "vram": vram or model.vram,
        "cu-count": str(model.cu_count),
        "simd-count": str(model.simd_count),
    }


def gpu_labels(
    model: GpuModel,
    count: int,
    partition: str | None = None,
    vram: str | None = None,
    legacy_only: bool = False,
) -> dict[str, str]:
    """Labels of a homogeneous node with ``count`` GPUs (or partitions) of ``model``.

    ``vram`` overrides the per-device size (a CPX partition of an MI300X is ``24G`` since KDP
    ``ba6c6b26``); ``legacy_only`` is an old labeller that writes only ``beta.amd.com/*``.
    """
    labels = {"feature.node.kubernetes.io/amd-gpu": "true"}
    for name, value in _props(model, vram).items():
        if not legacy_only:
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


def heterogeneous_labels(models: Sequence[tuple[GpuModel, int]]) -> dict[str, str]:
    """A node with several GPU models (KDP ``createLabels``): a property with one distinct
    value keeps the plain key; one with several gets only ``amd.com/gpu.<name>.<value>=<count>``
    (no plain key); the legacy prefix always has the counter form."""
    labels = {"feature.node.kubernetes.io/amd-gpu": "true"}
    names = list(_props(models[0][0]))
    for name in names:
        counts: dict[str, int] = {}
        for model, n in models:
            value = _props(model)[name]
            counts[value] = counts.get(value, 0) + n
        for value, n in counts.items():
            labels[f"beta.amd.com/gpu.{name}.{value}"] = str(n)
            if len(counts) > 1:
                labels[f"amd.com/gpu.{name}.{value}"] = str(n)
        if len(counts) == 1:
            (value,) = counts
            labels[f"amd.com/gpu.{name}"] = value
            labels[f"beta.amd.com/gpu.{name}"] = value
    return labels


@dataclass(frozen=True)
class NodeShape:
    """One node with exactly the labels, allocatable resources and taints of a real shape."""

    name: str
    labels: dict[str, str]
    resources: dict[str, str]
    taints: tuple[dict[str, str], ...] = ()
    note: str = ""


SHAPE_LABEL = "testbed.tokenscale.dev/shape"


def node_shapes() -> tuple[NodeShape, ...]:
    """What the AMD device plugin and node labeller publish on real clusters (issue 15 §1).

    Not part of ``DEFAULT_POOLS``: tests that need them create them (:func:`create_shapes`)
    and delete them again, so the other tests and the test bed's start time are unaffected.
    """
    cpx = gpu_labels(MI300X, 64, vram="24G")
    return (
        NodeShape("shape-mixed-spx", gpu_labels(MI300X, 8), {"amd.com/spx_nps1": "8"},
                  note="mixed naming, unpartitioned MI300X: spx_nps1, no amd.com/gpu"),
        NodeShape("shape-mixed-cpx", cpx, {"amd.com/cpx_nps4": "64"},
                  note="mixed naming, CPX/NPS4; stock labeller: no partition label"),
        NodeShape("shape-single-cpx", cpx, {"amd.com/gpu": "64"},
                  note="single naming on CPX: 64 x amd.com/gpu of 24 GiB, device-id 74a1"),
        NodeShape("shape-hetero", heterogeneous_labels([(MI210, 2), (MI250X, 4)]),
                  {"amd.com/gpu": "6"}, note="two GPU models: device-id only in counter form"),
        NodeShape("shape-legacy", gpu_labels(MI325X, 8, legacy_only=True), {"amd.com/gpu": "8"},
                  note="old labeller: beta.amd.com/* only"),
        NodeShape("shape-no-labeller", {}, {"amd.com/gpu": "8"},
                  note="device plugin without the node labeller (KDP chart default)"),
        NodeShape("shape-mi355-oam", gpu_labels(MI355X_GOP, 8), {"amd.com/gpu": "8"},
                  note="MI355X as GPU-Operator-labelled nodes spell it"),
        NodeShape("shape-unhealthy", gpu_labels(MI355X_GOP, 8), {"amd.com/gpu": "8"},
                  ({"key": "amd-gpu-unhealthy", "effect": "NoSchedule"},),
                  note="GPU Operator auto-remediation taint"),
        NodeShape("shape-dcm", gpu_labels(MI355X_GOP, 8), {"amd.com/gpu": "8"},
                  ({"key": "amd-dcm", "value": "up", "effect": "NoExecute"},),
                  note="GPU Operator repartitioning taint"),
    )  # fmt: skip


def shape_manifest(shape: NodeShape) -> dict[str, Any]:
    """A KWOK Node for one shape (64 CPUs, 512 GiB, the shape's amd.com/* allocatable)."""
    capacity = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": "110",
        "ephemeral-storage": EPHEMERAL_STORAGE,
        **shape.resources,
    }
    labels = {
        "type": "kwok",
        POOL_LABEL: "shapes",
        SHAPE_LABEL: shape.name,
        "kubernetes.io/hostname": shape.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **shape.labels,
    }
    return _node(shape.name, labels, capacity, shape.taints)


def _node(
    name: str,
    labels: dict[str, str],
    capacity: dict[str, str],
    taints: Sequence[dict[str, str]],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [dict(t) for t in taints]} if taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
        },
    }


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
    capacity = {
        "cpu": pool.cpu,
        "memory": pool.memory,
        "pods": pool.pods,
        "ephemeral-storage": EPHEMERAL_STORAGE,
    }
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
    return _node(name, labels, capacity, pool.taints)


def manifests(pools: Iterable[NodePool] = DEFAULT_POOLS) -> list[dict[str, Any]]:
    return [node_manifest(p, i) for p in pools for i in range(p.count)]


def create_nodes(
    api_client: client.ApiClient, pools: Iterable[NodePool] = DEFAULT_POOLS
) -> list[str]:
    """Create (or leave in place) one Node per pool member; returns the node names.

    ``status`` is accepted on create; KWOK's node-initialize stage keeps capacity and
    addresses and adds the Ready condition, nodeInfo and daemon endpoints.
    """
    return create_manifests(api_client, manifests(pools))


def create_shapes(api_client: client.ApiClient, shapes: Iterable[NodeShape]) -> list[str]:
    """Create the shape nodes (see :func:`node_shapes`); remove them with :func:`delete_nodes`."""
    return create_manifests(api_client, [shape_manifest(s) for s in shapes])


def create_manifests(api_client: client.ApiClient, docs: Iterable[dict[str, Any]]) -> list[str]:
    core = client.CoreV1Api(api_client)
    names = []
    for manifest in docs:
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

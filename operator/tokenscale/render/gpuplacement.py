"""Which extended resource a GPU pool asks for, and which nodes it may land on.

Why one module: the AMD device plugin names a GPU differently per strategy (``single``: every
GPU *or partition* is ``amd.com/gpu``; ``mixed``: ``amd.com/<compute>_<nps>``, so an unpartitioned
MI300X is ``amd.com/spx_nps1``), and the node labeller publishes the GPU's identity in three
label forms. The resource name and the node terms must agree, so both come from
:func:`gpu_request`, the only place that decides them (a DRA allocation mode can branch around
it). Everything here is pure: ``auto`` naming reads a :class:`ClusterGPUs` summary that the
controller builds from one node list per resync pass (``controller/nodefacts.py``); offline
rendering passes none and gets the device plugin's default, ``single``.

Rules (sources in ../shared/facts/amd-render-corrections.md §1-§2):

* Whole-GPU pool, single naming: ``amd.com/gpu`` and, for GPUs that can be partitioned,
  ``amd.com/gpu.vram`` = the unpartitioned size, in the same label form as the identity term, so
  a "whole MI300X" never lands on a 24 GiB CPX partition that also says device-id 74a1.
* Whole-GPU pool, mixed naming: ``amd.com/spx_<nps>`` as the nodes advertise it, else the
  configured ``whole_gpu_profile`` (``spx_nps1``); the name pins it.
* Partition pool, mixed: ``amd.com/<profile>``; no partition label is required (stock installs
  and heterogeneous nodes never carry it).
* Partition pool, single: ``amd.com/gpu`` with ``amd.com/gpu.vram`` = the partition's size.
* auto: per pool, the naming whose resource the matching nodes offer more of (ties: single for
  whole GPUs, the device plugin's default; mixed for partitions, whose name is exact).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tokenscale import constants as c
from tokenscale.api.config import GPUSpec, OperatorConfig, Toleration
from tokenscale.api.service import GPUPool

Obj = dict[str, Any]
Naming = Literal["single", "mixed"]

_PREFIXES = (c.NODE_LABEL_PREFIX, c.NODE_LABEL_PREFIX_LEGACY)
#: Part of the missing-labeller problem text; the resync loop retries services that show it.
LABELLER_MISSING = "no node carries AMD node-labeller labels"
_EVICTING = ("NoSchedule", "NoExecute")


@dataclass(frozen=True, slots=True)
class NodeGPUs:
    """The few facts about one node that placement needs."""

    name: str
    labels: Mapping[str, str]
    #: amd.com/* allocatable resources with a non-zero count
    resources: Mapping[str, int]
    #: a taint no engine tolerates, or cordoned: the scheduler will not place engines here
    blocked: bool = False

    @property
    def labelled(self) -> bool:
        """Carries any AMD node-labeller label (either prefix)."""
        return any(k.startswith(_PREFIXES) for k in self.labels)


@dataclass(frozen=True, slots=True)
class ClusterGPUs:
    """What the nodes of the cluster offer, as read once per resync pass."""

    nodes: tuple[NodeGPUs, ...] = ()
    #: A GPU model's identity (device ids, product names) -> its usable nodes. One snapshot
    #: serves every reconcile until the next resync pass, and matching a model scans every label
    #: of every node (several lookups per pool per reconcile), so each model is matched once.
    _usable: dict[tuple[tuple[str, ...], ...], tuple[NodeGPUs, ...]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    def usable(self, gpu: GPUSpec) -> tuple[NodeGPUs, ...]:
        """Nodes carrying ``gpu`` that engines may be placed on (not cordoned, no taint)."""
        key = (tuple(sorted(gpu.device_ids)), tuple(sorted(gpu.product_names)))
        found = self._usable.get(key)
        if found is None:
            found = tuple(n for n in self.nodes if not n.blocked and node_has_gpu(n.labels, gpu))
            self._usable[key] = found
        return found

    def unlabelled_gpu_nodes(self) -> list[str]:
        """Nodes whose device plugin advertises GPUs but that carry no labeller label."""
        return sorted(n.name for n in self.nodes if n.resources and not n.labelled)


def _count(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _tolerated(taint: Mapping[str, Any], tolerations: Sequence[Toleration]) -> bool:
    for tol in tolerations:
        if tol.effect not in (None, taint.get("effect")):
            continue
        if tol.operator == "Exists" and tol.key in (None, taint.get("key")):
            return True
        if tol.key == taint.get("key") and (tol.value or "") == (taint.get("value") or ""):
            return True
    return False


def cluster_gpus(
    nodes: Iterable[Mapping[str, Any]],
    tolerations: Sequence[Toleration] = (),
    node_selector: Mapping[str, str] | None = None,
) -> ClusterGPUs:
    """Summarise Node objects (API dicts): labels, amd.com/* allocatable, blocking taints.

    Only nodes engines may use count: those matching the operator's ``pods.nodeSelector``.
    """
    out = []
    for node in nodes:
        meta = node.get("metadata") or {}
        labels = meta.get("labels") or {}
        if any(labels.get(k) != v for k, v in (node_selector or {}).items()):
            continue
        spec = node.get("spec") or {}
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        resources = {
            str(k): _count(v)
            for k, v in allocatable.items()
            if str(k).startswith(c.RESOURCE_PREFIX) and _count(v) > 0
        }
        blocked = bool(spec.get("unschedulable")) or any(
            t.get("effect") in _EVICTING and not _tolerated(t, tolerations)
            for t in spec.get("taints") or []
        )
        out.append(
            NodeGPUs(str(meta.get("name")), dict(meta.get("labels") or {}), resources, blocked)
        )
    return ClusterGPUs(tuple(sorted(out, key=lambda n: n.name)))


def _label(labels: Mapping[str, str], prefix: str, name: str) -> set[str]:
    """Values of one labeller property in either form: ``<p><name>=v`` or ``<p><name>.v=N``."""
    key = prefix + name
    found = {labels[key]} if key in labels else set()
    found |= {k[len(key) + 1 :] for k in labels if k.startswith(key + ".")}
    return found


def node_has_gpu(labels: Mapping[str, str], gpu: GPUSpec) -> bool:
    """The node carries ``gpu`` by device id or product name, in any label form."""
    ids = {d.lower() for d in gpu.device_ids}
    for prefix in _PREFIXES:
        if {v.lower() for v in _label(labels, prefix, "device-id")} & ids:
            return True
        if _label(labels, prefix, "product-name") & set(gpu.product_names):
            return True
    return False


def node_vram(labels: Mapping[str, str]) -> set[str]:
    """The ``vram`` values a node publishes (several on a heterogeneous node)."""
    return _label(labels, c.NODE_LABEL_PREFIX, "vram") | _label(
        labels, c.NODE_LABEL_PREFIX_LEGACY, "vram"
    )


def partition_vram(gpu: GPUSpec, partition: str) -> str | None:
    """What the labeller writes as vram for one partition (per-partition size, in GiB)."""
    part = gpu.partitions.get(partition)
    return f"{round(part.hbm_gib)}G" if part is not None else None


def _want_vram(pool: GPUPool, gpu: GPUSpec) -> str | None:
    if pool.partition:
        return partition_vram(gpu, pool.partition)
    return gpu.vram_label


def whole_gpu_profile(gpu: GPUSpec, cluster: ClusterGPUs | None) -> str | None:
    """The mixed-naming name of one whole GPU: the ``spx_*`` resource the usable nodes carrying
    the GPU offer most of (an MI35x node may run NPS2: ``spx_nps2``), else the configured one."""
    if gpu.whole_gpu_profile is None:
        return None
    seen: dict[str, int] = {}
    for node in cluster.usable(gpu) if cluster is not None else []:
        for name, count in node.resources.items():
            profile = name.removeprefix(c.RESOURCE_PREFIX)
            if profile.startswith("spx_"):
                seen[profile] = seen.get(profile, 0) + count
    if not seen:
        return gpu.whole_gpu_profile
    return max(sorted(seen), key=lambda p: seen[p])


def _offered(pool: GPUPool, gpu: GPUSpec, cluster: ClusterGPUs, naming: Naming) -> int:
    """Devices the usable nodes carrying ``gpu`` offer under one naming for this pool."""
    usable = cluster.usable(gpu)
    if naming == "mixed":
        # Once, not per node: the profile itself scans every usable node (a per-node call made
        # this quadratic in the fleet's nodes: a fifth of the operator's busy CPU at 60 nodes).
        name = pool.partition or whole_gpu_profile(gpu, cluster)
        return (
            sum(node.resources.get(c.RESOURCE_PREFIX + name, 0) for node in usable) if name else 0
        )
    vram = _want_vram(pool, gpu)
    return sum(
        node.resources.get(c.RESOURCE_GPU, 0)
        for node in usable
        if vram is None or vram in node_vram(node.labels)
    )


def naming_for(
    pool: GPUPool, gpu: GPUSpec, config: OperatorConfig, cluster: ClusterGPUs | None
) -> Naming:
    """The strategy this pool's nodes use: configured, or (auto) read from the nodes."""
    configured = config.pods.resource_naming
    if configured != "auto":
        return configured
    if cluster is None:
        return "single"  # offline rendering: the device plugin's default
    single = _offered(pool, gpu, cluster, "single")
    mixed = _offered(pool, gpu, cluster, "mixed")
    if single == mixed:
        return "mixed" if pool.partition else "single"
    return "single" if single > mixed else "mixed"


def _identity_terms(gpu: GPUSpec, vram: str | None) -> list[list[Obj]]:
    """OR'ed identity terms in every label form, each AND'ed with the vram guard of its form.

    Homogeneous nodes: ``amd.com/gpu.device-id=<id>`` (and product-name); heterogeneous ones
    only ``amd.com/gpu.device-id.<id>=<count>``; old labellers the ``beta.`` forms.
    """
    ids = sorted(gpu.device_ids)
    new, legacy = c.NODE_LABEL_PREFIX, c.NODE_LABEL_PREFIX_LEGACY

    def guard(prefix: str, counter: bool) -> list[Obj]:
        if vram is None:
            return []
        if counter:
            return [{"key": f"{prefix}vram.{vram}", "operator": "Exists"}]
        return [{"key": f"{prefix}vram", "operator": "In", "values": [vram]}]

    terms: list[list[Obj]] = []
    if ids:
        terms.append(
            [{"key": c.NODE_LABEL_DEVICE_ID, "operator": "In", "values": ids}, *guard(new, False)]
        )
    if gpu.product_names:
        names = sorted(gpu.product_names)
        terms.append(
            [
                {"key": c.NODE_LABEL_PRODUCT_NAME, "operator": "In", "values": names},
                *guard(new, False),
            ]
        )
    terms += [
        [{"key": f"{c.NODE_LABEL_DEVICE_ID}.{i}", "operator": "Exists"}, *guard(new, True)]
        for i in ids
    ]
    if ids:
        terms.append(
            [
                {"key": c.NODE_LABEL_DEVICE_ID_LEGACY, "operator": "In", "values": ids},
                *guard(legacy, False),
            ]
        )
    terms += [
        [
            {"key": f"{c.NODE_LABEL_DEVICE_ID_LEGACY}.{i}", "operator": "Exists"},
            *guard(legacy, True),
        ]
        for i in ids
    ]
    return terms


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """The resource one device of a pool is called, and the node-selector terms (OR'ed)."""

    resource: str
    node_terms: list[Obj]
    naming: Naming


def gpu_request(
    pool: GPUPool, gpu: GPUSpec, config: OperatorConfig, cluster: ClusterGPUs | None = None
) -> GpuRequest:
    """The one place that names a pool's GPUs and picks its nodes (see the module rules)."""
    naming = naming_for(pool, gpu, config, cluster)
    if naming == "mixed":
        profile = pool.partition or whole_gpu_profile(gpu, cluster)
        resource = c.RESOURCE_PREFIX + profile if profile else c.RESOURCE_GPU
        terms = _identity_terms(gpu, None)
    else:
        resource = c.RESOURCE_GPU
        terms = _identity_terms(gpu, _want_vram(pool, gpu))
    return GpuRequest(resource, [{"matchExpressions": t} for t in terms], naming)


def labeller_problem(pool: GPUPool, gpu: GPUSpec, cluster: ClusterGPUs | None) -> str | None:
    """Why a pool will sit Pending because the node labeller is missing, or None.

    Fires when no node carries the pool's GPU in any label form while some nodes advertise
    amd.com/* resources without a single labeller label: the required node affinity can match
    nothing until the labeller runs (the k8s-device-plugin Helm chart ships it disabled).
    """
    if cluster is None or any(node_has_gpu(n.labels, gpu) for n in cluster.nodes):
        return None
    bare = cluster.unlabelled_gpu_nodes()
    if not bare:
        return None
    shown = ", ".join(bare[:3]) + (f" and {len(bare) - 3} more" if len(bare) > 3 else "")
    return (
        f"pool {pool.name}: {LABELLER_MISSING} for {pool.gpu} "
        f"({c.NODE_LABEL_DEVICE_ID} in {sorted(gpu.device_ids)}), and {len(bare)} node(s) "
        f"advertise amd.com GPUs without any labeller label ({shown}); its pods cannot be "
        "placed; fix: enable the AMD node labeller (GPU Operator DeviceConfig "
        "spec.devicePlugin.enableNodeLabeller: true, or the k8s-device-plugin chart's "
        "labeller.enabled=true)"
    )


def matches_terms(labels: Mapping[str, str], terms: Sequence[Obj]) -> bool:
    """Kubernetes node-affinity semantics for the operators used here (terms OR'ed,
    expressions AND'ed), so capacity counts only nodes the scheduler would consider."""

    def ok(expr: Obj) -> bool:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            return key in labels and labels[key] in values
        if op == "NotIn":
            return key not in labels or labels[key] not in values
        if op == "Exists":
            return key in labels
        if op == "DoesNotExist":
            return key not in labels
        return False

    return any(all(ok(e) for e in t.get("matchExpressions") or []) for t in terms)

"""Operator configuration: the GPU catalogue, accelerator profiles, images and costs.

Cluster facts (which labels a node carries, which image runs on gfx950, what a GPU-hour costs)
belong to the platform team, not to each InferenceService, so they live here with built-in
defaults taken from AMD's device plugin / node labeller and can be overridden by a YAML file
(the Helm chart renders one into a ConfigMap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from tokenscale.api.base import StrictModel

GfxTarget = Literal["gfx90a", "gfx942", "gfx950", "cpu"]


class PartitionSpec(StrictModel):
    """A compute/memory partition mode of a GPU (mixed resource naming strategy)."""

    per_gpu: int = Field(ge=1, description="Partitions per physical GPU (CPX on MI300X: 8).")
    hbm_gib: float = Field(gt=0, description="HBM one partition sees (GiB).")


class GPUSpec(StrictModel):
    """One GPU model as the planner and renderer need it."""

    arch: GfxTarget = Field(description="LLVM target; selects the image.")
    hbm_gib: float = Field(gt=0, description="HBM per GPU in GiB.")
    fp8: bool = Field(default=False, description="Native FP8 support.")
    fp6: bool = Field(default=False, description="Native FP6 support.")
    fp4: bool = Field(default=False, description="Native FP4/MXFP4 support.")
    device_ids: list[str] = Field(
        default_factory=list, description="PCI device ids (amd.com/gpu.device-id values)."
    )
    product_names: list[str] = Field(
        default_factory=list, description="amd.com/gpu.product-name values."
    )
    gpus_per_node: int = Field(default=8, ge=1, le=64, description="GPUs on one node.")
    cost_per_gpu_hour: float = Field(default=1.0, ge=0, description="Cost weight per GPU-hour.")
    tokens_per_second_per_gpu: float | None = Field(
        default=None, ge=0, description="Rough capacity used before any benchmark exists."
    )
    partitions: dict[str, PartitionSpec] = Field(
        default_factory=dict, description="Supported partition profiles."
    )


class ImageSpec(StrictModel):
    """Engine images per gfx target."""

    gfx942: str = Field(
        default="rocm/vllm:rocm7.14.0_cdna_ubuntu24.04_py3.14_pytorch_2.11.0_vllm_0.23.0",
        description="vLLM ROCm image for MI300X/MI325X (gfx942).",
    )
    gfx950: str = Field(
        default="rocm/vllm:rocm7.14.0_cdna_ubuntu24.04_py3.14_pytorch_2.11.0_vllm_0.23.0",
        description="vLLM ROCm image for MI350X/MI355X (gfx950).",
    )
    gfx90a: str = Field(
        default="rocm/vllm:rocm7.14.0_cdna_ubuntu24.04_py3.14_pytorch_2.11.0_vllm_0.23.0",
        description="Image for MI210/MI250X.",
    )
    cpu: str = Field(
        default="public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0",
        description="vLLM CPU-backend image.",
    )
    cpu_command: list[str] = Field(
        default_factory=lambda: ["vllm", "serve"],
        description="Command that starts the CPU engine; the model is appended.",
    )
    gpu_command: list[str] = Field(
        default_factory=lambda: ["vllm", "serve"],
        description="Command that starts the ROCm engine; the model is appended.",
    )
    operator: str = Field(
        default="ghcr.io/tokenscale/tokenscale:0.1.0",
        description="tokenscale image: simulator engines and benchmark Jobs.",
    )


class Toleration(StrictModel):
    """A pod toleration."""

    key: str | None = Field(default=None, description="Taint key.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Operator.")
    value: str | None = Field(default=None, description="Taint value.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect."
    )


class PodSettings(StrictModel):
    """Cluster-specific pod settings applied to every engine pod."""

    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Extra node selector for engine pods."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations.")
    run_as_non_root: bool = Field(default=False, description="Run engines as non-root.")
    supplemental_groups: list[int] = Field(
        default_factory=lambda: [44, 110],
        description="Host video/render GIDs given to non-root engines.",
    )
    host_ipc: bool = Field(default=False, description="Use hostIPC instead of a /dev/shm volume.")
    shm_size: str = Field(default="16Gi", description="Size of the /dev/shm memory volume.")
    cpu_request: str = Field(default="4", description="CPU request of a GPU engine.")
    memory_request: str = Field(default="32Gi", description="Memory request of a GPU engine.")
    prestop_sleep_seconds: int = Field(
        default=10, ge=0, le=300, description="Delay so endpoints drop the pod first."
    )
    hf_cache_pvc: str | None = Field(
        default=None, description="PVC for the Hugging Face cache shared by engines."
    )
    bind_address: str = Field(
        default="0.0.0.0",  # noqa: S104 - engines must accept traffic from the Service
        description="vLLM --host. $(POD_IP) binds to the pod IP only (the env var is always "
        "injected); the test bed, whose pods share the host network, needs that.",
    )


class BenchmarkSettings(StrictModel):
    """Settings of benchmark Job pods."""

    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    service_account: str = Field(
        default="tokenscale-benchmark", description="Narrow ServiceAccount of benchmark pods."
    )
    history_limit: int = Field(default=10, ge=1, le=100, description="Results kept per service.")
    regression_margin: float = Field(
        default=0.05, gt=0, lt=1, description="Throughput drop flagged as a regression."
    )


class ActivatorSettings(StrictModel):
    """Where requests to a service with no ready engine go (request-driven scale from zero)."""

    enabled: bool = Field(
        default=False,
        description="Route a scale-to-zero service's Service to the activator while it has no "
        "ready engine.",
    )
    selector: dict[str, str] = Field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "tokenscale",
            "app.kubernetes.io/component": "activator",
        },
        description="Labels of the activator pods; a Service can only select pods of its own "
        "namespace, so the chart runs an activator in each namespace listed in its values.",
    )


Allocation = Literal["devicePlugin", "dra", "auto"]


class DraSettings(StrictModel):
    """How GPUs published by AMD's DRA driver are asked for (used when allocation is not
    devicePlugin). Names are settings, not constants: AMD's attribute names and product names
    for newer GPUs are not verified on hardware (docs/rendering.md, "DRA or device plugin")."""

    driver: str = Field(
        default="gpu.amd.com",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="DRA driver name: the ResourceSlices' spec.driver and the CEL attribute "
        'domain (device.attributes["<driver>"]).',
    )
    device_class: str = Field(
        default="gpu.amd.com",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="DeviceClass the claims name (the GPU Operator creates gpu.amd.com).",
    )
    auto_partition: bool = Field(
        default=False,
        description="Partition pools ask AMD's AutoPartition devices (computePartition, "
        "memoryPartition, consumable capacity partitions; Kubernetes >= 1.36 with "
        "DRAConsumableCapacity) instead of pre-partitioned amdgpu-partition devices.",
    )
    memory_fraction: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="A device must report at least this fraction of the HBM the catalogue "
        "lists for its GPU (or partition); drivers report slightly less than the nominal size.",
    )


class OperatorConfig(StrictModel):
    """Everything cluster-specific the operator needs."""

    gpus: dict[str, GPUSpec] = Field(
        default_factory=lambda: dict(DEFAULT_GPUS), description="GPU catalogue."
    )
    images: ImageSpec = Field(default_factory=ImageSpec, description="Images.")
    pods: PodSettings = Field(default_factory=PodSettings, description="Engine pod settings.")
    benchmark: BenchmarkSettings = Field(
        default_factory=BenchmarkSettings, description="Benchmark Job settings."
    )
    leader_worker_set: bool = Field(
        default=False,
        description="The LeaderWorkerSet CRD is installed: multi-node replicas are allowed.",
    )
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty means all."
    )
    scrape_interval_seconds: float = Field(
        default=5.0, gt=0, le=300, description="How often engines' /metrics are scraped."
    )
    scrape_timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="Scrape timeout.")
    scaling_history_limit: int = Field(
        default=20, ge=1, le=200, description="Scaling decisions kept in status."
    )
    activator: ActivatorSettings = Field(
        default_factory=ActivatorSettings, description="Request-driven scale from zero."
    )
    allocation: Allocation = Field(
        default="devicePlugin",
        description="How engine pods ask for GPUs: devicePlugin (amd.com/gpu extended "
        "resources and node-label affinity), dra (ResourceClaims on the gpu.amd.com DRA "
        "driver's devices), or auto (per GPU model and partition profile, whichever the "
        "cluster publishes: ResourceSlices of dra.driver with dra.deviceClass present, or "
        "extended resources).",
    )
    dra: DraSettings = Field(
        default_factory=DraSettings, description="DRA driver settings (allocation dra/auto)."
    )

    @classmethod
    def load(cls, path: str | Path | None) -> OperatorConfig:
        """Built-in defaults, overridden key by key by a YAML file when given."""
        if path is None:
            return cls()
        raw = yaml.safe_load(Path(path).read_text()) or {}
        gpus = dict(DEFAULT_GPUS)
        for name, spec in (raw.pop("gpus", None) or {}).items():
            gpus[name] = GPUSpec.model_validate(spec)
        return cls.model_validate({**raw, "gpus": gpus})


DEFAULT_GPUS: dict[str, GPUSpec] = {
    "MI210": GPUSpec(
        arch="gfx90a",
        hbm_gib=64,
        device_ids=["740f"],
        product_names=["Instinct_MI210"],
        gpus_per_node=4,
        cost_per_gpu_hour=0.8,
    ),
    "MI250X": GPUSpec(
        arch="gfx90a",
        hbm_gib=128,
        device_ids=["740c", "7408"],
        cost_per_gpu_hour=1.2,
    ),
    "MI300A": GPUSpec(arch="gfx942", hbm_gib=128, fp8=True, device_ids=["74a0"], gpus_per_node=4),
    "MI300X": GPUSpec(
        arch="gfx942",
        hbm_gib=192,
        fp8=True,
        device_ids=["74a1", "74a9", "74b5"],
        product_names=["AMD_Instinct_MI300X_OAM"],
        cost_per_gpu_hour=2.0,
        tokens_per_second_per_gpu=2600,
        partitions={
            "cpx_nps4": PartitionSpec(per_gpu=8, hbm_gib=24),
            "cpx_nps1": PartitionSpec(per_gpu=8, hbm_gib=24),
            "dpx_nps2": PartitionSpec(per_gpu=2, hbm_gib=96),
            "qpx_nps1": PartitionSpec(per_gpu=4, hbm_gib=48),
            "spx_nps1": PartitionSpec(per_gpu=1, hbm_gib=192),
        },
    ),
    "MI325X": GPUSpec(
        arch="gfx942",
        hbm_gib=256,
        fp8=True,
        device_ids=["74a5", "74b9"],
        product_names=["AMD_Instinct_MI325_OAM", "AMD_Instinct_MI325X_OAM"],
        cost_per_gpu_hour=2.4,
        tokens_per_second_per_gpu=4000,
        partitions={
            "cpx_nps4": PartitionSpec(per_gpu=8, hbm_gib=32),
            "dpx_nps2": PartitionSpec(per_gpu=2, hbm_gib=128),
            "spx_nps1": PartitionSpec(per_gpu=1, hbm_gib=256),
        },
    ),
    "MI350X": GPUSpec(
        arch="gfx950",
        hbm_gib=288,
        fp8=True,
        fp6=True,
        fp4=True,
        device_ids=["75a0"],
        cost_per_gpu_hour=2.8,
    ),
    "MI355X": GPUSpec(
        arch="gfx950",
        hbm_gib=288,
        fp8=True,
        fp6=True,
        fp4=True,
        device_ids=["75a3", "75b3"],
        product_names=["AMD_Instinct_MI355X_OAM"],
        cost_per_gpu_hour=3.0,
        tokens_per_second_per_gpu=12500,
    ),
    "CPU": GPUSpec(arch="cpu", hbm_gib=16, gpus_per_node=1, cost_per_gpu_hour=0.1),
}

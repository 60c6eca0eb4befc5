"""Operator configuration: the GPU catalogue, accelerator profiles, images and costs.

Cluster facts (which labels a node carries, which image runs on gfx950, what a GPU-hour costs)
belong to the platform team, not to each InferenceService, so they live here with built-in
defaults taken from AMD's device plugin / node labeller and can be overridden by a YAML file
(the Helm chart renders one into a ConfigMap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, model_validator

from tokenscale.api.base import StrictModel

GfxTarget = Literal["gfx90a", "gfx942", "gfx950", "cpu"]
#: A Kubernetes quantity as the operator does arithmetic on it (decimal or binary suffix).
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"


class PartitionSpec(StrictModel):
    """A compute/memory partition mode of a GPU (mixed resource naming strategy)."""

    per_gpu: int = Field(ge=1, description="Partitions per physical GPU (CPX on MI300X: 8).")
    hbm_gib: float = Field(gt=0, description="HBM one partition sees (GiB).")


ResourceNaming = Literal["single", "mixed", "auto"]


class GPUSpec(StrictModel):
    """One GPU model as the planner and renderer need it."""

    arch: GfxTarget = Field(description="LLVM target; selects the image.")
    hbm_gib: float = Field(
        gt=0,
        description="Memory vLLM can use on one allocatable GPU, in GiB (one GCD on MI250X; "
        "on MI300A the GPU's share of the unified memory, see docs/capacity-planning.md).",
    )
    fp8: bool = Field(default=False, description="Native FP8 support.")
    fp6: bool = Field(default=False, description="Native FP6 support.")
    fp4: bool = Field(default=False, description="Native FP4/MXFP4 support.")
    device_ids: list[str] = Field(
        default_factory=list, description="PCI device ids (amd.com/gpu.device-id values)."
    )
    product_names: list[str] = Field(
        default_factory=list, description="amd.com/gpu.product-name values."
    )
    gpus_per_node: int = Field(
        default=8, ge=1, le=64, description="Allocatable GPUs on one node (GCDs on MI250X)."
    )
    whole_gpu_profile: str | None = Field(
        default=None,
        pattern=r"^spx_nps[0-9]+$",
        description="What the device plugin calls one unpartitioned GPU under its mixed naming "
        "strategy (amd.com/<profile>, e.g. spx_nps1); unset for GPUs without partition "
        "support, which are always amd.com/gpu.",
    )
    vram_label: str | None = Field(
        default=None,
        pattern=r"^[0-9]+G$",
        description="amd.com/gpu.vram of one unpartitioned GPU (e.g. 192G). Whole-GPU pools "
        "require it under single naming so they never land on a partition of this GPU; unset "
        "when the GPU cannot be partitioned.",
    )
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
        alias="gfx90a",  # camelCase would make it "gfx90A": not the target's name
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

    resource_naming: ResourceNaming = Field(
        default="auto",
        description="The AMD device plugin's resource naming strategy: single (every GPU or "
        "partition is amd.com/gpu), mixed (amd.com/<compute>_<nps>, e.g. amd.com/spx_nps1 for "
        "a whole MI300X) or auto (read the nodes' allocatable resources and pick per pool).",
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Extra node selector for engine pods."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations.")
    run_as_non_root: bool = Field(
        default=False,
        description="Run engines as runAsUser/runAsGroup with writable cache dirs on emptyDir "
        "(the ROCm vLLM images run as root).",
    )
    run_as_user: int = Field(
        default=1000, ge=1, le=2**31 - 1, description="UID of non-root engines (not 0)."
    )
    run_as_group: int = Field(
        default=1000, ge=0, le=2**31 - 1, description="Primary GID of non-root engines."
    )
    fs_group: int = Field(
        default=1000, ge=0, le=2**31 - 1, description="fsGroup of non-root engines' volumes."
    )
    supplemental_groups: list[int] = Field(
        default_factory=lambda: [44, 110],
        description="Host video/render GIDs given to non-root engines (the render GID differs "
        "by distro: `getent group render` on a GPU node).",
    )
    seccomp_unconfined: bool = Field(
        default=True,
        description="seccomp Unconfined for GPU engines (AMD's recommendation); false keeps "
        "the runtime's default profile, as the Baseline Pod Security Standard requires.",
    )
    sys_ptrace: bool = Field(
        default=True,
        description="Add SYS_PTRACE to GPU engines (ROCm debuggers and core dumps); false for "
        "namespaces under the Baseline Pod Security Standard.",
    )
    rocm_aiter: bool = Field(
        default=True,
        description="Set VLLM_ROCM_USE_AITER=1 on gfx942/gfx950 engines (AMD's tuned kernels); "
        "spec.engine.env overrides it per service.",
    )
    host_ipc: bool = Field(default=False, description="Use hostIPC instead of a /dev/shm volume.")
    shm_size: str = Field(
        default="16Gi",
        pattern=QUANTITY,
        description="Size of the /dev/shm memory volume (counted in the memory request).",
    )
    cpu_request: str = Field(
        default="2",
        pattern=QUANTITY,
        description="CPU request of an engine before its GPUs (API server, engine core).",
    )
    cpu_request_per_gpu: str = Field(
        default="2", pattern=QUANTITY, description="CPU request added per GPU (one worker each)."
    )
    memory_request: str = Field(
        default="16Gi",
        pattern=QUANTITY,
        description="Memory request of an engine before its GPUs; the /dev/shm volume is added.",
    )
    memory_request_per_gpu: str = Field(
        default="16Gi", pattern=QUANTITY, description="Memory request added per GPU."
    )
    prestop_sleep_seconds: int = Field(
        default=10, ge=0, le=300, description="Delay so endpoints drop the pod first."
    )
    hf_cache_pvc: str | None = Field(
        default=None,
        description="PVC for the Hugging Face cache shared by engines. Without it the cache "
        "is an emptyDir and engines request ephemeral-storage sized to the checkpoint.",
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


class PrometheusSettings(StrictModel):
    """Where and how to query Prometheus when it is the metrics source."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the Prometheus HTTP API, e.g. http://prometheus.monitoring:9090; "
        "required when metricsSource.type is prometheus.",
    )
    namespace_label: str = Field(
        default="namespace", min_length=1, description="Series label holding the namespace."
    )
    service_label: str = Field(
        default="tokenscale_dev_service",
        min_length=1,
        description="Series label holding the InferenceService name (the pod label "
        "tokenscale.dev/service as a ServiceMonitor's podTargetLabels names it).",
    )
    pool_label: str = Field(
        default="tokenscale_dev_pool",
        min_length=1,
        description="Series label holding the pool (the pod label tokenscale.dev/pool as "
        "podTargetLabels names it). Series without it count as missing pods: scaling holds.",
    )
    rate_window: str = Field(
        default="1m",
        pattern=r"^[0-9]+[smh]$",
        description="rate() window; at least two Prometheus scrape intervals.",
    )
    timeout_seconds: float = Field(default=5.0, gt=0, le=60, description="Query timeout.")


class MetricsSourceSettings(StrictModel):
    """Where the autoscaler reads engine metrics."""

    type: Literal["scrape", "prometheus"] = Field(
        default="scrape",
        description="scrape: read each ready engine pod's /metrics directly (fresh, needs no "
        "Prometheus); prometheus: query the Prometheus HTTP API (for clusters where the operator "
        "may not reach pod IPs; lags by a scrape interval plus the rate() range).",
    )
    prometheus: PrometheusSettings = Field(
        default_factory=PrometheusSettings, description="Prometheus query settings."
    )

    @model_validator(mode="after")
    def _url_when_prometheus(self) -> MetricsSourceSettings:
        if self.type == "prometheus" and not self.prometheus.url:
            raise ValueError(
                "metricsSource.prometheus.url is required when metricsSource.type is prometheus; "
                "fix: set it to your Prometheus base URL (http://prometheus.monitoring:9090)"
            )
        return self


class EnergyScrapeSettings(StrictModel):
    """Where the AMD Device Metrics Exporter DaemonSet's pods are (one per GPU node)."""

    namespace: str | None = Field(
        default=None,
        description="Namespace of the exporter pods; unset: all namespaces (needs pod list "
        "rights cluster-wide, which the operator has).",
        examples=["kube-amd-gpu"],
    )
    selector: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "metrics-exporter"},
        description="Labels of the exporter pods (must not be empty: that would scrape every pod).",
    )
    port: int = Field(
        default=5000, ge=1, le=65535, description="Port of the exporter's /metrics (5000)."
    )
    timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="Scrape timeout.")

    @model_validator(mode="after")
    def _selector_not_empty(self) -> EnergyScrapeSettings:
        if not self.selector:
            raise ValueError(
                "energy.scrape.selector is empty, which would scrape every pod; fix: set the "
                "exporter DaemonSet's pod labels (app.kubernetes.io/name: metrics-exporter)"
            )
        return self


class EnergyPrometheusSettings(StrictModel):
    """Query the exporter's series from Prometheus instead of scraping its pods."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the Prometheus HTTP API; required when energy.type is prometheus.",
    )
    timeout_seconds: float = Field(default=5.0, gt=0, le=60, description="Query timeout.")


class EnergySettings(StrictModel):
    """Where GPU power and energy come from (tokens per joule in status and metrics)."""

    type: Literal["off", "scrape", "prometheus"] = Field(
        default="off",
        description="off: no energy figures; scrape: read each AMD Device Metrics Exporter pod "
        "(gpu_energy_consumed, gpu_power_usage) directly; prometheus: query those series. "
        "Energy never affects scaling; when it cannot be read, status.energy.reason says why.",
    )
    window_seconds: float = Field(
        default=60.0, ge=5, le=3600, description="Window of joules and tokens in status."
    )
    scrape: EnergyScrapeSettings = Field(
        default_factory=EnergyScrapeSettings, description="Exporter DaemonSet pods."
    )
    prometheus: EnergyPrometheusSettings = Field(
        default_factory=EnergyPrometheusSettings, description="Prometheus query settings."
    )

    @model_validator(mode="after")
    def _url_when_prometheus(self) -> EnergySettings:
        if self.type == "prometheus" and not self.prometheus.url:
            raise ValueError(
                "energy.prometheus.url is required when energy.type is prometheus; "
                "fix: set it to your Prometheus base URL (http://prometheus.monitoring:9090)"
            )
        return self


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
    metrics_source: MetricsSourceSettings = Field(
        default_factory=MetricsSourceSettings,
        description="Where the autoscaler reads engine metrics: scrape pods or query Prometheus.",
    )
    energy: EnergySettings = Field(
        default_factory=EnergySettings,
        description="Where GPU power and energy are read (AMD Device Metrics Exporter).",
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
        """Built-in defaults with a YAML file deep-merged over them when given.

        A platform team writes only what differs (``gpus.MI300X.costPerGpuHour: 3``); a shallow
        merge would replace the whole MI300X entry and fail on its missing ``arch``.
        """
        if path is None:
            return cls()
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            return cls.model_validate(raw)  # fails naming the type it expected
        return cls.model_validate(merge_over_defaults(cls, cls().model_dump(by_alias=True), raw))


def merge_over_defaults(
    model: type[BaseModel], defaults: dict[str, Any], override: dict[str, Any]
) -> dict[str, Any]:
    """``override`` merged into ``defaults`` (camelCase keys) along the model's structure.

    Nested settings objects and named catalogues (``gpus``, ``partitions``) merge entry by
    entry. Lists and plain string maps (labels, selectors) are values and are replaced whole:
    merging a selector would make it match fewer pods than the user wrote. Keys the model does
    not know are passed through so that validation names them.
    """
    wire_of = {name: info.alias or name for name, info in model.model_fields.items()}
    field_of = {wire: name for name, wire in wire_of.items()} | {n: n for n in wire_of}
    merged = dict(defaults)
    for key, value in override.items():
        name = field_of.get(key)
        if name is None:
            merged[key] = value
            continue
        wire = wire_of[name]
        base = merged.get(wire)
        annotation = model.model_fields[name].annotation
        if not (isinstance(base, dict) and isinstance(value, dict)):
            merged[wire] = value
        elif (sub := settings_model_in(annotation)) is not None:
            merged[wire] = merge_over_defaults(sub, base, value)
        elif (entry := catalogue_entry_in(annotation)) is not None:
            merged[wire] = {**base}
            for item, spec in value.items():
                known = base.get(item)
                if isinstance(known, dict) and isinstance(spec, dict):
                    spec = merge_over_defaults(entry, known, spec)
                merged[wire][item] = spec
        else:
            merged[wire] = value
    return merged


def settings_model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (``images: ImageSpec``), if it holds one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def catalogue_entry_in(annotation: Any) -> type[BaseModel] | None:
    """The entry model of a named catalogue (``dict[str, GPUSpec]``), if the field is one."""
    if get_origin(annotation) is dict:
        return settings_model_in(get_args(annotation)[1])
    return None


#: Sources: ../shared/facts/amd-gpus.md §1-§4 and the render review (device ids from the GPU
#: Operator's NFD rule, per-GCD memory of MI250X, MI300X memory modes NPS1/NPS4 only).
DEFAULT_GPUS: dict[str, GPUSpec] = {
    "MI210": GPUSpec(
        arch="gfx90a",
        hbm_gib=64,
        device_ids=["740f"],
        product_names=["Instinct_MI210"],
        gpus_per_node=4,
        cost_per_gpu_hour=0.8,
    ),
    # One MI250X OAM is two GCDs, each its own 64 GiB amd.com/gpu; 4 OAMs = 8 per node.
    "MI250X": GPUSpec(
        arch="gfx90a",
        hbm_gib=64,
        device_ids=["740c", "7408"],
        gpus_per_node=8,
        cost_per_gpu_hour=0.6,
    ),
    # APU: KFD reports the TTM limit (half of the 128 GB unified memory by default).
    "MI300A": GPUSpec(
        arch="gfx942",
        hbm_gib=64,
        fp8=True,
        device_ids=["74a0"],
        gpus_per_node=4,
        whole_gpu_profile="spx_nps1",
    ),
    "MI300X": GPUSpec(
        arch="gfx942",
        hbm_gib=192,
        fp8=True,
        device_ids=["74a1", "74a9", "74b5", "74bd"],
        product_names=["AMD_Instinct_MI300X_OAM"],
        cost_per_gpu_hour=2.0,
        tokens_per_second_per_gpu=2600,
        whole_gpu_profile="spx_nps1",
        vram_label="192G",
        partitions={
            "cpx_nps4": PartitionSpec(per_gpu=8, hbm_gib=24),
            "cpx_nps1": PartitionSpec(per_gpu=8, hbm_gib=24),
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
        whole_gpu_profile="spx_nps1",
        vram_label="256G",
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
        device_ids=["75a0", "75b0"],
        product_names=["AMD_Instinct_MI350_OAM", "AMD_Instinct_MI350X_OAM"],
        cost_per_gpu_hour=2.8,
        whole_gpu_profile="spx_nps1",
        vram_label="288G",
    ),
    # Nodes labelled by the GPU Operator publish "MI355" without the X; both are accepted.
    "MI355X": GPUSpec(
        arch="gfx950",
        hbm_gib=288,
        fp8=True,
        fp6=True,
        fp4=True,
        device_ids=["75a3", "75b3"],
        product_names=["AMD_Instinct_MI355_OAM", "AMD_Instinct_MI355X_OAM"],
        cost_per_gpu_hour=3.0,
        tokens_per_second_per_gpu=12500,
        whole_gpu_profile="spx_nps1",
        vram_label="288G",
    ),
    "CPU": GPUSpec(arch="cpu", hbm_gib=16, gpus_per_node=1, cost_per_gpu_hour=0.1),
}

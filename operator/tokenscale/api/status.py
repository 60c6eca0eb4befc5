"""Observed state of an InferenceService, written only by the operator (status subresource)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tokenscale.api.base import CONDITIONS_LIST, Condition, StrictModel, list_map
from tokenscale.api.wire import Timestamp


class PoolPlan(StrictModel):
    """The capacity planner's answer for one pool."""

    pool: str = Field(description="Pool name.")
    gpu: str = Field(description="GPU model.")
    fits: bool = Field(description="Whether the model fits the requested hardware at all.")
    gpus_per_replica: int = Field(default=0, description="GPUs (or partitions) per replica.")
    tensor_parallel: int = Field(default=0, description="Tensor-parallel size.")
    pipeline_parallel: int = Field(default=1, description="Pipeline-parallel size.")
    nodes_per_replica: int = Field(default=1, description="Nodes one replica spans.")
    weights_gib: float = Field(default=0, description="Weight memory per replica (GiB).")
    kv_cache_gib: float = Field(default=0, description="KV-cache memory needed per replica.")
    hbm_gib: float = Field(default=0, description="Usable HBM per replica (GiB).")
    max_concurrent_sequences: int = Field(
        default=0, description="Sequences at max length the KV cache holds."
    )
    message: str = Field(default="", description="Why this plan, or why it does not fit.")


class PoolRollout(StrictModel):
    """How the pool's last pod-replacing change rolls out, decided by the operator."""

    strategy: Literal["surge", "inPlace", "wait"] = Field(
        description="surge (maxSurge 1, maxUnavailable 0), inPlace (maxSurge 0, maxUnavailable "
        "1) or wait (Deployment paused on the old version until capacity or load allows)."
    )
    reason: str = Field(default="", description="CamelCase reason, e.g. NoFreeGPU.")
    message: str = Field(default="", description="Why, in words.")
    revision: str = Field(default="", description="Hash of the pod template being rolled out.")
    decided_at: Timestamp | None = Field(default=None, description="When it was decided.")
    generation: int | None = Field(
        default=None,
        description="The spec generation whose change this is (the SLA gate rolls back only a "
        "version the benchmarked generation brought).",
    )
    rolled_back_from: str | None = Field(
        default=None,
        description="Hash of the version that failed the SLA benchmark after its rollout and "
        "was rolled back (benchmarkOnRollout.rollback); while the spec still asks for it, the "
        "pool keeps the previous version (revision).",
    )


class PoolStatus(StrictModel):
    """Per-pool replica counts."""

    name: str = Field(description="Pool name.")
    gpu: str = Field(description="GPU model.")
    desired_replicas: int = Field(default=0, description="Replicas the operator wants.")
    replicas: int = Field(default=0, description="Replicas that exist.")
    ready_replicas: int = Field(default=0, description="Replicas that are ready.")
    message: str = Field(default="", description="Scheduling or rollout problems.")
    allocation: str | None = Field(
        default=None,
        description="How the pool's pods ask for GPUs as rendered: dra (ResourceClaims) or "
        "devicePlugin (amd.com/* resources); shows what allocation auto chose.",
    )
    models: dict[str, int] = Field(
        default_factory=dict,
        description="Pods per GPU model their DRA claims were allocated (pools with "
        "alternatives: which model each replica got).",
    )
    rollout: PoolRollout | None = Field(
        default=None, description="Strategy of the latest change that replaced pods, and why."
    )


class MetricsStatus(StrictModel):
    """The latest autoscaling signal, aggregated over ready pods."""

    tokens_per_second: float | None = Field(
        default=None, description="Generation (output) tokens/s, summed over pods."
    )
    prompt_tokens_per_second: float | None = Field(
        default=None, description="Prompt tokens/s, summed over pods."
    )
    requests_running: float | None = Field(default=None, description="Requests running.")
    requests_waiting: float | None = Field(default=None, description="Requests queued.")
    kv_cache_usage: float | None = Field(default=None, description="Mean KV-cache use, 0-1.")
    target_per_replica: float | None = Field(
        default=None, description="Target value of the scaling metric per replica."
    )
    target_source: str | None = Field(
        default=None, description="Where the target came from: spec or benchmark/<name>."
    )
    scrape_errors: int = Field(default=0, description="Failed scrapes in the last pass.")
    observed_at: Timestamp | None = Field(default=None, description="Time of the sample.")


class PoolEnergy(StrictModel):
    """Energy figures of one pool over the window."""

    name: str = Field(description="Pool name.")
    gpus: int = Field(default=0, description="GPUs the exporter reports for the pool's pods.")
    watts: float | None = Field(default=None, description="Board power now, summed (W).")
    joules: float | None = Field(default=None, description="Energy over the window (J).")
    tokens_per_joule: float | None = Field(
        default=None, description="Output tokens per joule over the window."
    )
    joules_per_token: float | None = Field(
        default=None, description="Joules per output token over the window."
    )
    reason: str = Field(default="", description="Why the figures are unknown, when they are.")


class EnergyStatus(StrictModel):
    """Power and energy per output token from the AMD Device Metrics Exporter."""

    watts: float | None = Field(default=None, description="Board power now, all GPUs (W).")
    joules: float | None = Field(default=None, description="Energy over the window (J).")
    window_seconds: float | None = Field(default=None, description="Time the joules cover (s).")
    tokens_per_joule: float | None = Field(
        default=None, description="Output tokens per joule over the window (TOK/J)."
    )
    joules_per_token: float | None = Field(
        default=None, description="Joules per output token over the window."
    )
    reason: str = Field(
        default="",
        description="Why energy is unknown (e.g. NoExporter, ExporterUnreachable, "
        "ExporterGarbage, NoExporterData, Warming); empty when the figures are current.",
    )
    pools: list[PoolEnergy] = Field(
        default_factory=list, description="Per pool.", json_schema_extra=list_map("name")
    )
    observed_at: Timestamp | None = Field(default=None, description="Time of the reading.")


class ScalingDecision(StrictModel):
    """One entry of the scaling history."""

    time: Timestamp = Field(description="When the decision was taken.")
    pool: str = Field(description="Pool the decision applies to.")
    from_replicas: int = Field(description="Replicas before.")
    to_replicas: int = Field(description="Replicas after.")
    reason: str = Field(description="Why, in words.")


class ScalingStatus(StrictModel):
    """What the built-in autoscaler last concluded (mapped to the Scaling condition)."""

    able: bool = Field(default=True, description="False when scaling is blocked.")
    reason: str = Field(default="", description="CamelCase reason, e.g. InsufficientGPU.")
    message: str = Field(default="", description="Why, in words.")
    desired: dict[str, int] = Field(default_factory=dict, description="Desired replicas by pool.")
    panic: bool = Field(default=False, description="Panic mode (burst) is active.")
    last_scale_time: Timestamp | None = Field(default=None, description="Last replica change.")
    observed_at: Timestamp | None = Field(default=None, description="Time of the decision.")


class BenchmarkSummary(StrictModel):
    """Summary of the latest benchmark that targeted this service."""

    name: str = Field(description="InferenceBenchmark name.")
    verdict: str = Field(description="Pass, Fail, Invalid or Unstable.")
    tokens_per_second: float | None = Field(default=None, description="Output tokens/s.")
    ttft_p99_ms: float | None = Field(default=None, description="p99 TTFT (ms).")
    tpot_p99_ms: float | None = Field(default=None, description="p99 TPOT (ms).")
    replicas: int | None = Field(default=None, description="Ready replicas during the run.")
    capacity_per_replica: float | None = Field(
        default=None, description="Output tokens/s per replica at the SLA."
    )
    completed_at: Timestamp | None = Field(default=None, description="Completion time.")
    image: str | None = Field(default=None, description="Engine image(s) during the run.")
    engine_version: str | None = Field(
        default=None, description="The engine's own /version during the run."
    )
    gpu: str | None = Field(default=None, description="GPU model(s) of the service's pools.")
    regression: bool = Field(
        default=False,
        description="Capacity per replica at the SLA fell by more than the margin below the best "
        "earlier passing run on the same GPU model(s).",
    )
    baseline: str | None = Field(
        default=None,
        description="The earlier benchmark compared against: name, image and engine version.",
    )


class RouterWorker(StrictModel):
    """One engine as the router sees it."""

    url: str = Field(description="The worker's URL as the router names it.")
    running_requests: float = Field(
        default=0, description="Requests the router has running on it, summed over router pods."
    )
    processed_requests: float = Field(
        default=0,
        description="Requests the routers have sent it since they started, summed over router "
        "pods (the split of the load between engines).",
    )
    healthy: bool | None = Field(
        default=None, description="The router's health check of the worker (None: not reported)."
    )


class RouterStatus(StrictModel):
    """Router mode: the router pods and what their Prometheus port reports."""

    replicas: int = Field(default=0, description="Router pods that exist.")
    ready_replicas: int = Field(default=0, description="Router pods that are ready.")
    requests_total: float | None = Field(
        default=None, description="Requests received, summed over the router pods scraped."
    )
    requests_per_second: float | None = Field(
        default=None,
        description="Rate of requestsTotal since the previous reading (None: first reading, "
        "or a router pod restarted).",
    )
    requests_running: float | None = Field(
        default=None, description="Requests running on the engines through the routers."
    )
    workers: list[RouterWorker] = Field(
        default_factory=list,
        description="Per engine: load and health as the routers see them.",
        json_schema_extra=list_map("url"),
    )
    scrape_errors: int = Field(default=0, description="Router pods whose metrics failed.")
    reason: str = Field(
        default="",
        description="Why the figures are unknown or partial (e.g. NoReadyRouter, "
        "RouterMetricsUnreachable, RouterMetricsGarbage); empty when current.",
    )
    observed_at: Timestamp | None = Field(default=None, description="Time of the reading.")


class InferenceServiceStatus(StrictModel):
    """Observed state of an InferenceService."""

    observed_generation: int | None = Field(
        default=None, description="Generation of the spec this status reflects."
    )
    replicas: int = Field(default=0, description="Total replicas (the /scale status value).")
    ready_replicas: int = Field(default=0, description="Total ready replicas.")
    selector: str = Field(default="", description="Label selector of all engine pods (/scale).")
    gpu_summary: str = Field(default="", description="GPU models of the pools, for display.")
    url: str | None = Field(
        default=None,
        description="In-cluster base URL of the service's OpenAI-compatible API "
        "(http://NAME.NAMESPACE.svc:8000; clients add /v1/...).",
        examples=["http://llama2-70b.team-a.svc:8000"],
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded, Scaling, SLAMet.",
        json_schema_extra=CONDITIONS_LIST,
    )
    pools: list[PoolStatus] = Field(
        default_factory=list, description="Per-pool state.", json_schema_extra=list_map("name")
    )
    plan: list[PoolPlan] = Field(default_factory=list, description="Capacity plan per pool.")
    metrics: MetricsStatus | None = Field(default=None, description="Latest metrics.")
    energy: EnergyStatus | None = Field(
        default=None, description="Power and tokens per joule (operatorConfig.energy)."
    )
    router: RouterStatus | None = Field(
        default=None, description="Router mode: the router's pods, load and workers."
    )
    scaling: ScalingStatus | None = Field(default=None, description="Autoscaler state.")
    scaling_history: list[ScalingDecision] = Field(
        default_factory=list, description="The most recent scaling decisions, newest last."
    )
    benchmark: BenchmarkSummary | None = Field(
        default=None, description="Latest benchmark summary."
    )
    rollout_benchmark_generation: int | None = Field(
        default=None, description="Spec generation the last automatic rollout benchmark ran for."
    )
    benchmark_history: list[BenchmarkSummary] = Field(
        default_factory=list, description="Bounded history of benchmark results."
    )

"""InferenceBenchmark: an MLPerf-style load test run as a Job, with an SLA verdict."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from tokenscale.api.base import CONDITIONS_LIST, Condition, ObjectMeta, StrictModel, cel
from tokenscale.api.sla import SLASpec
from tokenscale.api.wire import Timestamp

Scenario = Literal["offline", "server", "interactive", "concurrencySweep", "replicaSweep"]
Verdict = Literal["Pass", "Fail", "Invalid", "Unstable", "NoSLA"]
Phase = Literal["Pending", "WaitingForTarget", "Running", "Succeeded", "Failed"]
#: Phases after which a benchmark never acts again (and holds nothing).
FINISHED: tuple[Phase, ...] = ("Succeeded", "Failed")


class BenchmarkTarget(StrictModel):
    """What to load: an InferenceService in the same namespace, or any OpenAI URL."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            ("has(self.service) != has(self.url)", "set exactly one of service, url")
        )
    }

    service: str | None = Field(default=None, description="InferenceService name.")
    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Base URL of an OpenAI-compatible server (http://host:port).",
    )
    model: str | None = Field(
        default=None, description="Model name to request; defaults to the service's model."
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.service is None) == (self.url is None):
            raise ValueError("set exactly one of service, url; fix: keep one target")
        return self


class LengthDistribution(StrictModel):
    """A token-length distribution for synthetic prompts or outputs."""

    kind: Literal["fixed", "uniform", "normal", "openorca"] = Field(
        default="fixed",
        description="fixed, uniform(min,max), normal(mean,stddev) clipped to [min,max], or "
        "openorca: the empirical shape of MLPerf's Llama-2-70B OpenOrca subset.",
    )
    mean: int = Field(default=128, ge=1, le=131072, description="Fixed value or mean.")
    stddev: int = Field(default=0, ge=0, le=131072, description="Standard deviation.")
    min: int = Field(default=1, ge=1, le=131072, description="Lower bound.")
    max: int = Field(default=131072, ge=1, le=131072, description="Upper bound.")


class DatasetSpec(StrictModel):
    """Prompts: synthetic lengths, or a ConfigMap of prompts (JSONL, one per line)."""

    input: LengthDistribution = Field(
        default_factory=LengthDistribution, description="Prompt length in tokens."
    )
    output: LengthDistribution = Field(
        default_factory=LengthDistribution, description="Output length (max_tokens, ignore_eos)."
    )
    config_map: str | None = Field(
        default=None, description="ConfigMap whose key prompts.jsonl holds prompts."
    )


class LoadSpec(StrictModel):
    """How much load, for how long."""

    qps: float | None = Field(default=None, gt=0, description="Server/interactive arrival rate.")
    concurrency: int | None = Field(
        default=None, ge=1, le=100000, description="Offline: maximum requests in flight."
    )
    concurrencies: list[int] = Field(
        default_factory=list, description="Concurrency sweep levels, e.g. [1, 4, 16, 64]."
    )
    replicas: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=list,
        max_length=16,
        description="Replica sweep levels, e.g. [1, 2, 4] (default [1, 2, 4]); include 1 for "
        "scaling efficiency.",
    )
    duration_seconds: int = Field(default=60, ge=1, le=86400, description="Length of a run.")
    requests: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Stop after this many requests."
    )
    warmup_seconds: int = Field(default=0, ge=0, le=3600, description="Excluded from results.")


class InferenceBenchmarkSpec(StrictModel):
    """Desired benchmark run."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            (
                "!(self.scenario in ['server', 'interactive']) || has(self.load.qps)",
                "server and interactive scenarios need load.qps",
            ),
            (
                "self.scenario != 'replicaSweep' || has(self.target.service)",
                "replicaSweep needs target.service",
            ),
        )
    }

    target: BenchmarkTarget = Field(description="Service or URL under test.")
    scenario: Scenario = Field(default="server", description="MLPerf-style scenario.")
    api: Literal["completions", "chat"] = Field(
        default="completions", description="OpenAI API used for requests."
    )
    load: LoadSpec = Field(default_factory=LoadSpec, description="Load shape.")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec, description="Prompts.")
    sla: SLASpec | None = Field(
        default=None, description="Limits for the verdict; defaults to the target's SLA."
    )
    shards: int = Field(default=1, ge=1, le=64, description="Parallel load pods (Indexed Job).")
    repeats: int = Field(default=1, ge=1, le=10, description="Runs; spread is reported.")
    stability_margin: float = Field(
        default=0.05, gt=0, le=1, description="Max relative spread before Unstable."
    )
    seed: int = Field(default=0, ge=0, description="Seed for arrivals and lengths.")
    image: str | None = Field(default=None, description="Load-generator image override.")
    target_timeout_seconds: int = Field(
        default=1800,
        ge=10,
        le=86400,
        description="How long the benchmark waits for its target service to exist and be "
        "Ready (including a wake from zero) before it ends Failed with reason TargetNotReady. "
        "The default covers a large model's load (the engine's default startup budget).",
    )

    @model_validator(mode="after")
    def _scenario_needs(self) -> Self:
        if self.scenario in ("server", "interactive") and self.load.qps is None:
            raise ValueError(
                f"scenario {self.scenario} needs load.qps; fix: set load.qps (requests/s)"
            )
        if self.scenario == "replicaSweep" and self.target.service is None:
            raise ValueError("replicaSweep needs target.service; fix: target a service")
        return self


class LatencySummary(StrictModel):
    """Percentiles of one latency metric in milliseconds."""

    p50: float | None = Field(default=None, description="Median (ms).")
    p90: float | None = Field(default=None, description="90th percentile (ms).")
    p99: float | None = Field(default=None, description="99th percentile (ms).")


class BenchmarkEnergy(StrictModel):
    """GPU energy over the measured window (operatorConfig.energy type scrape)."""

    tokens_per_joule: float | None = Field(default=None, description="Output tokens per joule.")
    joules_per_token: float | None = Field(default=None, description="Joules per output token.")
    joules: float | None = Field(default=None, description="Energy over the window (J).")
    avg_watts_per_gpu: float | None = Field(default=None, description="Mean power per GPU (W).")
    peak_watts_per_gpu: float | None = Field(
        default=None, description="Highest power reading of any one GPU (W)."
    )
    gpus: int = Field(default=0, description="GPUs of the target's pods that were measured.")
    reason: str = Field(default="", description="Why energy is unknown, when it is.")


class BenchmarkResults(StrictModel):
    """Headline results of a finished run (details are in the report)."""

    tokens_per_second: float = Field(description="Output tokens/s (MLPerf definition).")
    requests_per_second: float = Field(description="Completed requests/s.")
    goodput: float = Field(description="Requests/s that met the SLA.")
    requests: int = Field(description="Completed requests.")
    errors: int = Field(default=0, description="Failed requests.")
    partial: bool = Field(
        default=False,
        description="Some requests failed (errors > 0): the figures describe only the requests "
        "that completed, and status.reasons says how many failed and how.",
    )
    ttft_ms: LatencySummary = Field(description="Time to first token.")
    tpot_ms: LatencySummary = Field(description="Time per output token (per request).")
    itl_ms: LatencySummary = Field(description="Inter-token latency (every gap).")
    e2e_ms: LatencySummary = Field(description="End-to-end latency.")
    client_cpu_fraction: float | None = Field(
        default=None, description="Load generator CPU use (fraction of one core)."
    )
    schedule_lag_p99_ms: float | None = Field(
        default=None, description="p99 lateness of sends versus the planned arrivals."
    )
    scaling_efficiency: float | None = Field(
        default=None, description="Replica sweep: T_N / (N * T_1) at the largest N."
    )
    energy: BenchmarkEnergy | None = Field(
        default=None, description="GPU energy over the run, when an exporter was reachable."
    )


class ReplicaSweepLevel(StrictModel):
    """One finished level of a replica sweep."""

    replicas: int = Field(description="Ready replicas of the target during the run.")
    job: str = Field(description="The Job that ran this level.")
    tokens_per_second: float = Field(description="Output tokens/s at this level.")
    tokens_per_second_per_replica: float | None = Field(
        default=None, description="tokensPerSecond / replicas."
    )
    tokens_per_joule: float | None = Field(
        default=None,
        description="Output tokens per joule of GPU energy at this level (when an exporter was "
        "reachable): energy efficiency per replica count.",
    )
    scaling_efficiency: float | None = Field(
        default=None, description="T_N / (N * T_1), once the sweep is done."
    )
    verdict: Verdict | None = Field(default=None, description="SLA verdict at this level.")


class SweepStatus(StrictModel):
    """Progress of an operator-driven replica sweep (it owns the target's /scale meanwhile)."""

    levels: list[int] = Field(description="Replica counts, ascending.")
    index: int = Field(default=0, description="Level being run (index into levels).")
    restore_replicas: int | None = Field(
        default=None, description="The target's spec.replicas before the sweep (restored after)."
    )
    points: list[ReplicaSweepLevel] = Field(default_factory=list, description="Finished levels.")


class InferenceBenchmarkStatus(StrictModel):
    """Observed state of a benchmark."""

    phase: Phase = Field(default="Pending", description="Lifecycle phase.")
    observed_generation: int | None = Field(default=None, description="Spec generation seen.")
    job_name: str | None = Field(default=None, description="The Job running the load.")
    start_time: Timestamp | None = Field(default=None, description="When load started.")
    completion_time: Timestamp | None = Field(default=None, description="When it finished.")
    waiting_since: Timestamp | None = Field(
        default=None,
        description="When it began waiting for the target (bounded by targetTimeoutSeconds).",
    )
    results: BenchmarkResults | None = Field(default=None, description="Headline results.")
    verdict: Verdict | None = Field(
        default=None, description="SLA verdict (NoSLA: no limits to judge against)."
    )
    reasons: list[str] = Field(default_factory=list, description="Why the verdict.")
    report: str | None = Field(
        default=None, description="Where the HTML report is (ConfigMap/key or path)."
    )
    sweep: SweepStatus | None = Field(default=None, description="Replica sweep progress.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions.", json_schema_extra=CONDITIONS_LIST
    )


class InferenceBenchmark(StrictModel):
    """A benchmark run (kind InferenceBenchmark, group tokenscale.dev)."""

    api_version: Literal["tokenscale.dev/v1alpha1"] = Field(
        alias="apiVersion", description="tokenscale.dev/v1alpha1"
    )
    kind: Literal["InferenceBenchmark"] = Field(description="InferenceBenchmark")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: InferenceBenchmarkSpec = Field(description="Desired run.")
    status: InferenceBenchmarkStatus | None = Field(default=None, description="Observed state.")

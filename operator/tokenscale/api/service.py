"""InferenceService: a model, the AMD GPU pools that serve it, how it scales and its SLA."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from tokenscale.api.base import (
    DNS_LABEL,
    MAX_POOL_NAME_LENGTH,
    ObjectMeta,
    StrictModel,
    cel,
    list_map,
)
from tokenscale.api.disaggregation import PD_ROLES, DisaggregationSpec
from tokenscale.api.podtemplate import (
    PodTemplate,
    PoolPodTemplate,
    field_error,
    pool_contradiction,
)
from tokenscale.api.routing import RoutingSpec
from tokenscale.api.sla import SLASpec
from tokenscale.api.status import InferenceServiceStatus

GPUModel = Literal["MI210", "MI250X", "MI300A", "MI300X", "MI325X", "MI350X", "MI355X", "CPU"]
DType = Literal["bf16", "fp16", "fp32", "fp8", "mxfp4", "fp6"]
PartitionProfile = Literal["spx_nps1", "cpx_nps1", "cpx_nps4", "dpx_nps2", "qpx_nps1"]
ScalingMetric = Literal[
    "generationTokensPerSecond",
    "totalTokensPerSecond",
    "promptTokensPerSecond",
    "requestsInFlight",
    "kvCacheUsage",
]
INT_OR_AUTO: dict[str, Any] = {
    "x-kubernetes-int-or-string": True,
    "x-kubernetes-validations": [
        {
            "rule": "type(self) == int ? self >= 1 : self == 'auto'",
            "message": "must be an integer >= 1 or 'auto'",
        }
    ],
}


class PVCSource(StrictModel):
    """Weights on a PersistentVolumeClaim."""

    claim_name: str = Field(pattern=DNS_LABEL, description="Name of the PVC in the namespace.")
    path: str = Field(
        default="",
        pattern=r"^[^.][^:]*$|^$",
        description="Directory inside the PVC holding the model (config.json, weights).",
    )


class S3Source(StrictModel):
    """Weights streamed from S3 with vLLM's Run:ai streamer."""

    uri: str = Field(pattern=r"^s3://[^/]+/.+", description="s3://bucket/prefix of the model.")
    credentials_secret: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and optionally "
        "AWS_ENDPOINT_URL), exposed to the engine as environment variables.",
    )


class ModelSource(StrictModel):
    """Where the weights come from: exactly one of huggingFace, pvc or s3."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            (
                "[has(self.huggingFace), has(self.pvc), has(self.s3)].filter(x, x).size() == 1",
                "set exactly one of huggingFace, pvc, s3",
            )
        )
    }

    hugging_face: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$",
        description="Hugging Face model id, e.g. meta-llama/Llama-2-70b-chat-hf.",
    )
    pvc: PVCSource | None = Field(default=None, description="Load weights from a PVC.")
    s3: S3Source | None = Field(default=None, description="Stream weights from S3.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("hugging_face", "pvc", "s3") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of huggingFace, pvc, s3 (got {len(given)}); "
                "fix: keep a single source"
            )
        return self


class SecretKeyRef(StrictModel):
    """A key in a Secret of the same namespace; the value is never copied into objects."""

    name: str = Field(pattern=DNS_LABEL, description="Secret name.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class ModelSpec(StrictModel):
    """The model to serve and the numbers the capacity planner needs."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][\w.:/-]*$",
        description="Served model name (what clients put in the OpenAI 'model' field).",
    )
    source: ModelSource = Field(description="Where the weights come from.")
    architecture: str | None = Field(
        default=None,
        description="Key in the built-in model catalogue (e.g. llama-2-70b, llama-3.1-405b, "
        "gpt-oss-120b) that gives layers/heads for KV-cache sizing. Inferred from the name "
        "when omitted.",
    )
    parameters_billions: float | None = Field(
        default=None,
        gt=0,
        le=10000,
        description="Parameter count in billions; overrides the catalogue value.",
    )
    dtype: DType = Field(
        default="bf16",
        description="Weight precision: bf16 (2 B/param), fp8 (1 B), mxfp4 (0.5 B, MI350X/"
        "MI355X only), fp6 (0.75 B, MI350X/MI355X only), fp16, fp32 (CPU).",
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        default="auto", description="KV-cache precision; fp8 halves KV memory."
    )
    max_model_len: int = Field(
        default=4096, ge=16, le=1_048_576, description="Maximum context length in tokens."
    )
    hf_token_secret: SecretKeyRef | None = Field(
        default=None, description="Hugging Face token for gated models (Secret reference)."
    )


class EnvVar(StrictModel):
    """An environment variable for the engine container."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Variable name.")
    value: str = Field(default="", description="Literal value (use secrets for credentials).")


class EngineSpec(StrictModel):
    """How the engine runs: real vLLM, or tokenscale's vLLM-compatible simulator."""

    mode: Literal["vllm", "simulated"] = Field(
        default="vllm",
        description="vllm runs the real engine; simulated runs `tokenscale sim engine`, which "
        "exports vLLM's metrics with a per-GPU performance model (dashboards, policy tuning, "
        "tests) while still requesting real GPU resources for placement.",
    )
    image: str | None = Field(
        default=None,
        description="Image override; by default chosen per gfx target from operator config.",
    )
    args: list[str] = Field(
        default_factory=list, description="Extra vLLM arguments appended after ours."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    shutdown_timeout_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="vLLM --shutdown-timeout: how long in-flight requests drain on SIGTERM.",
    )
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=14400,
        description="Budget for model load before the startup probe gives up.",
    )


class GPUPool(StrictModel):
    """A set of identical replicas on one GPU model; each pool scales on its own."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            ("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas"),
            (
                "!has(self.alternatives) || !(self.gpu in self.alternatives)",
                "alternatives must not repeat gpu; fix: list only the other models",
            ),
            (
                "!has(self.alternatives) || !('CPU' in self.alternatives)",
                "alternatives cannot contain CPU; fix: make a CPU pool",
            ),
        )
    }

    name: str = Field(
        min_length=1,
        max_length=MAX_POOL_NAME_LENGTH,
        pattern=DNS_LABEL,
        description=f"Pool name (DNS label, at most {MAX_POOL_NAME_LENGTH} characters).",
    )
    gpu: GPUModel = Field(description="AMD Instinct model, or CPU for the vLLM CPU backend.")
    gpus_per_replica: Annotated[int | Literal["auto"], Field(json_schema_extra=INT_OR_AUTO)] = (
        Field(
            default="auto",
            description="GPUs (or partitions) per replica, or auto to let the planner decide.",
        )
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Lower replica bound.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Upper replica bound.")
    partition: PartitionProfile | None = Field(
        default=None,
        description="Run on partitioned GPUs (mixed naming strategy resource amd.com/<profile>)"
        ", e.g. cpx_nps4.",
    )
    pod_template: PoolPodTemplate | None = Field(
        default=None,
        description="Pod settings of this pool only (e.g. its own node pool, tolerations, "
        "priority, memory), merged after spec.podTemplate; affinity, volumes and volumeMounts "
        "are service-wide. See docs/rendering.md.",
    )
    alternatives: list[GPUModel] = Field(
        default_factory=list,
        max_length=4,
        description="Other GPU models a replica may take when gpu has no free device, in "
        "priority order (DRA firstAvailable; needs operator allocation dra or auto). Each is "
        "planned on its own and must fit with the same GPUs per replica, e.g. [MI325X, MI300X].",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be <= maxReplicas "
                f"({self.max_replicas}); fix: raise maxReplicas or lower minReplicas"
            )
        if isinstance(self.gpus_per_replica, int) and self.gpus_per_replica < 1:
            raise ValueError("gpusPerReplica must be >= 1 or 'auto'; fix: use auto")
        if "CPU" in self.alternatives or (self.alternatives and self.gpu == "CPU"):
            raise ValueError(
                "alternatives are GPU models of a GPU pool; fix: remove CPU (make a CPU pool)"
            )
        if self.gpu in self.alternatives or len(set(self.alternatives)) < len(self.alternatives):
            raise ValueError(
                f"alternatives {self.alternatives} repeat a model (gpu is {self.gpu}); "
                "fix: list each other model once"
            )
        return self


class ParallelismSpec(StrictModel):
    """Explicit parallelism; anything left out is decided by the capacity planner."""

    tensor: int | None = Field(default=None, ge=1, le=64, description="Tensor-parallel size.")
    pipeline: int = Field(default=1, ge=1, le=16, description="Pipeline-parallel size.")
    nodes: int | None = Field(default=None, ge=1, le=16, description="Nodes per replica.")


class ScalingSpec(StrictModel):
    """The built-in autoscaler's policy (or hand-off to an external scaler)."""

    mode: Literal["builtin", "external", "off"] = Field(
        default="builtin",
        description="builtin: tokenscale scales pools; external: HPA/KEDA drive /scale and "
        "tokenscale only publishes metrics; off: replicas stay at spec.replicas/minReplicas.",
    )
    metric: ScalingMetric = Field(
        default="generationTokensPerSecond",
        description="Signal from vLLM's own counters that is compared with the target: "
        "generation tokens/s (vllm:generation_tokens_total), total (plus prompt) tokens/s, "
        "prompt tokens/s (vllm:prompt_tokens_total; what prefill engines of a disaggregated "
        "service scale on), requests in flight, or KV-cache usage. With spec.disaggregation "
        "each role uses its own (prefill: prompt, decode: generation tokens/s).",
    )
    target_per_replica: float | None = Field(
        default=None,
        gt=0,
        description="Target value of the metric per replica (e.g. 2500 tokens/s).",
    )
    target_from_benchmark: bool = Field(
        default=False,
        description="Use the capacity measured by the latest passing benchmark x headroom.",
    )
    headroom: float = Field(
        default=0.8, gt=0, le=1, description="Fraction of benchmarked capacity to target."
    )
    window_seconds: int = Field(
        default=60, ge=5, le=3600, description="Averaging window of the stable signal."
    )
    panic_window_seconds: int = Field(
        default=6, ge=1, le=600, description="Short window used to react to bursts."
    )
    panic_threshold: float = Field(
        default=2.0,
        gt=1,
        le=10,
        description="Enter panic mode when the short-window load exceeds this multiple of "
        "current capacity; panic mode only scales up.",
    )
    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="Scale up to the lowest recommendation in it."
    )
    scale_down_stabilization_seconds: int = Field(
        default=60, ge=0, le=7200, description="Scale down to the highest recommendation in it."
    )
    tolerance: float = Field(
        default=0.05, ge=0, lt=1, description="Ignore load/capacity ratios within 1 ± tolerance."
    )
    max_scale_up_step: int = Field(
        default=4, ge=1, le=1000, description="Most replicas added per decision and pool."
    )
    max_scale_down_step: int = Field(
        default=1, ge=1, le=1000, description="Most replicas removed per decision and pool."
    )
    scale_to_zero: bool = Field(
        default=False, description="Allow zero replicas after the idle grace period."
    )
    pool_preference: Literal["cost", "energy", "costAndEnergy"] = Field(
        default="cost",
        description="Which pool gets replicas first when there are several, per token: cost "
        "(GPU-hour cost, costPerGpuHour), energy (watts: the pool's measured power from "
        "status.energy, else the GPU's boardPowerWatts), or costAndEnergy (GPU-hour cost plus "
        "electricity at operatorConfig energy.pricePerKwh).",
    )
    scale_to_zero_grace_seconds: int = Field(
        default=600, ge=0, le=86400, description="Idle time before scaling to zero."
    )

    def needs_target(self) -> bool:
        """Builtin scaling without a service-wide target (checked by the spec, which knows
        whether per-role targets of spec.disaggregation stand in for it)."""
        return (
            self.mode == "builtin"
            and not self.target_from_benchmark
            and (self.target_per_replica is None)
        )


class BenchmarkOnRollout(StrictModel):
    """Run a benchmark automatically after each completed rollout."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            (
                "!self.rollback || self.enabled",
                "rollback needs enabled: true (the benchmark after the rollout is the gate)",
            ),
            (
                "!has(self.concurrency) || self.scenario == 'offline'",
                "concurrency applies to scenario offline only; set scenario: offline or use qps",
            ),
        )
    }

    enabled: bool = Field(default=False, description="Create a benchmark after each rollout.")
    rollback: bool = Field(
        default=False,
        description="Make the benchmark a gate: when the new version fails spec.sla (verdict "
        "Fail), restore each pool's previous version (its previous ReplicaSet, as kubectl "
        "rollout undo), with a RolledBack Event and Progressing=False reason RolledBack. The "
        "spec is left as written; the failed change stays held until the spec changes again. "
        "Needs spec.sla. See docs/rollouts.md.",
    )

    @model_validator(mode="after")
    def _concurrency_is_offline(self) -> Self:
        if self.concurrency is not None and self.scenario != "offline":
            raise ValueError(
                f"concurrency applies to scenario offline only (got {self.scenario}); fix: set "
                "scenario: offline, or drop concurrency and use qps"
            )
        return self

    @model_validator(mode="after")
    def _rollback_needs_enabled(self) -> Self:
        if self.rollback and not self.enabled:
            raise ValueError(
                "rollback needs enabled: true (the benchmark after the rollout is the gate); "
                "fix: set benchmarkOnRollout.enabled: true or drop rollback"
            )
        return self

    scenario: Literal["offline", "server", "interactive"] = Field(
        default="server", description="Scenario of the automatic benchmark."
    )
    qps: float | None = Field(default=None, gt=0, description="Server/interactive QPS.")
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Offline scenario: requests in flight (default: as many as the client can "
        "open). A few measure the new version's per-request latency without saturating it, and "
        "a closed loop has no send schedule to fall behind (an open-loop run on a busy client "
        "can come out Invalid, which the rollback gate does not act on).",
    )
    duration_seconds: int = Field(default=120, ge=10, le=86400, description="Run length.")


class RolloutSpec(StrictModel):
    """How a change that replaces engine pods (image, args, resources...) rolls out."""

    strategy: Literal["auto", "surge", "inPlace"] = Field(
        default="auto",
        description="auto: surge (start a new replica before stopping an old one) when a "
        "replica's worth of GPUs is free, else replace one replica at a time (maxUnavailable 1) "
        "when the others carry the current load, else wait with the reason in the Progressing "
        "condition. surge: always maxSurge 1, maxUnavailable 0 (needs spare GPUs). inPlace: "
        "always maxSurge 0, maxUnavailable 1 (one replica fewer while each new one loads). The "
        "choice and why are in status.pools[].rollout. See docs/rollouts.md.",
    )


class InferenceServiceSpec(StrictModel):
    """Desired state of an InferenceService."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            (
                "self.pools.all(p, self.pools.exists_one(q, q.name == p.name))",
                "pool names must be unique",
            ),
            (
                "!has(self.benchmarkOnRollout) || !self.benchmarkOnRollout.rollback "
                "|| has(self.sla)",
                "benchmarkOnRollout.rollback needs spec.sla: the SLA is what the new version "
                "is benchmarked against; set sla (preset or ttftP99Ms and tpotP99Ms)",
            ),
            (
                "!has(self.scaling) || !has(self.scaling.mode) || self.scaling.mode != 'builtin' "
                "|| (has(self.scaling.targetFromBenchmark) && self.scaling.targetFromBenchmark) "
                "|| has(self.scaling.targetPerReplica) || has(self.disaggregation)",
                "set scaling.targetPerReplica or scaling.targetFromBenchmark when scaling.mode is "
                "builtin",
            ),
            (
                "!has(self.disaggregation) || (has(self.routing) && self.routing.mode == 'router')",
                "disaggregation needs routing.mode: router (vLLM's router in P/D mode fronts the "
                "roles)",
            ),
            (
                "!has(self.disaggregation) || !has(self.scaling) || !has(self.scaling.mode) || "
                "self.scaling.mode != 'builtin' || (has(self.disaggregation.prefill."
                "targetPerReplica) && has(self.disaggregation.decode.targetPerReplica))",
                "builtin scaling of a disaggregated service needs disaggregation.prefill."
                "targetPerReplica and disaggregation.decode.targetPerReplica",
            ),
            (
                "!has(self.disaggregation) || self.pools.all(p, p.name in "
                "self.disaggregation.prefill.pools || p.name in self.disaggregation.decode.pools)",
                "with disaggregation every pool must be in disaggregation.prefill.pools or "
                "disaggregation.decode.pools",
            ),
            (
                "!has(self.routing) || self.routing.mode != 'router' || !has(self.scaling) "
                "|| !has(self.scaling.scaleToZero) || !self.scaling.scaleToZero",
                "routing.mode router cannot be combined with scaling.scaleToZero yet (the "
                "router cannot wake a sleeping service); use mode service for scale to zero",
            ),
        )
    }

    model: ModelSpec = Field(description="The model and its sizing facts.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="Engine settings.")
    pools: list[GPUPool] = Field(
        min_length=1,
        max_length=8,
        description="GPU pools; one Deployment each.",
        json_schema_extra=list_map("name"),
    )
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec, description="Tensor/pipeline/node parallelism."
    )
    scaling: ScalingSpec = Field(
        default_factory=lambda: ScalingSpec(mode="off"),
        description="Autoscaling policy.",
    )
    sla: SLASpec | None = Field(default=None, description="Latency/throughput objectives.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=8000,
        description="Total replicas across pools, written through the /scale subresource by "
        "kubectl scale, HPA, KEDA or the built-in autoscaler; split across pools by policy.",
    )
    benchmark_on_rollout: BenchmarkOnRollout | None = Field(
        default=None, description="Automatic benchmark after rollouts."
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="How changes that replace engine pods roll out on a (possibly full) fleet.",
    )
    service_monitor: bool = Field(
        default=False, description="Also create a Prometheus Operator ServiceMonitor."
    )
    pod_template: PodTemplate | None = Field(
        default=None,
        description="Per-service pod settings for platform teams (tolerations, nodeSelector, "
        "affinity, priorityClassName, serviceAccountName, imagePullSecrets, labels, "
        "annotations, resources, env, envFrom, volumes, volumeMounts), merged over what the "
        "operator renders for every engine pod; GPU resources, ports, probes and the engine "
        "command stay the operator's. See docs/rendering.md.",
    )

    routing: RoutingSpec = Field(
        default_factory=RoutingSpec,
        description="How requests reach the engines: a plain Service (default), vLLM's router, "
        "or an InferencePool for an inference gateway. See docs/routing.md.",
    )

    disaggregation: DisaggregationSpec | None = Field(
        default=None,
        description="Prefill/decode disaggregation: the pools split into prefill and decode "
        "roles, KV moved between them by a KV connector (moriio or nixl), vLLM's router in P/D "
        "mode in front (needs routing.mode router). Omit for aggregated serving. See "
        "docs/disaggregation.md.",
    )

    @model_validator(mode="after")
    def _scaling_target(self) -> Self:
        if self.disaggregation is None and self.scaling.needs_target():
            raise field_error(
                ".scaling",
                "builtin scaling needs a target; fix: set targetPerReplica (e.g. 2500) or "
                "targetFromBenchmark: true",
            )
        return self

    @model_validator(mode="after")
    def _disaggregation(self) -> Self:
        pd = self.disaggregation
        if pd is None:
            return self
        if self.routing.mode != "router":
            raise field_error(
                ".disaggregation",
                f"needs routing.mode router (it is {self.routing.mode}): vLLM's router in P/D "
                "mode sends each request to a prefill engine, then to a decode engine; fix: set "
                "routing.mode: router",
            )
        names = {p.name for p in self.pools}
        for role in PD_ROLES:
            for i, name in enumerate(pd.role(role).pools):
                if name not in names:
                    raise field_error(
                        f".disaggregation.{role}.pools[{i}]",
                        f"no pool named {name!r} in spec.pools (have {sorted(names)}); fix: "
                        "use one of those names",
                    )
        for i, pool in enumerate(self.pools):
            if pd.role_of(pool.name) is None:
                raise field_error(
                    f".pools[{i}]",
                    f"pool {pool.name} is in neither disaggregation.prefill.pools nor "
                    "disaggregation.decode.pools; fix: add it to one role",
                )
            if pool.gpu == "CPU":
                raise field_error(
                    f".pools[{i}].gpu",
                    "KV connectors move KV between GPUs; a CPU pool cannot take a P/D role; "
                    "fix: use a GPU pool (engine.mode simulated runs without real GPUs)",
                )
        if self.scaling.mode == "builtin":
            for role in PD_ROLES:
                if pd.role(role).target_per_replica is None:
                    raise field_error(
                        f".disaggregation.{role}.targetPerReplica",
                        f"builtin scaling of a disaggregated service scales each role on its own "
                        f"signal; fix: set the {role} target ("
                        + ("prompt" if role == "prefill" else "generation")
                        + " tokens/s per replica; `tokenscale plan` proposes one)",
                    )
        return self

    @model_validator(mode="after")
    def _router_without_scale_to_zero(self) -> Self:
        if self.routing.mode == "router" and self.scaling.scale_to_zero:
            raise ValueError(
                "routing.mode router cannot be combined with scaling.scaleToZero yet (the router "
                "cannot wake a sleeping service); fix: use routing.mode service for scale to zero"
            )
        return self

    @model_validator(mode="after")
    def _rollback_needs_sla(self) -> Self:
        auto = self.benchmark_on_rollout
        if auto is not None and auto.rollback and self.sla is None:
            raise ValueError(
                "benchmarkOnRollout.rollback needs spec.sla: the SLA is what the new version is "
                "benchmarked against; fix: set sla (preset or ttftP99Ms and tpotP99Ms)"
            )
        return self

    @model_validator(mode="after")
    def _unique_pools(self) -> Self:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique, repeated: {dupes}; fix: rename them")
        return self

    @model_validator(mode="after")
    def _pool_pod_templates(self) -> Self:
        for i, pool in enumerate(self.pools):
            if pool.pod_template is None:
                continue
            found = pool_contradiction(self.pod_template, pool.pod_template)
            if found is not None:
                raise field_error(f".pools[{i}].podTemplate{found[0]}", found[1])
        return self


class InferenceService(StrictModel):
    """A served model (kind InferenceService, group tokenscale.dev)."""

    api_version: Literal["tokenscale.dev/v1alpha1"] = Field(
        alias="apiVersion", description="tokenscale.dev/v1alpha1"
    )
    kind: Literal["InferenceService"] = Field(description="InferenceService")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: InferenceServiceSpec = Field(description="Desired state.")
    status: InferenceServiceStatus | None = Field(default=None, description="Observed state.")

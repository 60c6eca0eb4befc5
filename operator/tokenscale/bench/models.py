"""The benchmark result contract: strict pydantic models the operator copies into status.

Every field is described because the descriptions become the InferenceBenchmark CRD's status
schema. Times are seconds, throughputs per second of wall time; "tokens" are output tokens
unless a name says otherwise (MLPerf reports output tokens only).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tokenscale.bench.datasets import LengthDist
from tokenscale.bench.energy import EnergyResult

SCHEMA_VERSION = "tokenscale.dev/bench-result/v1"
Scenario = Literal["offline", "server", "interactive", "sweep"]
VerdictStatus = Literal["pass", "fail", "invalid", "unstable", "no_sla"]

DEFINITIONS = (
    "vLLM/MLPerf definitions. TTFT: request send to first output chunk. TPOT (per request): "
    "(E2E - TTFT) / (output_tokens - 1), requests with one output token excluded. ITL: every "
    "gap between consecutive output chunks. E2E: send to end of stream. Output tokens come from "
    "the server's usage (stream_options.include_usage), counted chunks only when absent. "
    "Throughput counts output tokens only, over the run's wall time (first planned send to last "
    "completion). Percentiles: linear interpolation on exact per-request values (TTFT, TPOT, "
    "E2E), like numpy and vllm bench serve; ITL from a mergeable log histogram with 0.5 % "
    "relative accuracy. The SLA verdict uses MLPerf LoadGen's percentile instead (the sorted "
    "value at index floor(n x p)), which can exceed the interpolated figure when few requests ran."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Percentiles(_Strict):
    """Distribution summary of one latency figure (seconds)."""

    count: int = Field(description="Number of samples.")
    mean: float | None = Field(default=None, description="Arithmetic mean.")
    min: float | None = Field(default=None, description="Smallest sample.")
    max: float | None = Field(default=None, description="Largest sample.")
    p50: float | None = Field(default=None, description="50th percentile.")
    p90: float | None = Field(default=None, description="90th percentile.")
    p95: float | None = Field(default=None, description="95th percentile.")
    p99: float | None = Field(default=None, description="99th percentile.")
    p99_9: float | None = Field(default=None, description="99.9th percentile.")


class BenchSLA(_Strict):
    """Latency limits the verdict checks, in seconds (a preset from MLPerf or explicit values).

    Not the CRD's :class:`tokenscale.api.sla.SLASpec`, which is in milliseconds; the operator
    converts one into the other when it builds the benchmark Job.
    """

    preset: str | None = Field(default=None, description="MLPerf preset name, if one was used.")
    ttft_s: float | None = Field(default=None, description="TTFT limit at `percentile` (s).")
    tpot_s: float | None = Field(default=None, description="TPOT limit at `percentile` (s).")
    percentile: float = Field(default=99.0, description="Percentile the limits apply to.")
    min_tokens_per_s: float | None = Field(default=None, description="Throughput floor.")
    max_error_fraction: float = Field(
        default=0.0, description="Largest share of failed requests that can still pass."
    )


class Thresholds(_Strict):
    """When the client, not the server, is the bottleneck (result becomes invalid)."""

    max_cpu_fraction: float = Field(
        default=0.9, description="Client process CPU time / wall time above this is saturation."
    )
    max_lag_p99_s: float = Field(
        default=0.010, description="p99 schedule lag (actual - planned send) allowed (s)."
    )
    min_delivered_fraction: float = Field(
        default=0.95, description="Delivered send rate / offered rate below this is invalid."
    )
    stability_margin: float = Field(
        default=0.05, description="Largest relative range (max-min)/mean across repeats."
    )


class BenchConfig(_Strict):
    """What was run: enough to reproduce it."""

    url: str = Field(description="Base URL of the OpenAI-compatible endpoint.")
    model: str = Field(description="Model name sent in each request.")
    api: Literal["completions", "chat"] = Field(description="Endpoint family.")
    scenario: Scenario = Field(description="Load shape.")
    qps: float | None = Field(default=None, description="Target arrival rate (server).")
    concurrency: list[int] | None = Field(
        default=None, description="Max requests in flight (offline); several = sweep points."
    )
    requests: int | None = Field(default=None, description="Requests per run (this shard).")
    duration_s: float | None = Field(default=None, description="Run length when not counted.")
    dataset: str = Field(description="synthetic, a preset name, or a JSONL path.")
    input_len: LengthDist | None = Field(default=None, description="Prompt length distribution.")
    output_len: LengthDist | None = Field(default=None, description="Output length (max_tokens).")
    ignore_eos: bool = Field(description="Whether ignore_eos was sent to fix output lengths.")
    sla: BenchSLA | None = Field(default=None, description="Limits for the verdict.")
    thresholds: Thresholds = Field(description="Self-check thresholds.")
    repeats: int = Field(default=1, ge=1, description="How many times the scenario ran.")
    seed: int = Field(description="Seed for arrivals and synthetic data.")
    shard_index: int = Field(default=0, description="This shard's index (Indexed Job).")
    shard_count: int = Field(default=1, description="Number of shards sharing the load.")
    replicas: int | None = Field(default=None, description="Target replica count, as tagged.")
    timeout_s: float = Field(description="Per-request timeout (s).")


class ScheduleLag(_Strict):
    """How late requests left versus their planned send time (s)."""

    p50: float = Field(description="Median lag.")
    p99: float = Field(description="99th-percentile lag.")
    max: float = Field(description="Largest lag.")


class SelfCheck(_Strict):
    """Evidence that the client was not the bottleneck."""

    cpu_seconds: float = Field(description="Client process CPU time (user + system).")
    wall_seconds: float = Field(description="Wall time of the run.")
    cpu_fraction: float = Field(description="cpu_seconds / wall_seconds (1.0 = one full core).")
    max_in_flight: int = Field(description="Most requests outstanding at once.")
    mean_in_flight: float = Field(description="Time-weighted mean requests outstanding.")
    schedule_lag: ScheduleLag | None = Field(
        default=None, description="Send lag (open-loop scenarios only)."
    )
    offered_rps: float | None = Field(default=None, description="Planned send rate (req/s).")
    delivered_rps: float | None = Field(default=None, description="Achieved send rate (req/s).")
    connections_opened: int = Field(description="TCP connections the client opened.")
    requests_resent: int = Field(
        default=0,
        description="Requests sent again on a fresh connection because the server had closed "
        "the reused keep-alive one before answering (bench/httpclient.py); not failures.",
    )
    valid: bool = Field(description="False when the client was (or may have been) saturated.")
    reasons: list[str] = Field(default_factory=list, description="Why valid is false.")


class RunMetrics(_Strict):
    """Headline figures of one run (or of merged shards)."""

    requests_total: int = Field(description="Requests sent.")
    requests_ok: int = Field(description="Requests completed without error.")
    requests_failed: int = Field(description="Requests that ended in an error.")
    errors: dict[str, int] = Field(default_factory=dict, description="Failures by kind.")
    duration_s: float = Field(description="First planned send to last completion (s).")
    input_tokens: int = Field(description="Prompt tokens (server usage where reported).")
    output_tokens: int = Field(description="Output tokens of successful requests.")
    output_tokens_from_usage: float = Field(
        description="Share of successful requests whose output count came from server usage."
    )
    tokens_per_s: float = Field(description="Output tokens per second.")
    requests_per_s: float = Field(description="Successful requests per second.")
    goodput_requests_per_s: float | None = Field(
        default=None, description="Requests meeting every SLA latency limit per second."
    )
    goodput_fraction: float | None = Field(
        default=None, description="Share of sent requests that met the SLA."
    )
    ttft: Percentiles = Field(description="Time to first token (s).")
    tpot: Percentiles = Field(description="Time per output token, per request (s).")
    itl: Percentiles = Field(description="Inter-token latency, every gap (s).")
    e2e: Percentiles = Field(description="End-to-end request latency (s).")


class SLAFailure(_Strict):
    """One limit that was exceeded."""

    metric: str = Field(description="ttft, tpot, tokens_per_s or errors.")
    percentile: float | None = Field(default=None, description="Percentile checked.")
    value: float = Field(description="Measured value.")
    limit: float = Field(description="Limit it was checked against.")
    message: str = Field(description="Human-readable, e.g. 'p99 TTFT 2.31 s > 2.0 s'.")


class Verdict(_Strict):
    """The outcome a person (or a rollout gate) acts on."""

    status: VerdictStatus = Field(description="pass, fail, invalid, unstable or no_sla.")
    reasons: list[str] = Field(default_factory=list, description="Why, in plain words.")
    failures: list[SLAFailure] = Field(default_factory=list, description="Limits exceeded.")


class FigureSpread(_Strict):
    """One figure across repeats."""

    values: list[float] = Field(description="Value per repeat, in run order.")
    mean: float = Field(description="Mean across repeats.")
    min: float = Field(description="Smallest value.")
    max: float = Field(description="Largest value.")
    rel_range: float = Field(description="(max - min) / mean.")
    cv: float = Field(description="Coefficient of variation (population std / mean).")


class RepeatSummary(_Strict):
    """Reproducibility across `repeats` runs."""

    runs: int = Field(description="Number of runs.")
    margin: float = Field(description="Allowed relative range.")
    figures: dict[str, FigureSpread] = Field(description="Spread per headline figure.")
    stable: bool = Field(description="Every figure's relative range is within the margin.")
    unstable_figures: list[str] = Field(default_factory=list, description="Figures over it.")


class ConcurrencyPoint(_Strict):
    """One concurrency level of a sweep."""

    concurrency: int = Field(description="Max requests in flight.")
    tokens_per_s: float = Field(description="Output tokens per second.")
    requests_per_s: float = Field(description="Successful requests per second.")
    ttft_p50_s: float | None = Field(default=None, description="Median TTFT.")
    ttft_p99_s: float | None = Field(default=None, description="p99 TTFT.")
    tpot_p99_s: float | None = Field(default=None, description="p99 TPOT.")
    valid: bool = Field(description="Self-check outcome at this point.")


class ReplicaPoint(_Strict):
    """Throughput at one replica count, against the single-replica baseline."""

    replicas: int = Field(description="Replicas of the target service.")
    tokens_per_s: float = Field(description="Output tokens per second, all replicas.")
    tokens_per_s_per_replica: float = Field(description="tokens_per_s / replicas.")
    scaling_efficiency: float | None = Field(
        default=None, description="T_N / (N * T_1); None without a 1-replica run."
    )


class RequestRecord(_Strict):
    """One request, compact; shards ship these so merged percentiles are exact."""

    i: int = Field(description="Request index within its shard.")
    planned_s: float = Field(description="Planned send offset from the run start.")
    sent_s: float = Field(description="Actual send offset from the run start.")
    ttft_s: float | None = Field(default=None, description="Send to first output chunk.")
    last_token_s: float | None = Field(default=None, description="Send to last output chunk.")
    e2e_s: float | None = Field(default=None, description="Send to end of stream.")
    input_tokens: int | None = Field(default=None, description="Prompt tokens (usage).")
    output_tokens: int = Field(description="Output tokens (usage, else chunks).")
    from_usage: bool = Field(description="Whether output_tokens came from server usage.")
    chunks: int = Field(description="Output-bearing chunks received.")
    error: str | None = Field(default=None, description="Error kind, None on success.")


class LogHistogram(_Strict):
    """Mergeable log-bucketed histogram (DDSketch-style) for per-token ITL samples."""

    relative_accuracy: float = Field(description="Bucket half-width as a relative error.")
    zeros: int = Field(default=0, description="Samples at or below 1 µs.")
    buckets: dict[int, int] = Field(default_factory=dict, description="Bucket index -> count.")
    sum: float = Field(default=0.0, description="Sum of samples (s).")
    min: float | None = Field(default=None, description="Smallest sample.")
    max: float | None = Field(default=None, description="Largest sample.")


class RunResult(_Strict):
    """One execution of the scenario (a repeat, a sweep point or a shard)."""

    started_at_unix: float = Field(description="Wall-clock time of the run start (s).")
    metrics: RunMetrics = Field(description="Figures of this run.")
    self_check: SelfCheck = Field(description="Client self-check of this run.")
    concurrency: int | None = Field(default=None, description="Concurrency bound, if any.")


class Summary(_Strict):
    """The compact view for a status field or a dashboard row."""

    tokens_per_s: float = Field(description="Output tokens per second.")
    requests_per_s: float = Field(description="Successful requests per second.")
    goodput_requests_per_s: float | None = Field(default=None, description="SLA-meeting req/s.")
    ttft_p50_s: float | None = Field(default=None, description="Median TTFT.")
    ttft_p90_s: float | None = Field(default=None, description="p90 TTFT.")
    ttft_p99_s: float | None = Field(default=None, description="p99 TTFT.")
    tpot_p50_s: float | None = Field(default=None, description="Median TPOT.")
    tpot_p90_s: float | None = Field(default=None, description="p90 TPOT.")
    tpot_p99_s: float | None = Field(default=None, description="p99 TPOT.")
    itl_p50_s: float | None = Field(default=None, description="Median ITL.")
    itl_p90_s: float | None = Field(default=None, description="p90 ITL.")
    itl_p99_s: float | None = Field(default=None, description="p99 ITL.")
    e2e_p50_s: float | None = Field(default=None, description="Median E2E latency.")
    e2e_p90_s: float | None = Field(default=None, description="p90 E2E latency.")
    e2e_p99_s: float | None = Field(default=None, description="p99 E2E latency.")
    verdict: VerdictStatus = Field(description="pass, fail, invalid, unstable or no_sla.")
    reasons: list[str] = Field(default_factory=list, description="Why, in plain words.")
    valid: bool = Field(description="Client self-check passed.")
    stable: bool = Field(description="Repeats agreed within the margin.")


class BenchResult(_Strict):
    """The full result file (`--out`), input to `tokenscale bench merge` and the report."""

    schema_version: str = Field(default=SCHEMA_VERSION, description="Result format version.")
    tool_version: str = Field(description="tokenscale version that produced it.")
    definitions: str = Field(default=DEFINITIONS, description="Metric definitions used.")
    config: BenchConfig = Field(description="What was run.")
    started_at: datetime = Field(description="Start of the first run (UTC).")
    finished_at: datetime = Field(description="End of the last run (UTC).")
    metrics: RunMetrics = Field(description="Headline figures (median-throughput repeat).")
    self_check: SelfCheck = Field(description="Self-check of the headline run (merged: all).")
    valid: bool = Field(description="Every run's self-check passed.")
    stable: bool = Field(description="Repeats within the stability margin (True if 1 run).")
    verdict: Verdict = Field(description="SLA verdict.")
    runs: list[RunResult] = Field(default_factory=list, description="Every repeat/sweep/shard.")
    repeats: RepeatSummary | None = Field(default=None, description="Spread across repeats.")
    sweep: list[ConcurrencyPoint] | None = Field(default=None, description="Concurrency sweep.")
    replica_sweep: list[ReplicaPoint] | None = Field(default=None, description="Replica sweep.")
    shards_merged: int = Field(default=1, description="How many shard results this combines.")
    records: list[RequestRecord] = Field(
        default_factory=list, description="Per-request records of the headline run."
    )
    records_started_at_unix: float | None = Field(
        default=None, description="Wall-clock start of the run `records` belong to (merging)."
    )
    itl_histogram: LogHistogram = Field(description="ITL samples of the headline run.")
    energy: EnergyResult | None = Field(
        default=None,
        description="GPU energy over the measured window (--energy-url exporters), if asked.",
    )

    def summary(self) -> Summary:
        """The compact view (what the operator writes to the benchmark's status)."""
        m = self.metrics
        return Summary(
            tokens_per_s=m.tokens_per_s,
            requests_per_s=m.requests_per_s,
            goodput_requests_per_s=m.goodput_requests_per_s,
            ttft_p50_s=m.ttft.p50,
            ttft_p90_s=m.ttft.p90,
            ttft_p99_s=m.ttft.p99,
            tpot_p50_s=m.tpot.p50,
            tpot_p90_s=m.tpot.p90,
            tpot_p99_s=m.tpot.p99,
            itl_p50_s=m.itl.p50,
            itl_p90_s=m.itl.p90,
            itl_p99_s=m.itl.p99,
            e2e_p50_s=m.e2e.p50,
            e2e_p90_s=m.e2e.p90,
            e2e_p99_s=m.e2e.p99,
            verdict=self.verdict.status,
            reasons=self.verdict.reasons,
            valid=self.valid,
            stable=self.stable,
        )

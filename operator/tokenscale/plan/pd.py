"""Prefill:decode ratio at an SLA from an engine's step-cost model (docs/disaggregation.md).

Why a closed form and not a simulation here: the planner must answer instantly and stay pure
(this layer sees no simulator); the step-cost terms it uses are exactly the simulator's
(``step = base + per_seq x decoding + per_kv x resident KV + per_prefill x prompt tokens``,
sim/model.py), passed in as numbers, so the plan and the simulated benchmark
(benchmarks/pd.py) rest on one performance model and the benchmark checks the plan.

Per GPU and at the SLA:

- prefill tokens/s: a prefill engine runs full chunks of ``max_num_batched_tokens`` prompt
  tokens, each step ``base + per_prefill x chunk`` (capped so one step fits in the TTFT limit);
- decode tokens/s: a decode engine runs ``n`` sequences per step, ``n`` as large as TPOT (step
  time), ``max_num_seqs`` and the KV cache allow, at mean context ``prompt + output / 2``;
- a request needs ``prompt / prefill rate`` prefill GPU-seconds and ``output / decode rate``
  decode GPU-seconds: their ratio is the prefill:decode GPU ratio;
- aggregated, every step carries ``n`` decodes and the prompts of the requests they replace
  (``n x prompt / output`` tokens), so the same TPOT limit buys fewer sequences per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class StepCosts(Protocol):
    """The per-GPU (TP 1) engine parameters the ratio depends on (a simulator profile)."""

    @property
    def step_base_s(self) -> float: ...
    @property
    def step_per_seq_s(self) -> float: ...
    @property
    def step_per_kv_token_s(self) -> float: ...
    @property
    def prefill_per_token_s(self) -> float: ...
    @property
    def max_num_seqs(self) -> int: ...
    @property
    def max_num_batched_tokens(self) -> int: ...
    @property
    def kv_cache_tokens(self) -> int: ...


@dataclass(frozen=True)
class Workload:
    """Mean request shape and the SLA's p99 limits (seconds)."""

    prompt_tokens: float
    output_tokens: float
    ttft_s: float
    tpot_s: float


@dataclass(frozen=True)
class Proposal:
    """The P/D plan of one GPU model, with the numbers that justify it."""

    gpu: str
    prefill_tokens_per_s_per_gpu: float
    decode_tokens_per_s_per_gpu: float
    decode_batch: int
    prefill_gpu_share: float
    """Fraction of the GPUs that should prefill (the rest decode)."""
    aggregated_tokens_per_s_per_gpu: float
    pd_tokens_per_s_per_gpu: float
    """Output tokens/s per GPU of the P/D layout at the exact (fractional) ratio."""

    def split(self, gpus: int) -> tuple[int, int]:
        """(prefill GPUs, decode GPUs) of ``gpus``: the nearest split, at least one of each."""
        if gpus < 2:
            raise ValueError("a P/D layout needs at least 2 GPUs (one per role)")
        prefill = min(gpus - 1, max(1, round(gpus * self.prefill_gpu_share)))
        return prefill, gpus - prefill

    def why(self, workload: Workload) -> str:
        """One paragraph for `tokenscale plan`."""
        p, d = self.prefill_tokens_per_s_per_gpu, self.decode_tokens_per_s_per_gpu
        gain = self.pd_tokens_per_s_per_gpu / self.aggregated_tokens_per_s_per_gpu - 1
        verdict = "gains" if gain > 0.02 else "loses" if gain < -0.02 else "is level with"
        return (
            f"{self.gpu}: a prefill GPU computes {p:,.0f} prompt tokens/s (full "
            f"chunks within TTFT {workload.ttft_s:g} s), a decode GPU generates {d:,.0f} tokens/s "
            f"({self.decode_batch} sequences per step within TPOT {workload.tpot_s:g} s); a "
            f"request of {workload.prompt_tokens:.0f} prompt + {workload.output_tokens:.0f} "
            f"output tokens needs {workload.prompt_tokens / p * 1e3:.2f} ms of prefill GPU and "
            f"{workload.output_tokens / d * 1e3:.2f} ms of decode GPU, so "
            f"{self.prefill_gpu_share:.0%} of the GPUs should prefill. P/D: "
            f"{self.pd_tokens_per_s_per_gpu:,.0f} output tokens/s per GPU vs "
            f"{self.aggregated_tokens_per_s_per_gpu:,.0f} aggregated: P/D {verdict} aggregated "
            f"({gain:+.0%}) in this model, which has no prefill/decode interference beyond "
            "step time."
        )


def prefill_rate(costs: StepCosts, ttft_s: float) -> float:
    """Prompt tokens/s of one prefill GPU running full chunks that each fit in the TTFT."""
    chunk = float(costs.max_num_batched_tokens)
    if costs.prefill_per_token_s > 0:
        chunk = min(chunk, (ttft_s - costs.step_base_s) / costs.prefill_per_token_s)
    if chunk < 1:
        raise ValueError(f"not one prompt token fits in TTFT {ttft_s} s on this GPU")
    return chunk / (costs.step_base_s + costs.prefill_per_token_s * chunk)


def _batch(costs: StepCosts, tpot_s: float, per_seq: float, context: float) -> int:
    by_time = (tpot_s - costs.step_base_s) / per_seq if per_seq > 0 else math.inf
    by_kv = costs.kv_cache_tokens / context
    n = math.floor(min(costs.max_num_seqs, by_kv, by_time))
    if n < 1:
        raise ValueError(f"not one sequence decodes within TPOT {tpot_s} s on this GPU")
    return n


def decode_rate(costs: StepCosts, w: Workload) -> tuple[float, int]:
    """(generation tokens/s, sequences per step) of one decode GPU within the TPOT limit."""
    context = w.prompt_tokens + w.output_tokens / 2
    per_seq = costs.step_per_seq_s + costs.step_per_kv_token_s * context
    n = _batch(costs, w.tpot_s, per_seq, w.prompt_tokens + w.output_tokens)
    return n / (costs.step_base_s + per_seq * n), n


def aggregated_rate(costs: StepCosts, w: Workload) -> float:
    """Output tokens/s of one GPU doing both: each step also prefills the prompts of the
    ``n / output`` requests that finish in it."""
    context = w.prompt_tokens + w.output_tokens / 2
    prompt_per_seq = w.prompt_tokens / w.output_tokens
    per_seq = (
        costs.step_per_seq_s
        + costs.step_per_kv_token_s * context
        + costs.prefill_per_token_s * prompt_per_seq
    )
    n = _batch(costs, w.tpot_s, per_seq, w.prompt_tokens + w.output_tokens)
    # the step's token budget holds the decodes and their share of prompt tokens
    n = min(n, math.floor(costs.max_num_batched_tokens / (1 + prompt_per_seq)))
    return n / (costs.step_base_s + per_seq * n)


def propose(gpu: str, costs: StepCosts, w: Workload) -> Proposal:
    """The P/D proposal of one GPU model (TP 1 engines, one GPU per replica)."""
    p = prefill_rate(costs, w.ttft_s)
    d, n = decode_rate(costs, w)
    prefill_s, decode_s = w.prompt_tokens / p, w.output_tokens / d
    return Proposal(
        gpu=gpu,
        prefill_tokens_per_s_per_gpu=p,
        decode_tokens_per_s_per_gpu=d,
        decode_batch=n,
        prefill_gpu_share=prefill_s / (prefill_s + decode_s),
        aggregated_tokens_per_s_per_gpu=aggregated_rate(costs, w),
        pd_tokens_per_s_per_gpu=w.output_tokens / (prefill_s + decode_s),
    )

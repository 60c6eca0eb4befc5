"""The prefill:decode proposal: hand-computed cases of the closed form, and the CLI's report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tokenscale.cli import main
from tokenscale.plan import pd

ROOT = Path(__file__).parents[2]


@dataclass(frozen=True)
class Costs:
    step_base_s: float = 0.01
    step_per_seq_s: float = 0.0001
    step_per_kv_token_s: float = 0.0
    prefill_per_token_s: float = 0.0001
    max_num_seqs: int = 10_000
    max_num_batched_tokens: int = 1000
    kv_cache_tokens: int = 10_000_000


W = pd.Workload(prompt_tokens=1000, output_tokens=100, ttft_s=2.0, tpot_s=0.11)


def test_prefill_rate_is_full_chunks_and_the_ttft_caps_the_chunk() -> None:
    assert pd.prefill_rate(Costs(), 2.0) == pytest.approx(1000 / (0.01 + 0.1))
    # 0.06 s of TTFT fits only (0.06 - 0.01) / 0.0001 = 500 tokens per step
    assert pd.prefill_rate(Costs(), 0.06) == pytest.approx(500 / 0.06)
    with pytest.raises(ValueError, match="TTFT"):
        pd.prefill_rate(Costs(), 0.005)


def test_decode_batch_is_bounded_by_tpot_kv_and_max_num_seqs() -> None:
    rate, n = pd.decode_rate(Costs(), W)
    assert n == 1000  # (0.11 - 0.01) / 0.0001
    assert rate == pytest.approx(1000 / 0.11)
    _, n = pd.decode_rate(Costs(max_num_seqs=64), W)
    assert n == 64
    _, n = pd.decode_rate(Costs(kv_cache_tokens=11_000), W)
    assert n == 10  # 11,000 tokens / 1,100 per sequence
    with pytest.raises(ValueError, match="TPOT"):
        pd.decode_rate(Costs(), pd.Workload(1000, 100, 2.0, 0.005))


def test_ratio_follows_gpu_seconds_per_request_and_the_split_keeps_both_roles() -> None:
    proposal = pd.propose("X", Costs(), W)
    prefill_s = 1000 / pd.prefill_rate(Costs(), 2.0)  # 0.11 s
    decode_s = 100 / (1000 / 0.11)  # 0.011 s
    assert proposal.prefill_gpu_share == pytest.approx(prefill_s / (prefill_s + decode_s))
    assert proposal.pd_tokens_per_s_per_gpu == pytest.approx(100 / (prefill_s + decode_s))
    assert proposal.split(11) == (10, 1)
    assert proposal.split(2) == (1, 1)
    with pytest.raises(ValueError):
        proposal.split(1)


def test_aggregated_steps_carry_their_prompts() -> None:
    # per sequence and step: 0.0001 decode + 10 prompt tokens x 0.0001; n = 0.1 / 0.0011 = 90,
    # but the 1000-token budget holds 1000 / 11 = 90 sequences and their prompts
    assert pd.aggregated_rate(Costs(), W) == pytest.approx(90 / (0.01 + 0.0011 * 90))


def test_plan_reports_the_proposal_and_why() -> None:
    result = CliRunner().invoke(main, ["plan", str(ROOT / "examples/llama2-70b-mi355x-pd.yaml")])
    assert result.exit_code == 0, result.output
    assert "prompt tokens/s" in result.output and "should prefill" in result.output
    assert "proposal for 6 replicas: 3 prefill : 3 decode" in result.output
    plain = CliRunner().invoke(main, ["plan", str(ROOT / "examples/llama2-70b-mi355x.yaml")])
    assert plain.exit_code == 0 and "P/D" not in plain.output

"""Verdict and self-check logic: a saturated client must never produce a pass.

Timings are injected (no network) so each rule is exercised on purpose: client CPU at its
limit, late sends, a delivered rate below the offered one, unstable repeats, and the SLA
messages a person reads ("p99 TTFT 2.31 s > 2 s").
"""

from __future__ import annotations

import pytest

from tokenscale import sla
from tokenscale.bench import metrics, scenarios, verdict
from tokenscale.bench.models import BenchSLA, RequestRecord, Thresholds
from tokenscale.bench.runner import RunOutput, self_check


def records(
    n: int,
    *,
    ttft: float = 0.1,
    tpot: float = 0.01,
    out: int = 101,
    lag: float = 0.0,
    gap: float = 0.01,
) -> list[RequestRecord]:
    e2e = ttft + tpot * (out - 1)
    return [
        RequestRecord(
            i=i,
            planned_s=i * gap,
            sent_s=i * gap + lag,
            ttft_s=ttft,
            e2e_s=e2e,
            input_tokens=5,
            output_tokens=out,
            from_usage=True,
            chunks=out,
        )
        for i in range(n)
    ]


def output(
    recs: list[RequestRecord], *, cpu: float = 1.0, wall: float = 10.0, open_loop: bool = True
) -> RunOutput:
    return RunOutput(
        started_at_unix=1_700_000_000.0,
        records=recs,
        itl=metrics.ITLSketch(),
        cpu_seconds=cpu,
        wall_seconds=wall,
        max_in_flight=4,
        mean_in_flight=2.0,
        connections_opened=4,
        open_loop=open_loop,
    )


def test_saturated_cpu_is_invalid_never_pass() -> None:
    check = self_check(output(records(100), cpu=9.6, wall=10.0), Thresholds())
    assert not check.valid
    assert "client CPU 96% of a core" in check.reasons[0]
    m = metrics.compute(records(100), metrics.ITLSketch(), 10.0)
    v = verdict.decide(
        sla=BenchSLA(ttft_s=2.0, tpot_s=0.2),
        metrics=m,
        records=records(100),
        valid=check.valid,
        invalid_reasons=check.reasons,
        stable=True,
    )
    assert v.status == "invalid" and v.reasons == check.reasons


def test_schedule_lag_and_delivered_rate() -> None:
    late = self_check(output(records(200, lag=0.02)), Thresholds())
    assert late.schedule_lag is not None and late.schedule_lag.p99 == pytest.approx(0.02)
    assert not late.valid and "p99 schedule lag 20.0 ms > 10 ms" in late.reasons[0]
    # sends spread over twice the planned span: delivered rate is half the offered
    slow = [r.model_copy(update={"sent_s": r.planned_s * 2}) for r in records(200)]
    check = self_check(output(slow), Thresholds(max_lag_p99_s=10.0))
    assert check.offered_rps == pytest.approx(100.0)
    assert check.delivered_rps == pytest.approx(50.0)
    assert not check.valid and "delivered 50.0 req/s < 95% of offered 100.0 req/s" in check.reasons
    ok = self_check(output(records(200, lag=0.001)), Thresholds())
    assert ok.valid and ok.reasons == [] and ok.cpu_fraction == pytest.approx(0.1)
    closed = self_check(output(records(10, lag=5.0), open_loop=False), Thresholds())
    assert closed.valid and closed.schedule_lag is None  # offline has no schedule to lag


def test_sla_pass_and_fail_messages() -> None:
    recs = records(100, ttft=2.31, tpot=0.05)
    m = metrics.compute(recs, metrics.ITLSketch(), 10.0)
    spec = BenchSLA(preset="llama2-70b-server", ttft_s=2.0, tpot_s=0.2)
    v = verdict.decide(
        sla=spec, metrics=m, records=recs, valid=True, invalid_reasons=[], stable=True
    )
    assert v.status == "fail"
    assert v.reasons == ["p99 TTFT 2.31 s > 2 s"]
    assert v.failures[0].metric == "ttft" and v.failures[0].percentile == 99.0
    recs = records(100, ttft=0.3, tpot=0.212)
    m = metrics.compute(recs, metrics.ITLSketch(), 10.0)
    v = verdict.decide(
        sla=spec, metrics=m, records=recs, valid=True, invalid_reasons=[], stable=True
    )
    assert v.reasons == ["p99 TPOT 212 ms > 200 ms"]
    good = records(100, ttft=0.3, tpot=0.1)
    m = metrics.compute(good, metrics.ITLSketch(), 10.0)
    v = verdict.decide(
        sla=spec, metrics=m, records=good, valid=True, invalid_reasons=[], stable=True
    )
    assert v.status == "pass" and "llama2-70b-server" in v.reasons[0]


def test_errors_fail_and_unstable_and_no_sla() -> None:
    recs = [
        *records(9),
        RequestRecord(
            i=9,
            planned_s=0.09,
            sent_s=0.09,
            output_tokens=0,
            from_usage=False,
            chunks=0,
            error="http_500",
        ),
    ]
    m = metrics.compute(recs, metrics.ITLSketch(), 10.0)
    spec = BenchSLA(ttft_s=2.0, tpot_s=0.2)
    v = verdict.decide(
        sla=spec, metrics=m, records=recs, valid=True, invalid_reasons=[], stable=True
    )
    assert v.status == "fail" and v.reasons == ["1 of 10 requests failed (http_500: 1)"]
    tolerant = spec.model_copy(update={"max_error_fraction": 0.2})
    assert (
        verdict.decide(
            sla=tolerant, metrics=m, records=recs, valid=True, invalid_reasons=[], stable=True
        ).status
        == "pass"
    )
    u = verdict.decide(
        sla=spec,
        metrics=m,
        records=recs,
        valid=True,
        invalid_reasons=[],
        stable=False,
        unstable_figures=["tokens_per_s"],
    )
    assert u.status == "unstable" and "tokens_per_s" in u.reasons[0]
    n = verdict.decide(
        sla=None, metrics=m, records=recs, valid=True, invalid_reasons=[], stable=True
    )
    assert n.status == "no_sla"


def test_repeat_spread_marks_unstable() -> None:
    def run(tps_scale: float):  # type: ignore[no-untyped-def]
        recs = records(50)
        return scenarios._run_result(
            _config(), output(recs, wall=10.0 / tps_scale), None
        ).model_copy(
            update={"metrics": metrics.compute(recs, metrics.ITLSketch(), 10.0 / tps_scale)}
        )

    steady = scenarios.repeat_summary([run(1.0), run(1.01), run(0.99)], margin=0.05)
    assert steady.stable and steady.figures["tokens_per_s"].rel_range == pytest.approx(
        0.02, rel=0.01
    )
    shaky = scenarios.repeat_summary([run(1.0), run(1.2), run(0.9)], margin=0.05)
    assert not shaky.stable and "tokens_per_s" in shaky.unstable_figures


def test_presets_and_limits_for() -> None:
    assert sla.limits_for("llama2-70b-interactive") == sla.PRESETS["llama2-70b-interactive"]
    custom = sla.limits_for("llama2-70b-server", tpot_p99_s=0.1)
    assert custom is not None and (custom.ttft_p99_s, custom.tpot_p99_s) == (2.0, 0.1)
    assert sla.limits_for() is None
    with pytest.raises(KeyError, match="known"):
        sla.limits_for("llama2-70b")


def _config():  # type: ignore[no-untyped-def]
    from tokenscale.bench.models import BenchConfig

    return BenchConfig(
        url="http://127.0.0.1:1",
        model="m",
        api="completions",
        scenario="server",
        qps=100.0,
        dataset="synthetic",
        ignore_eos=True,
        thresholds=Thresholds(),
        seed=0,
        timeout_s=10.0,
    )


def test_sla_verdict_uses_loadgen_nearest_rank_not_the_interpolated_figure() -> None:
    # 99 fast requests and one at 10 s: the reported (interpolated) p99 is 0.199 s, but LoadGen's
    # p99 of 100 samples is the slowest one, so a 2 s p99 TTFT limit fails, as it would there.
    recs = records(99, ttft=0.1) + records(1, ttft=10.0)
    m = metrics.compute(recs, metrics.ITLSketch(), 10.0)
    assert m.ttft.p99 == pytest.approx(0.199)
    v = verdict.decide(
        sla=BenchSLA(ttft_s=2.0),
        metrics=m,
        records=recs,
        valid=True,
        invalid_reasons=[],
        stable=True,
    )
    assert v.status == "fail" and v.reasons == ["p99 TTFT 10 s > 2 s"]

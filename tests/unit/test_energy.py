"""Tokens per joule from exporter readings: counter deltas, resets, garbage, and no effect on
scaling.

Why: energy comes from a component the operator does not own. Wrong joules would publish a
wrong efficiency; an exception would stop the autoscaler. Both must be impossible.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.unit.fakekube import FakeKube
from tests.unit.test_autoscaler_loop import SteadyLoad, _cluster
from tokenscale import constants as c
from tokenscale import power
from tokenscale.api.config import OperatorConfig
from tokenscale.api.status import InferenceServiceStatus
from tokenscale.api.wire import merge_patch
from tokenscale.autoscale import energy as pure
from tokenscale.autoscale.collector import CollectResult
from tokenscale.autoscale.rates import PoolSignal, Sample
from tokenscale.controller import energy, metrics
from tokenscale.controller.autoscaler import LoopState, loop_wanted, run_pass
from tokenscale.sim import exporter as simexp

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _body(gpus: dict[tuple[str, str], tuple[str, float, float]], host: str = "n0") -> str:
    """An exporter body: (gpu_id) -> (pod, watts, microjoules), in the simulator's real shape."""
    out = ["# HELP gpu_power_usage power usage", "# TYPE gpu_power_usage gauge"]
    energy_lines = [
        "# HELP gpu_energy_consumed energy consumed",
        "# TYPE gpu_energy_consumed gauge",
    ]
    for (ns, gpu_id), (pod, watts, uj) in sorted(gpus.items()):
        labels = (
            f'card_model="AMD Instinct MI300X",container="vllm",gpu_id="{gpu_id}",'
            f'hostname="{host}",namespace="{ns}",pod="{pod}",serial_number="S{gpu_id}"'
        )
        out.append(f"gpu_power_usage{{{labels}}} {watts}")
        energy_lines.append(f"gpu_energy_consumed{{{labels}}} {uj}")
    return "\n".join(out + energy_lines) + "\n"


def test_parse_reads_the_simulated_exporter() -> None:
    meters = [simexp.EnergyMeter(140.0)]
    gpus = simexp.node_gpus("MI300X", "n7", 1, 2, "llm-a", "ns", "vllm", meters)
    meters[0].record(0.0, 10.0, 600.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(simexp.ExporterCollector(gpus, lambda: 5.0))
    text = generate_latest(registry).decode()
    readings = power.parse_exporter(text)
    assert [(r.hostname, r.gpu_id, r.pod, r.namespace) for r in readings] == [
        ("n7", "0", "llm-a", "ns"),
        ("n7", "1", "llm-a", "ns"),
    ]
    assert readings[0].energy_uj == pytest.approx(3000.0 * 1e6)
    assert readings[0].watts == pytest.approx(600.0)


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>502 Bad Gateway</body></html>",
        "",
        '# TYPE gpu_power_usage gauge\ngpu_power_usage{gpu_id="0"} 300\n',
        '# TYPE gpu_energy_consumed gauge\ngpu_energy_consumed{gpu_id="0",pod="a"',  # truncated
        # cut two digits into a counter (found by the faults drill): it parsed as 12 µJ, a
        # counter "reset", and a bogus tokens/J
        '# TYPE gpu_energy_consumed gauge\ngpu_energy_consumed{gpu_id="0",pod="a"} 12',
    ],
)
def test_garbage_bodies_raise_parse_errors(text: str) -> None:
    with pytest.raises(power.EnergyParseError):
        power.parse_exporter(text)


def test_nan_and_negative_values_are_unknown_not_numbers() -> None:
    text = _body({("ns", "0"): ("a", float("nan"), -5.0)})
    (reading,) = power.parse_exporter(text)
    assert reading.watts is None and reading.energy_uj is None


def test_joules_between_handles_resets() -> None:
    assert power.joules_between(1e6, 3e6) == 2.0
    assert power.joules_between(9e12, 4e6) == 4.0  # counter restarted from zero


def _readings(uj: dict[str, float], pod: str = "llm-a", watts: float = 500.0) -> list[Any]:
    return [power.GpuReading("n0", g, pod, "ns", watts, v) for g, v in uj.items()]


def test_tracker_tokens_per_joule_over_the_window_with_a_reset() -> None:
    tracker = pure.EnergyTracker(window_seconds=60.0)
    pods = {"llm-a": "p"}
    tracker.update(0.0, _readings({"0": 1e9, "1": 2e9}), pods, "ns", {"p": 100.0})
    assert "Warming" in tracker.figures("p").reason
    # 10 s: GPU 0 used 5,000 J, GPU 1 3,000 J; 100 tok/s x 10 s = 1,000 tokens
    tracker.update(10.0, _readings({"0": 6e9, "1": 5e9}), pods, "ns", {"p": 100.0})
    fig = tracker.figures("p")
    assert fig.joules == pytest.approx(8000.0) and fig.output_tokens == pytest.approx(1000.0)
    assert fig.tokens_per_joule == pytest.approx(0.125)
    assert fig.joules_per_token == pytest.approx(8.0)
    assert fig.watts == 1000.0 and fig.gpus == 2
    # GPU 1's counter resets to 1,000 J somewhere in the interval: the energy it used before
    # the reset is unknown, so the pool sits this pass out (counting 1,000 J against 2,000
    # tokens would make tokens/J too good) and counts again from the next one
    tracker.update(20.0, _readings({"0": 8e9, "1": 1e9}), pods, "ns", {"p": 200.0})
    fig = tracker.figures("p")
    assert fig.joules == pytest.approx(8000.0) and fig.output_tokens == pytest.approx(1000.0)
    assert fig.reason == ""
    tracker.update(30.0, _readings({"0": 9e9, "1": 3e9}), pods, "ns", {"p": 200.0})
    fig = tracker.figures("p")
    assert fig.joules == pytest.approx(8000 + 1000 + 2000)
    assert fig.output_tokens == pytest.approx(1000 + 2000)
    # the first pass leaves the 60 s window
    tracker.update(75.0, _readings({"0": 9e9, "1": 3e9}), pods, "ns", {"p": 0.0})
    assert tracker.figures("p").joules == pytest.approx(3000.0)  # 10 s pass + idle (0 J) pass


def test_tracker_ignores_other_namespaces_and_unknown_pods() -> None:
    tracker = pure.EnergyTracker()
    for t, uj in ((0.0, 0.0), (5.0, 5e9)):
        readings = [
            power.GpuReading("n0", "0", "llm-a", "other", 700.0, uj),  # same pod name, other ns
            power.GpuReading("n0", "1", "stranger", "ns", 700.0, uj),
            power.GpuReading("n0", "2", "llm-a", "ns", 300.0, uj / 5),
        ]
        tracker.update(t, readings, {"llm-a": "p"}, "ns", {"p": 50.0})
    fig = tracker.figures()
    assert fig.gpus == 1 and fig.joules == pytest.approx(1000.0) and fig.watts == 300.0
    assert tracker.figures("q").reason.startswith("NoExporterData")


# -- the I/O layer: httpx.MockTransport exporters, a fake API server ------------------------
ENERGY_CFG = OperatorConfig.model_validate(
    {"energy": {"type": "scrape", "scrape": {"namespace": "gpu-operator"}}}
)


def _exporter_pod(kube: FakeKube, name: str, ip: str) -> None:
    kube.put({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "gpu-operator",
                     "labels": {"app.kubernetes.io/name": "metrics-exporter"}},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip


def _result(tokens_per_s: float) -> CollectResult:
    return CollectResult(Sample(0.0, {"mi300x": PoolSignal(generation_tps=tokens_per_s)}), (), 0)


def _handler(answers: list[httpx.Response | Exception]) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle


async def _observe(
    kube: FakeKube, body: dict[str, Any], answers: list[httpx.Response | Exception], passes: int,
    tokens_per_s: float = 1000.0,
) -> list[Any]:  # fmt: skip
    energy.forget("ns", "llm")
    pods = kube.list("Pod", "ns")
    out = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(_handler(answers))) as client:
        for i in range(passes):
            out.append(
                await energy.observe(body["metadata"], kube, ENERGY_CFG, pods,
                                     _result(tokens_per_s), client, T0 + timedelta(seconds=10 * i))
            )  # fmt: skip
    return out


def _ok(uj: float, watts: float = 600.0) -> httpx.Response:
    return httpx.Response(200, text=_body({("ns", "0"): ("llm-mi300x-a", watts, uj)}))


async def test_observe_computes_tokens_per_joule_and_gauges() -> None:
    kube, body = _cluster()
    _exporter_pod(kube, "exp-n0", "127.20.0.1")
    first, second = await _observe(kube, body, [_ok(0.0), _ok(6000e6)], 2)
    assert first is not None and "Warming" in first.reason
    assert second is not None and second.reason == ""
    # 10 s x 1000 tok/s over 6,000 J
    assert second.tokens_per_joule == pytest.approx(10000 / 6000, rel=1e-3)
    assert second.joules_per_token == pytest.approx(0.6)
    assert second.pools[0].name == "mi300x" and second.pools[0].watts == 600.0
    value = metrics.REGISTRY.get_sample_value(
        "tokenscale_pool_tokens_per_joule", {"namespace": "ns", "service": "llm", "pool": "mi300x"}
    )
    assert value == pytest.approx(10000 / 6000, rel=1e-3)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.ConnectError("refused"), "ExporterUnreachable: exp-n0: ConnectError"),
        (httpx.ReadTimeout("slow"), "ExporterUnreachable: exp-n0: timeout"),
        (httpx.Response(200, text="<html>login</html>"), "ExporterGarbage: exp-n0"),
        (httpx.Response(200, text=_body({("ns", "0"): ("a", 1, 5)})[:60]), "ExporterGarbage"),
        (httpx.Response(503, text="down"), "ExporterError: exp-n0: http 503"),
    ],
)
async def test_observe_says_why_energy_is_unknown(
    answer: httpx.Response | Exception, reason: str
) -> None:
    kube, body = _cluster()
    _exporter_pod(kube, "exp-n0", "127.20.0.1")
    (status,) = await _observe(kube, body, [answer], 1)
    assert status is not None and status.reason.startswith(reason)
    assert status.tokens_per_joule is None
    assert (
        metrics.REGISTRY.get_sample_value(
            "tokenscale_service_energy_unknown", {"namespace": "ns", "service": "llm"}
        )
        == 1.0
    )


async def test_no_exporter_pods_and_energy_off() -> None:
    kube, body = _cluster()
    (status,) = await _observe(kube, body, [_ok(0.0)], 1)
    assert status is not None and status.reason.startswith("NoExporter: no ready pod matches")
    off = await energy.observe(body["metadata"], kube, OperatorConfig(), [], _result(1.0), None, T0)
    assert off is None


def test_bad_energy_config_names_the_field_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"energy\.prometheus\.url is required"):
        OperatorConfig.model_validate({"energy": {"type": "prometheus"}})
    with pytest.raises(ValueError, match=r"energy\.scrape\.selector is empty"):
        OperatorConfig.model_validate({"energy": {"type": "scrape", "scrape": {"selector": {}}}})
    with pytest.raises(ValueError, match="type"):
        OperatorConfig.model_validate({"energy": {"type": "ipmi"}})


async def test_prometheus_source_and_its_garbage() -> None:
    cfg = OperatorConfig.model_validate(
        {"energy": {"type": "prometheus", "prometheus": {"url": "http://prom.test:9090"}}}
    )
    state = {"uj": 0.0}

    def handle(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        assert query.endswith('{namespace="ns"}')
        value = state["uj"] if query.startswith("gpu_energy_consumed") else 650.0
        metric = {"hostname": "n0", "gpu_id": "3", "pod": "llm-mi300x-a", "namespace": "ns"}
        data = {"resultType": "vector", "result": [{"metric": metric, "value": [0, str(value)]}]}
        return httpx.Response(200, json={"status": "success", "data": data})

    kube, body = _cluster()
    pods = kube.list("Pod", "ns")
    energy.forget("ns", "llm")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        await energy.observe(body["metadata"], kube, cfg, pods, _result(500.0), client, T0)
        state["uj"] = 2500e6
        later = T0 + timedelta(seconds=5)
        status = await energy.observe(
            body["metadata"], kube, cfg, pods, _result(500.0), client, later
        )
    assert status is not None and status.watts == 650.0
    assert status.tokens_per_joule == pytest.approx(2500 / 2500)
    bad = httpx.MockTransport(lambda r: httpx.Response(200, text="<html/>"))
    async with httpx.AsyncClient(transport=bad) as client:
        status = await energy.observe(body["metadata"], kube, cfg, pods, _result(1.0), client, T0)
    assert status is not None and status.reason.startswith("PrometheusGarbage")


class LoadWithClient(SteadyLoad):
    """The steady source with an HTTP client whose exporter is down."""

    def __init__(self, tokens_per_s: float, client: httpx.AsyncClient) -> None:
        super().__init__(tokens_per_s)
        self.client = client


async def test_exporter_down_never_changes_scaling() -> None:
    """Same load, same passes: replicas with energy on and the exporter down equal energy off."""

    async def scale(cfg: OperatorConfig) -> tuple[int, dict[str, Any]]:
        kube, body = _cluster()
        _exporter_pod(kube, "exp-n0", "127.20.0.1")
        down = httpx.MockTransport(_handler([httpx.ConnectError("refused")]))
        async with httpx.AsyncClient(transport=down) as client:
            loop, source = LoopState(), LoadWithClient(3500.0, client)
            for second in range(0, 20, 2):
                body = kube.get("InferenceService", "ns", "llm") or body
                await run_pass(body, kube, cfg, source, loop, T0 + timedelta(seconds=second))
        svc = kube.get("InferenceService", "ns", "llm")
        assert svc is not None
        return int(svc["spec"]["replicas"]), svc["status"]

    replicas_on, status_on = await scale(ENERGY_CFG)
    replicas_off, status_off = await scale(OperatorConfig())
    assert replicas_on == replicas_off >= 4
    assert status_on["energy"]["reason"].startswith("ExporterUnreachable")
    assert "energy" not in status_off
    json.dumps(status_on)  # the status patch is plain JSON


def test_status_pools_are_listed_for_every_pool() -> None:
    tracker = pure.EnergyTracker()
    status = energy.status_from(tracker, ["a", "b"], T0)
    assert [p.name for p in status.pools] == ["a", "b"]
    assert all(p.reason.startswith("NoExporterData") for p in status.pools)


def test_bench_job_gets_exporter_urls_and_the_target_pods() -> None:
    kube, _ = _cluster()
    assert energy.bench_args(kube, ENERGY_CFG, "ns", "llm") == []  # no exporter pod yet
    _exporter_pod(kube, "exp-n0", "127.20.0.1")
    _exporter_pod(kube, "exp-n1", "fd00::7")
    args = energy.bench_args(kube, ENERGY_CFG, "ns", "llm")
    assert args == [
        "--energy-url", "http://127.20.0.1:5000/metrics",
        "--energy-url", "http://[fd00::7]:5000/metrics",
        "--energy-pods", "llm-mi300x-a",
    ]  # fmt: skip
    assert energy.bench_args(kube, OperatorConfig(), "ns", "llm") == []
    assert energy.bench_args(kube, ENERGY_CFG, "ns", None) == []  # a URL target: no pods


class WriteLog(FakeKube):
    """The fake API server, remembering every (kind, subresource) written."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, str]] = []

    def patch_merge(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], sub: str = ""
    ) -> dict[str, Any]:
        self.writes.append((kind, sub))
        return super().patch_merge(kind, namespace, name, patch, sub)


async def test_scaling_off_service_gets_energy_and_is_never_scaled() -> None:
    """Platforms without (or with external) scaling still want tokens/J: with energy on, the loop
    runs for a ``mode: off`` service, publishes metrics and energy, and never writes /scale."""
    kube, body = _cluster(mode="off", kube=WriteLog())
    assert isinstance(kube, WriteLog)
    _exporter_pod(kube, "exp-n0", "127.20.0.1")
    exporter = httpx.MockTransport(_handler([_ok(0.0), _ok(6000e6)]))
    energy.forget("ns", "llm")
    async with httpx.AsyncClient(transport=exporter) as client:
        loop, source = LoopState(), LoadWithClient(9000.0, client)  # 9x the target per replica
        for i in range(2):
            body = kube.get("InferenceService", "ns", "llm") or body
            verdict = await run_pass(
                body, kube, ENERGY_CFG, source, loop, T0 + timedelta(seconds=10 * i)
            )
            assert verdict is None  # nothing decided
    svc = kube.get("InferenceService", "ns", "llm")
    assert svc is not None
    assert kube.writes == [("InferenceService", "status")] * 2  # no /scale, no state annotation
    assert "replicas" not in svc["spec"]
    assert c.ANNOTATION_SCALER_STATE not in (svc["metadata"].get("annotations") or {})
    assert "scaling" not in svc["status"]  # the reconcile's Disabled condition stays the truth
    assert svc["status"]["metrics"]["tokensPerSecond"] == 9000.0
    # 10 s x 9,000 tok/s over 6,000 J
    assert svc["status"]["energy"]["tokensPerJoule"] == pytest.approx(90000 / 6000, rel=1e-3)


async def test_scaling_off_and_energy_off_runs_no_loop() -> None:
    assert not loop_wanted("off", OperatorConfig()) and not loop_wanted("off", None)
    assert loop_wanted("off", ENERGY_CFG) and loop_wanted("external", OperatorConfig())
    kube, body = _cluster(mode="off", kube=WriteLog())
    assert isinstance(kube, WriteLog)
    verdict = await run_pass(body, kube, OperatorConfig(), SteadyLoad(9000.0), LoopState(), T0)
    assert verdict is None and kube.writes == []


# -- found by the energy/router faults drill (tests/unit/test_fuzz_energy_router_faults.py) ---


def test_tracker_a_gpu_missing_from_the_exporter_makes_its_pool_unknown() -> None:
    """A GPU the exporter stops naming while its pod runs: summing the others made the pool's
    joules too small (tokens/J twice too good with one of two GPUs) and its watts too low."""
    tracker = pure.EnergyTracker()
    pods = {"llm-a": "p"}
    for t in (0.0, 10.0):
        tracker.update(t, _readings({"0": t * 1e9, "1": t * 1e9}), pods, "ns", {"p": 100.0})
    assert tracker.figures("p").tokens_per_joule == pytest.approx(0.05)
    tracker.update(20.0, _readings({"0": 20e9}), pods, "ns", {"p": 100.0})
    for fig in (tracker.figures("p"), tracker.figures()):
        assert fig.reason == "GpuMissing: GPU 1 on n0 (pod llm-a) is missing from the exporter"
        assert fig.tokens_per_joule is None and fig.watts is None and fig.joules is None
    tracker.update(30.0, _readings({"0": 20e9}), pods, "ns", {"p": 100.0})  # still missing
    assert tracker.figures("p").reason.startswith("GpuMissing")
    tracker.update(40.0, _readings({"0": 40e9}), {}, "ns", {"p": 100.0})  # the pod is gone
    assert not tracker.figures("p").reason.startswith("GpuMissing")


def test_tracker_unusable_energy_names_the_gpu_and_power_nan_is_not_zero() -> None:
    tracker = pure.EnergyTracker()
    pods = {"llm-a": "p"}
    for t in (0.0, 10.0):
        tracker.update(t, _readings({"0": t * 1e9, "1": t * 1e9}), pods, "ns", {"p": 100.0})
    # NaN/Inf/negative energy parse to None: the figures are unknown and say which GPU
    bad = [*_readings({"0": 20e9}), power.GpuReading("n0", "1", "llm-a", "ns", 500.0, None)]
    tracker.update(20.0, bad, pods, "ns", {"p": 100.0})
    fig = tracker.figures("p")
    assert fig.reason.startswith("EnergyUnknown: GPU 1 on n0 (pod llm-a)")
    assert fig.tokens_per_joule is None
    # power unknown (NaN): watts absent (it was summed as 0 W), tokens/J still measured
    tracker.update(30.0, _readings({"0": 30e9, "1": 30e9}), pods, "ns", {"p": 100.0})
    nan_power = [*_readings({"0": 40e9}), power.GpuReading("n0", "1", "llm-a", "ns", None, 40e9)]
    tracker.update(40.0, nan_power, pods, "ns", {"p": 100.0})
    fig = tracker.figures("p")
    assert fig.reason == "" and fig.watts is None and fig.gpus == 2
    assert fig.tokens_per_joule == pytest.approx(0.05)


async def test_exporter_failure_blanks_the_stored_figures_and_the_gauges() -> None:
    """The status is a merge patch: a failure that set only ``reason`` left the last pass's
    tokens/J in status beside it, and the pool gauges kept their last values."""
    kube, body = _cluster()
    _exporter_pod(kube, "exp-n0", "127.20.0.1")
    good, bad = _ok(0.0), httpx.ConnectError("refused")
    statuses = await _observe(kube, body, [good, _ok(6000e6), bad], 3)
    stored: dict[str, Any] = {}
    for status in statuses:
        kube.put({**body, "status": {"energy": stored}})
        patch = {"status": merge_patch(InferenceServiceStatus(energy=status))}
        kube.patch_merge("InferenceService", "ns", "llm", patch, "status")
        stored = (kube.get("InferenceService", "ns", "llm") or {})["status"]["energy"]
    assert stored["reason"].startswith("ExporterUnreachable")
    assert set(stored) == {"reason", "pools", "observedAt"}, stored
    assert stored["pools"] == [{"name": "mi300x", "gpus": 0, "reason": stored["reason"]}]
    pool = {"namespace": "ns", "service": "llm", "pool": "mi300x"}
    for name in ("tokenscale_pool_tokens_per_joule", "tokenscale_pool_power_watts"):
        assert metrics.REGISTRY.get_sample_value(name, pool) is None, name


async def test_after_an_exporter_outage_the_first_reading_does_not_span_it() -> None:
    """Without a reading in between, the next difference covers the whole outage while its
    tokens come from one pass's rate: the tracker starts the interval over instead."""
    kube, body = _cluster()
    _exporter_pod(kube, "exp-n0", "127.20.0.1")
    answers: list[httpx.Response | Exception] = [
        _ok(0.0), httpx.ConnectError("refused"), httpx.ConnectError("refused"),
        _ok(30000e6), _ok(36000e6),
    ]  # fmt: skip
    *_, back, after = await _observe(kube, body, answers, 5)
    assert back is not None and back.reason.startswith("Warming")
    assert after is not None and after.tokens_per_joule == pytest.approx(10000 / 6000, rel=1e-3)

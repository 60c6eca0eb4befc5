"""status.router and the Ready rule of router mode (issue 19).

The exposition below uses vllm-router 0.1.17's metric names and labels (docs/routing.md: seen on
its --prometheus-port and in its binary); the router process itself is not run here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tests.unit.statuscheck import check_status_patch
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.status import InferenceServiceStatus
from tokenscale.api.wire import merge_patch
from tokenscale.autoscale.collector import CollectResult, EnginePod
from tokenscale.autoscale.rates import PoolSignal, Sample
from tokenscale.autoscale.routermetrics import (
    RouterMetricsError,
    combine,
    parse_router_metrics,
    request_rate,
)
from tokenscale.controller import observe, routerstatus
from tokenscale.controller.autoscaler import LoopState, run_pass
from tokenscale.controller.reconcile import reconcile_service
from tokenscale.render.router import router_pod_labels
from tokenscale.validation import parse_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T0 = datetime(2026, 12, 3, 6, 0, 0, tzinfo=UTC)
CFG = OperatorConfig()
W1, W2 = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


def exposition(total_chat: float, total_completions: float, running1: float) -> str:
    return f"""# HELP vllm_router_requests_total Total requests
# TYPE vllm_router_requests_total counter
vllm_router_requests_total{{route="/v1/chat/completions"}} {total_chat}
vllm_router_requests_total{{route="/v1/completions"}} {total_completions}
# TYPE vllm_router_running_requests gauge
vllm_router_running_requests{{worker="{W1}"}} {running1}
vllm_router_running_requests{{worker="{W2}"}} 2
# TYPE vllm_router_processed_requests_total counter
vllm_router_processed_requests_total{{worker="{W1}"}} {total_chat}
vllm_router_processed_requests_total{{worker="{W2}"}} {total_completions}
# TYPE vllm_router_worker_health gauge
vllm_router_worker_health{{worker="{W1}"}} 1
vllm_router_worker_health{{worker="{W2}"}} 0
# TYPE vllm_router_active_workers gauge
vllm_router_active_workers 2
# TYPE vllm_router_generate_duration_seconds histogram
vllm_router_generate_duration_seconds_bucket{{le="0.1"}} 3
vllm_router_generate_duration_seconds_bucket{{le="+Inf"}} 5
vllm_router_generate_duration_seconds_sum 1.5
vllm_router_generate_duration_seconds_count 5
"""


def test_parser_reads_requests_load_and_health() -> None:
    got = parse_router_metrics(exposition(10, 32, 5))
    assert got.requests_total == 42
    assert got.running == {W1: 5, W2: 2}
    assert got.healthy == {W1: True, W2: False}
    assert got.processed == {W1: 10, W2: 32}


def test_parser_on_a_real_router_body() -> None:
    """Captured from vllm-router 0.1.17 (round_robin, two simulated engines, three completions;
    see docs/routing.md): with nothing in flight it exports no running_requests at all."""
    text = (FIXTURES / "vllm-router-0.1.17-metrics.txt").read_text()
    got = parse_router_metrics(text)
    a, b = "http://127.0.0.1:18931", "http://127.0.0.1:18932"
    assert got.requests_total == 3 and got.running == {}
    assert got.processed == {a: 1, b: 2} and got.healthy == {a: True, b: True}


@pytest.mark.parametrize(
    "body",
    [
        "<html><body>Not Found</body></html>\n",
        "vllm:generation_tokens_total 5\n",  # an engine's port, not a router's
        exposition(10, 32, 5)[:-30],  # cut mid-line
        exposition(10, 32, 5).replace("} 10\n", "} NaN\n", 1),
        "",
    ],
    ids=["html", "engine", "truncated", "nan", "empty"],
)
def test_parser_rejects_what_is_not_a_router_exposition(body: str) -> None:
    with pytest.raises(RouterMetricsError):
        parse_router_metrics(body)


def test_combine_and_rate() -> None:
    a, b = parse_router_metrics(exposition(1, 2, 5)), parse_router_metrics(exposition(3, 4, 1))
    both = combine([a, b])
    assert both.requests_total == 10 and both.running == {W1: 6, W2: 4}
    assert both.healthy == {W1: True, W2: False}
    assert request_rate(30, 110, 10, 100) == 2.0
    assert request_rate(5, 110, 10, 100) is None  # the sum fell: a router pod restarted
    assert request_rate(30, 110, None, None) is None


def _router_pod(kube: FakeKube, name: str, ip: str, ready: bool = True) -> None:
    kube.put({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": router_pod_labels("llm")},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    })  # fmt: skip


def _router_service(**extra: Any) -> dict[str, Any]:
    doc = service(routing={"mode": "router"}, **extra)
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    return doc


Handler = Callable[[httpx.Request], httpx.Response]


async def _observe(
    kube: FakeKube, handler: Handler, previous: Any = None, at: datetime = T0
) -> Any:
    svc = parse_spec(_router_service())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await routerstatus.observe(
            {"namespace": "ns", "name": "llm"}, svc, kube, client, previous, at
        )


def _by_ip(bodies: dict[str, str | int]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.port == 29000 and request.url.path == "/metrics"
        body = bodies[request.url.host]
        if isinstance(body, int):
            if body == 0:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(body, text="error\n")
        return httpx.Response(200, text=body)

    return handler


async def test_reader_ok_then_rate() -> None:
    kube = FakeKube()
    _router_pod(kube, "r0", "127.30.0.1")
    _router_pod(kube, "r1", "127.30.0.2")
    _router_pod(kube, "r2", "127.30.0.3", ready=False)  # not scraped
    first = await _observe(kube, _by_ip({"127.30.0.1": exposition(10, 0, 1),
                                         "127.30.0.2": exposition(20, 0, 2)}))  # fmt: skip
    assert first.replicas == 3 and first.ready_replicas == 2
    assert first.requests_total == 30 and first.requests_per_second is None  # one reading
    assert first.requests_running == 7 and first.reason == "" and first.scrape_errors == 0
    assert [(w.url, w.running_requests, w.processed_requests, w.healthy)
            for w in first.workers] == [(W1, 3, 30, True), (W2, 4, 0, False)]  # fmt: skip
    second = await _observe(
        kube,
        _by_ip({"127.30.0.1": exposition(40, 0, 1), "127.30.0.2": exposition(50, 0, 2)}),
        first,
        T0 + timedelta(seconds=10),
    )
    assert second.requests_per_second == 6.0  # (90 - 30) / 10 s
    for reading in (first, second):
        check_status_patch("InferenceService", merge_patch(InferenceServiceStatus(router=reading)))


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (0, "RouterMetricsUnreachable"),
        (503, "RouterMetricsUnreachable"),
        ("<!doctype html><html><body>hi</body></html>\n", "RouterMetricsGarbage"),
    ],
    ids=["down", "http-503", "html"],
)
async def test_reader_failures_say_unknown_and_why(answer: str | int, reason: str) -> None:
    kube = FakeKube()
    _router_pod(kube, "r0", "127.30.0.1")
    got = await _observe(kube, _by_ip({"127.30.0.1": answer}))
    assert got.ready_replicas == 1 and got.scrape_errors == 1
    assert got.reason.startswith(reason)
    assert got.requests_total is None and got.requests_per_second is None and not got.workers
    check_status_patch("InferenceService", merge_patch(InferenceServiceStatus(router=got)))


async def test_reader_partial_failure_keeps_figures_but_no_rate() -> None:
    kube = FakeKube()
    _router_pod(kube, "r0", "127.30.0.1")
    _router_pod(kube, "r1", "127.30.0.2")
    ok = {"127.30.0.1": exposition(10, 0, 1), "127.30.0.2": exposition(20, 0, 2)}
    first = await _observe(kube, _by_ip(ok))
    half = await _observe(kube, _by_ip({**ok, "127.30.0.2": 0}), first, T0 + timedelta(seconds=10))
    assert half.requests_total == 10 and half.scrape_errors == 1
    assert half.requests_per_second is None  # a partial sum is not a rate
    assert "RouterMetricsUnreachable" in half.reason


async def test_a_failed_reading_clears_the_last_figures_in_the_patch() -> None:
    """Found by the energy/router faults drill: the status is a merge patch, and a reading that
    failed set only its reason, so the stored status kept the last requestsTotal, rate and
    workers beside it; the recovered reading then kept the fault's reason."""
    kube = FakeKube()
    _router_pod(kube, "r0", "127.30.0.1")
    first = await _observe(kube, _by_ip({"127.30.0.1": exposition(10, 0, 1)}))
    failed = await _observe(kube, _by_ip({"127.30.0.1": 0}), first, T0 + timedelta(seconds=10))
    patch = merge_patch(failed)
    for key in ("requestsTotal", "requestsPerSecond", "requestsRunning"):
        assert key in patch and patch[key] is None, key
    assert patch["workers"] == [] and patch["reason"].startswith("RouterMetricsUnreachable")
    back = await _observe(kube, _by_ip({"127.30.0.1": exposition(20, 0, 1)}), failed)
    assert merge_patch(back)["reason"] == "" and merge_patch(back)["requestsTotal"] == 20


async def test_no_ready_router_and_other_modes() -> None:
    kube = FakeKube()
    _router_pod(kube, "r0", "127.30.0.1", ready=False)
    got = await _observe(kube, _by_ip({}))
    assert got.ready_replicas == 0 and got.reason.startswith("NoReadyRouter")
    assert "llm-router" in got.reason
    plain = parse_spec({**_router_service(), "spec": service()["spec"]})
    assert (
        await routerstatus.observe({"namespace": "ns", "name": "llm"}, plain, kube, None, None, T0)
        is None
    )


class NoLoad:
    """A metrics source with no engine traffic (only the router figures matter here)."""

    async def collect(
        self, pods: Sequence[EnginePod], pools: Sequence[str], now: float
    ) -> CollectResult:
        return CollectResult(Sample(now, {p: PoolSignal() for p in pools}), (), 0)


async def test_autoscaler_pass_writes_status_router() -> None:
    """The wiring: a pass on a router-mode service writes a valid status.router (the router pod
    listens nowhere: loopback, refused at once, so the status says unreachable)."""
    kube = FakeKube()
    body = kube.put(_router_service())
    _router_pod(kube, "r0", "127.0.0.1")
    await run_pass(body, kube, CFG, NoLoad(), LoopState(), T0)
    written = (kube.get("InferenceService", "ns", "llm") or {})["status"]["router"]
    assert written["readyReplicas"] == 1 and written["scrapeErrors"] == 1
    assert written["reason"].startswith("RouterMetricsUnreachable")


def _ready_deployments(kube: FakeKube, router_ready: int) -> None:
    for (kind, _ns, name), obj in kube.objects.items():
        if kind == "Deployment":
            ready = router_ready if name == "llm-router" else 1
            obj["status"] = {"replicas": 2, "readyReplicas": ready, "updatedReplicas": 2}


@pytest.mark.parametrize(
    ("router_ready", "expected"), [(0, "RouterNotReady"), (1, "ReplicasReady")]
)
def test_ready_needs_a_ready_router_pod(router_ready: int, expected: str) -> None:
    kube = FakeKube()
    body = kube.put(_router_service())
    reconcile_service(body, kube, CFG, T0)
    assert ("Deployment", "ns", "llm-router") in kube.objects
    _ready_deployments(kube, router_ready)
    body = kube.get("InferenceService", "ns", "llm") or body
    status = reconcile_service(body, kube, CFG, T0).status
    ready = next(x for x in status["conditions"] if x["type"] == c.COND_READY)
    assert ready["reason"] == expected
    if expected == "RouterNotReady":
        assert (
            ready["status"] == "False"
            and "kubectl describe deployment llm-router" in (ready["message"])
        )
    else:
        assert ready["status"] == "True"


def test_ready_rule_outside_router_mode_is_unchanged() -> None:
    pool = observe.PoolObservation("p", "MI300X", 1, 1, 1, 1)
    conds = observe.service_conditions([pool], [], [], 1)
    assert observe.find(conds, c.COND_READY) is not None
    ready = observe.find(conds, c.COND_READY)
    assert ready is not None and ready.reason == "ReplicasReady"
    stopped = observe.PoolObservation("llm-router", "", 2, 2, 0, 2)
    ready = observe.find(observe.service_conditions([pool], [], [], 1, (), stopped), c.COND_READY)
    assert ready is not None and ready.reason == "RouterNotReady" and ready.status == "False"

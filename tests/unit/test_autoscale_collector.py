"""The scrape collector and the Prometheus source against mocked HTTP (httpx.MockTransport).

Why: scrape failures must be counted and reported, never fatal, and a pod that is ready but not
answering must read as missing data (hold), not as zero load (scale down).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from tokenscale.api.config import OperatorConfig
from tokenscale.autoscale.collector import (
    EnginePod,
    PromQLSource,
    ScrapeCollector,
    engine_pods,
    source_for,
    startup_seconds,
)
from tokenscale.constants import LABEL_POOL, LABEL_ROLE, ROLE_LEADER, ROLE_WORKER

REAL = (Path(__file__).resolve().parents[1] / "fixtures/vllm-0.32-metrics-shared.txt").read_text()


def counter_body(gen: float) -> str:
    return (
        "# TYPE vllm:generation_tokens_total counter\n"
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {gen}\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3\n'
    )


def pod(name: str, ip: str | None = "10.0.0.1", ready: bool = True, phase: str = "Running",
        pool: str | None = "a", deleting: bool = False) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "labels": {LABEL_POOL: pool} if pool else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def test_engine_pods_uses_pod_status_ip_and_readiness() -> None:
    pods = [
        pod("b", "10.0.0.2"),
        pod("a", "10.0.0.1"),
        pod("not-ready", ready=False),
        pod("no-ip", ip=None),
        pod("pending", phase="Pending"),
        pod("no-pool", pool=None),
        pod("terminating", deleting=True),
    ]
    assert [p.name for p in engine_pods(pods)] == ["a", "b"]
    assert engine_pods(pods)[0] == EnginePod("a", "a", "10.0.0.1")


async def test_a_multinode_group_is_scraped_at_its_leader_and_counts_once() -> None:
    """Two LWS groups (leader + headless worker each): the collector asks only the leaders, so
    the pool reports two replicas with complete data; asking a worker (no HTTP server) would
    read as a scrape error that blocks every scale-down."""

    def group_pod(name: str, ip: str, role: str) -> dict[str, Any]:
        p = pod(name, ip)
        p["metadata"]["labels"][LABEL_ROLE] = role
        return p

    pods = [
        group_pod("svc-a-0", "10.0.0.1", ROLE_LEADER),
        group_pod("svc-a-0-1", "10.0.0.2", ROLE_WORKER),
        group_pod("svc-a-1", "10.0.0.3", ROLE_LEADER),
        group_pod("svc-a-1-1", "10.0.0.4", ROLE_WORKER),
    ]
    engines = engine_pods(pods)
    assert [p.name for p in engines] == ["svc-a-0", "svc-a-1"]
    asked: list[str] = []
    counters = dict.fromkeys(("10.0.0.1", "10.0.0.3"), 0.0)

    def handler(request: httpx.Request) -> httpx.Response:
        host = str(request.url.host)
        asked.append(host)
        if host not in counters:
            return httpx.Response(404)  # a headless worker has no metrics endpoint
        counters[host] += 500
        return httpx.Response(200, text=counter_body(counters[host]))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        collector = ScrapeCollector(client)
        await collector.collect(engines, ["a"], now=0.0)
        second = await collector.collect(engines, ["a"], now=5.0)
    assert set(asked) == {"10.0.0.1", "10.0.0.3"}
    signal = second.sample.pools["a"]
    assert (signal.pods_reporting, signal.pods_missing, signal.scrape_errors) == (2, 0, 0)
    assert signal.complete
    assert signal.generation_tps == pytest.approx(2 * 500 / 5)


async def test_scrape_real_sample_then_rates() -> None:
    counters = {"10.0.0.1": 1000.0}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics" and request.url.port == 8000
        if request.url.host == "10.0.0.9":
            return httpx.Response(200, text=REAL)
        counters["10.0.0.1"] += 5000
        return httpx.Response(200, text=counter_body(counters["10.0.0.1"]))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        collector = ScrapeCollector(client)
        pods = [EnginePod("p1", "a", "10.0.0.1"), EnginePod("real", "b", "10.0.0.9")]
        first = await collector.collect(pods, ["a", "b"], now=0.0)
        assert first.sample.pools["a"].pods_missing == 1  # warming, not zero
        assert first.in_flight()["real"] == 32.0  # 16 running + 16 waiting in the sample
        second = await collector.collect(pods, ["a", "b"], now=5.0)
    assert second.sample.pools["a"].generation_tps == pytest.approx(1000)
    assert second.sample.pools["a"].complete
    assert second.sample.pools["b"].requests_waiting == 16
    assert second.scrape_errors == 0


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.ConnectError("refused"), "ConnectError"),
        (httpx.Response(503, text="starting"), "http 503"),
        (httpx.Response(200, text="<html>not metrics</html>"), "unparsable"),
        (httpx.Response(200, text="# TYPE up gauge\nup 1\n"), "not a vLLM engine"),
    ],
)
async def test_scrape_failures_are_counted_not_fatal(
    failure: Exception | httpx.Response, expected: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.2":
            if isinstance(failure, Exception):
                raise failure
            return failure
        return httpx.Response(200, text=counter_body(100))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        collector = ScrapeCollector(client, timeout_seconds=0.5)
        pods = [EnginePod("ok", "a", "10.0.0.1"), EnginePod("bad", "a", "10.0.0.2")]
        result = await collector.collect(pods, ["a"], now=0.0)
    assert result.scrape_errors == 1
    bad = next(p for p in result.pods if p.pod == "bad")
    assert bad.state == "error" and expected in bad.error
    assert result.sample.pools["a"].scrape_errors == 1
    assert not result.sample.pools["a"].complete


def prom_handler(values: dict[str, dict[str, float]], fail: bool = False) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if fail:
            return httpx.Response(200, json={"status": "error", "error": "bad query"})
        query = request.url.params["query"]
        for needle, per_pool in values.items():
            if needle in query:
                result = [
                    {"metric": {"pool": p}, "value": [0, str(v)]} for p, v in per_pool.items()
                ]
                return httpx.Response(200, json={"status": "success", "data": {"result": result}})
        return httpx.Response(200, json={"status": "success", "data": {"result": []}})

    return httpx.MockTransport(handler)


async def test_promql_source_builds_the_same_signal() -> None:
    values: dict[str, dict[str, float]] = {
        "rate(vllm:generation_tokens_total": {"a": 9000.0},
        "count by": {"a": 2},
        "vllm:num_requests_running": {"a": 40},
        "vllm:num_requests_waiting": {"a": 4},
        "vllm:kv_cache_usage_perc": {"a": 1.2},
    }
    async with httpx.AsyncClient(transport=prom_handler(values)) as client:
        source = PromQLSource(client, "http://prometheus:9090", selector='service="llm"')
        assert 'sum by (pool) (rate(vllm:generation_tokens_total{service="llm"}[1m]))' in (
            source.queries().values()
        )
        pods = [EnginePod("x", "a", "1.1.1.1"), EnginePod("y", "a", "1.1.1.2")]
        result = await source.collect(pods, ["a"], now=1.0)
    a = result.sample.pools["a"]
    assert a.generation_tps == 9000 and a.requests_waiting == 4
    assert a.pods_reporting == 2 and a.complete
    assert a.kv_cache_usage == pytest.approx(0.6)


async def test_promql_errors_mean_missing_data() -> None:
    async with httpx.AsyncClient(transport=prom_handler({}, fail=True)) as client:
        source = PromQLSource(client, "http://prometheus:9090")
        result = await source.collect([EnginePod("x", "a", "1.1.1.1")], ["a"], now=1.0)
    assert result.scrape_errors == 1
    assert result.sample.pools["a"].pods_missing == 1


def test_startup_seconds_is_the_median_creation_to_ready() -> None:
    def started(created: str, ready: str | None) -> dict[str, Any]:
        conditions = (
            [{"type": "Ready", "status": "True", "lastTransitionTime": ready}] if ready else []
        )
        return {"metadata": {"creationTimestamp": created}, "status": {"conditions": conditions}}

    pods = [
        started("2026-11-28T10:00:00Z", "2026-11-28T10:02:00Z"),
        started("2026-11-28T10:00:00Z", "2026-11-28T10:03:00Z"),
        started("2026-11-28T10:00:00Z", "2026-11-28T10:10:00Z"),
        started("2026-11-28T10:00:00Z", None),
        started("garbage", "2026-11-28T10:02:00Z"),
    ]
    assert startup_seconds(pods) == 180.0
    assert startup_seconds([], default=90.0) == 90.0


def test_prometheus_needs_a_url_and_the_error_names_the_field() -> None:
    with pytest.raises(
        pydantic.ValidationError, match=r"metricsSource\.prometheus\.url is required"
    ):
        OperatorConfig.model_validate({"metricsSource": {"type": "prometheus"}})
    with pytest.raises(pydantic.ValidationError, match="url"):
        OperatorConfig.model_validate(
            {"metricsSource": {"type": "prometheus", "prometheus": {"url": "prometheus:9090"}}}
        )


async def test_configured_source_scrapes_by_default_and_queries_prometheus_when_set() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        query = request.url.params["query"]
        value = [{"metric": {"tokenscale_dev_pool": "a"}, "value": [0, "7"]}]
        return httpx.Response(
            200,
            json={"status": "success", "data": {"result": value if "generation" in query else []}},
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        default = source_for(OperatorConfig().metrics_source, client, "ns", "llm", 2.0)
        assert isinstance(default, ScrapeCollector) and default.timeout_seconds == 2.0
        cfg = OperatorConfig.model_validate(
            {"metricsSource": {"type": "prometheus",
                               "prometheus": {"url": "http://prom:9090", "rateWindow": "2m"}}}
        )  # fmt: skip
        source = source_for(cfg.metrics_source, client, "ns", "llm", 2.0)
        result = await source.collect([EnginePod("x", "a", "1.1.1.1")], ["a"], now=1.0)
    assert result.sample.pools["a"].generation_tps == 7
    assert all(url.startswith("http://prom:9090/api/v1/query?") for url in seen)
    generation = next(u for u in seen if "generation_tokens" in u)
    assert 'namespace="ns",tokenscale_dev_service="llm"' in httpx.URL(generation).params["query"]
    assert "[2m]" in httpx.URL(generation).params["query"]

"""Every metric a Grafana panel queries must exist: in vLLM's real /metrics (recorded from a
real engine) or in the operator's own registry. A renamed metric breaks this test, not a
dashboard in production."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tokenscale import constants as c
from tokenscale.controller.metrics import REGISTRY

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "charts/tokenscale/dashboards/tokenscale.json"
FIXTURE = ROOT / "tests/fixtures/vllm-0.32-metrics-shared.txt"

PROMQL_WORDS = {
    "sum", "avg", "max", "min", "by", "on", "rate", "increase", "histogram_quantile",
    "group_left", "label_values", "without", "count", "le", "namespace", "service", "pool",
    "model_name", "direction", "verdict", "bool", "kind", "result",
    "tokenscale_dev_service", "tokenscale_dev_pool",
}  # fmt: skip


def _exposed_names() -> set[str]:
    text = FIXTURE.read_text()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
    for metric in REGISTRY.collect():
        names.update(sample.name for sample in metric.samples)
        names.add(metric.name)
        if metric.type == "counter":
            names.add(metric.name + "_total")
        if metric.type == "histogram":
            names.update(metric.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def _queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def _metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d.*", t)}


@pytest.mark.parametrize("expr", _queries())
def test_every_queried_metric_exists(expr: str) -> None:
    names = _metric_names(expr)
    assert names, expr
    missing = names - _exposed_names()
    assert not missing, f"{sorted(missing)} in {expr}"


def test_checker_catches_a_renamed_metric() -> None:
    assert _metric_names("rate(vllm:gpu_cache_usage_perc[1m])") - _exposed_names() == {
        "vllm:gpu_cache_usage_perc"
    }


def test_dashboard_covers_the_required_panels() -> None:
    titles = " ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for word in ("tokens/s", "target", "replicas", "ttft", "tpot", "kv-cache", "queue", "scaling"):
        assert word in titles
    assert "benchmark" in titles


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def _target_label(pod_label: str) -> str:
    """How the Prometheus Operator names a podTargetLabels label on the series."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def test_engine_panels_filter_by_the_service_the_servicemonitor_labels() -> None:
    label = _target_label(c.LABEL_SERVICE)  # the ServiceMonitor copies this pod label
    engine = [p for p in _panels() if any("vllm:" in t["expr"] for t in p["targets"])]
    assert len(engine) >= 5
    for panel in engine:
        for target in panel["targets"]:
            assert f'{label}=~"$service"' in target["expr"], panel["title"]
            assert "model_name" not in target["expr"], panel["title"]


def test_operator_health_row_plots_reconciles_duration_and_scrape_errors() -> None:
    dash = json.loads(DASHBOARD.read_text())["panels"]
    start = next(i for i, p in enumerate(dash) if p["type"] == "row" and "health" in p["title"])
    rest = dash[start + 1 :]
    row = rest[: next((i for i, p in enumerate(rest) if p["type"] == "row"), len(rest))]
    exprs = " ".join(t["expr"] for p in row for t in p["targets"])
    for metric in (
        "tokenscale_reconciles_total",
        "tokenscale_reconcile_duration_seconds_bucket",
        "tokenscale_scrape_errors_total",
    ):
        assert metric in exprs
    assert "result" in exprs  # reconciles broken down by result: errors are visible


def _unit_kind(expr: str) -> str:
    if re.search(r"tokens_per_second|_tokens_total", expr):
        return "tok/s"
    if "histogram_quantile" in expr:
        return "seconds"
    return "other"


def test_each_panel_has_one_unit_and_throughput_is_in_tok_s() -> None:
    for panel in _panels():
        kinds = {_unit_kind(t["expr"]) for t in panel["targets"]}
        assert len(kinds) == 1, f"{panel['title']} mixes {kinds}"
        unit = panel["fieldConfig"]["defaults"]["unit"]
        if kinds == {"tok/s"}:
            assert unit == "suffix: tok/s", panel["title"]
        if kinds == {"seconds"}:
            assert unit == "s", panel["title"]

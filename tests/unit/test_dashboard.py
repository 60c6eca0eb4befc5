"""Every metric a Grafana panel queries must exist: in vLLM's real /metrics (recorded from a
real engine) or in the operator's own registry. A renamed metric breaks this test, not a
dashboard in production."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tokenscale.controller.metrics import REGISTRY

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "charts/tokenscale/dashboards/tokenscale.json"
FIXTURE = ROOT / "tests/fixtures/vllm-0.32-metrics-shared.txt"

PROMQL_WORDS = {
    "sum", "avg", "max", "min", "by", "on", "rate", "increase", "histogram_quantile",
    "group_left", "label_values", "without", "count", "le", "namespace", "service", "pool",
    "model_name", "direction", "verdict", "bool",
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
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
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
    for word in ("tokens/s vs target", "replicas", "ttft", "tpot", "kv-cache", "queue", "scaling"):
        assert word in titles
    assert "benchmark" in titles

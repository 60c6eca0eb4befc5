"""vLLM-identical Prometheus metrics for one simulated engine.

Why not ``prometheus_client.Histogram``: the model advances a whole decode batch per step, so a
step with 1,000 decoding sequences produces 1,000 identical inter-token-latency samples. A
weighted ``observe(value, count)`` makes that one ``bisect`` instead of 1,000 lock-protected calls,
which is what keeps 88 engines on two cores (docs/simulator.md has the numbers). Exposition still
goes through ``prometheus_client`` (a custom collector on a per-engine ``CollectorRegistry``), so
the text format, escaping and ``_created`` series are the library's, as in vLLM.

Names, help texts, label names and bucket edges are copied from vLLM (``vllm/v1/metrics``); the
unit test ``tests/unit/test_sim_metrics.py`` diffs them against a recorded real ``/metrics``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
"""``vllm/v1/engine/__init__.py FINISH_REASON_STRINGS`` order, as exposed."""

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


def build_1_2_5_buckets(max_value: int) -> tuple[float, ...]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to ``max_value`` (max_model_len)."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(out)
            out.append(float(value))
        exponent += 1


def _le(edge: float) -> str:
    """Bucket label exactly as prometheus_client renders it (``floatToGoString``)."""
    return repr(float(edge))


class WeightedHistogram:
    """Cumulative-bucket histogram that accepts ``count`` identical observations at once."""

    __slots__ = ("_counts", "count", "edges", "sum")

    def __init__(self, edges: Sequence[float]) -> None:
        self.edges = tuple(float(e) for e in edges)
        self._counts = [0] * (len(self.edges) + 1)  # last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, count: int = 1) -> None:
        """Add ``count`` samples of ``value`` (le-semantics: value == edge lands in that bucket)."""
        if count <= 0:
            return
        self._counts[bisect_left(self.edges, value)] += count
        self.sum += value * count
        self.count += count

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs including ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for edge, n in zip(self.edges, self._counts, strict=False):
            running += n
            out.append((_le(edge), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


# (attribute, exposed family name without suffix, help text, buckets selector)
_HISTOGRAMS: tuple[tuple[str, str, str, str], ...] = (
    ("prompt_tokens_hist", "vllm:request_prompt_tokens", "Number of prefill tokens processed.",
     "tokens"),
    ("generation_tokens_hist", "vllm:request_generation_tokens",
     "Number of generation tokens processed.", "tokens"),
    ("ttft", "vllm:time_to_first_token_seconds",
     "Histogram of time to first token in seconds.", "ttft"),
    ("itl", "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
     "itl"),
    ("tpot", "vllm:request_time_per_output_token_seconds",
     "Histogram of time_per_output_token_seconds per request.", "itl"),
    ("e2e", "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
     "latency"),
    ("queue_time", "vllm:request_queue_time_seconds",
     "Histogram of time spent in WAITING phase for request.", "latency"),
    ("inference_time", "vllm:request_inference_time_seconds",
     "Histogram of time spent in RUNNING phase for request.", "latency"),
    ("prefill_time", "vllm:request_prefill_time_seconds",
     "Histogram of time spent in PREFILL phase for request.", "latency"),
    ("decode_time", "vllm:request_decode_time_seconds",
     "Histogram of time spent in DECODE phase for request.", "latency"),
)  # fmt: skip

CLAIMED_FAMILIES: tuple[str, ...] = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    *(name for _, name, _, _ in _HISTOGRAMS),
)
"""Family names as ``text_string_to_metric_families`` reports them (counters without _total)."""


class EngineMetrics:
    """Counters and histograms of one engine; gauges are read live from the model at scrape."""

    def __init__(self, max_model_len: int) -> None:
        token_buckets = build_1_2_5_buckets(max_model_len)
        selectors = {
            "tokens": token_buckets,
            "ttft": TTFT_BUCKETS,
            "itl": ITL_BUCKETS,
            "latency": REQUEST_LATENCY_BUCKETS,
        }
        self.created = time.time()
        self.prompt_tokens = 0
        #: prompt tokens whose KV came from a prefill engine (P/D decode side)
        self.prompt_tokens_external = 0
        self.generation_tokens = 0
        self.num_preemptions = 0
        # Automatic prefix caching, in tokens (sim/prefix_cache.py).
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.request_success = dict.fromkeys(FINISH_REASONS, 0)
        self.prompt_tokens_hist = WeightedHistogram(selectors["tokens"])
        self.generation_tokens_hist = WeightedHistogram(selectors["tokens"])
        self.ttft = WeightedHistogram(selectors["ttft"])
        self.itl = WeightedHistogram(selectors["itl"])
        self.tpot = WeightedHistogram(selectors["itl"])
        self.e2e = WeightedHistogram(selectors["latency"])
        self.queue_time = WeightedHistogram(selectors["latency"])
        self.inference_time = WeightedHistogram(selectors["latency"])
        self.prefill_time = WeightedHistogram(selectors["latency"])
        self.decode_time = WeightedHistogram(selectors["latency"])

    def histogram(self, attribute: str) -> WeightedHistogram:
        """Look a histogram up by attribute name (used by tests and the collector)."""
        hist = getattr(self, attribute)
        assert isinstance(hist, WeightedHistogram)
        return hist


class GaugeSource(Protocol):
    """What the collector needs from the live engine; implemented by ``model.Engine``."""

    def gauges(self) -> tuple[int, int, float]:
        """(running, waiting, kv_cache_usage 0..1)."""
        ...


class EngineCollector:
    """A ``prometheus_client`` custom collector rendering one engine's families."""

    def __init__(
        self, metrics: EngineMetrics, source: GaugeSource, model_name: str, engine: str = "0"
    ) -> None:
        self._m = metrics
        self._source = source
        self._labels = {"engine": engine, "model_name": model_name}
        self._values = [engine, model_name]

    def _created(self, family: Metric, name: str, extra: dict[str, str] | None = None) -> None:
        labels = {**self._labels, **(extra or {})}
        family.samples.append(Sample(f"{name}_created", labels, self._m.created))

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc, labels=["engine", "model_name"])
        fam.add_metric(self._values, value, created=self._m.created)
        return fam

    def collect(self) -> Iterator[Metric]:
        """Yield families in vLLM's registration order."""
        running, waiting, kv_usage = self._source.gauges()
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.",
             running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(name, doc, labels=["engine", "model_name"])
            gauge.add_metric(self._values, float(value))
            yield gauge
        m = self._m
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            m.prefix_cache_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            m.prefix_cache_hits,
        )
        yield self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
            m.num_preemptions,
        )  # fmt: skip
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", m.prompt_tokens
        )
        by_source = CounterMetricFamily(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            labels=["engine", "model_name", "source"],
        )
        engine_label, model_label = self._values
        for source, count in (
            ("local_compute", m.prompt_tokens - m.prompt_tokens_external),
            ("external_kv_transfer", m.prompt_tokens_external),
        ):
            by_source.add_metric([engine_label, model_label, source], count, created=m.created)
        yield by_source
        yield self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", m.generation_tokens
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["engine", "finished_reason", "model_name"],
        )
        engine, model_name = self._values
        for reason, count in m.request_success.items():
            success.add_metric([engine, reason, model_name], count, created=m.created)
        yield success
        for attribute, name, doc, _ in _HISTOGRAMS:
            hist = m.histogram(attribute)
            fam = HistogramMetricFamily(name, doc, labels=["engine", "model_name"])
            fam.add_metric(self._values, hist.cumulative(), hist.sum)
            self._created(fam, name)
            yield fam


def new_registry(collector: EngineCollector) -> CollectorRegistry:
    """A registry holding only this engine's families (no process/GC collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4, as vLLM serves it."""
    return generate_latest(registry)

"""Turn raw vLLM ``/metrics`` text into per-pod and per-pool rates.

Why a separate, I/O-free module: counters only become a signal once two scrapes are compared, and
the corner cases (a restarted engine whose counters start again at zero, a pod that appears or
disappears between passes, a pod that is ready but has not answered yet) are where autoscalers go
wrong. Keeping them here makes every case a plain unit test.

Conventions (see ``docs/autoscaling.md``):

* Every vLLM series carries an ``engine`` label (one per data-parallel rank); a pod's value is the
  sum over engines, except KV-cache use, which is a fraction and is averaged.
* Counter reset (new value < old value) means the engine restarted. As Prometheus' ``rate()`` does,
  the new value is taken as the increase since the restart (counters start at zero), so one
  interval slightly under-reads instead of producing a huge negative rate.
* A pod scraped for the first time has gauges but no rate yet: it is reported as ``warming``, and
  a pod that never answered is ``starting``; neither counts as zero load.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

GENERATION_TOKENS = "vllm:generation_tokens_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
PREEMPTIONS = "vllm:num_preemptions_total"
REQUESTS_FINISHED = "vllm:request_success_total"
REQUESTS_RUNNING = "vllm:num_requests_running"
REQUESTS_WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
_SUMMED = (
    GENERATION_TOKENS,
    PROMPT_TOKENS,
    PREEMPTIONS,
    REQUESTS_FINISHED,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
)


class MetricsParseError(ValueError):
    """The body is not Prometheus text, or it lacks vLLM's engine metrics."""


@dataclass(frozen=True)
class PodScrape:
    """The raw values of one successful scrape of one pod (summed over ``engine``)."""

    generation_tokens: float
    prompt_tokens: float
    preemptions: float
    requests_finished: float
    requests_running: float
    requests_waiting: float
    kv_cache_usage: float
    engines: int


def parse_metrics(text: str) -> PodScrape:
    """Parse a vLLM exposition body with prometheus-client's parser.

    Raises :class:`MetricsParseError` when the text does not parse, carries no
    ``vllm:generation_tokens_total`` (e.g. a non-vLLM server on the port), or a sample the
    signal uses is NaN or infinite: such a value would poison every rate and replica count
    computed from it (``math.ceil(nan)`` raises), so the pod counts as a bad scrape (hold).
    A body that does not end in a line feed is truncated (the text format ends every line
    with one): a connection dropped inside a counter's value would otherwise parse as a
    counter 10-10,000x low and collapse the rate.
    """
    sums: dict[str, float] = dict.fromkeys(_SUMMED, 0.0)
    seen: set[str] = set()
    kv: list[float] = []
    engines: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("vllm:"):
                continue
            for sample in family.samples:
                if (sample.name in sums or sample.name == KV_CACHE_USAGE) and not math.isfinite(
                    sample.value
                ):
                    raise MetricsParseError(f"{sample.name} is {sample.value}: not a number")
                if sample.name in sums:
                    sums[sample.name] += sample.value
                    seen.add(sample.name)
                    engines.add(sample.labels.get("engine", ""))
                elif sample.name == KV_CACHE_USAGE:
                    kv.append(sample.value)
    except ValueError as err:  # the parser raises ValueError on malformed lines
        raise MetricsParseError(f"unparsable /metrics body: {err}") from err
    if text and not text.endswith("\n"):
        raise MetricsParseError("truncated /metrics body (no final line feed)")
    if GENERATION_TOKENS not in seen:
        raise MetricsParseError(f"no {GENERATION_TOKENS} in /metrics body; not a vLLM engine?")
    return PodScrape(
        generation_tokens=sums[GENERATION_TOKENS],
        prompt_tokens=sums[PROMPT_TOKENS],
        preemptions=sums[PREEMPTIONS],
        requests_finished=sums[REQUESTS_FINISHED],
        requests_running=sums[REQUESTS_RUNNING],
        requests_waiting=sums[REQUESTS_WAITING],
        kv_cache_usage=sum(kv) / len(kv) if kv else 0.0,
        engines=max(1, len(engines)),
    )


PodState = Literal["ok", "warming", "starting", "error"]


@dataclass(frozen=True)
class PodRates:
    """One pod's signal in one pass. Rates are ``None`` until two scrapes exist."""

    pod: str
    pool: str
    state: PodState
    generation_tps: float | None = None
    prompt_tps: float | None = None
    preemptions_per_s: float | None = None
    finished_per_s: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    counter_reset: bool = False
    error: str = ""


@dataclass(frozen=True)
class PoolSignal:
    """A pool's aggregated signal at one instant; the per-pool part of a decision Sample.

    ``pods_reporting`` pods contributed rates; ``pods_missing`` are ready pods without a rate
    (starting, warming or failed scrape). A pool with missing pods has a lower-bound load, which
    the decision may use to scale up but never to scale down.
    """

    generation_tps: float = 0.0
    prompt_tps: float = 0.0
    requests_running: float = 0.0
    requests_waiting: float = 0.0
    kv_cache_usage_sum: float = 0.0
    preemptions_per_s: float = 0.0
    finished_per_s: float = 0.0
    pods_reporting: int = 0
    pods_missing: int = 0
    scrape_errors: int = 0

    @property
    def complete(self) -> bool:
        """Every ready pod contributed a rate."""
        return self.pods_missing == 0

    @property
    def kv_cache_usage(self) -> float | None:
        """Mean KV-cache use over reporting pods."""
        return self.kv_cache_usage_sum / self.pods_reporting if self.pods_reporting else None


@dataclass
class _History:
    time: float
    scrape: PodScrape


def _delta(new: float, old: float) -> tuple[float, bool]:
    """Counter increase; a decrease means the engine restarted (value counts from zero)."""
    if new < old:
        return new, True
    return new - old, False


@dataclass
class RateTracker:
    """Per-pod counter history of one InferenceService, kept between passes (in memory).

    Losing it on an operator restart costs one interval of ``warming`` pods, which the decision
    treats as missing data (hold), so it needs no persistence.
    """

    _last: dict[str, _History] = field(default_factory=dict)

    def update(
        self,
        now: float,
        scrapes: Mapping[str, tuple[str, PodScrape | str | None]],
    ) -> list[PodRates]:
        """Fold one pass into the history and return each pod's rates.

        ``scrapes`` maps pod name to ``(pool, result)`` where result is a :class:`PodScrape`,
        an error string, or ``None`` when the pod is ready but was not scraped yet. Pods absent
        from ``scrapes`` are forgotten (deleted or no longer ready).
        """
        out: list[PodRates] = []
        for pod in sorted(scrapes):
            pool, result = scrapes[pod]
            if result is None:
                out.append(PodRates(pod=pod, pool=pool, state="starting"))
                continue
            if isinstance(result, str):
                out.append(PodRates(pod=pod, pool=pool, state="error", error=result))
                continue
            previous = self._last.get(pod)
            self._last[pod] = _History(now, result)
            elapsed = now - previous.time if previous else 0.0
            if previous is None or elapsed <= 0:
                out.append(
                    PodRates(
                        pod=pod,
                        pool=pool,
                        state="warming",
                        requests_running=result.requests_running,
                        requests_waiting=result.requests_waiting,
                        kv_cache_usage=result.kv_cache_usage,
                    )
                )
                continue
            gen, reset_g = _delta(result.generation_tokens, previous.scrape.generation_tokens)
            prompt, reset_p = _delta(result.prompt_tokens, previous.scrape.prompt_tokens)
            pre, reset_x = _delta(result.preemptions, previous.scrape.preemptions)
            done, reset_d = _delta(result.requests_finished, previous.scrape.requests_finished)
            out.append(
                PodRates(
                    pod=pod,
                    pool=pool,
                    state="ok",
                    generation_tps=gen / elapsed,
                    prompt_tps=prompt / elapsed,
                    preemptions_per_s=pre / elapsed,
                    finished_per_s=done / elapsed,
                    counter_reset=reset_g or reset_p or reset_x or reset_d,
                    requests_running=result.requests_running,
                    requests_waiting=result.requests_waiting,
                    kv_cache_usage=result.kv_cache_usage,
                )
            )
        for gone in set(self._last) - set(scrapes):
            del self._last[gone]
        return out


def aggregate(rates: Iterable[PodRates], pools: Iterable[str]) -> dict[str, PoolSignal]:
    """Sum pod rates into one :class:`PoolSignal` per pool (pools without pods included)."""
    acc: dict[str, dict[str, float]] = {p: {} for p in pools}
    for r in rates:
        a = acc.setdefault(r.pool, {})
        if r.state == "error":
            a["scrape_errors"] = a.get("scrape_errors", 0) + 1
        if r.state != "ok":
            a["pods_missing"] = a.get("pods_missing", 0) + 1
            continue
        a["pods_reporting"] = a.get("pods_reporting", 0) + 1
        for key, value in (
            ("generation_tps", r.generation_tps),
            ("prompt_tps", r.prompt_tps),
            ("requests_running", r.requests_running),
            ("requests_waiting", r.requests_waiting),
            ("kv_cache_usage_sum", r.kv_cache_usage),
            ("preemptions_per_s", r.preemptions_per_s),
            ("finished_per_s", r.finished_per_s),
        ):
            a[key] = a.get(key, 0.0) + (value or 0.0)
    return {
        pool: PoolSignal(
            generation_tps=a.get("generation_tps", 0.0),
            prompt_tps=a.get("prompt_tps", 0.0),
            requests_running=a.get("requests_running", 0.0),
            requests_waiting=a.get("requests_waiting", 0.0),
            kv_cache_usage_sum=a.get("kv_cache_usage_sum", 0.0),
            preemptions_per_s=a.get("preemptions_per_s", 0.0),
            finished_per_s=a.get("finished_per_s", 0.0),
            pods_reporting=int(a.get("pods_reporting", 0)),
            pods_missing=int(a.get("pods_missing", 0)),
            scrape_errors=int(a.get("scrape_errors", 0)),
        )
        for pool, a in sorted(acc.items())
    }


@dataclass(frozen=True)
class Sample:
    """Every pool's signal at one time: one element of the decision window."""

    time: float
    pools: Mapping[str, PoolSignal]

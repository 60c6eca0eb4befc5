"""The two percentile definitions in tokenscale, named so that "p99" never means both unnoticed.

Which one a figure uses depends on what it is compared with (docs/benchmarks.md, "What p99
means"):

* :func:`percentile_nearest_rank` is MLPerf LoadGen's: sort, then take the sample at index
  ``floor(n * p)`` (``loadgen/results.cc``, ``ProcessLatencies``), always an observed value.
  Every SLA *verdict* uses it (``bench.verdict``, ``sim`` summaries), so "p99 TTFT <= 2 s"
  passes or fails exactly as LoadGen would judge the same latencies. With 100 samples, p99 is
  the largest one: one slow request out of 100 fails a p99 limit, as in LoadGen.
* :func:`percentile_linear` interpolates between the two nearest ranks, like
  ``numpy.percentile``'s default and therefore ``vllm bench serve``. The *reported* figures of
  ``tokenscale bench`` (p50 ... p99.9 in results, status and the HTML report, schedule lag) use
  it, so they compare one to one with ``vllm bench serve`` on the same requests.

The two differ by less than the gap between neighbouring samples around the percentile; with
thousands of requests that is noise, with a hundred it can decide a verdict. Both are pure and
need no numpy (kept out of the operator image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile_linear(sorted_values: Sequence[float], q: float) -> float:
    """``q``-th percentile (0-100) of already sorted values, linear interpolation.

    Rank ``(n - 1) * q / 100`` between neighbours, as ``numpy.percentile(..., method="linear")``.
    See :func:`percentile_nearest_rank` for the definition SLA verdicts use.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = rank - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def percentile_nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """``q``-th percentile (0-100) of already sorted values, as MLPerf LoadGen computes it.

    The sample at 0-based index ``floor(n * q / 100)`` (clamped to the last): the smallest value
    with more than ``q`` % of the samples at or below it. Where ``n * q / 100`` is not an integer
    this is the textbook nearest rank ``ceil(n * q / 100)``; where it is, LoadGen takes the next
    sample up, and so does this. See :func:`percentile_linear` for the reported figures.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    n = len(sorted_values)
    return sorted_values[min(n - 1, max(0, int(n * (q / 100.0))))]

"""Bounded retry with exponential backoff and full jitter, for the benchmark pod's few calls.

The operator's loops run again on their own, so they need no retry. A benchmark Job does not:
it runs with ``backoffLimit: 0``, so one API-server blip while it publishes the result of a
multi-hour run would fail the Job and lose the result. Full jitter (a random delay between 0
and the exponential cap) keeps the shards of a sharded run from retrying in lock-step. Fifteen
lines do not justify a dependency (tenacity, stamina).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

#: HTTP statuses worth another try: conflict, throttling, and the server's own failures.
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class GaveUp(RuntimeError):
    """Every attempt failed; ``last`` is the final error."""

    def __init__(self, what: str, attempts: int, waited: float, last: BaseException) -> None:
        self.last = last
        super().__init__(
            f"{what}: gave up after {attempts} attempts over {waited:.1f} s of backoff; "
            f"last error: {last}"
        )


def with_backoff(
    call: Callable[[], T],
    *,
    what: str,
    retryable: Callable[[Exception], bool],
    attempts: int = 6,
    base_seconds: float = 0.5,
    cap_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """``call()``, retried on errors ``retryable`` accepts, at most ``attempts`` times in all.

    A non-retryable error propagates at once; after the last attempt :class:`GaveUp` names
    ``what``, the number of attempts and the last error.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    waited = 0.0
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if not retryable(exc):
                raise
            if attempt == attempts - 1:
                raise GaveUp(what, attempts, waited, exc) from exc
            delay = jitter() * min(cap_seconds, base_seconds * 2**attempt)
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, exc, attempt + 1,
                        attempts - 1, delay)  # fmt: skip
            sleep(delay)
            waited += delay
    raise AssertionError("unreachable: attempts must be at least 1")

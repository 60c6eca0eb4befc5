"""A live one-line progress display on stderr, only when stderr is a terminal.

Plain ``\\r``-rewritten text (no extra dependency), refreshed twice a second from a loop timer so
it costs nothing per request. In a pod (no TTY) it stays silent and logs stay clean.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

#: () -> (sent, done, in_flight, output_tokens)
Snapshot = Callable[[], tuple[int, int, int, int]]


class Progress:
    """Rewrites one status line on stderr every ``interval_s`` while a run is going."""

    def __init__(
        self, label: str, total: int, snapshot: Snapshot, t0: float, interval_s: float = 0.5
    ) -> None:
        self.label, self.total, self.snapshot, self.t0 = label, total, snapshot, t0
        self.interval_s = interval_s
        self._handle: asyncio.TimerHandle | None = None
        self._shown = False

    def start(self) -> None:
        """Begin refreshing, if stderr is a terminal."""
        if sys.stderr.isatty():
            self._schedule()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        sys.stderr.write("\r" + self.line())
        sys.stderr.flush()
        self._shown = True
        self._schedule()

    def line(self) -> str:
        """The status text, e.g. ``server 40% [####----] 400/1000 done, 12 in flight``."""
        sent, done, in_flight, tokens = self.snapshot()
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        frac = done / self.total if self.total else 0.0
        width = 20
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        return (
            f"{self.label} {frac:4.0%} [{bar}] {done}/{self.total} done, {sent} sent, "
            f"{in_flight} in flight, {tokens / elapsed:,.0f} tok/s, {elapsed:.1f} s  "
        )

    def stop(self) -> None:
        """Stop refreshing and end the line."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._shown:
            sys.stderr.write("\r" + self.line() + "\n")
            sys.stderr.flush()
            self._shown = False

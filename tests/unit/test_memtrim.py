"""The heap trimmer: really calls glibc's malloc_trim here, and stops when asked."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tokenscale.controller import memtrim


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) / 1024


def test_the_trimmer_gives_freed_heap_in_the_middle_back() -> None:
    """What the operator's threads leave behind: chunks freed between chunks still alive (the
    heap cannot shrink from its top). free() keeps them resident; malloc_trim returns them."""
    trim = memtrim.trimmer()
    if trim is None or not Path("/proc/self/status").exists():
        pytest.skip("no glibc malloc_trim or no /proc here")
    keep, junk = [], []
    for i in range(2000):
        chunk = bytearray(b"x" * 60_000)  # under glibc's 128 KiB mmap threshold: on the heap
        (keep if i % 10 == 0 else junk).append(chunk)
    del junk
    held = _rss_mib()
    trim()
    assert held - _rss_mib() > 50, "malloc_trim returned (almost) nothing of ~100 MiB freed"
    assert len(keep) == 200


def test_trim_forever_trims_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(memtrim, "trimmer", lambda: lambda: calls.append(time.monotonic()) or True)
    stop = threading.Event()
    thread = threading.Thread(target=memtrim.trim_forever, args=(stop, 0.01))
    thread.start()
    time.sleep(0.2)
    stop.set()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert len(calls) >= 3
    seen = len(calls)
    time.sleep(0.05)
    assert len(calls) == seen  # nothing after the stop


def test_without_malloc_trim_the_loop_returns_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memtrim, "trimmer", lambda: None)
    started = time.monotonic()
    memtrim.trim_forever(threading.Event(), 60.0)
    assert time.monotonic() - started < 1.0


_ARENAS_SCRIPT = """
import ctypes, sys, threading
from tokenscale.controller import memtrim
if sys.argv[1] == "limit":
    assert memtrim.limit_arenas()
alive = threading.Barrier(8)
def work():
    junk = [bytearray(2000) for _ in range(2000)]
    alive.wait()  # all eight threads alive at once, as the operator's are
    del junk
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str) -> int:
    """Heaps glibc made for a process with 8 live threads that allocated (malloc_stats counts)."""
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS_SCRIPT, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


def test_limit_arenas_keeps_threads_to_two_heaps() -> None:
    if memtrim.trimmer() is None:
        pytest.skip("not glibc")
    assert _arenas("default") > memtrim.ARENAS  # the test can fail: threads spread otherwise
    assert _arenas("limit") <= memtrim.ARENAS

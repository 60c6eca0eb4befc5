"""Hand the C heap's free pages back to the kernel now and then (glibc's ``malloc_trim``).

Why: the operator's threads (Kopf's handler pool, the refresh threads, the HTTP clients) free
JSON bodies and buffers of every size in an order nobody controls; glibc keeps the freed
chunks in its heaps for reuse and returns only the free space at a heap's top. The churn drill
(``tests/e2e/test_drill_churn.py``, 200 services replaced every ~3 min) saw the memory glibc
held as free grow by ~0.8 MB a minute while the memory in use stayed flat (``mallinfo2``:
46.8 MB in use throughout; free 3.6 -> 8.0 MB in 4 minutes), and RSS with it: a slope that
reads like a leak but is only freed memory kept. ``malloc_trim(0)`` walks every arena and
gives whole free pages back (``MADV_DONTNEED``), also from the middle of a heap.

CPython's own small-object arenas are not glibc's and are not touched (see docs/operator.md).
On a C library without ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Seconds between trims: each walks the free chunks of every heap (a few ms at 100 MB).
TRIM_SECONDS = 60.0
#: glibc's ``mallopt`` parameter for the number of heaps ("arenas") threads may spread over.
M_ARENA_MAX = -8
#: Heaps the operator's threads share (glibc's default is eight per core).
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Have glibc keep at most ``arenas`` heaps, as ``MALLOC_ARENA_MAX`` would; call it before
    the threads start. False where the C library has no ``mallopt`` (musl, macOS).

    Why: glibc gives each new thread a heap of its own (up to eight per core), and a chunk
    freed in one heap is reused only there. The operator's two dozen threads each take JSON
    bodies of every size in turn, so free space piled up in heaps other threads could not
    use: in the churn drill (1,000 services) the heaps grew from 74 to 104 MB in five minutes
    while the memory in use stayed at 40 MB. Fewer heaps means more lock waits between
    threads, which here are mostly waiting on the API server anyway.
    """
    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


def _libc_function(name: str, argtypes: list[Any]) -> Any | None:
    """A function of this process's C library, typed ``argtypes -> int``; None where the
    library or the function is missing (musl, macOS)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def trimmer() -> Callable[[], bool] | None:
    """``malloc_trim(0)`` of this process's C library, or None where there is none."""
    trim = _libc_function("malloc_trim", [ctypes.c_size_t])
    return None if trim is None else lambda: bool(trim(0))


def trim_forever(stop: threading.Event, every: float = TRIM_SECONDS) -> None:
    """Trim every ``every`` seconds until ``stop`` is set (the body of a daemon thread)."""
    trim = trimmer()
    if trim is None:
        log.info("no malloc_trim in this C library: the C heap is not trimmed")
        return
    while not stop.wait(every):
        trim()


def start(stop: threading.Event) -> None:
    threading.Thread(target=trim_forever, args=(stop,), name="malloc-trim", daemon=True).start()

"""Start and stop test-bed processes by PID, each in its own process group.

Why: the test bed must never leave stray etcd/apiserver processes behind (CI runners and
developer laptops are shared) and must never kill anything it did not start — so no
``pkill -f``.  Every component gets its own session/process group (so a SIGTERM reaches
its children too), its log goes to a file, and its identity is PID + kernel start time
(guards against PID reuse when ``down`` runs from another process much later).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_CLEANUPS: list[Callable[[], None]] = []
_HANDLERS_INSTALLED = False


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) and None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process is SIGKILLed, the
    # kernel sends SIGTERM to the component, so even `kill -9 pytest` leaves nothing.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Proc:
    """One started component. ``popen`` is only set in the process that started it."""

    name: str
    pid: int
    start_time: int
    log_path: str
    argv: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return _start_time(self.pid) == self.start_time

    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "popen"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Proc:
        return cls(**{k: v for k, v in d.items() if k != "popen"})

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal this component's process group, only if it is still the same process."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
    meta: dict[str, Any] | None = None,
) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    start = _start_time(popen.pid)
    return Proc(
        name=name,
        pid=popen.pid,
        start_time=start if start is not None else -1,
        log_path=str(log_path),
        argv=list(argv),
        meta=meta or {},
        popen=popen,
    )


def terminate(procs: Iterable[Proc], *, grace: float = 15.0) -> list[str]:
    """SIGTERM in the given order, wait up to ``grace`` seconds, SIGKILL survivors.

    Returns the names of components that had to be SIGKILLed.
    """
    procs = list(procs)
    for p in procs:
        p.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        time.sleep(0.1)
    killed = []
    for p in procs:
        if p.alive():
            killed.append(p.name)
            p.signal_group(signal.SIGKILL)
    for p in procs:
        if p.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=5)
        # Whatever is left in the group (children that ignored SIGTERM) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if p.popen is not None:
                os.killpg(p.pid, signal.SIGKILL)
    return killed


def wait_until(
    check: Callable[[], bool], *, timeout: float, interval: float = 0.25, what: str = "condition"
) -> None:
    """Poll ``check`` until true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tail(path: str | Path, lines: int = 40) -> str:
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


def add_cleanup(fn: Callable[[], None]) -> None:
    """Run ``fn`` when SIGTERM/SIGHUP arrives (then die of that signal as usual).

    Ctrl-C needs nothing extra (KeyboardInterrupt unwinds through fixtures and atexit), but
    SIGTERM/SIGHUP would otherwise kill Python without running either.
    """
    global _HANDLERS_INSTALLED
    _CLEANUPS.append(fn)
    if _HANDLERS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    _HANDLERS_INSTALLED = True
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) not in (signal.SIG_DFL, None):
            continue  # somebody else owns it

        def handler(_signum: int, _frame: object, _sig: signal.Signals = sig) -> None:
            for cleanup in list(reversed(_CLEANUPS)):
                cleanup()
            signal.signal(_sig, signal.SIG_DFL)
            os.kill(os.getpid(), _sig)

        signal.signal(sig, handler)


def remove_cleanup(fn: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _CLEANUPS.remove(fn)

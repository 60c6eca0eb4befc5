"""Starting, signalling and sweeping the local processes of pods.

Why separate from the pod state machine: process-group handling is where stray processes come
from. Every container process is started through ``nsexec`` in a new session (its pid is the
process-group id), carries a marker variable with the pod UID, and after the group is killed a
sweep of ``/proc`` SIGKILLs anything that still carries the marker (children that called
``setsid`` escape the group but not the sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
NSEXEC = str(Path(__file__).with_name("nsexec.py"))
MARKER = "TESTBED_KUBELET_POD_UID"


async def spawn(
    spec_file: Path,
    *,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    mounts: list[dict[str, object]],
    log_file: IO[bytes],
    hostname: str = "",
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a private mount namespace, in its own session, logging to ``log_file``."""
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(
            {
                "argv": list(argv),
                "env": dict(env),
                "cwd": cwd,
                "mounts": mounts,
                "hostname": hostname,
            },
            fh,
        )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        NSEXEC,
        str(spec_file),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        start_new_session=True,
        env={"PATH": "/usr/bin:/bin"},
    )


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM the container's main process, wait up to ``grace`` seconds, then SIGKILL the
    whole group; returns rc.

    Like a real container runtime, only the main process gets SIGTERM: servers such as vLLM
    drain in-flight requests and stop their own workers, which a group-wide SIGTERM would kill
    mid-step.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(grace, 0.1))
        except TimeoutError:
            log.info("pid %s ignored SIGTERM for %.0fs; SIGKILL", proc.pid, grace)
    signal_group(proc.pid, signal.SIGKILL)  # leftovers in the group, even if the leader exited
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), timeout=10)
    return proc.returncode if proc.returncode is not None else -9


def marked_pids(uid: str) -> list[int]:
    """PIDs whose environment carries ``MARKER=uid``."""
    needle = f"{MARKER}={uid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep(uid: str) -> list[int]:
    """SIGKILL every process still carrying the pod's marker; returns the pids killed."""
    pids = marked_pids(uid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        log.warning("pod uid %s: killed stray processes %s", uid, pids)
    return pids


def open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab", buffering=0)


def log_line(fh: IO[bytes], text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        fh.write(f"[process-kubelet] {text}\n".encode())
    if sys.flags.dev_mode:
        log.debug(text)

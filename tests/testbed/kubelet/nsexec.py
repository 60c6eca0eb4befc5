"""Exec a pod's process in its own private mount namespace (stdlib only, run with ``python -I``).

Why a wrapper process: mounts must be made after ``unshare(CLONE_NEWNS)`` in the child and before
``exec``; doing that in a ``preexec_fn`` of a threaded asyncio program is unsafe. This script reads
a JSON spec, unshares, makes ``/`` private (nothing leaks back to the host), bind-mounts the pod's
files (``/etc/hosts``, ``/etc/resolv.conf``, the ServiceAccount dir, volumes) or tmpfs, then
``execvpe``s the container's argv with the pod's env and working dir. The pid stays the same, so
the kubelet signals the real process (group).

Usage: ``python -I nsexec.py SPEC.json``. Exit codes: 125 mount failure, 126 exec failure,
127 command not found.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1


def _fail(code: int, msg: str) -> None:
    sys.stderr.write(f"[process-kubelet] {msg}\n")
    sys.stderr.flush()
    os._exit(code)


def _mount(
    libc: ctypes.CDLL,
    src: str | None,
    dst: str,
    fstype: str | None,
    flags: int,
    data: str | None = None,
) -> None:
    rc = libc.mount(
        src.encode() if src else None,
        dst.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} -> {dst}: {os.strerror(err)}")


def _ensure_target(src: str | None, dst: str, *, is_file: bool = False) -> None:
    """Create a missing mount point (on the shared filesystem: mount namespaces share files)."""
    target = Path(dst)
    if target.exists() or target.is_symlink():
        return
    if is_file or (src and Path(src).is_file()):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    else:
        target.mkdir(parents=True, exist_ok=True)


def _preserved(path_env: str) -> list[str]:
    """Host directories the program itself lives in (PATH entries, or their venv roots).

    In a real container the image filesystem is separate from volumes; here the "image" is a
    host directory (e.g. a venv under /tmp on a CI runner) that a volume mounted at /tmp would
    hide, so these are bound back on top of any mount that covers them.
    """
    out: list[str] = []
    for entry in filter(None, path_env.split(":")):
        path = Path(entry)
        root = path.parent if (path.parent / "pyvenv.cfg").exists() else path
        if root.is_dir() and str(root) not in out and str(root) != "/":
            out.append(str(root))
        # Editable installs point at source trees through .pth files; keep those too.
        for pth in root.glob("lib/python*/site-packages/*.pth"):
            for line in pth.read_text(errors="replace").splitlines():
                if line.startswith("/") and Path(line).is_dir() and line not in out:
                    out.append(line)
    return out


def setup_mounts(
    mounts: list[dict[str, object]], hostname: str = "", preserve: list[str] | None = None
) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNS | (CLONE_NEWUTS if hostname else 0)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")
    if hostname:  # like a pod: gethostname() is the pod's name, which /etc/hosts maps to its IP
        name = hostname.encode()
        if libc.sethostname(name, len(name)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sethostname({hostname}): {os.strerror(err)}")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    # Pin every bind source before mounting anything: an earlier mount (e.g. an emptyDir at
    # /tmp) may hide a later source that lives under it (a work dir in /tmp).
    pinned: dict[int, tuple[str, bool]] = {}
    for index, m in enumerate(mounts):
        if m.get("kind") != "tmpfs":
            src = str(m["src"])
            try:
                pinned[index] = (f"/proc/self/fd/{os.open(src, os.O_PATH)}", Path(src).is_file())
            except OSError as exc:
                raise OSError(exc.errno, f"volume source {src}: {exc.strerror}") from None
    kept = {p: f"/proc/self/fd/{os.open(p, os.O_PATH)}" for p in preserve or []}
    for index, m in enumerate(mounts):
        dst = str(m["dst"])
        if m.get("kind") == "tmpfs":
            _ensure_target(None, dst)
            size = m.get("size")
            _mount(libc, "tmpfs", dst, "tmpfs", 0, f"size={size}" if size else None)
        else:
            src, is_file = pinned[index]
            _ensure_target(None, dst, is_file=is_file)
            _mount(libc, src, dst, None, MS_BIND | MS_REC)
            if m.get("ro"):
                _mount(libc, None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        for path, handle in kept.items():
            if path.startswith(dst.rstrip("/") + "/"):
                Path(path).mkdir(parents=True, exist_ok=True)
                _mount(libc, handle, path, None, MS_BIND | MS_REC)


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    # If the kubelet itself is SIGKILLed, the pod's main process must not outlive it.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    cwd = str(spec.get("cwd") or "/")
    # A host-side working dir (e.g. under /tmp) may be hidden by a volume mounted over its
    # parent: keep a handle on it from before the mounts, and use it if the path vanishes.
    try:
        cwd_fd: int | None = os.open(cwd, os.O_PATH | os.O_DIRECTORY)
    except OSError:
        cwd_fd = None
    try:
        preserve = _preserved(str(spec["env"].get("PATH", "")))
        setup_mounts(spec.get("mounts", []), str(spec.get("hostname", "")), preserve)
    except OSError as exc:
        _fail(125, f"mount namespace setup failed: {exc}")
    env = {str(k): str(v) for k, v in spec["env"].items()}
    try:
        os.chdir(cwd)
    except OSError as exc:
        if cwd_fd is None:
            _fail(126, f"cannot chdir to {cwd!r}: {exc}")
        else:
            os.fchdir(cwd_fd)
    args = [str(a) for a in spec["argv"]]
    try:
        os.execvpe(args[0], args, env)
    except FileNotFoundError:
        _fail(127, f"executable {args[0]!r} not found in PATH={env.get('PATH')}")
    except OSError as exc:
        _fail(126, f"exec {args[0]!r} failed: {exc}")


if __name__ == "__main__":
    main(sys.argv)

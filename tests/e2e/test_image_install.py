"""The operator image's install steps, run outside Docker (no Docker engine here): build the
wheels exactly as the Dockerfile's build stage does, install them offline into a fresh venv as
its final stage does, and check the entry points the chart and the benchmark Jobs call."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "images" / "operator" / "Dockerfile"

pytestmark = pytest.mark.slow


def test_dockerfile_install_steps_work_outside_docker(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    assert "pip wheel --wheel-dir /wheels -c constraints.txt ." in text
    assert "COPY pyproject.toml README.md constraints.txt ./" in text
    pinned = re.search(r"'tokenscale==([\d.]+)'", text)
    assert pinned, "the final stage must pin the version it installs"
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels),
         "-c", str(ROOT / "constraints.txt"), str(ROOT)],
        check=True,
        timeout=900,
    )  # fmt: skip
    env_dir = tmp_path / "image"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-index", f"--find-links={wheels}",
         f"tokenscale=={pinned.group(1)}"],
        check=True,
        timeout=600,
    )  # fmt: skip
    cli = env_dir / "bin" / "tokenscale"
    version = subprocess.run([str(cli), "version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == pinned.group(1)
    for command in ("run", "bench", "bench-job", "sim", "validate", "render"):
        out = subprocess.run([str(cli), command, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, f"tokenscale {command}: {out.stderr}"
    # Package data the image needs: simulator profiles, datasets, report template.
    probe = (
        "import importlib.resources as r;"
        "print(r.files('tokenscale.sim').joinpath('profiles.yaml').is_file(),"
        " r.files('tokenscale.bench').joinpath('templates/report.html.j2').is_file())"
    )
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
    # Every installed distribution is at the version constraints.txt pins.
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    freeze = subprocess.run([str(py), "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    installed = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    installed.pop("tokenscale", None)
    norm = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    drift = {k: v for k, v in installed.items() if norm.get(k.lower().replace("_", "-")) != v}
    assert not drift, f"installed outside constraints.txt: {drift}"
    # The operator renders reports: jinja2 must arrive without any extra.
    subprocess.run([str(py), "-c", "import tokenscale.bench.report"], check=True)

"""Which images the process kubelet really runs, read from the test bed's operator config.

Pods whose first container uses one of these images (the tokenscale image: simulated engines,
benchmark Jobs, the operator itself; the vLLM CPU image: real engines) are executed as local
processes; KWOK's pod stages skip exactly these, and pretends for every other pod (e.g. ROCm
vLLM pods on fake MI300X nodes). Keeping the list in the operator config means the operator
needs no test-bed labels at all.
"""

from __future__ import annotations

from pathlib import Path

import yaml

OPERATOR_CONFIG = Path(__file__).with_name("operator-config.yaml")


def run_images(config: Path = OPERATOR_CONFIG) -> tuple[str, ...]:
    images = (yaml.safe_load(config.read_text()) or {}).get("images") or {}
    return tuple(sorted({str(images[k]) for k in ("operator", "cpu") if images.get(k)}))

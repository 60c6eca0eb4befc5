"""The CRDs routing.mode inferencePool renders against: InferencePool (vendored) and the
Gateway API's HTTPRoute and Gateway (from the Go module proxy at test time).

Why both: the operator's rendered InferencePool and HTTPRoute are applied to the test bed's real
API server, so the CRDs' own schemas and CEL rules judge them. No gateway controller runs here:
the objects are accepted and stored, nothing routes through them.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

from tests.testbed.cluster import Cluster

HERE = Path(__file__).parent
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_API_VERSION = "v1.6.3"
INFERENCE_POOL_CRD = (
    HERE
    / "crds"
    / "gateway-api-inference-extension-v1.6.0"
    / "inference.networking.k8s.io_inferencepools.yaml"
)
GATEWAY_CRDS = (
    "gateway.networking.k8s.io_httproutes.yaml",
    "gateway.networking.k8s.io_gateways.yaml",
)
CACHE = Path.home() / ".cache" / "tokenscale" / f"gateway-api-{GATEWAY_API_VERSION}"


class GatewayAPIUnavailable(RuntimeError):
    """The Go toolchain or the module proxy could not supply the Gateway API module."""


def gateway_api_crds() -> list[Path]:
    """HTTPRoute and Gateway CRD files, extracted once from the module zip into the cache."""
    paths = [CACHE / name for name in GATEWAY_CRDS]
    if all(p.exists() for p in paths):
        return paths
    try:
        out = subprocess.run(
            ["go", "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            cwd=HERE,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GatewayAPIUnavailable(f"go mod download failed: {exc}") from exc
    info = json.loads(out.stdout or "{}")
    zip_path = info.get("Zip")
    if not zip_path or not Path(zip_path).exists():
        raise GatewayAPIUnavailable(f"go mod download: {info.get('Error') or out.stderr.strip()}")
    CACHE.mkdir(parents=True, exist_ok=True)
    prefix = f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}/config/crd/standard/"
    with zipfile.ZipFile(zip_path) as z:
        for path in paths:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(z.read(prefix + path.name))
            tmp.replace(path)
        (CACHE / "LICENSE").write_bytes(
            z.read(f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}/LICENSE")
        )
    return paths


def install(cluster: Cluster) -> None:
    """Apply the InferencePool and Gateway API CRDs and wait until they are served."""
    for path in [INFERENCE_POOL_CRD, *gateway_api_crds()]:
        cluster.kubectl("apply", "--server-side", "-f", str(path))
    for crd in (
        "inferencepools.inference.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
    ):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")

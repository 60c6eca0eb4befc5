"""tokenscale: LLM inference on AMD Instinct GPUs, scaled on tokens per second."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenscale")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

GROUP = "tokenscale.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

"""Performance profiles: the per (GPU model, model) parameters of the engine model.

Profiles are data, not code, so that recalibrating (or adding a GPU) is a YAML edit that the
calibration benchmark can check, and users can point ``--profiles`` at their own file. The file
shipped in the package is ``profiles.yaml`` next to this module.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PACKAGE_PROFILES = "profiles.yaml"


class ProfileError(ValueError):
    """A profile file is unreadable or invalid, or a (GPU, model) pair is not in it."""


class Reference(BaseModel):
    """The public figure a profile was calibrated against (per 8-GPU node, output tokens/s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="Where the reference numbers come from.")
    server_tokens_per_s: float | None = Field(
        default=None, description="MLPerf Server result for one 8-GPU node."
    )
    offline_tokens_per_s: float | None = Field(
        default=None, description="MLPerf Offline result for one 8-GPU node."
    )


class Profile(BaseModel):
    """Parameters of one simulated engine (one GPU, tensor parallel size 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(description="GPU model name, e.g. MI355X.")
    model: str = Field(description="Model name, e.g. llama-2-70b.")
    precision: str = Field(default="", description="Informational: weight/KV precision assumed.")
    hbm_gib: float = Field(default=0.0, ge=0, description="Informational: GPU memory.")
    max_num_seqs: int = Field(gt=0, description="Default max sequences per step (vLLM flag).")
    max_num_batched_tokens: int = Field(
        gt=0, description="Token budget per step; prompt chunks beyond it wait (chunked prefill)."
    )
    max_model_len: int = Field(gt=1, description="Default context length (prompt + output).")
    kv_cache_tokens: int = Field(gt=0, description="KV-cache capacity in tokens at TP=1.")
    step_base_s: float = Field(ge=0, description="Fixed step cost (weights read, launch).")
    step_per_seq_s: float = Field(ge=0, description="Step cost per decoding sequence.")
    step_per_kv_token_s: float = Field(ge=0, description="Step cost per resident KV token.")
    prefill_per_token_s: float = Field(ge=0, description="Step cost per prompt token computed.")
    tp_efficiency: float = Field(
        default=0.85, gt=0, le=1, description="Fraction of linear speed-up per extra TP rank."
    )
    output_len_mean: float = Field(
        default=294.45,
        gt=0,
        description="Mean natural output length when the client does not set ignore_eos.",
    )
    output_len_sigma: float = Field(
        default=0.8, ge=0, description="Log-normal sigma of the natural output length."
    )
    reference: Reference | None = Field(default=None, description="Calibration target.")

    def scaled(self, tensor_parallel_size: int) -> Profile:
        """Return the profile of a TP-``n`` engine: faster steps, ``n`` times the KV memory.

        The step terms shrink by ``n * tp_efficiency`` (for n > 1) because weights, KV reads and
        FLOPs are split over ranks, minus all-reduce overhead; KV capacity grows with the number
        of GPUs whose HBM holds it. Deliberately simple; see docs/simulator.md for the limits.
        """
        if tensor_parallel_size <= 1:
            return self
        speedup = tensor_parallel_size * self.tp_efficiency
        return self.model_copy(
            update={
                "kv_cache_tokens": self.kv_cache_tokens * tensor_parallel_size,
                "step_base_s": self.step_base_s / speedup,
                "step_per_seq_s": self.step_per_seq_s / speedup,
                "step_per_kv_token_s": self.step_per_kv_token_s / speedup,
                "prefill_per_token_s": self.prefill_per_token_s / speedup,
            }
        )


class ProfileFile(BaseModel):
    """Top level of a profile YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: list[Profile] = Field(description="One entry per (gpu, model).")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def load_profiles(path: Path | None = None) -> list[Profile]:
    """Load and validate a profile file; ``None`` means the one shipped in the package."""
    try:
        if path is None:
            text = resources.files(__package__).joinpath(PACKAGE_PROFILES).read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        return ProfileFile.model_validate(yaml.safe_load(text)).profiles
    except (OSError, yaml.YAMLError, ValidationError) as err:
        where = path or f"package {PACKAGE_PROFILES}"
        raise ProfileError(f"cannot load profiles from {where}: {err}") from err


def get_profile(gpu: str, model: str, path: Path | None = None) -> Profile:
    """Find the profile for ``gpu`` and ``model`` (case-insensitive, ``_`` == ``-``)."""
    profiles = load_profiles(path)
    for profile in profiles:
        if _normalise(profile.gpu) == _normalise(gpu) and _normalise(profile.model) == _normalise(
            model
        ):
            return profile
    known = ", ".join(f"{p.gpu}/{p.model}" for p in profiles)
    raise ProfileError(f"no profile for gpu={gpu!r} model={model!r}; known: {known}")

"""Bad operator-config input for the pod settings of issue 15 fails naming the field, as
``tokenscale plan/render --config`` and the operator's start report it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tokenscale.api.config import OperatorConfig
from tokenscale.render import cli as render_cli

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("pods", "field"),
    [
        ({"resourceNaming": "both"}, "resourceNaming"),
        ({"runAsUser": 0}, "runAsUser"),  # the kubelet refuses UID 0 with runAsNonRoot
        ({"cpuRequestPerGpu": "two"}, "cpuRequestPerGpu"),
        ({"memoryRequestPerGpu": "16GB"}, "memoryRequestPerGpu"),
        ({"seccompUnconfined": "sometimes"}, "seccompUnconfined"),
    ],
)
def test_bad_pod_settings_name_the_field(
    tmp_path: Path, pods: dict[str, object], field: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"pods": pods}))
    result = CliRunner().invoke(
        render_cli.plan_command,
        [str(ROOT / "examples" / "llama2-70b-mi355x.yaml"), "--config", str(path)],
    )
    assert result.exit_code != 0
    assert field in result.output and "invalid operator config" in result.output


@pytest.mark.parametrize(
    ("gpu", "field"),
    [({"vramLabel": "192GB"}, "vramLabel"), ({"wholeGpuProfile": "gpu"}, "wholeGpuProfile")],
)
def test_bad_gpu_entries_name_the_field(gpu: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OperatorConfig.model_validate({"gpus": {"X": {"arch": "gfx942", "hbmGiB": 192, **gpu}}})


def test_defaults() -> None:
    pods = OperatorConfig().pods
    assert pods.resource_naming == "auto"
    assert pods.seccomp_unconfined and pods.sys_ptrace and pods.rocm_aiter
    assert (pods.run_as_user, pods.run_as_group, pods.fs_group) == (1000, 1000, 1000)

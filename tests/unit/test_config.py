"""The operator config file is merged over the built-in defaults along the model's structure: a
platform team writes only what differs, and a typo is still named (the chart's schema drops
``required`` because of this merge, so the merge must really fill every required field)."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml
from click.testing import CliRunner

from tokenscale.api.config import DEFAULT_GPUS, GPUSpec, ImageSpec, OperatorConfig, PodSettings
from tokenscale.chartgen import configuration_markdown
from tokenscale.cli import main


def load(tmp_path: Path, text: str) -> OperatorConfig:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return OperatorConfig.load(path)


def test_partial_gpu_entry_keeps_the_built_in_fields(tmp_path: Path) -> None:
    cfg = load(tmp_path, "gpus:\n  MI300X:\n    costPerGpuHour: 3\n")
    mi300x = cfg.gpus["MI300X"]
    assert mi300x.cost_per_gpu_hour == 3
    assert mi300x.model_copy(update={"cost_per_gpu_hour": 2.0}) == DEFAULT_GPUS["MI300X"]
    assert cfg.gpus["MI355X"] == DEFAULT_GPUS["MI355X"]


def test_snake_case_keys_merge_like_camel_case(tmp_path: Path) -> None:
    cfg = load(tmp_path, "gpus:\n  MI300X:\n    cost_per_gpu_hour: 3\npods:\n  shm_size: 1Gi\n")
    assert cfg.gpus["MI300X"].cost_per_gpu_hour == 3
    assert cfg.gpus["MI300X"].hbm_gib == 192
    assert cfg.pods.shm_size == "1Gi"


def test_nested_catalogue_entries_merge_and_new_ones_are_added(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "gpus:\n  MI300X:\n    partitions:\n      cpx_nps4: {hbmGib: 20}\n"
        "      spx_nps2: {perGpu: 1, hbmGib: 190}\n",
    )
    parts = cfg.gpus["MI300X"].partitions
    assert (parts["cpx_nps4"].per_gpu, parts["cpx_nps4"].hbm_gib) == (8, 20)
    assert parts["spx_nps2"].hbm_gib == 190
    assert parts["qpx_nps1"] == DEFAULT_GPUS["MI300X"].partitions["qpx_nps1"]


def test_nested_settings_merge_but_lists_and_string_maps_are_replaced(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "pods:\n  cpuRequest: '2'\n  supplementalGroups: [5]\n"
        "activator:\n  selector: {app: mine}\n",
    )
    assert cfg.pods.cpu_request == "2"
    assert cfg.pods.memory_request == "16Gi"  # default kept beside the override
    assert cfg.pods.supplemental_groups == [5]
    assert cfg.activator.selector == {"app": "mine"}  # a merged selector would select less


def test_a_new_gpu_must_be_complete_and_the_error_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"gpus\.MI400X\.arch"):
        load(tmp_path, "gpus:\n  MI400X:\n    hbmGib: 432\n")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("gpus:\n  MI300X:\n    costPerGpuHr: 3\n", "gpus.MI300X.costPerGpuHr"),
        ("pods:\n  shmSise: 1Gi\n", "pods.shmSise"),
        ("gpus:\n  MI300X:\n    costPerGpuHour: -1\n", "gpus.MI300X.costPerGpuHour"),
        ("gpus:\n  MI300X: 3\n", "gpus.MI300X"),
        ("- a list\n", "valid dictionary"),
    ],
)
def test_typos_and_bad_values_are_named(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        load(tmp_path, text)
    assert says in str(info.value).replace("\n", " ")


def test_empty_file_and_no_file_are_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") == OperatorConfig() == OperatorConfig.load(None)


def test_the_test_bed_config_loads(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((root / "tests/testbed/operator-config.yaml").read_text())
    cfg = OperatorConfig.load(root / "tests/testbed/operator-config.yaml")
    assert cfg.pods.shm_size == raw["pods"]["shmSize"]
    assert cfg.gpus == DEFAULT_GPUS


def test_committed_configuration_reference_matches_the_model() -> None:
    root = Path(__file__).resolve().parents[2]
    result = CliRunner().invoke(
        main, ["config-docs", "--out", str(root / "docs/configuration.md"), "--check"]
    )
    assert result.exit_code == 0, result.output


def test_configuration_reference_drift_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    path = tmp_path / "configuration.md"
    assert CliRunner().invoke(main, ["config-docs", "--out", str(path)]).exit_code == 0
    path.write_text(path.read_text().replace("costPerGpuHour", "costPerGPUHour"))
    result = CliRunner().invoke(main, ["config-docs", "--out", str(path), "--check"])
    assert result.exit_code != 0
    assert "make crds" in result.output


def test_configuration_reference_lists_every_setting() -> None:
    text = configuration_markdown()
    for section, model in [("", OperatorConfig), ("gpus.<name>.", GPUSpec), ("pods.", PodSettings)]:
        for name, info in model.model_fields.items():
            assert f"| `{section}{info.alias or name}` |" in text


def test_the_operator_refuses_a_bad_config_naming_the_field_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kopf

    from tokenscale.controller.cli import run_command

    started: list[object] = []
    monkeypatch.setattr(kopf, "run", lambda **kw: started.append(kw))
    path = tmp_path / "config.yaml"
    path.write_text("metricsSource:\n  type: prometheus\n")
    result = CliRunner().invoke(run_command, ["--config", str(path)])
    assert result.exit_code == 1
    assert "metricsSource.prometheus.url is required" in result.output
    assert "Traceback" not in result.output
    assert started == []


def test_image_keys_are_the_gfx_target_names(tmp_path: Path) -> None:
    assert set(ImageSpec().to_k8s()) >= {"gfx90a", "gfx942", "gfx950", "cpu"}
    assert load(tmp_path, "images:\n  gfx90a: mine\n").images.gfx90a == "mine"

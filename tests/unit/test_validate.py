"""`tokenscale validate` must reject every invalid manifest with a message that names the
field and says how to fix it — the same table later runs against the real API server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.invalid_manifests import CASES, Case
from tokenscale.cli import main
from tokenscale.validation import InvalidManifest, parse_manifest

EXAMPLES = sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml"))


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_manifest_names_field_and_fix(case: Case) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(case.manifest)
    problems = {p.field: p.message for p in info.value.problems}
    assert case.field in problems, f"expected {case.field!r} among {problems}"
    assert case.says in problems[case.field], problems[case.field]
    assert "fix" in problems[case.field] or "one of" in problems[case.field]


@pytest.mark.parametrize("case", CASES[:5], ids=lambda c: c.id)
def test_cli_reports_field_and_exit_code(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(case.manifest))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert case.field in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_unknown_kind_and_bad_yaml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: Deployment\n")
    (tmp_path / "b.yaml").write_text("kind: [\n")
    result = CliRunner().invoke(
        main, ["validate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    )
    assert result.exit_code == 1
    assert "unknown kind 'Deployment'" in result.output
    assert "not valid YAML" in result.output

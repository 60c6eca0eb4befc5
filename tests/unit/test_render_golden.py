"""Golden files: every example InferenceService renders to exactly the reviewed objects.

Why: the rendered objects are what the operator applies to clusters, so any change to them must
be a visible, reviewed diff. Each example under ``examples/`` (and each extra input under
``tests/golden/inputs/``) is rendered with its optional ``<name>.config.yaml`` operator config
(beside it or, for an example, in ``tests/golden/inputs/``), else the default config, and
compared with ``tests/golden/<name>.yaml``; examples whose replicas span nodes are also rendered
with ``leaderWorkerSet: true`` into ``<name>.lws.yaml``. Notes (``# plan:``, ``# problem:``,
``# warning:``, as ``tokenscale render`` prints them) head the file.

Regenerate on purpose only::

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_render_golden.py

That run rewrites the files and fails on purpose; review ``git diff tests/golden/`` and run again
without ``UPDATE_GOLDEN`` to see it pass.

Every rendered object is also validated offline against the Kubernetes 1.34 OpenAPI schemas
(``kubernetes-validate``, strict: unknown fields fail); CRD kinds it has no schema for
(LeaderWorkerSet, ServiceMonitor) are checked structurally here, their pod templates through the
core ``PodTemplate`` schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from tokenscale import constants as c
from tokenscale import plan, render
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.render import cli as render_cli

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "tests" / "golden"
K8S_VERSION = "1.34.0"


def _is_service(path: Path) -> bool:
    docs = list(yaml.safe_load_all(path.read_text()))
    return any(isinstance(d, dict) and d.get("kind") == "InferenceService" for d in docs)


def _config(path: Path, lws: bool = False) -> OperatorConfig:
    extra = path.with_name(f"{path.stem}.config.yaml")
    if not extra.exists():  # examples keep their config with the golden inputs
        extra = GOLDEN / "inputs" / f"{path.stem}.config.yaml"
    config = OperatorConfig.load(extra if extra.exists() else None)
    return config.model_copy(update={"leader_worker_set": True}) if lws else config


def _cases() -> list[tuple[str, Path, bool]]:
    """(golden name, input, leaderWorkerSet enabled)."""
    inputs = sorted(ROOT.glob("examples/*.yaml")) + sorted(
        p for p in (GOLDEN / "inputs").glob("*.yaml") if not p.name.endswith(".config.yaml")
    )
    cases = []
    for path in inputs:
        if not _is_service(path):
            continue
        cases.append((path.stem, path, False))
        svc = render_cli.load_services(path)[0]
        if any(p.nodes_per_replica > 1 for p in plan.plan_service(svc, _config(path))):
            cases.append((f"{path.stem}.lws", path, True))
    return cases


CASES = _cases()


def _render(path: Path, lws: bool) -> tuple[render.RenderResult, list[str]]:
    config = _config(path, lws)
    svc = render_cli.load_services(path)[0]
    return render_cli.render_service(svc, config, {})


def golden_text(result: render.RenderResult, notes: list[str]) -> str:
    header = "".join(f"# {note}\n" for note in notes)
    return header + render_cli.dump_objects(result.objects)


def test_every_example_has_a_case() -> None:
    names = {name for name, _, _ in CASES}
    for expected in ("gpt-oss-120b-mi300x", "tiny-cpu", "llama31-405b-multinode.lws"):
        assert expected in names


@pytest.mark.parametrize(("name", "path", "lws"), CASES, ids=[c[0] for c in CASES])
def test_golden(name: str, path: Path, lws: bool) -> None:
    check_golden(GOLDEN / f"{name}.yaml", golden_text(*_render(path, lws)))


def check_golden(golden: Path, text: str) -> None:
    """Compare ``text`` with the golden file; with ``UPDATE_GOLDEN=1`` rewrite it and *fail*.

    Failing after a rewrite (as inference-perf does) means a regenerated golden is never green
    by itself: the run that writes it cannot pass, only a later run after ``git diff`` review.
    """
    if os.environ.get("UPDATE_GOLDEN") == "1":
        old = golden.read_text() if golden.exists() else None
        golden.write_text(text)
        what = "created" if old is None else ("unchanged" if old == text else "REWRITTEN")
        pytest.fail(
            f"UPDATE_GOLDEN=1: {golden.name} {what}; review `git diff {golden.parent.name}/`, "
            "then rerun without UPDATE_GOLDEN"
        )
    assert golden.exists(), f"missing {golden}; run with UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(), f"{golden} differs; review, then UPDATE_GOLDEN=1"


def test_update_golden_rewrites_and_then_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden = tmp_path / "case.yaml"
    golden.write_text("old\n")
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match=r"case\.yaml REWRITTEN"):
        check_golden(golden, "new\n")
    assert golden.read_text() == "new\n"  # written, yet the run is red
    with pytest.raises(pytest.fail.Exception, match="unchanged"):
        check_golden(golden, "new\n")
    monkeypatch.delenv("UPDATE_GOLDEN")
    check_golden(golden, "new\n")  # the review run passes
    with pytest.raises(AssertionError, match="differs"):
        check_golden(golden, "other\n")


def test_no_stale_golden_files() -> None:
    expected = {f"{name}.yaml" for name, _, _ in CASES}
    assert {p.name for p in GOLDEN.glob("*.yaml")} == expected


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _validate_pod_template(template: dict[str, Any]) -> None:
    _validate(
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": template,
        }
    )


def _check_lws(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == c.LWS_API_VERSION
    spec = obj["spec"]
    assert set(spec) == {"replicas", "startupPolicy", "leaderWorkerTemplate"}
    lwt = spec["leaderWorkerTemplate"]
    assert set(lwt) == {"size", "restartPolicy", "leaderTemplate", "workerTemplate"}
    assert isinstance(lwt["size"], int) and lwt["size"] >= 2
    assert lwt["restartPolicy"] == "RecreateGroupOnPodRestart"
    for role in ("leaderTemplate", "workerTemplate"):
        _validate_pod_template(lwt[role])


def _check_service_monitor(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == c.SERVICEMONITOR_API_VERSION
    spec = obj["spec"]
    assert set(spec) == {"selector", "endpoints", "podTargetLabels"}
    assert spec["selector"]["matchLabels"]
    # engine series carry the InferenceService and pool (the dashboard's $service filter)
    assert spec["podTargetLabels"] == [c.LABEL_SERVICE, c.LABEL_POOL]
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "interval"}
        assert ep["port"] == c.ENGINE_PORT_NAME and ep["interval"].endswith("s")


@pytest.mark.parametrize(("name", "path", "lws"), CASES, ids=[c[0] for c in CASES])
def test_objects_pass_kubernetes_schemas(name: str, path: Path, lws: bool) -> None:
    result, _ = _render(path, lws)
    assert result.objects
    for obj in result.objects:
        assert (
            obj["metadata"]["labels"][c.LABEL_SERVICE]
            == obj["metadata"]["labels"][c.LABEL_INSTANCE]
        )
        if obj["kind"] == "LeaderWorkerSet":
            _check_lws(obj)
        elif obj["kind"] == "ServiceMonitor":
            _check_service_monitor(obj)
        elif obj["kind"] in ("InferencePool", "HTTPRoute"):
            continue  # their CRDs' schemas: tests/unit/test_render_inferencepool.py
        else:
            _validate(obj)


def test_schema_validation_really_rejects() -> None:
    """Guard against a validator that silently accepts everything."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"bogus": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(bad)


def test_service_monitor_rendered_when_asked() -> None:
    path = ROOT / "examples" / "tiny-cpu.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["spec"]["serviceMonitor"] = True
    svc = InferenceService.model_validate(raw)
    config = OperatorConfig()
    result = render.render_all(svc, config, plan.plan_service(svc, config))
    monitors = [o for o in result.objects if o["kind"] == "ServiceMonitor"]
    assert len(monitors) == 1
    _check_service_monitor(monitors[0])


def test_render_cli_prints_what_render_all_returns(tmp_path: Path) -> None:
    path = ROOT / "examples" / "mixed-mi300x-mi355x.yaml"
    result = CliRunner().invoke(render_cli.render_command, [str(path), "--replicas", "mi355x=3"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    deployments = {
        d["metadata"]["name"]: d["spec"]["replicas"] for d in docs if d["kind"] == "Deployment"
    }
    assert deployments == {"llama31-70b-mixed-mi300x": 1, "llama31-70b-mixed-mi355x": 3}
    bad = CliRunner().invoke(render_cli.render_command, [str(path), "--replicas", "mi355x"])
    assert bad.exit_code != 0


def test_render_cli_reports_problems_on_stderr() -> None:
    path = ROOT / "examples" / "llama31-405b-multinode.yaml"
    result = CliRunner().invoke(render_cli.render_command, [str(path)])
    assert result.exit_code == 0
    assert "install LeaderWorkerSet" in result.stderr
    assert "LeaderWorkerSet" not in [d["kind"] for d in yaml.safe_load_all(result.stdout)]


def test_plan_cli_table_and_exit_code(tmp_path: Path) -> None:
    ok = CliRunner().invoke(
        render_cli.plan_command, [str(ROOT / "examples" / "gpt-oss-120b-mi300x.yaml")]
    )
    assert ok.exit_code == 0, ok.output
    header, row = ok.stdout.splitlines()
    assert header.split()[:5] == ["POOL", "GPU", "FITS", "TP", "PP"]
    assert row.split()[:7] == ["mi300x", "MI300X", "yes", "8", "1", "8", "1"]
    raw = yaml.safe_load((ROOT / "examples" / "gpt-oss-120b-mi300x.yaml").read_text())
    raw["spec"]["model"]["dtype"] = "fp6"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    refused = CliRunner().invoke(render_cli.plan_command, [str(bad)])
    assert refused.exit_code == 1
    assert "needs native FP6" in refused.stdout


def test_plan_cli_refuses_a_max_model_len_above_the_models_context(tmp_path: Path) -> None:
    """gpt-oss-120b has a 131,072-token context: 200,000 crash-loops vLLM, so plan refuses it
    before any pod exists and names the limit."""
    raw = yaml.safe_load((ROOT / "examples" / "gpt-oss-120b-mi300x.yaml").read_text())
    raw["spec"]["model"]["maxModelLen"] = 200000
    bad = tmp_path / "long.yaml"
    bad.write_text(yaml.safe_dump(raw))
    refused = CliRunner().invoke(render_cli.plan_command, [str(bad)])
    assert refused.exit_code == 1
    assert "maxModelLen 200000 exceeds the context length of gpt-oss-120b (131072 tokens)" in (
        refused.stdout
    )
    raw["spec"]["model"]["maxModelLen"] = 131072
    bad.write_text(yaml.safe_dump(raw))
    assert CliRunner().invoke(render_cli.plan_command, [str(bad)]).exit_code == 0


def test_cli_rejects_files_without_a_service(tmp_path: Path) -> None:
    path = ROOT / "examples" / "bench-llama2-70b-server.yaml"
    result = CliRunner().invoke(render_cli.plan_command, [str(path)])
    assert result.exit_code != 0
    assert "no InferenceService" in result.output

"""The CRDs in crds/ are generated from the models; these tests keep them honest: no drift,
structural schemas, descriptions everywhere (so `kubectl explain` documents every field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tokenscale.cli import main
from tokenscale.crdgen import SchemaError, all_crds, dump, structural

ROOT = Path(__file__).parents[2]


def test_committed_crds_match_the_models() -> None:
    result = CliRunner().invoke(
        main,
        [
            "crds",
            "--out",
            str(ROOT / "crds"),
            "--chart",
            str(ROOT / "charts/tokenscale"),
            "--check",
        ],
    )
    assert result.exit_code == 0, result.output


def test_drift_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["crds", "--out", str(tmp_path)]).exit_code == 0
    target = next(tmp_path.glob("*inferenceservices.yaml"))
    target.write_text(target.read_text().replace("tsvc", "isvc"))
    result = runner.invoke(main, ["crds", "--out", str(tmp_path), "--check"])
    assert result.exit_code != 0
    assert "make crds" in result.output


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_schema_is_structural_and_documented(name: str) -> None:
    crd = all_crds()[name]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        if path.count(".") >= 1 and not path.endswith(("{}", "[]")) and path != ".metadata":
            assert node.get("description"), f"{path} has no description"
    assert yaml.safe_load(dump(crd)) == crd


def test_service_crd_has_scale_printer_columns_and_cel() -> None:
    crd = all_crds()["tokenscale.dev_inferenceservices.yaml"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
    assert crd["spec"]["names"]["shortNames"] == ["tsvc"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"] if not c.get("priority")}
    assert list(columns)[:6] == ["Model", "Ready", "Replicas", "Desired", "Reason", "URL"]
    # READY is the Ready condition (as in KServe), REASON its reason, URL the status field.
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["URL"]["jsonPath"] == ".status.url"
    text = dump(crd)
    assert "minReplicas must be <= maxReplicas" in text
    assert "set exactly one of huggingFace, pvc, s3" in text


def test_converter_rejects_real_unions() -> None:
    with pytest.raises(SchemaError):
        structural({"anyOf": [{"type": "string"}, {"type": "integer"}]})
    assert structural({"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}) == {
        "type": "string"
    }
    assert structural({"const": "x"}) == {"enum": ["x"], "type": "string"}


def _prop(crd: dict[str, Any], *path: str) -> dict[str, Any]:
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    return node


@pytest.mark.parametrize(
    ("crd_file", "path", "key"),
    [
        ("tokenscale.dev_inferenceservices.yaml", ("status", "conditions"), "type"),
        ("tokenscale.dev_inferenceservices.yaml", ("status", "pools"), "name"),
        ("tokenscale.dev_inferenceservices.yaml", ("spec", "pools"), "name"),
        ("tokenscale.dev_inferencebenchmarks.yaml", ("status", "conditions"), "type"),
    ],
)
def test_keyed_lists_are_list_maps(crd_file: str, path: tuple[str, ...], key: str) -> None:
    node = _prop(all_crds()[crd_file], *path)
    assert node["x-kubernetes-list-type"] == "map"
    assert node["x-kubernetes-list-map-keys"] == [key]
    assert key in node["items"]["required"]


def _listy(key_required: bool = True, **extra: Any) -> dict[str, Any]:
    item = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "object"}}}
    if key_required:
        item["required"] = ["name"]
    return {"type": "array", "items": item, **extra}


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        (_listy(False, **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
         "must be required or have a default"),
        (_listy(**{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["n"]}),
         "not a scalar"),
        (_listy(**{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["nope"]}),
         "not a scalar"),
        (_listy(**{"x-kubernetes-list-type": "map"}), "needs map keys"),
        (_listy(**{"x-kubernetes-list-type": "set", "x-kubernetes-list-map-keys": ["name"]}),
         "needs x-kubernetes-list-type: map"),
        (_listy(**{"x-kubernetes-list-type": "dict"}), "needs an array"),
        ({"type": "string", "x-kubernetes-list-type": "map"}, "needs an array"),
    ],
)  # fmt: skip
def test_converter_rejects_list_maps_the_api_server_would(
    schema: dict[str, Any], says: str
) -> None:
    with pytest.raises(SchemaError, match=says):
        structural(schema)


def test_converter_keeps_a_valid_list_map() -> None:
    schema = _listy(**{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    assert structural(schema)["x-kubernetes-list-map-keys"] == ["name"]


def test_benchmark_columns_show_both_sla_latencies() -> None:
    crd = all_crds()["tokenscale.dev_inferencebenchmarks.yaml"]
    paths = [c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert ".status.results.ttftMs.p99" in paths and ".status.results.tpotMs.p99" in paths

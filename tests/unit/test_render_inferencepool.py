"""InferencePool mode renders objects the real CRD schemas accept, selecting the engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.testbed import gateway_crds
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.render import cli as render_cli
from tokenscale.render import names

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "llama2-70b-inferencepool.yaml"


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    svc = render_cli.load_services(EXAMPLE)[0]
    result, _ = render_cli.render_service(svc, OperatorConfig.load(None), {})
    return {(o["kind"], o["metadata"]["name"]): o for o in result.objects}


def _schema(crd_path: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(crd_path.read_text())
    served = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served, f"{crd_path.name} serves no {version}"
    schema: dict[str, Any] = served[0]["schema"]["openAPIV3Schema"]
    return schema


def test_pool_selects_the_engines_and_names_the_picker() -> None:
    objs = _objects()
    pool = objs[("InferencePool", "llama2-70b-gw")]
    assert pool["spec"]["selector"]["matchLabels"] == names.service_selector("llama2-70b-gw")
    assert pool["spec"]["targetPorts"] == [{"number": c.ENGINE_PORT}]
    ref = pool["spec"]["endpointPickerRef"]
    epp_svc = objs[("Service", ref["name"])]
    assert ref["port"]["number"] == epp_svc["spec"]["ports"][0]["port"]
    epp = objs[("Deployment", "llama2-70b-gw-epp")]
    container = epp["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.k8s.io/gateway-api-inference-extension/epp:v1.6.0"
    assert container["args"][:2] == ["--pool-name", "llama2-70b-gw"]
    # The picker is not an engine: PDB, autoscaler and pod problems must not see it.
    assert c.LABEL_SERVICE not in epp["spec"]["template"]["metadata"]["labels"]
    # The plain Service stays for in-cluster clients.
    assert objs[("Service", "llama2-70b-gw")]["spec"]["selector"] == names.service_selector(
        "llama2-70b-gw"
    )


def test_route_attaches_the_pool_to_the_named_gateway() -> None:
    route = _objects()[("HTTPRoute", "llama2-70b-gw")]
    assert route["spec"]["parentRefs"][0]["name"] == "inference-gateway"
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    assert (backend["kind"], backend["name"]) == ("InferencePool", "llama2-70b-gw")


def test_pool_passes_the_inferencepool_crd_schema() -> None:
    schema = _schema(gateway_crds.INFERENCE_POOL_CRD, "v1")
    jsonschema.validate(_objects()[("InferencePool", "llama2-70b-gw")], schema)
    bad = _objects()[("InferencePool", "llama2-70b-gw")]
    bad["spec"]["targetPorts"] = [{"number": 0}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_route_passes_the_httproute_crd_schema() -> None:
    try:
        crd = gateway_crds.gateway_api_crds()[0]
    except gateway_crds.GatewayAPIUnavailable as exc:
        pytest.skip(f"Gateway API module not available: {exc}")
    schema = _schema(crd, "v1")
    jsonschema.validate(_objects()[("HTTPRoute", "llama2-70b-gw")], schema)
    bad = _objects()[("HTTPRoute", "llama2-70b-gw")]
    bad["spec"]["parentRefs"] = "inference-gateway"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)

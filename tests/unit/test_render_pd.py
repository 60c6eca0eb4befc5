"""Prefill/decode rendering: the KV connector flags as vLLM documents them, role labels, and the
router's P/D command line (the goldens hold the whole objects; these tests name the rules)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.invalid_manifests import pd_service
from tokenscale import constants as c
from tokenscale import plan, render
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.render import pd, pdrouter


def _service(**changes: Any) -> InferenceService:
    doc = pd_service(**changes)
    doc["spec"]["model"] = {
        "name": "llama-2-70b",
        "architecture": "llama-2-70b",
        "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"},
        "dtype": "fp8",
        "kvCacheDtype": "fp8",
    }
    return InferenceService.model_validate(doc)


def _objects(service: InferenceService) -> list[dict[str, Any]]:
    config = OperatorConfig()
    result = render.render_all(service, config, plan.plan_service(service, config))
    assert not result.problems, result.problems
    return result.objects


def _engine(objects: list[dict[str, Any]], pool: str) -> dict[str, Any]:
    name = f"{objects[0]['metadata']['name'].removesuffix('-router')}-{pool}"
    (dep,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
    return dep


def _kv_config(dep: dict[str, Any]) -> dict[str, Any]:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return json.loads(args[args.index("--kv-transfer-config") + 1])  # type: ignore[no-any-return]


def _router_args(objects: list[dict[str, Any]]) -> list[str]:
    (dep,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "bad-router"
    ]
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]  # type: ignore[no-any-return]


def test_moriio_prefill_produces_and_decode_consumes_registering_with_the_router() -> None:
    objects = _objects(_service())
    prefill, decode = (
        _kv_config(_engine(objects, "prefill")),
        _kv_config(_engine(objects, "decode")),
    )
    assert prefill["kv_connector"] == decode["kv_connector"] == "MoRIIOConnector"
    assert (prefill["kv_role"], decode["kv_role"]) == ("kv_producer", "kv_consumer")
    extra = prefill["kv_connector_extra_config"]
    # the engines register with the router's discovery listener through its Service
    (disc,) = [o for o in objects if o["metadata"]["name"] == "bad-router-discovery"]
    assert extra["proxy_ip"] == disc["metadata"]["name"]
    assert int(extra["proxy_ping_port"]) == disc["spec"]["ports"][0]["port"]
    assert int(extra["http_port"]) == c.ENGINE_PORT
    assert {"handshake_port", "notify_port"} <= extra.keys()
    args = _router_args(objects)
    assert args[args.index("--kv-connector") + 1] == "moriio"
    assert args[args.index("--vllm-discovery-address") + 1].endswith(f":{pd.DISCOVERY_PORT}")


def test_nixl_is_kv_both_with_the_side_channel_on_the_pod_ip() -> None:
    objects = _objects(_service(kvConnector="nixl"))
    for pool in ("prefill", "decode"):
        dep = _engine(objects, pool)
        assert _kv_config(dep) == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        env = {
            e["name"]: e.get("value")
            for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "$(POD_IP)"
    args = _router_args(objects)
    assert args[args.index("--kv-connector") + 1] == "nixl"
    assert "--vllm-discovery-address" not in args
    assert not [o for o in objects if o["metadata"]["name"] == "bad-router-discovery"]


def test_router_selects_each_role_by_label_and_the_pods_carry_it() -> None:
    objects = _objects(_service())
    args = _router_args(objects)
    assert "--vllm-pd-disaggregation" in args
    assert "--selector" not in args  # P/D discovery is per role
    for role in ("prefill", "decode"):
        flag = args.index(f"--{role}-selector")
        selector = dict(a.split("=", 1) for a in args[flag + 1 : flag + 4] if "=" in a)
        assert selector[pd.LABEL_PD_ROLE] == role
        labels = _engine(objects, role)["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), (selector, labels)


def test_user_engine_args_still_come_last() -> None:
    service = _service()
    service.spec.engine.args = ["--kv-transfer-config", "{}"]
    args = _engine(_objects(service), "prefill")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert args[-2:] == ["--kv-transfer-config", "{}"]
    assert args.count("--kv-transfer-config") == 2


def test_simulated_engines_get_their_role_and_link_instead_of_a_connector() -> None:
    service = _service(transferGbytesPerSecond=25)
    service.spec.engine.mode = "simulated"
    args = _engine(_objects(service), "decode")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--pd-role") + 1] == "decode"
    assert float(args[args.index("--kv-transfer-gbps") + 1]) == 25
    assert "--kv-transfer-config" not in args


@pytest.mark.parametrize("connector", ["moriio", "nixl"])
def test_aggregated_services_render_no_pd_objects(connector: str) -> None:
    doc = pd_service(kvConnector=connector)
    del doc["spec"]["disaggregation"]
    service = InferenceService.model_validate(doc)
    text = json.dumps(_objects(service))
    assert "kv-transfer-config" not in text and pd.LABEL_PD_ROLE not in text
    assert pdrouter.role_selector("x", "prefill")[pd.LABEL_PD_ROLE] == "prefill"

"""Router mode renders vLLM's router in front of the engines without touching the engines."""

from __future__ import annotations

from pathlib import Path

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.render import cli as render_cli
from tokenscale.render import names
from tokenscale.render import router as router_mod

ROOT = Path(__file__).parents[2]


def _objects(example: str) -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    svc = render_cli.load_services(ROOT / "examples" / example)[0]
    result, _ = render_cli.render_service(svc, OperatorConfig.load(None), {})
    return {(o["kind"], o["metadata"]["name"]): o for o in result.objects}


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_router_takes_the_stable_name_and_engines_keep_theirs() -> None:
    objs = _objects("llama2-70b-router.yaml")
    stable = objs[("Service", "llama2-70b-chat")]
    assert stable["spec"]["selector"] == router_mod.router_pod_labels("llama2-70b-chat")
    assert stable["spec"]["ports"][0]["port"] == c.ENGINE_PORT
    engines = objs[("Service", "llama2-70b-chat-engines")]
    assert engines["spec"]["selector"] == names.service_selector("llama2-70b-chat")
    assert engines["spec"]["clusterIP"] == "None"
    # The engine workload is the same object as without a router.
    assert ("Deployment", "llama2-70b-chat-mi355x") in objs


def test_router_pods_are_not_engines() -> None:
    """PDB, autoscaler and pod problems select tokenscale.dev/service: routers must not match."""
    dep = _objects("llama2-70b-router.yaml")[("Deployment", "llama2-70b-chat-router")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert c.LABEL_SERVICE not in labels
    assert dep["spec"]["replicas"] == 2


def test_flags_follow_the_spec() -> None:
    dep = _objects("llama2-70b-router.yaml")[("Deployment", "llama2-70b-chat-router")]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _flag(args, "--policy") == "cache_aware"
    assert _flag(args, "--cache-threshold") == "0.5"
    assert _flag(args, "--request-timeout-secs") == "600"
    assert _flag(args, "--service-discovery-port") == str(c.ENGINE_PORT)
    assert _flag(args, "--service-discovery-namespace") == "$(POD_NAMESPACE)"
    selector = args[args.index("--selector") + 1 : args.index("--service-discovery-port")]
    assert selector == ["tokenscale.dev/endpoint=true", "tokenscale.dev/service=llama2-70b-chat"]
    assert _flag(args, "--prometheus-host") == "0.0.0.0"


def test_discovery_role_is_read_only_on_pods() -> None:
    objs = _objects("llama2-70b-router.yaml")
    role = objs[("Role", "llama2-70b-chat-router")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = objs[("RoleBinding", "llama2-70b-chat-router")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llama2-70b-chat-router"}]


def test_service_mode_renders_no_router() -> None:
    objs = _objects("llama2-70b-mi355x.yaml")
    assert not [k for k in objs if k[0] in ("Role", "RoleBinding", "ServiceAccount")]
    assert ("Service", "llama2-70b-engines") not in objs


def test_the_process_kubelet_maps_the_router_image_to_vllm_router() -> None:
    """The rendered router image runs as the vllm-router binary on the process kubelet."""
    from tests.testbed.kubelet.imagemap import ROUTER_BIN_PROVIDER, ImageMap, default_entries

    dep = _objects("llama2-70b-router.yaml")[("Deployment", "llama2-70b-chat-router")]
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    entry = ImageMap(default_entries()).lookup(image)
    assert entry.entrypoint == ["vllm-router"] and entry.bin == ROUTER_BIN_PROVIDER
    assert entry.user != "0"  # the image runs as non-root, like images/router/Dockerfile


def _engine_args(policy: str, engine_args: list[str], cpu: bool = True) -> list[str]:
    """The rendered engine container's args of a router-mode service (CPU image: vLLM 0.32)."""
    import yaml

    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    doc["spec"]["routing"] = {"mode": "router", "router": {"policy": policy}}
    doc["spec"]["engine"]["args"] = engine_args
    if not cpu:
        doc = yaml.safe_load((ROOT / "examples" / "llama2-70b-router.yaml").read_text())
    from tokenscale.api.service import InferenceService

    svc = InferenceService.model_validate(doc)
    result, _ = render_cli.render_service(svc, OperatorConfig.load(None), {})
    engines = [
        o
        for o in result.objects
        if o["kind"] == "Deployment" and "router" not in o["metadata"]["name"]
    ]
    args: list[str] = engines[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_cache_aware_engines_serve_the_render_endpoints_the_router_asks_for() -> None:
    """vLLM 0.32 answers /v1/*/render with 403 without --enable-scale-out, and the router then
    routes blind (docs/routing.md): cache_aware engines get the flag, before the user's args."""
    args = _engine_args("cache_aware", ["--max-num-seqs", "16"])
    assert args.count(router_mod.ENABLE_SCALE_OUT) == 1
    assert args.index(router_mod.ENABLE_SCALE_OUT) < args.index("--max-num-seqs")


def test_only_cache_aware_on_a_known_recent_vllm_gets_the_scale_out_flag() -> None:
    assert router_mod.ENABLE_SCALE_OUT not in _engine_args("round_robin", [])
    # The user's own flag is not repeated.
    assert (
        _engine_args("cache_aware", [router_mod.ENABLE_SCALE_OUT]).count(
            router_mod.ENABLE_SCALE_OUT
        )
        == 1
    )
    # The ROCm example's image is vLLM 0.23: an engine that may not know the flag is not given it.
    assert router_mod.ENABLE_SCALE_OUT not in _engine_args("cache_aware", [], cpu=False)

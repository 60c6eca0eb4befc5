"""vLLM's router in P/D mode in front of a disaggregated service (``spec.disaggregation``).

Why reuse router mode's objects: the stable Service name, the engines' headless Service and the
router's narrow RBAC are the same in P/D mode; only the router's command line differs. The
router discovers the two roles through the API server by label (``--prefill-selector`` /
``--decode-selector`` on ``tokenscale.dev/pd-role``), so every router pod sees every engine
without a static list, and sends each request to a prefill engine, then to a decode engine
(``--vllm-pd-disaggregation``, flags as in ``vllm-router --help``, v0.1.17).

MoRI-IO engines also register with the router over ZMQ (vLLM's MoRIIOConnector guide runs the
router with ``--vllm-discovery-address 0.0.0.0:36367`` and points the engines' ``proxy_ip`` at
it): the router listens there and a ClusterIP Service ``<name>-router-discovery`` gives the
engines a stable ``proxy_ip``. With several router pods each engine registers with the one the
Service picks; discovery by selector still shows every engine to every router.
"""

from __future__ import annotations

from typing import Any

from tokenscale import constants as c
from tokenscale.api.routing import RouterSpec
from tokenscale.api.service import InferenceService
from tokenscale.render import names, pd
from tokenscale.render import router as router_mod

Obj = dict[str, Any]

DISCOVERY_PORT_NAME = "pd-discovery"


def role_selector(service: str, role: str) -> dict[str, str]:
    """Serving pods of one role (LWS workers serve no HTTP and carry no endpoint label)."""
    return {**names.service_selector(service), pd.LABEL_PD_ROLE: role}


def _selector_args(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(labels.items())]


def router_args(svc: InferenceService, spec: RouterSpec, bind_address: str) -> list[str]:
    """vllm-router's P/D command line: router mode's flags with the P/D selectors and the KV
    connector instead of the single ``--selector``."""
    disagg = svc.spec.disaggregation
    assert disagg is not None
    name = svc.metadata.name
    base = router_mod.router_args(spec, names.service_selector(name), bind_address)
    # Drop "--selector k=v ..." (P/D discovery selects per role).
    start = base.index("--selector")
    end = start + 1
    while end < len(base) and not base[end].startswith("--"):
        end += 1
    args = base[:start] + base[end:]
    args += [
        "--vllm-pd-disaggregation",
        "--prefill-selector",
        *_selector_args(role_selector(name, "prefill")),
        "--decode-selector",
        *_selector_args(role_selector(name, "decode")),
        "--kv-connector",
        disagg.kv_connector,
    ]
    if disagg.kv_connector == "moriio":
        args += ["--vllm-discovery-address", f"{bind_address}:{pd.DISCOVERY_PORT}"]
    return args


def deployment(svc: InferenceService, spec: RouterSpec, bind_address: str) -> Obj:
    """Router mode's Deployment with the P/D command line (and the MoRI-IO listener port)."""
    obj = router_mod.deployment(svc, spec, bind_address)
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["args"] = router_args(svc, spec, bind_address)
    disagg = svc.spec.disaggregation
    if disagg is not None and disagg.kv_connector == "moriio":
        container["ports"].append(
            {"name": DISCOVERY_PORT_NAME, "containerPort": pd.DISCOVERY_PORT, "protocol": "TCP"}
        )
    return obj


def discovery_service(svc: InferenceService) -> Obj:
    """The MoRI-IO engines' ``proxy_ip``: a Service over the router pods' ZMQ listener."""
    name = svc.metadata.name
    labels = {**names.common_labels(name), c.LABEL_COMPONENT: router_mod.COMPONENT_ROUTER}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.object_meta(svc, pd.discovery_service_name(name), labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(sorted(router_mod.router_pod_labels(name).items())),
            "ports": [
                {
                    "name": DISCOVERY_PORT_NAME,
                    "port": pd.DISCOVERY_PORT,
                    "targetPort": DISCOVERY_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def render(svc: InferenceService, bind_address: str) -> list[Obj]:
    """Every router object of a P/D service, in apply order (RBAC before the pods)."""
    spec = svc.spec.routing.router_settings()
    disagg = svc.spec.disaggregation
    objects = [
        *router_mod.rbac(svc),
        router_mod.router_service(svc),
        router_mod.engines_service(svc),
    ]
    if disagg is not None and disagg.kv_connector == "moriio":
        objects.append(discovery_service(svc))
    objects.append(deployment(svc, spec, bind_address))
    return objects

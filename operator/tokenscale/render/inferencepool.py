"""InferencePool mode (``spec.routing.mode: inferencePool``): the engines behind an inference
gateway (Gateway API Inference Extension v1, docs/routing.md).

Why these objects: the gateway (Envoy-based, the user's) asks an endpoint picker (EPP) which
engine pod should get each request; the InferencePool names the engines (by the same selector
the plain Service uses) and the EPP's Service, and the HTTPRoute attaches the pool to the
user's Gateway. The ClusterIP Service ``<name>`` stays, selecting the engines directly, so
in-cluster clients that bypass the gateway keep working.

The EPP is a Deployment with an image the user sets (it now lives in llm-d/llm-d-router); its
flags follow the upstream chart (``--pool-name``, ``--pool-namespace``, gRPC ext-proc on 9002,
health on 9003, metrics on 9090). What the EPP reads (pods and its InferencePool, in this
namespace) is granted by a Role; newer EPPs may want more (not verified here: this cluster has
no Envoy-based gateway, so the data plane is not exercised).
"""

from __future__ import annotations

from typing import Any

from tokenscale import constants as c
from tokenscale.api.routing import InferencePoolSpec
from tokenscale.api.service import InferenceService
from tokenscale.render import names
from tokenscale.render.router import namespaced_identity, restricted_security_context

Obj = dict[str, Any]

INFERENCE_POOL_API_VERSION = "inference.networking.k8s.io/v1"
HTTPROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
COMPONENT_EPP = "endpoint-picker"
EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090


def epp_name(service: str) -> str:
    """Name of the EPP's Deployment, Service, ServiceAccount, Role and RoleBinding."""
    return f"{service}-epp"


def _labels(service: str) -> dict[str, str]:
    return {**names.common_labels(service), c.LABEL_COMPONENT: COMPONENT_EPP}


def epp_pod_labels(service: str) -> dict[str, str]:
    """EPP pods carry no ``tokenscale.dev/service``: that label means an engine pod."""
    return {f"{c.LABEL_INSTANCE}": service, c.LABEL_COMPONENT: COMPONENT_EPP}


def inference_pool(svc: InferenceService) -> Obj:
    """The InferencePool selecting the serving engine pods on the engine port."""
    name = svc.metadata.name
    return {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": names.object_meta(svc, names.service(name), names.common_labels(name)),
        "spec": {
            "selector": {"matchLabels": dict(sorted(names.service_selector(name).items()))},
            "targetPorts": [{"number": c.ENGINE_PORT}],
            "endpointPickerRef": {
                "name": epp_name(name),
                "kind": "Service",
                "port": {"number": EPP_GRPC_PORT},
                "failureMode": "FailClose",
            },
        },
    }


def http_route(svc: InferenceService, spec: InferencePoolSpec) -> Obj:
    """HTTPRoute from the user's Gateway (same namespace) to the InferencePool."""
    name = svc.metadata.name
    return {
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": names.object_meta(svc, names.service(name), names.common_labels(name)),
        "spec": {
            "parentRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": spec.gateway_name}
            ],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {
                            "group": "inference.networking.k8s.io",
                            "kind": "InferencePool",
                            "name": names.service(name),
                        }
                    ],
                }
            ],
        },
    }


def epp_rbac(svc: InferenceService) -> list[Obj]:
    """ServiceAccount, Role (read pods and InferencePools of the namespace) and RoleBinding."""
    name = svc.metadata.name
    rules: list[Obj] = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["inference.networking.k8s.io"],
            "resources": ["inferencepools"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    return namespaced_identity(svc, epp_name(name), _labels(name), rules)


def _port(name: str, number: int) -> Obj:
    return {"name": name, "containerPort": number, "protocol": "TCP"}


def epp_deployment(svc: InferenceService, spec: InferencePoolSpec) -> Obj:
    """The endpoint picker, one replica (the upstream chart's default)."""
    name = svc.metadata.name
    pod_labels = dict(sorted(epp_pod_labels(name).items()))
    container: Obj = {
        "name": "epp",
        "image": spec.endpoint_picker_image,
        "args": [
            "--pool-name",
            names.service(name),
            "--pool-namespace",
            "$(NAMESPACE)",
            "--grpc-port",
            str(EPP_GRPC_PORT),
            "--grpc-health-port",
            str(EPP_HEALTH_PORT),
        ],
        "env": [
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
        ],
        "ports": [
            _port("grpc", EPP_GRPC_PORT),
            _port("grpc-health", EPP_HEALTH_PORT),
            _port("metrics", EPP_METRICS_PORT),
        ],
        "readinessProbe": {"grpc": {"port": EPP_HEALTH_PORT, "service": "inference-extension"}},
        "livenessProbe": {"grpc": {"port": EPP_HEALTH_PORT, "service": "inference-extension"}},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": restricted_security_context(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.object_meta(svc, epp_name(name), _labels(name)),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": pod_labels},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"serviceAccountName": epp_name(name), "containers": [container]},
            },
        },
    }


def epp_service(svc: InferenceService) -> Obj:
    """The Service the InferencePool's endpointPickerRef names (gRPC ext-proc port)."""
    name = svc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.object_meta(svc, epp_name(name), _labels(name)),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(sorted(epp_pod_labels(name).items())),
            "ports": [
                {
                    "name": "grpc",
                    "port": EPP_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "http2",
                }
            ],
        },
    }


def render(svc: InferenceService) -> list[Obj]:
    """The InferencePool mode's extra objects, in apply order."""
    spec = svc.spec.routing.inference_pool
    if spec is None:  # the API refuses this; kept for type narrowing
        return []
    return [
        *epp_rbac(svc),
        epp_service(svc),
        epp_deployment(svc, spec),
        inference_pool(svc),
        http_route(svc, spec),
    ]

"""Prefill/decode engines (``spec.disaggregation``): role label, KV connector flags and env.

Why a patch on the shared pod template rather than a separate workload kind: a P/D role is a
pool, so it keeps everything a pool's pods get (placement, probes, drain, podTemplate merges)
and only adds what the role needs. Single-node roles stay Deployments and multi-node roles
LeaderWorkerSets (one per pool, as for aggregated pools); docs/disaggregation.md says why not
LWS's DisaggregatedSet.

``--kv-transfer-config`` follows vLLM's documentation of each connector:

- MoRIIOConnector (docs/features/moriio_connector_usage.md): ``kv_role`` ``kv_producer`` on
  prefill and ``kv_consumer`` on decode, and in ``kv_connector_extra_config`` the proxy (the
  router's discovery listener, ``proxy_ip``/``proxy_ping_port``) the engine registers with, its
  own ``http_port``, and the ``handshake_port``/``notify_port`` for the MoRI engine handshake
  and transfer notifications (notify_port is a base port, offset per DP/TP rank).
- NixlConnector (docs/features/nixl_connector_usage.md): ``kv_role`` ``kv_both`` on both roles;
  the side channel the decode engine pulls through is set by ``VLLM_NIXL_SIDE_CHANNEL_HOST``
  (the pod IP) and ``VLLM_NIXL_SIDE_CHANNEL_PORT``.

Simulated engines get ``--pd-role`` and the link bandwidth instead (``tokenscale sim engine``).
"""

from __future__ import annotations

import json
from typing import Any

from tokenscale import GROUP
from tokenscale import constants as c
from tokenscale.api.disaggregation import CONNECTOR_CLASS, PDRoleName
from tokenscale.api.service import GPUPool, InferenceService

Obj = dict[str, Any]

#: Pod label carrying the P/D role; the router's --prefill-selector/--decode-selector use it.
LABEL_PD_ROLE = f"{GROUP}/pd-role"

#: The router's ZMQ listener MoRI-IO engines register with (vLLM's docs use 36367).
DISCOVERY_PORT = 36367
#: MoRI-IO handshake and notify (base) ports; vLLM's docs use 6301 / 61005.
MORIIO_HANDSHAKE_PORT = 6301
MORIIO_NOTIFY_PORT = 61005
#: NIXL side-channel port (vLLM's default, VLLM_NIXL_SIDE_CHANNEL_PORT).
NIXL_SIDE_CHANNEL_PORT = 5600

KV_ROLE: dict[str, dict[str, str]] = {
    "moriio": {"prefill": "kv_producer", "decode": "kv_consumer"},
    "nixl": {"prefill": "kv_both", "decode": "kv_both"},
}


def discovery_service_name(service: str) -> str:
    """Service in front of the routers' MoRI-IO registration listener (``proxy_ip``)."""
    return f"{service}-router-discovery"


def pool_role(service: InferenceService, pool: GPUPool) -> PDRoleName | None:
    """The P/D role of a pool, or None for an aggregated service."""
    pd = service.spec.disaggregation
    return pd.role_of(pool.name) if pd is not None else None


def kv_transfer_config(service: InferenceService, role: PDRoleName) -> str:
    """The ``--kv-transfer-config`` JSON of one role (compact, keys in vLLM's doc order)."""
    pd = service.spec.disaggregation
    assert pd is not None
    config: Obj = {
        "kv_connector": CONNECTOR_CLASS[pd.kv_connector],
        "kv_role": KV_ROLE[pd.kv_connector][role],
    }
    if pd.kv_connector == "moriio":
        config["kv_connector_extra_config"] = {
            "proxy_ip": discovery_service_name(service.metadata.name),
            "proxy_ping_port": str(DISCOVERY_PORT),
            "http_port": str(c.ENGINE_PORT),
            "handshake_port": str(MORIIO_HANDSHAKE_PORT),
            "notify_port": str(MORIIO_NOTIFY_PORT),
        }
    return json.dumps(config, separators=(",", ":"))


def engine_args(service: InferenceService, pool: GPUPool, role: str) -> list[str]:
    """Extra engine flags of a P/D pool's pods (none for headless LWS workers: the KV
    connector runs in the process that owns the API server and the scheduler)."""
    pd_role = pool_role(service, pool)
    if pd_role is None or role == c.ROLE_WORKER:
        return []
    pd = service.spec.disaggregation
    assert pd is not None
    if service.spec.engine.mode == "simulated":
        return [
            "--pd-role",
            pd_role,
            "--kv-transfer-gbps",
            f"{pd.transfer_gbytes_per_second:g}",
        ]
    return ["--kv-transfer-config", kv_transfer_config(service, pd_role)]


def engine_env(service: InferenceService, pool: GPUPool, role: str) -> dict[str, Obj]:
    """Connector environment: NIXL's side channel on the pod IP (vLLM binds localhost else)."""
    pd = service.spec.disaggregation
    if pool_role(service, pool) is None or role == c.ROLE_WORKER or pd is None:
        return {}
    if service.spec.engine.mode != "vllm" or pd.kv_connector != "nixl":
        return {}
    return {
        "VLLM_NIXL_SIDE_CHANNEL_HOST": {
            "name": "VLLM_NIXL_SIDE_CHANNEL_HOST",
            "value": "$(POD_IP)",
        },
        "VLLM_NIXL_SIDE_CHANNEL_PORT": {
            "name": "VLLM_NIXL_SIDE_CHANNEL_PORT",
            "value": str(NIXL_SIDE_CHANNEL_PORT),
        },
    }


def engine_ports(service: InferenceService, pool: GPUPool, role: str) -> list[Obj]:
    """Connector ports, declared so NetworkPolicies and people can see them."""
    pd = service.spec.disaggregation
    if pool_role(service, pool) is None or role == c.ROLE_WORKER or pd is None:
        return []
    if service.spec.engine.mode != "vllm":
        return []
    if pd.kv_connector == "nixl":
        return [{"name": "nixl", "containerPort": NIXL_SIDE_CHANNEL_PORT, "protocol": "TCP"}]
    return [
        {"name": "kv-handshake", "containerPort": MORIIO_HANDSHAKE_PORT, "protocol": "TCP"},
        {"name": "kv-notify", "containerPort": MORIIO_NOTIFY_PORT, "protocol": "TCP"},
    ]


def pod_labels(service: InferenceService, pool: GPUPool) -> dict[str, str]:
    """The role label of a P/D pool's pods (also on LWS workers, so a group is one role)."""
    pd_role = pool_role(service, pool)
    return {LABEL_PD_ROLE: pd_role} if pd_role else {}

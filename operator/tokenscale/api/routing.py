"""``spec.routing``: what stands behind the service's stable name (docs/routing.md).

Why a mode and not a bool: the three ways of routing (a plain Service, vLLM's own router, an
inference gateway's InferencePool) render disjoint objects, and a user should be able to read
from the spec which one is live. Settings of a mode are only accepted with that mode, so a
leftover block cannot silently do nothing.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from tokenscale.api.base import DNS_LABEL, StrictModel, cel

RouterPolicy = Literal["cache_aware", "power_of_two", "round_robin", "consistent_hash", "kv_aware"]

#: The router image this project builds from images/router/Dockerfile (vllm-router 0.1.17).
DEFAULT_ROUTER_IMAGE = "ghcr.io/tokenscale/vllm-router:0.1.17"
IMAGE_PATTERN = r"^[^\s]+$"


class RouterSpec(StrictModel):
    """vLLM's router (PyPI vllm-router) in front of the engines; flags as in vllm-router --help."""

    policy: RouterPolicy = Field(
        default="cache_aware",
        description="Load-balancing policy (--policy). cache_aware: send a prompt to the engine "
        "whose prefix tree matches it best unless load is unbalanced; power_of_two: the less "
        "loaded of two random engines; round_robin; consistent_hash: by session/user key; "
        "kv_aware: by KV-cache events (needs engines publishing them).",
    )
    replicas: int = Field(
        default=2,
        ge=2,
        le=32,
        description="Router pods (at least 2, so one can fail or roll without an outage).",
    )
    image: str = Field(
        default=DEFAULT_ROUTER_IMAGE,
        min_length=1,
        pattern=IMAGE_PATTERN,
        description="Router image; its entrypoint must be vllm-router (images/router/Dockerfile).",
    )
    cache_threshold: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="cache_aware: minimum prefix-match ratio to prefer the matching engine "
        "(--cache-threshold).",
    )
    balance_abs_threshold: int = Field(
        default=64,
        ge=0,
        le=100000,
        description="cache_aware: load gap (requests) above which load balancing wins over "
        "cache affinity, together with balanceRelThreshold (--balance-abs-threshold).",
    )
    balance_rel_threshold: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description="cache_aware: load ratio max/min above which load balancing wins "
        "(--balance-rel-threshold).",
    )
    request_timeout_seconds: int = Field(
        default=1800,
        ge=1,
        le=86400,
        description="Per-request timeout (--request-timeout-secs).",
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Retries of a failed request on another engine (--retry-max-retries); 0 "
        "disables retries.",
    )
    queue_size: int = Field(
        default=100,
        ge=0,
        le=100000,
        description="Requests queued when the concurrency limit is reached; 0 answers 429 at once "
        "(--queue-size).",
    )
    queue_timeout_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="Longest wait in that queue (--queue-timeout-secs).",
    )


class InferencePoolSpec(StrictModel):
    """A Gateway API Inference Extension InferencePool behind the user's Gateway."""

    gateway_name: str = Field(
        pattern=DNS_LABEL,
        description="Name of the Gateway (gateway.networking.k8s.io) in the service's namespace "
        "the rendered HTTPRoute attaches to.",
    )
    endpoint_picker_image: str = Field(
        min_length=1,
        pattern=IMAGE_PATTERN,
        description="Endpoint-picker (EPP) image, e.g. from llm-d/llm-d-router.",
    )


class RoutingSpec(StrictModel):
    """How requests reach the engines (docs/routing.md)."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.router) || self.mode == 'router'",
                "router settings need mode: router",
            ),
            (
                "!has(self.inferencePool) || self.mode == 'inferencePool'",
                "inferencePool settings need mode: inferencePool",
            ),
            (
                "self.mode != 'inferencePool' || has(self.inferencePool)",
                "mode inferencePool needs inferencePool.gatewayName and "
                "inferencePool.endpointPickerImage",
            ),
        )
    }

    mode: Literal["service", "router", "inferencePool"] = Field(
        default="service",
        description="service: a plain ClusterIP Service (connection round robin); router: vLLM's "
        "router pods behind the service's name; inferencePool: an InferencePool and HTTPRoute "
        "for an inference gateway.",
    )
    router: RouterSpec | None = Field(
        default=None, description="Router settings (mode router; defaults apply when omitted)."
    )
    inference_pool: InferencePoolSpec | None = Field(
        default=None, description="InferencePool settings (required with mode inferencePool)."
    )

    @model_validator(mode="after")
    def _settings_match_mode(self) -> Self:
        if self.router is not None and self.mode != "router":
            raise ValueError("router settings need mode: router; fix: set it or drop the block")
        if self.inference_pool is not None and self.mode != "inferencePool":
            raise ValueError(
                "inferencePool settings need mode: inferencePool; fix: set it or drop the block"
            )
        if self.mode == "inferencePool" and self.inference_pool is None:
            raise ValueError(
                "mode inferencePool needs inferencePool.gatewayName and "
                "inferencePool.endpointPickerImage; fix: add them"
            )
        return self

    def router_settings(self) -> RouterSpec:
        """The router's settings with defaults when the block was omitted."""
        return self.router if self.router is not None else RouterSpec()

"""``spec.disaggregation``: prefill/decode (P/D) disaggregation (docs/disaggregation.md).

Why roles reference pools instead of repeating their fields: a pool already is "replicas of one
GPU model with GPUs per replica and min/max bounds", and everything downstream (the capacity
planner, rendering, status.pools, the /scale split) works per pool. A role is a set of pools
plus what only a role has: its own scaling target (prefill engines are measured in prompt
tokens/s, decode engines in generation tokens/s). The KV connector and the link bandwidth are
service-wide because both roles must agree on them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from tokenscale.api.base import DNS_LABEL, MAX_POOL_NAME_LENGTH, StrictModel, cel

PDRoleName = Literal["prefill", "decode"]
KVConnector = Literal["moriio", "nixl"]
PD_ROLES: tuple[PDRoleName, ...] = ("prefill", "decode")

#: vLLM's class name of each connector, as ``--kv-transfer-config`` expects it.
CONNECTOR_CLASS: dict[str, str] = {"moriio": "MoRIIOConnector", "nixl": "NixlConnector"}


class PDRoleSpec(StrictModel):
    """One role's engines: the pools that run it and its own autoscaling target."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            (
                "self.pools.all(p, self.pools.exists_one(q, q == p))",
                "a pool is listed twice in this role; fix: list each pool once",
            )
        )
    }

    pools: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=MAX_POOL_NAME_LENGTH)]] = Field(
        min_length=1,
        max_length=8,
        description="Names of spec.pools entries whose replicas serve this role. The pool "
        "gives the GPU model, GPUs per replica and min/max replicas; each pool belongs to "
        "exactly one role.",
    )
    target_per_replica: float | None = Field(
        default=None,
        gt=0,
        description="Autoscaling target per replica of this role: prompt tokens/s "
        "(vllm:prompt_tokens_total) for prefill, generation tokens/s "
        "(vllm:generation_tokens_total) for decode. Required when scaling.mode is builtin; "
        "`tokenscale plan` proposes values.",
    )

    @model_validator(mode="after")
    def _unique(self) -> Self:
        dupes = sorted({p for p in self.pools if self.pools.count(p) > 1})
        if dupes:
            raise ValueError(f"pools {dupes} listed twice in this role; fix: list each pool once")
        return self


class DisaggregationSpec(StrictModel):
    """Split the engines into prefill and decode roles fronted by vLLM's router in P/D mode."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": cel(
            (
                "!self.prefill.pools.exists(p, p in self.decode.pools)",
                "a pool cannot serve both roles; fix: give prefill and decode their own pools",
            )
        )
    }

    kv_connector: KVConnector = Field(
        default="moriio",
        description="vLLM KV connector that moves the prompt's KV cache from prefill to decode "
        "engines: moriio (MoRIIOConnector, AMD's MoRI-IO over RDMA/xGMI; the default on AMD "
        "Instinct) or nixl (NixlConnector). Also the router's --kv-connector.",
    )
    prefill: PDRoleSpec = Field(description="Engines that compute prompts (KV producers).")
    decode: PDRoleSpec = Field(description="Engines that generate tokens (KV consumers).")
    transfer_gbytes_per_second: float = Field(
        default=50.0,
        gt=0,
        le=10000,
        description="KV transfer bandwidth between a prefill and a decode engine in GB/s (e.g. "
        "one 400 Gb/s NIC = 50). Used by simulated engines (transfer time = KV bytes / this) "
        "and by the planner; real engines move KV as fast as their fabric allows.",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> Self:
        both = sorted(set(self.prefill.pools) & set(self.decode.pools))
        if both:
            raise ValueError(
                f"pools {both} are in both roles; fix: give prefill and decode their own pools"
            )
        return self

    def role_of(self, pool: str) -> PDRoleName | None:
        """The role a pool serves, or None when it is in neither (refused by validation)."""
        if pool in self.prefill.pools:
            return "prefill"
        if pool in self.decode.pools:
            return "decode"
        return None

    def role(self, name: PDRoleName) -> PDRoleSpec:
        """The spec of one role by name."""
        return self.prefill if name == "prefill" else self.decode

"""GPUs through Dynamic Resource Allocation: a ResourceClaimTemplate per pool and pod shape.

Why: on node pools where AMD's DRA driver (``gpu.amd.com``) runs, the device plugin does not, so
``amd.com/gpu`` does not exist there and a pod asking for it never schedules. A pod asks for
devices through a claim instead: the scheduler picks devices whose attributes match the claim's
CEL selectors, and only nodes that have such devices qualify, so the GPU model is chosen by the
driver's ``productName`` (not by node labels) and no node affinity is needed for it.

Pure functions, like the rest of :mod:`tokenscale.render`. The device-plugin pod template is
rendered first and :func:`use_claims` turns it into a DRA one (one branch point in the
renderer): GPU extended resources and the GPU node affinity go, ``spec.resourceClaims`` and the
container's ``resources.claims`` come in. Attribute names follow the driver
(ROCm/k8s-gpu-dra-driver ``deviceinfo.go``); the driver name, class and product names come from
operator config because newer GPUs' names are not verified on hardware.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from tokenscale import constants as c
from tokenscale.api.config import DraSettings, GPUSpec, OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.api.status import PoolPlan
from tokenscale.plan.planner import plan_pool
from tokenscale.render import names
from tokenscale.render.pod import image_for, spec_hash

Obj = dict[str, Any]

API_VERSION = "resource.k8s.io/v1"
#: Name of the claim in the pod spec and of the request inside the claim.
CLAIM_NAME = "gpus"


def _attr(settings: DraSettings, name: str) -> str:
    return f'device.attributes["{settings.driver}"].{name}'


def _quote(value: str) -> str:
    return json.dumps(value)  # a CEL string literal (double quotes, escapes)


def _memory_check(settings: DraSettings, gib: float) -> str:
    """Device memory >= the catalogue's HBM x ``memory_fraction``; 0 means the driver could not
    read VRAM (AMD documents this), and the product name already pins the model then."""
    mem = f'device.capacity["{settings.driver}"].memory'
    floor_mib = math.floor(gib * settings.memory_fraction * 1024)
    return f'{mem}.compareTo(quantity("0")) == 0 || {mem}.compareTo(quantity("{floor_mib}Mi")) >= 0'


def selectors(pool: GPUPool, gpu: GPUSpec, settings: DraSettings) -> list[str]:
    """CEL expressions (all must hold) that pick the pool's devices among the driver's.

    Whole GPUs: ``type == "amdgpu"``; partitions: ``type == "amdgpu-partition"`` and the
    ``partitionProfile`` (e.g. ``cpx_nps1``); with ``auto_partition`` the AutoPartition
    attributes ``computePartition``/``memoryPartition`` instead. Always ``productName`` among the
    catalogue's names, and the memory the plan assumed per device.
    """
    names_list = "[" + ", ".join(_quote(n) for n in sorted(gpu.product_names)) + "]"
    product = f"{_attr(settings, 'productName')} in {names_list}"
    profile = pool.partition
    if settings.auto_partition:
        compute, _, memory = (profile or "spx_").partition("_")
        if profile is None or compute == "spx":
            kind = (
                f"!has({_attr(settings, 'computePartition')}) || "
                f'{_attr(settings, "computePartition")} == "spx"'
            )
        else:
            kind = (
                f"{_attr(settings, 'computePartition')} == {_quote(compute)} && "
                f"{_attr(settings, 'memoryPartition')} == {_quote(memory)}"
            )
        exprs = [kind, product]
        if profile is None:
            exprs.append(_memory_check(settings, gpu.hbm_gib))
        return exprs
    if profile is None or profile.startswith("spx"):
        # An SPX "partition" is the whole GPU, whatever the node's memory mode.
        return [
            f"{_attr(settings, 'type')} == {_quote(c.DRA_TYPE_GPU)}",
            product,
            _memory_check(settings, gpu.hbm_gib),
        ]
    return [
        f"{_attr(settings, 'type')} == {_quote(c.DRA_TYPE_PARTITION)}",
        f"has({_attr(settings, 'partitionProfile')}) && "
        f"{_attr(settings, 'partitionProfile')} == {_quote(profile)}",
        product,
        _memory_check(settings, gpu.partitions[profile].hbm_gib),
    ]


def _exact(pool: GPUPool, gpu: GPUSpec, count: int, settings: DraSettings) -> Obj:
    exact: Obj = {
        "deviceClassName": settings.device_class,
        "allocationMode": "ExactCount",
        "count": count,
        "selectors": [{"cel": {"expression": e}} for e in selectors(pool, gpu, settings)],
    }
    if settings.auto_partition and pool.partition and not pool.partition.startswith("spx"):
        # AutoPartition devices hand out partitions as consumable capacity (one per request).
        exact["capacity"] = {"requests": {"partitions": "1"}}
    return exact


def subrequest_name(model: str) -> str:
    """The firstAvailable entry of a GPU model (a DNS label: ``MI355X`` -> ``mi355x``)."""
    return model.lower()


def request(
    pool: GPUPool,
    gpu: GPUSpec,
    count: int,
    settings: DraSettings,
    alternatives: Sequence[tuple[str, GPUSpec]] = (),
) -> Obj:
    """The device request: ``count`` devices matching the selectors (``exactly``), or, with
    alternatives, the first of the pool's GPU and then each alternative that the scheduler can
    satisfy (``firstAvailable``, same count: the pod's engine arguments are fixed)."""
    if not alternatives:
        return {"name": CLAIM_NAME, "exactly": _exact(pool, gpu, count, settings)}
    choices = [(pool.gpu, gpu), *alternatives]
    return {
        "name": CLAIM_NAME,
        "firstAvailable": [
            {"name": subrequest_name(model), **_exact(pool, spec, count, settings)}
            for model, spec in choices
        ],
    }


def usable_alternatives(
    service: InferenceService, pool: GPUPool, plan: PoolPlan, config: OperatorConfig
) -> tuple[list[str], list[str]]:
    """The pool's alternatives that one pod template can serve, and a warning per dropped one.

    Each alternative is planned on its own (its HBM, its partition sizes). A pod's engine
    arguments and image are fixed before the scheduler picks a model, so an alternative is kept
    only if its plan fits with the same GPUs per replica and nodes as the pool's own plan, it
    runs the same image, and its devices can be selected (catalogue product names).
    """
    kept: list[str] = []
    warnings: list[str] = []
    own_image = image_for(service, pool, config.gpus[pool.gpu], config)
    for model in pool.alternatives:
        alt = pool.model_copy(update={"gpu": model, "alternatives": []})
        alt_plan = plan_pool(service.spec, alt, config)
        why = ""
        if not alt_plan.fits:
            why = alt_plan.message
        elif (alt_plan.gpus_per_replica, alt_plan.nodes_per_replica) != (
            plan.gpus_per_replica,
            plan.nodes_per_replica,
        ):
            why = (
                f"it needs {alt_plan.gpus_per_replica} GPUs on {alt_plan.nodes_per_replica} "
                f"node(s) per replica, {pool.gpu} {plan.gpus_per_replica} on "
                f"{plan.nodes_per_replica}; fix: set gpusPerReplica, or make it its own pool"
            )
        elif image_for(service, alt, config.gpus[model], config) != own_image:
            why = f"its image differs from {pool.gpu}'s; fix: make it its own pool"
        elif problem(alt, config.gpus[model], config):
            why = f"fix: add its productName to gpus.{model}.productNames in operator config"
        if why:
            warnings.append(f"pool {pool.name}: alternative {model} dropped: {why}")
        else:
            kept.append(model)
    return kept, warnings


def problem(pool: GPUPool, gpu: GPUSpec, config: OperatorConfig) -> str | None:
    """Why the pool cannot be asked for through DRA (a blocking render problem), or None."""
    if not gpu.product_names:
        return (
            f"pool {pool.name}: GPU {pool.gpu} has no productNames in operator config, so its "
            f"DRA devices cannot be selected; fix: add the productName the {config.dra.driver} "
            f"driver publishes to gpus.{pool.gpu}.productNames"
        )
    # An unknown partition profile never gets here: the planner already says the pool does not
    # fit, and pools without a fitting plan render nothing.
    return None


def claim_template(
    service: InferenceService,
    pool: GPUPool,
    config: OperatorConfig,
    devices_per_pod: int,
    alternatives: Sequence[str] = (),
) -> Obj:
    """One ResourceClaimTemplate per pool and pod shape; each pod gets its own claim from it.

    The spec of a template is immutable, so its name carries a hash of the spec: a new shape is
    a new template (and the workload rolls to it); the old one is pruned like any child. The
    claims generated from it carry the service and pool labels, so they can be listed.
    """
    svc = service.metadata.name
    gpu = config.gpus[pool.gpu]
    claim_labels = {c.LABEL_SERVICE: svc, c.LABEL_POOL: pool.name}
    spec: Obj = {
        "metadata": {"labels": dict(sorted(claim_labels.items()))},
        "spec": {
            "devices": {
                "requests": [
                    request(
                        pool,
                        gpu,
                        devices_per_pod,
                        config.dra,
                        [(m, config.gpus[m]) for m in alternatives],
                    )
                ]
            }
        },
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    labels = {**names.common_labels(svc), c.LABEL_POOL: pool.name}
    meta = names.object_meta(service, f"{names.pool_workload(svc, pool.name)}-{digest}", labels)
    meta["annotations"] = {c.ANNOTATION_GPU: pool.gpu}
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": meta,
        "spec": spec,
    }


def _is_gpu_resource(name: str) -> bool:
    return name.startswith(c.RESOURCE_PREFIX)


def use_claims(template: Obj, claim_template_name: str) -> Obj:
    """The device-plugin pod template turned into a DRA one (in place; returned for chaining).

    Containers that asked for ``amd.com/*`` ask for the claim instead; the required node
    affinity on AMD node-labeller labels goes (the claim's selectors choose the GPU model, and
    DRA nodes need not run the labeller). ``pods.nodeSelector``/tolerations from operator config
    stay. The spec-hash annotation is recomputed so the workload rolls when this changes.
    """
    pod = template["spec"]
    for container in pod.get("containers", []):
        res = container.get("resources") or {}
        had_gpu = False
        for key in ("requests", "limits"):
            section = res.get(key)
            if not section:
                continue
            for name in [n for n in section if _is_gpu_resource(n)]:
                del section[name]
                had_gpu = True
            if not section:
                del res[key]
        if had_gpu:
            res["claims"] = [{"name": CLAIM_NAME}]
    affinity = pod.get("affinity") or {}
    affinity.pop("nodeAffinity", None)
    if not affinity:
        pod.pop("affinity", None)
    pod["resourceClaims"] = [{"name": CLAIM_NAME, "resourceClaimTemplateName": claim_template_name}]
    annotations = template["metadata"]["annotations"]
    annotations.pop(c.ANNOTATION_SPEC_HASH, None)
    annotations[c.ANNOTATION_SPEC_HASH] = spec_hash(template)
    template["metadata"]["annotations"] = dict(sorted(annotations.items()))
    return template

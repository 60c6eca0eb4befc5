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
from typing import Any

from tokenscale import constants as c
from tokenscale.api.config import DraSettings, GPUSpec, OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.render import names
from tokenscale.render.pod import spec_hash

Obj = dict[str, Any]

API_VERSION = "resource.k8s.io/v1"
#: Name of the claim in the pod spec and of the request inside the claim.
CLAIM_NAME = "gpus"
#: Device ``type`` attribute values of AMD's driver.
TYPE_GPU = "amdgpu"
TYPE_PARTITION = "amdgpu-partition"


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
    if profile is None:
        return [
            f"{_attr(settings, 'type')} == {_quote(TYPE_GPU)}",
            product,
            _memory_check(settings, gpu.hbm_gib),
        ]
    device_type = TYPE_GPU if profile.startswith("spx") else TYPE_PARTITION
    return [
        f"{_attr(settings, 'type')} == {_quote(device_type)}",
        f"has({_attr(settings, 'partitionProfile')}) && "
        f"{_attr(settings, 'partitionProfile')} == {_quote(profile)}",
        product,
        _memory_check(settings, gpu.partitions[profile].hbm_gib),
    ]


def request(pool: GPUPool, gpu: GPUSpec, count: int, settings: DraSettings) -> Obj:
    """The ``exactly`` device request: ``count`` devices of the class matching the selectors."""
    exact: Obj = {
        "deviceClassName": settings.device_class,
        "allocationMode": "ExactCount",
        "count": count,
        "selectors": [{"cel": {"expression": e}} for e in selectors(pool, gpu, settings)],
    }
    if settings.auto_partition and pool.partition and not pool.partition.startswith("spx"):
        # AutoPartition devices hand out partitions as consumable capacity (one per request).
        exact["capacity"] = {"requests": {"partitions": "1"}}
    return {"name": CLAIM_NAME, "exactly": exact}


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
    service: InferenceService, pool: GPUPool, config: OperatorConfig, devices_per_pod: int
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
        "spec": {"devices": {"requests": [request(pool, gpu, devices_per_pod, config.dra)]}},
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

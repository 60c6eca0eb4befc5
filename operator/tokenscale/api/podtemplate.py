"""``spec.podTemplate``: what a platform team may add to every engine pod of one service.

The shapes are Kubernetes' own (core/v1 Toleration, Affinity, EnvVar, Volume, ...; see
:mod:`tokenscale.api.k8sschema`), so a platform engineer writes what they would write in a
Deployment and ``kubectl explain tsvc.spec.podTemplate`` shows Kubernetes' docs.
Fields the operator owns are not offered at all (container command/args, ports, probes,
security context) or are refused here by name, in CEL for the API server and in Python for
``tokenscale validate`` and the operator, with the same message: GPU resources, the labels
the operator selects on, its annotations, its environment variables and volume names. How
the rest merges over the rendered pod is in :mod:`tokenscale.render.podtemplate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from tokenscale import GROUP
from tokenscale import constants as c
from tokenscale.api.base import StrictModel, cel
from tokenscale.api.k8sschema import Schema, check, parse_quantity, schema

#: Label keys the operator selects on or sets (the ``tokenscale.dev/`` prefix is refused too).
OWNED_LABELS = (
    c.LABEL_NAME,
    c.LABEL_INSTANCE,
    c.LABEL_COMPONENT,
    c.LABEL_MANAGED_BY,
)
OWNED_PREFIXES = (f"{GROUP}/", "leaderworkerset.sigs.k8s.io/")
#: Annotations the operator writes on engine pods at runtime.
OWNED_ANNOTATIONS = (c.ANNOTATION_POD_DELETION_COST,)
#: Environment variables the renderer sets (``*_VISIBLE_DEVICES`` is refused as a suffix: the
#: device plugin owns GPU visibility). Anything else the operator renders is caught at render
#: time by :mod:`tokenscale.render.podtemplate`.
OWNED_ENV = (
    "POD_IP",
    "HF_HOME",
    "HF_TOKEN",
    "VLLM_ENGINE_READY_TIMEOUT_S",
    "VLLM_HOST_IP",
    "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
    "NODE_RANK",
    "VLLM_ROCM_USE_AITER",
    "HOME",
    "VLLM_CACHE_ROOT",
    "TRITON_CACHE_DIR",
    "AITER_JIT_DIR",
)
#: Volume names of the operator's volumes (/dev/shm, the HF cache, a model PVC, the non-root
#: engine's writable home).
OWNED_VOLUMES = ("shm", "hf-cache", "model", "engine-home")
GPU_RESOURCE_PREFIX = c.RESOURCE_PREFIX

MAX_LIST = 32
MAX_ENV = 64


def _in(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def field_error(subpath: str, message: str) -> PydanticCustomError:
    """A pydantic error whose ``subpath`` validation.py appends to the field path."""
    return PydanticCustomError(
        "pod_template", "{message}", {"message": message, "subpath": subpath}
    )


def _checked(node: Schema, extra: Callable[[Any], list[tuple[str, str]]] | None = None) -> Any:
    """After-validator: the vendored core/v1 schema, then the operator's own refusals."""

    def run(value: Any) -> Any:
        problems = check(node, value)
        if not problems and extra is not None:
            problems = extra(value)
        if problems:
            subpath, message = problems[0]
            if "fix:" not in message:
                message += "; fix: see `kubectl explain` for this field"
            raise field_error(subpath, message)
        return value

    return AfterValidator(run)


#: Bounds on the strings CEL rules compare, so the API server's cost estimate stays small
#: (volume names are DNS labels; env names have no Kubernetes bound, 253 is generous).
_NAME_BOUNDS = {"Volume": ("name", 63), "EnvVar": ("name", 253), "VolumeMount": ("mountPath", 4096)}


def _list(item: str, description: str, max_items: int, rules: list[tuple[str, str]]) -> Schema:
    items = schema(item)
    if item in _NAME_BOUNDS:
        key, bound = _NAME_BOUNDS[item]
        items["properties"][key]["maxLength"] = bound
    out: Schema = {
        "type": "array",
        "description": description,
        "maxItems": max_items,
        "items": items,
    }
    if rules:
        out |= cel(*rules)
    return out


def _string_map(description: str, rules: list[tuple[str, str]]) -> Schema:
    out: Schema = {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
    }
    if rules:
        out |= cel(*rules)
    return out


def _unique_names(what: str) -> tuple[str, str]:
    return (
        "self.all(x, self.exists_one(y, y.name == x.name))",
        f"{what} names must be unique",
    )


# --- the operator's refusals, once in CEL and once in Python -----------------------------

LABEL_MESSAGE = (
    "label keys app.kubernetes.io/{name,instance,component,managed-by}, tokenscale.dev/* and "
    "leaderworkerset.sigs.k8s.io/* are set by the operator (it selects pods on them); "
    "fix: use another key"
)
ANNOTATION_MESSAGE = (
    "annotations tokenscale.dev/*, leaderworkerset.sigs.k8s.io/* and "
    "controller.kubernetes.io/pod-deletion-cost are written by the operator; fix: use another key"
)
GPU_MESSAGE = (
    "GPU resources (amd.com/*) are set by the operator from the pool and the capacity plan; "
    "fix: remove the key and use spec.pools[].gpusPerReplica or spec.parallelism"
)
QUANTITY_MESSAGE = "not a Kubernetes quantity; fix: write e.g. 8, 500m, 64Gi"
ENV_MESSAGE = (
    "the operator sets this variable (and *_VISIBLE_DEVICES belongs to the device plugin); "
    "fix: use another name, or spec.engine.env for the documented overrides"
)
VOLUME_MESSAGE = (
    f"volume names {', '.join(OWNED_VOLUMES)} are the operator's (/dev/shm, HF cache, model "
    "PVC); fix: rename the volume and its volumeMounts"
)


def _key_rules(owned: tuple[str, ...], message: str) -> list[tuple[str, str]]:
    """Two CEL rules (keys, prefixes): one rule with both exceeds the API server's cost budget
    on an unbounded map."""
    prefixes = " && ".join(f"!k.startsWith('{p}')" for p in OWNED_PREFIXES)
    return [(f"self.all(k, !(k in {_in(owned)}))", message), (f"self.all(k, {prefixes})", message)]


def _owned_key(key: str, owned: tuple[str, ...]) -> bool:
    return key in owned or key.startswith(OWNED_PREFIXES)


def _labels(value: dict[str, str]) -> list[tuple[str, str]]:
    return [(f".{k}", LABEL_MESSAGE) for k in value if _owned_key(k, OWNED_LABELS)][:1]


def _annotations(value: dict[str, str]) -> list[tuple[str, str]]:
    return [(f".{k}", ANNOTATION_MESSAGE) for k in value if _owned_key(k, OWNED_ANNOTATIONS)][:1]


def _owned_env(name: str) -> bool:
    return name in OWNED_ENV or name.endswith("_VISIBLE_DEVICES")


def _duplicates(items: list[dict[str, Any]], what: str) -> list[tuple[str, str]]:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item["name"] in seen:
            return [(f"[{i}].name", f"{what} names must be unique; fix: remove the repeat")]
        seen.add(item["name"])
    return []


def _env(value: list[dict[str, Any]]) -> list[tuple[str, str]]:
    for i, var in enumerate(value):
        if _owned_env(var["name"]):
            return [(f"[{i}].name", ENV_MESSAGE)]
    return _duplicates(value, "env")


def _volumes(value: list[dict[str, Any]]) -> list[tuple[str, str]]:
    for i, vol in enumerate(value):
        if vol["name"] in OWNED_VOLUMES:
            return [(f"[{i}].name", VOLUME_MESSAGE)]
    return _duplicates(value, "volume")


def _resources(value: dict[str, Any]) -> list[tuple[str, str]]:
    for kind in ("requests", "limits"):
        for key in value.get(kind) or {}:
            if key.startswith(GPU_RESOURCE_PREFIX):
                return [(f".{kind}.{key}", GPU_MESSAGE)]
            if parse_quantity(value[kind][key]) is None:
                return [(f".{kind}.{key}", QUANTITY_MESSAGE)]
    return []


def _quantities(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": schema("Quantity", "A quantity (e.g. 500m, 4Gi)."),
        "x-kubernetes-validations": [
            {"rule": "self.all(k, !k.startsWith('amd.com/'))", "message": GPU_MESSAGE}
        ],
    }


RESOURCES: Schema = {
    "type": "object",
    "description": "Extra CPU, memory, ephemeral-storage or other non-GPU requests and limits "
    "of the engine container; a key given here replaces the operator's value for that key. "
    "GPU resources (amd.com/*) are the operator's.",
    "properties": {
        "requests": _quantities("Requests merged over the operator's (key by key)."),
        "limits": _quantities("Limits merged over the operator's (key by key)."),
    },
}

_VISIBLE = "!e.name.endsWith('_VISIBLE_DEVICES')"
ENV_RULES = [
    (f"self.all(e, !(e.name in {_in(OWNED_ENV)}) && {_VISIBLE})", ENV_MESSAGE),
    _unique_names("env"),
]
VOLUME_RULES = [
    (f"self.all(v, !(v.name in {_in(OWNED_VOLUMES)}))", VOLUME_MESSAGE),
    _unique_names("volume"),
]

MOUNT_PATH_RULE = (
    "self.all(x, self.exists_one(y, y.mountPath == x.mountPath))",
    "volumeMounts mountPath values must be unique",
)


def _mount_paths(value: list[dict[str, Any]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    for i, mount in enumerate(value):
        if mount["mountPath"] in seen:
            return [(f"[{i}].mountPath", f"{MOUNT_PATH_RULE[1]}; fix: remove the repeat")]
        seen.add(mount["mountPath"])
    return []


STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
LABELS = _string_map(
    "Extra labels on engine pods (the operator's own keys are refused).",
    _key_rules(OWNED_LABELS, LABEL_MESSAGE),
)
ANNOTATIONS = _string_map(
    "Extra annotations on engine pods (the operator's own keys are refused).",
    _key_rules(OWNED_ANNOTATIONS, ANNOTATION_MESSAGE),
)


def without_cel(node: Schema) -> Schema:
    """``node`` without its CEL rules, for the per-pool copy: under the pools list the map
    rules exceed the API server's cost budget, so there the operator alone refuses them
    (InvalidSpec condition + Event, same message)."""
    if isinstance(node, dict):
        return {k: without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    return node


Labels = Annotated[dict[str, str], WithJsonSchema(LABELS), _checked(STRING_MAP, _labels)]
PodAnnotations = Annotated[
    dict[str, str], WithJsonSchema(ANNOTATIONS), _checked(STRING_MAP, _annotations)
]
PoolLabels = Annotated[
    dict[str, str], WithJsonSchema(without_cel(LABELS)), _checked(STRING_MAP, _labels)
]
PoolAnnotations = Annotated[
    dict[str, str], WithJsonSchema(without_cel(ANNOTATIONS)), _checked(STRING_MAP, _annotations)
]
NodeSelector = Annotated[
    dict[str, str],
    WithJsonSchema(
        _string_map(
            "Node labels the engine pods require, ANDed with the operator's GPU placement and "
            "with operator config pods.nodeSelector.",
            [],
        )
    ),
    _checked({"type": "object", "additionalProperties": {"type": "string"}}),
]


TOLERATIONS = _list(
    "Toleration",
    "Tolerations appended to the operator's (operator config pods.tolerations).",
    MAX_LIST,
    [],
)
PULL_SECRETS = _list(
    "LocalObjectReference",
    "Secrets for pulling the engine image from a private registry (appended).",
    MAX_LIST,
    [],
)
ENV = _list(
    "EnvVar",
    "Environment variables of the engine container, e.g. from a Secret (valueFrom."
    "secretKeyRef) or ConfigMap (valueFrom.configMapKeyRef); appended after the operator's. "
    "Names the operator sets are refused.",
    MAX_ENV,
    ENV_RULES,
)
ENV_FROM = _list(
    "EnvFromSource",
    "Secrets/ConfigMaps whose keys become environment variables of the engine container "
    "(appended; variables in env, including the operator's, take precedence).",
    MAX_LIST,
    [],
)
VOLUMES = _list(
    "Volume",
    "Volumes added to the engine pod (names must not clash with the operator's).",
    MAX_LIST,
    VOLUME_RULES,
)
VOLUME_MOUNTS = _list(
    "VolumeMount",
    "Mounts of volumes from podTemplate.volumes into the engine container (appended; a "
    "mountPath the operator uses is left out with a warning at render time).",
    MAX_LIST,
    [MOUNT_PATH_RULE],
)
ObjList = list[dict[str, Any]]
Tolerations = Annotated[ObjList, WithJsonSchema(TOLERATIONS), _checked(TOLERATIONS)]
PullSecrets = Annotated[ObjList, WithJsonSchema(PULL_SECRETS), _checked(PULL_SECRETS)]
Env = Annotated[ObjList, WithJsonSchema(ENV), _checked(ENV, _env)]
EnvFrom = Annotated[ObjList, WithJsonSchema(ENV_FROM), _checked(ENV_FROM)]
Volumes = Annotated[ObjList, WithJsonSchema(VOLUMES), _checked(VOLUMES, _volumes)]
VolumeMounts = Annotated[
    ObjList, WithJsonSchema(VOLUME_MOUNTS), _checked(VOLUME_MOUNTS, _mount_paths)
]
Affinity = Annotated[
    dict[str, Any],
    WithJsonSchema(
        schema(
            "Affinity",
            "Scheduling constraints. nodeAffinity required terms are ANDed with the "
            "operator's GPU terms (every combination), preferred terms and pod "
            "(anti-)affinity are added as given.",
        )
    ),
    _checked(schema("Affinity")),
]
Resources = Annotated[dict[str, Any], WithJsonSchema(RESOURCES), _checked(RESOURCES, _resources)]
PoolResources = Annotated[
    dict[str, Any], WithJsonSchema(without_cel(RESOURCES)), _checked(RESOURCES, _resources)
]

MOUNTS_RULE = (
    "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
    "self.volumes.exists(v, v.name == m.name))",
    "every volumeMounts[].name must be a volume in podTemplate.volumes; fix: add the volume "
    "or correct the name",
)


class PoolPodTemplate(StrictModel):
    """Pod settings of one pool, merged after the service's ``spec.podTemplate``.

    The same fields and rules as ``spec.podTemplate`` minus affinity, volumes and volumeMounts,
    which are service-wide (their Kubernetes schemas are large; a copy per pool would double
    the CRD). Labels, annotations and resources keys replace the service's; a pool may add to
    but not contradict the service's nodeSelector, priorityClassName, serviceAccountName or
    env names (refused naming the field). The API server checks the operator-owned label,
    annotation and GPU-resource keys only in spec.podTemplate (CEL cost budget); here the
    operator refuses them.
    """

    labels: PoolLabels = Field(default_factory=dict)
    annotations: PoolAnnotations = Field(default_factory=dict)
    node_selector: NodeSelector = Field(default_factory=dict)
    tolerations: Tolerations = Field(default_factory=list)
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PriorityClass of the engine pods (e.g. to let serving preempt batch).",
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="ServiceAccount the engine pods run as (e.g. for workload identity to "
        "read weights from a bucket).",
    )
    image_pull_secrets: PullSecrets = Field(default_factory=list)
    resources: PoolResources = Field(default_factory=dict)
    env: Env = Field(default_factory=list)
    env_from: EnvFrom = Field(default_factory=list)


class PodTemplate(PoolPodTemplate):
    """Per-service pod settings for platform teams, merged over what the operator renders.

    Applies to every engine pod of the service (Deployment pools, LeaderWorkerSet leaders and
    workers); container fields (env, envFrom, resources, volumeMounts) go to the engine
    container. The merge rules are in docs/rendering.md ("Per-service pod settings").
    """

    model_config = StrictModel.model_config | {"json_schema_extra": cel(MOUNTS_RULE)}

    labels: Labels = Field(default_factory=dict)
    annotations: PodAnnotations = Field(default_factory=dict)
    resources: Resources = Field(default_factory=dict)
    affinity: Affinity = Field(default_factory=dict)
    volumes: Volumes = Field(default_factory=list)
    volume_mounts: VolumeMounts = Field(default_factory=list)

    @model_validator(mode="after")
    def _mounts_have_volumes(self) -> PodTemplate:
        names = {v["name"] for v in self.volumes}
        for i, mount in enumerate(self.volume_mounts):
            if mount["name"] not in names:
                raise field_error(f".volumeMounts[{i}].name", MOUNTS_RULE[1])
        return self


def pool_contradiction(
    service: PodTemplate | None, pool: PoolPodTemplate
) -> tuple[str, str] | None:
    """The first setting of a pool's podTemplate that contradicts the service's, if any.

    ``(sub-path below the pool's podTemplate, message)``. Contradictions are refused rather
    than resolved: a nodeSelector key with two values can never schedule, and which of two
    priorities or identities was meant is the author's call.
    """
    if service is None:
        return None
    fix = "; fix: set it in one place (spec.podTemplate or the pool's)"
    for key, value in pool.node_selector.items():
        if service.node_selector.get(key, value) != value:
            return (
                f".nodeSelector.{key}",
                f"spec.podTemplate.nodeSelector requires {key}={service.node_selector[key]}{fix}",
            )
    for name in ("priority_class_name", "service_account_name"):
        mine, theirs = getattr(pool, name), getattr(service, name)
        if mine is not None and theirs is not None and mine != theirs:
            field = PoolPodTemplate.model_fields[name].alias or name
            return (f".{field}", f"spec.podTemplate.{field} is {theirs}{fix}")
    names = {e["name"] for e in service.env}
    for i, var in enumerate(pool.env):
        if var["name"] in names:
            return (f".env[{i}].name", f"spec.podTemplate.env already sets {var['name']}{fix}")
    return None

"""Pure translation of a pod spec into what a local process needs: env, argv, ports.

Why separate: these rules (``$(VAR)`` expansion, env precedence, fieldRefs, service-link variables,
named ports) are where a fake kubelet silently diverges from a real one, so they are kept free of
I/O and unit-tested against the Kubernetes semantics (``third_party/forked/golang/expansion`` and
``pkg/kubelet/kubelet_pods.go``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

Obj = Mapping[str, Any]
#: ("configmap" | "secret", name) -> data (secret data already base64-decoded to str)
RefData = Mapping[tuple[str, str], Mapping[str, str] | None]


class SpecError(ValueError):
    """The pod cannot be run as specified (missing reference, unknown field, no command)."""


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Expand ``$(VAR)`` like Kubernetes: ``$$`` escapes, unknown variables stay verbatim."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:  # unterminated: kept as written
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            value = lookup(name) if name else None
            out.append(value if value is not None else text[i : end + 1])
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[a-zA-Z]*)$")
_SUFFIX = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}  # fmt: skip


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a Kubernetes resource quantity (``500m``, ``2Gi``, ``1e3``) into a Decimal."""
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise SpecError(f"invalid quantity {value!r}")
    number, suffix = m.groups()
    if suffix[:1] in ("e", "E"):
        return Decimal(number) * (Decimal(10) ** int(suffix[1:]))
    if suffix not in _SUFFIX:
        raise SpecError(f"invalid quantity suffix in {value!r}")
    return Decimal(number) * _SUFFIX[suffix]


def field_ref(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    """Value of a downward-API ``fieldRef.fieldPath``."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {}) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise SpecError(f"unsupported fieldRef {path!r}")


def resource_field_ref(container: Obj, ref: Obj) -> str:
    """Value of a ``resourceFieldRef`` (limits/requests with divisor, ceil like the kubelet)."""
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    resources = container.get("resources", {}) or {}
    raw = (resources.get(kind, {}) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (resources.get("limits", {}) or {}).get(name)
    if raw is None:  # unlimited: the kubelet reports node allocatable; we have no real node
        raw = "64" if name == "cpu" else str(512 * 2**30)
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        raise SpecError(f"zero divisor in resourceFieldRef {resource}")
    return str(math.ceil(parse_quantity(raw) / divisor))


def referenced_objects(pod: Obj) -> set[tuple[str, str]]:
    """ConfigMaps/Secrets the env (``env``, ``envFrom``) of any container needs."""
    refs: set[tuple[str, str]] = set()
    spec = pod.get("spec", {})
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for src in c.get("envFrom", []) or []:
            if "configMapRef" in src:
                refs.add(("configmap", src["configMapRef"]["name"]))
            if "secretRef" in src:
                refs.add(("secret", src["secretRef"]["name"]))
        for e in c.get("env", []) or []:
            vf = e.get("valueFrom") or {}
            if "configMapKeyRef" in vf:
                refs.add(("configmap", vf["configMapKeyRef"]["name"]))
            if "secretKeyRef" in vf:
                refs.add(("secret", vf["secretKeyRef"]["name"]))
    return refs


def _key_ref(kind: str, ref: Obj, data: RefData) -> str | None:
    obj = data.get((kind, ref["name"]))
    optional = bool(ref.get("optional", False))
    if obj is None:
        if optional:
            return None
        raise SpecError(f"{kind} {ref['name']!r} not found")
    if ref["key"] not in obj:
        if optional:
            return None
        raise SpecError(f"key {ref['key']!r} not found in {kind} {ref['name']!r}")
    return obj[ref["key"]]


def service_env(services: Iterable[tuple[str, str, list[Obj]]]) -> dict[str, str]:
    """Docker-link style variables (``FOO_SERVICE_HOST`` …) for (name, address, ports) triples."""
    env: dict[str, str] = {}
    for name, addr, ports in services:
        if not ports:
            continue
        prefix = name.upper().replace("-", "_")
        first = ports[0]
        env[f"{prefix}_SERVICE_HOST"] = addr
        env[f"{prefix}_SERVICE_PORT"] = str(first["port"])
        for p in ports:
            proto = str(p.get("protocol", "TCP"))
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
            base = f"{prefix}_PORT_{p['port']}_{proto}"
            env[base] = f"{proto.lower()}://{addr}:{p['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(p["port"])
            env[f"{base}_ADDR"] = addr
        env[f"{prefix}_PORT"] = (
            f"{str(first.get('protocol', 'TCP')).lower()}://{addr}:{first['port']}"
        )
    return env


def build_env(
    pod: Obj,
    container: Obj,
    *,
    pod_ip: str,
    host_ip: str,
    data: RefData,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's environment, in kubelet order: base (image + service vars), envFrom, env.

    ``env`` values may reference earlier variables with ``$(VAR)``; ``envFrom`` values are literal.
    """
    env: dict[str, str] = dict(base or {})
    for src in container.get("envFrom", []) or []:
        prefix = str(src.get("prefix", ""))
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            if key not in src:
                continue
            ref = src[key]
            obj = data.get((kind, ref["name"]))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise SpecError(f"{kind} {ref['name']!r} not found")
            for k, v in obj.items():
                env[prefix + k] = v
    for e in container.get("env", []) or []:
        name = e["name"]
        if "valueFrom" not in e:
            env[name] = expand(str(e.get("value", "")), env.get)
            continue
        vf = e["valueFrom"]
        value: str | None
        if "fieldRef" in vf:
            value = field_ref(pod, vf["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in vf:
            value = resource_field_ref(container, vf["resourceFieldRef"])
        elif "configMapKeyRef" in vf:
            value = _key_ref("configmap", vf["configMapKeyRef"], data)
        elif "secretKeyRef" in vf:
            value = _key_ref("secret", vf["secretKeyRef"], data)
        else:
            raise SpecError(f"unsupported valueFrom for env {name!r}: {sorted(vf)}")
        if value is not None:
            env[name] = value
    return env


VLLM_SERVE = ["vllm", "serve"]


def resolve_argv(
    container: Obj,
    env: Mapping[str, str],
    *,
    entrypoint: list[str] | None = None,
    default_args: list[str] | None = None,
    rewrites: Iterable[tuple[list[str], list[str]]] = (),
) -> list[str]:
    """argv for a container: command+args (image entrypoint/cmd fill gaps), expanded, rewritten.

    Kubernetes: ``command`` replaces the image ENTRYPOINT, ``args`` replaces CMD; if only ``args``
    are given they go to the image ENTRYPOINT. ``rewrites`` map a leading argv prefix to another
    (e.g. the broken ``vllm`` console script -> ``python -m <module>``).
    """
    command = container.get("command") or None
    args = container.get("args")
    if command:
        argv = [*command, *(args or [])]
    else:
        argv = [*(entrypoint or []), *(args if args is not None else (default_args or []))]
    argv = [expand(str(a), env.get) for a in argv]
    for old, new in rewrites:
        if old and argv[: len(old)] == old:
            rest = argv[len(old) :]
            if old == VLLM_SERVE and rest and not rest[0].startswith("-"):
                # `vllm serve MODEL`: vLLM's CLI moves the positional to --model; the module
                # entry points it is rewritten to would ignore it and serve their default model
                rest = ["--model", *rest]
            argv = [*new, *rest]
            break
    if not argv:
        raise SpecError(
            f"container {container.get('name')!r} has no command and the image map knows no "
            "entrypoint for its image"
        )
    return argv


def resolve_port(port: int | str, containers: Iterable[Obj]) -> int | None:
    """A probe/targetPort value: an int, a numeric string, or a container port name."""
    if isinstance(port, int):
        return port
    if str(port).isdigit():
        return int(port)
    for c in containers:
        for p in c.get("ports", []) or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    return None


def restart_wanted(policy: str, exit_code: int) -> bool:
    """Whether a container that exited with ``exit_code`` is restarted under ``policy``."""
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False

"""Per-pod files: volumes, ServiceAccount token dir, ``/etc/hosts`` and ``/etc/resolv.conf``.

Why: a pod must see what it would see in a cluster — its token from the TokenRequest API (bound to
the pod) with ``ca.crt`` and ``namespace`` at the in-cluster path, configMap/secret volumes, a
model directory behind a PVC — and Service names must resolve to loopback Service proxies. The
files live under the pod's dir and ``nsexec`` bind-mounts them in a private mount namespace.
Files that change while the pod runs (tokens, hosts) are rewritten so bind mounts see the update:
directories via atomic rename inside them, the single-file ``/etc/hosts`` in place.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import Api
from .spec import SpecError, field_ref, parse_quantity, referenced_objects

log = logging.getLogger(__name__)
Obj = Mapping[str, Any]
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_SECONDS = 3600


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def write_in_place(path: Path, text: str) -> None:
    """Rewrite keeping the inode, so a file bind mount (``/etc/hosts``) sees the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("r+" if path.exists() else "w") as fh:
        fh.seek(0)
        fh.write(text)
        fh.truncate()


def render_hosts(
    *,
    namespace: str,
    pod_name: str,
    pod_ip: str,
    hostname: str = "",
    subdomain: str = "",
    services: Iterable[tuple[str, str, str]] = (),
    peers: Iterable[tuple[str, str, str, str]] = (),
) -> str:
    """hosts file: localhost, the pod itself, every Service (name, namespace, address) and
    the per-pod names of pods with a subdomain (hostname, subdomain, namespace, ip), which a
    headless Service gives them in a cluster (StatefulSet / LeaderWorkerSet peers)."""
    lines = [
        "# written by the test bed's process kubelet",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    own = [hostname or pod_name]
    if subdomain:
        fqdn = f"{hostname or pod_name}.{subdomain}.{namespace}.svc"
        own[:0] = [f"{fqdn}.cluster.local", fqdn]
    lines.append(f"{pod_ip}\t{' '.join(own)}")
    for name, ns, addr in sorted(services):
        names = [f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == namespace:
            names.append(name)
        lines.append(f"{addr}\t{' '.join(names)}")
    for host, sub, ns, ip in sorted(peers):
        if ip == pod_ip:
            continue
        fqdn = f"{host}.{sub}.{ns}.svc"
        names = [f"{fqdn}.cluster.local", fqdn, *([f"{host}.{sub}"] if ns == namespace else [])]
        lines.append(f"{ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def render_resolv(namespace: str) -> str:
    """No real DNS server: queries for unknown names go to a dead loopback port and fail fast."""
    return (
        "# written by the test bed's process kubelet; names resolve via /etc/hosts only\n"
        "nameserver 127.0.0.1\n"
        f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5 timeout:1 attempts:1\n"
    )


async def fetch_env_data(api: Api, pod: Obj) -> dict[tuple[str, str], dict[str, str] | None]:
    """ConfigMaps/Secrets referenced by env/envFrom, decoded (None for missing ones)."""
    ns = pod["metadata"]["namespace"]
    out: dict[tuple[str, str], dict[str, str] | None] = {}
    for kind, name in referenced_objects(pod):
        plural = "configmaps" if kind == "configmap" else "secrets"
        obj = await api.get(f"/api/v1/namespaces/{ns}/{plural}/{name}")
        if obj is None:
            out[(kind, name)] = None
        elif kind == "configmap":
            out[(kind, name)] = dict(obj.get("data") or {})
        else:
            out[(kind, name)] = {
                k: base64.b64decode(v).decode(errors="replace")
                for k, v in (obj.get("data") or {}).items()
            }
    return out


def _mkdir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _host_path(hp: Obj) -> str:
    p = Path(hp["path"])
    if hp.get("type") == "DirectoryOrCreate":
        p.mkdir(parents=True, exist_ok=True)
    elif hp.get("type") == "FileOrCreate" and not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    return str(p)


@dataclass
class VolumeSource:
    path: str | None  # host-side dir/file to bind; None for tmpfs
    tmpfs_size: str | None = None
    refresh: bool = False  # holds a token that must be renewed


@dataclass
class PodVolumes:
    """Renders a pod's volumes under ``root`` and computes each container's mount list."""

    api: Api
    pod: Obj
    root: Path
    pod_ip: str
    pvc_root: Path
    ca_pem: bytes
    sources: dict[str, VolumeSource] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    def _volumes(self) -> list[Obj]:
        vols = list(self.pod["spec"].get("volumes", []) or [])
        if self._needs_synthetic_sa():
            vols.append(
                {
                    "name": "kube-api-access-testbed",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "path": "token",
                                    "expirationSeconds": TOKEN_SECONDS,
                                }
                            },
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {"fieldPath": "metadata.namespace"},
                                        }
                                    ]
                                }
                            },
                        ]
                    },
                }
            )
        return vols

    def _needs_synthetic_sa(self) -> bool:
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return False
        mounted = any(
            m.get("mountPath", "").rstrip("/") == SA_MOUNT
            for c in spec.get("containers", [])
            for m in c.get("volumeMounts", []) or []
        )
        return not mounted

    async def prepare(self) -> None:
        for vol in self._volumes():
            self.sources[vol["name"]] = await self._render(vol)

    async def refresh_tokens(self) -> None:
        for vol in self._volumes():
            if self.sources.get(vol["name"], VolumeSource(None)).refresh:
                await self._render(vol)

    async def _render(self, vol: Obj) -> VolumeSource:
        name = vol["name"]
        target = self.root / "volumes" / name
        if "emptyDir" in vol:
            ed = vol["emptyDir"] or {}
            if ed.get("medium") == "Memory":
                limit = ed.get("sizeLimit")  # tmpfs wants bytes (or k/m/g), not "64Mi"
                size = str(int(parse_quantity(limit))) if limit else None
                return VolumeSource(None, tmpfs_size=size)
            target.mkdir(parents=True, exist_ok=True)
            return VolumeSource(str(target))
        if "hostPath" in vol:
            return VolumeSource(_host_path(vol["hostPath"]))
        if "persistentVolumeClaim" in vol:
            return VolumeSource(await self._pvc_path(vol["persistentVolumeClaim"]["claimName"]))
        if "configMap" in vol:
            await self._write_keys(target, "configmap", vol["configMap"], vol["configMap"]["name"])
            return VolumeSource(str(target))
        if "secret" in vol:
            await self._write_keys(target, "secret", vol["secret"], vol["secret"]["secretName"])
            return VolumeSource(str(target))
        if "downwardAPI" in vol:
            self._write_downward(target, vol["downwardAPI"].get("items", []))
            return VolumeSource(str(target))
        if "projected" in vol:
            refresh = False
            for src in vol["projected"].get("sources", []) or []:
                if "serviceAccountToken" in src:
                    await self._write_token(target, src["serviceAccountToken"])
                    refresh = True
                elif "configMap" in src:
                    await self._write_keys(
                        target, "configmap", src["configMap"], src["configMap"]["name"]
                    )
                elif "secret" in src:
                    await self._write_keys(target, "secret", src["secret"], src["secret"]["name"])
                elif "downwardAPI" in src:
                    self._write_downward(target, src["downwardAPI"].get("items", []))
            return VolumeSource(str(target), refresh=refresh)
        log.warning(
            "pod %s/%s: volume %s of unsupported type %s -> empty dir",
            self.ns,
            self.pod["metadata"]["name"],
            name,
            sorted(set(vol) - {"name"}),
        )
        target.mkdir(parents=True, exist_ok=True)
        return VolumeSource(str(target))

    async def _pvc_path(self, claim: str) -> str:
        """A bound PV's hostPath/local path if any, else a per-claim dir under ``pvc_root``."""
        pvc = await self.api.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
        pv_name = (pvc or {}).get("spec", {}).get("volumeName")
        if pv_name:
            pv = await self.api.get(f"/api/v1/persistentvolumes/{pv_name}") or {}
            for kind in ("hostPath", "local"):
                path = pv.get("spec", {}).get(kind, {}).get("path")
                if path:
                    return _mkdir(Path(path))
        return _mkdir(self.pvc_root / self.ns / claim)

    async def _write_keys(self, target: Path, kind: str, ref: Obj, obj_name: str) -> None:
        plural = "configmaps" if kind == "configmap" else "secrets"
        obj = await self.api.get(f"/api/v1/namespaces/{self.ns}/{plural}/{obj_name}")
        data: dict[str, bytes] = {}
        if obj is None and obj_name == "kube-root-ca.crt" and self.ca_pem:
            obj = {"data": {"ca.crt": self.ca_pem.decode()}}  # kcm publisher not there yet
        if obj is None:
            if ref.get("optional"):
                return
            raise SpecError(f"{kind} {obj_name!r} for a volume not found")
        if kind == "configmap":
            data.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        mode = int(ref.get("defaultMode", 0o644))
        items = ref.get("items")
        pairs = (
            [(i["key"], i["path"], int(i.get("mode", mode))) for i in items]
            if items
            else [(k, k, mode) for k in data]
        )
        for key, rel, m in pairs:
            if key not in data:
                if ref.get("optional"):
                    continue
                raise SpecError(f"key {key!r} missing in {kind} {obj_name!r}")
            write_atomic(target / rel, data[key], m)

    def _write_downward(self, target: Path, items: Iterable[Obj]) -> None:
        for item in items:
            if "fieldRef" not in item:
                continue
            value = field_ref(self.pod, item["fieldRef"]["fieldPath"], self.pod_ip, "127.0.0.1")
            write_atomic(target / item["path"], value.encode(), int(item.get("mode", 0o644)))

    async def _write_token(self, target: Path, src: Obj) -> None:
        meta = self.pod["metadata"]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": int(src.get("expirationSeconds") or TOKEN_SECONDS),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        resp = await self.api.request(
            "POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body=body
        )
        write_atomic(target / src.get("path", "token"), resp["status"]["token"].encode(), 0o600)

    def mounts(self, container: Obj) -> list[dict[str, object]]:
        """nsexec mount list for a container: its volumeMounts (+ the synthetic SA mount)."""
        out: list[dict[str, object]] = []
        vms = list(container.get("volumeMounts", []) or [])
        if "kube-api-access-testbed" in self.sources:
            vms.append({"name": "kube-api-access-testbed", "mountPath": SA_MOUNT, "readOnly": True})
        for vm in vms:
            src = self.sources.get(vm["name"])
            if src is None:
                raise SpecError(f"volumeMount {vm['name']!r} has no volume")
            dst = str(vm["mountPath"])
            if src.path is None:
                out.append({"kind": "tmpfs", "dst": dst, "size": src.tmpfs_size})
                continue
            path = src.path
            if vm.get("subPath"):
                sub = Path(path) / vm["subPath"]
                if not sub.exists():
                    sub.mkdir(parents=True, exist_ok=True)
                path = str(sub)
            out.append({"src": path, "dst": dst, "ro": bool(vm.get("readOnly"))})
        return out

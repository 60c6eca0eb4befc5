"""Two operator replicas, one active: Kopf peering set up so that it actually works.

Kopf pauses an operator when it sees a live peer with a *higher* priority — and pauses *all*
of them when priorities are equal, leaving the cluster unserved. So every replica gets its own
priority (random unless given): the highest one acts, the others stand by and take over when
its keep-alive record expires (Kopf's peering lifetime, 60 s). Kopf also only patches an
existing peering object (a missing one silently disables peering), so the operator creates it
at startup. The CRDs are Kopf's own kinds, generated here for the Helm chart.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tokenscale.k8s.kube import Kube, KubeError

log = logging.getLogger(__name__)

GROUP = "kopf.dev"
MAX_PRIORITY = 2**31 - 1


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"Kopf {kind}: live operator replicas and priorities.",
                            "properties": {
                                # One key per operator identity: {priority, lifetime, lastseen}.
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def peering_crds() -> list[dict[str, Any]]:
    """Kopf's ClusterKopfPeering (cluster-wide operators) and KopfPeering (namespaced)."""
    return [
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def random_priority() -> int:
    """A priority no other replica will share (collisions: 1 in 2^31)."""
    return 1 + secrets.randbelow(MAX_PRIORITY - 1)


def ensure_peering_objects(kube: Kube, name: str, namespaces: Sequence[str]) -> list[str]:
    """Create the peering object(s) Kopf will keep-alive in; returns what was created."""
    created = []
    scopes: list[str | None] = [*namespaces] or [None]
    for namespace in scopes:
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        meta: dict[str, Any] = {"name": name}
        if namespace:
            meta["namespace"] = namespace
        try:
            kube.create({"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": meta})
        except KubeError as exc:
            if exc.status == 409:  # another replica (or a previous run) made it
                continue
            if exc.status == 404:
                raise KubeError(
                    404,
                    f"the {kind} CRD ({kind.lower()}s.{GROUP}) is not installed; fix: install "
                    "the chart with peering.enabled=true (it ships Kopf's peering CRDs)",
                ) from None
            raise KubeError(exc.status, f"creating {kind} {name}: {exc}") from None
        created.append(f"{kind} {namespace + '/' if namespace else ''}{name}")
    return created


def own_identity() -> str:
    """This replica's peering identity: the pod name (``POD_ID``, set by the chart) or a
    user@host/random one; passed to Kopf so our own checks and Kopf's agree on who we are."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    return f"{getpass.getuser()}@{socket.gethostname()}/{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Peering:
    """What this replica needs to know to ask "am I the active one?"."""

    name: str
    namespaces: tuple[str, ...]
    identity: str
    priority: int


def outranked_by(
    records: Mapping[str, Any], identity: str, priority: int, now: datetime
) -> list[str]:
    """Live peers that make Kopf pause this replica: a higher or an equal priority.

    ``records`` is a peering object's status: identity -> {priority, lifetime, lastseen}.
    A peer is live until ``lastseen + lifetime`` (Kopf's rule; 60 s when it says nothing).
    """
    out = []
    for peer, info in records.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.fromisoformat(str(info.get("lastseen")))
        except ValueError:
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        lifetime = float(info.get("lifetime") or 60)
        if (now - seen).total_seconds() <= lifetime and int(info.get("priority") or 0) >= priority:
            out.append(peer)
    return out


def is_active(kube: Kube, peering: Peering, now: datetime | None = None) -> bool:
    """True when Kopf would not pause this replica (our own loops outside Kopf ask this)."""
    now = now or datetime.now(UTC)
    scopes: list[str | None] = [*peering.namespaces] or [None]
    for namespace in scopes:
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        try:
            obj = kube.get(kind, namespace, peering.name)
        except KubeError as exc:
            log.warning("cannot read peering %s: %s; acting as standby", peering.name, exc)
            return False
        if obj is None:
            log.warning("peering %s does not exist; acting as standby", peering.name)
            return False
        records = obj.get("status") or {}
        if outranked_by(records, peering.identity, peering.priority, now):
            return False
    return True

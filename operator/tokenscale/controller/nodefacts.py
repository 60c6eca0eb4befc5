"""A thin cached reader of the cluster's GPU nodes, for ``auto`` resource naming and the
missing-labeller check.

Why cached: placement facts change when nodes are added or repartitioned, not per reconcile, so
one node list per resync pass is enough; the decision itself is the pure
:func:`tokenscale.render.gpuplacement.cluster_gpus` over that list. A failed list (no RBAC for
nodes, API hiccup) falls back to offline behaviour (None: the device plugin's default naming,
no labeller check) instead of failing the reconcile.
"""

from __future__ import annotations

import logging
import threading
import weakref

from tokenscale.api.config import OperatorConfig
from tokenscale.k8s.kube import Kube, KubeError
from tokenscale.render.gpuplacement import ClusterGPUs, cluster_gpus

log = logging.getLogger(__name__)


class NodeFacts:
    """The last node summary; read on first use after each :meth:`invalidate`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: ClusterGPUs | None = None
        self._fresh = False

    def get(self, kube: Kube, cfg: OperatorConfig) -> ClusterGPUs | None:
        with self._lock:
            if not self._fresh:
                self._fresh = True
                try:
                    self._facts = cluster_gpus(
                        kube.list("Node", None), cfg.pods.tolerations, cfg.pods.node_selector
                    )
                except KubeError as exc:
                    log.warning("cannot list nodes (%s): resource naming falls back to single", exc)
                    self._facts = None
            return self._facts

    def invalidate(self) -> None:
        """The next :meth:`get` lists the nodes again (called once per resync pass)."""
        with self._lock:
            self._fresh = False


_BY_CLIENT: weakref.WeakKeyDictionary[Kube, NodeFacts] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def for_client(kube: Kube) -> NodeFacts:
    """The cache of one API client (the operator has one; tests make many)."""
    with _GUARD:
        found = _BY_CLIENT.get(kube)
        if found is None:
            found = _BY_CLIENT[kube] = NodeFacts()
        return found

"""Watches registered at startup, because whether they are wanted depends on operator config.

LeaderWorkerSet pools change readiness like Deployment pools do, so their events must refresh
the owner's status at once; without a watch, a multi-node service only learned of its ready
replicas from the 5-minute resync. The watch is registered only when the operator config says
the LWS CRD is installed (``leaderWorkerSet: true``): a watch on a kind the cluster lacks would
only log errors. Kopf starts resource watchers after the startup handlers return, and follows
the CRD appearing later, so registering here is the same as a decorator at import time.
"""

from __future__ import annotations

import weakref
from typing import Any

import kopf

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig

LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
LWS_HANDLER_ID = "lws_changed"

_WATCHING: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


def watch_leader_worker_sets(
    cfg: OperatorConfig, handler: Any, registry: kopf.OperatorRegistry | None = None
) -> bool:
    """Have ``handler`` (the Deployment child-event handler) also see our LeaderWorkerSets.

    Returns whether the watch is registered; registering twice (a second startup in one
    process) adds nothing."""
    if not cfg.leader_worker_set:
        return False
    registry = registry if registry is not None else kopf.get_default_registry()
    if registry in _WATCHING:
        return True
    _WATCHING.add(registry)
    kopf.on.event(
        LWS_GROUP,
        LWS_VERSION,
        LWS_PLURAL,
        id=LWS_HANDLER_ID,
        labels={c.LABEL_MANAGED_BY: c.MANAGED_BY},
        registry=registry,
    )(handler)
    return True

"""One service's status is observed and written by one thread at a time.

Three paths read an InferenceService's children and write the status they computed from them:
the Kopf handlers (create, spec change, resume), the refresh threads (child events) and the
resync. Unordered, an observation made earlier can land after one made later, and then the
status stays wrong until something else happens to the children. Seen in the multinode e2e
(issue 20): the spec-change reconcile that follows a create (``spec.replicas`` written) read the
LeaderWorkerSet before its group was ready, took ~4 s under load, and its status
(``readyReplicas: 0``) landed a second after the refresh for the LWS's last event had written 1;
no child event came after it, so the service said 0/1 ready until the 5-minute resync.

Holding the service's lock from the first read to the status write makes the write order the
observation order, so the status last written is the newest observation. The lock is per
service (others proceed) and not re-entrant: a holder never takes it again.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator


class _Guard:
    """A lock that a weak-valued map can hold (plain locks take no weak references)."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


# Weak values: a guard lives while a thread holds or waits on it, so the map does not grow with
# every service the operator ever saw.
_GUARDS: weakref.WeakValueDictionary[tuple[str, str], _Guard] = weakref.WeakValueDictionary()
_GUARDS_LOCK = threading.Lock()


@contextlib.contextmanager
def held(namespace: str, name: str) -> Iterator[None]:
    """Run the block (read children ... write status) alone for this service."""
    with _GUARDS_LOCK:
        guard = _GUARDS.get((namespace, name))
        if guard is None:
            guard = _GUARDS[(namespace, name)] = _Guard()
    with guard.lock:
        yield

"""Prompt status refreshes after child events, coalesced per service.

A child Deployment sees several watch events while it rolls out (created, pods scheduled,
replicas ready, ...). Kopf keeps every such event — ~50 KB of Python objects with its
managedFields — queued until the handler for it returns, so a handler that does the refresh
itself lets a fleet-wide ramp pile up events faster than the handler threads drain them
(P1: that backlog was most of the operator's RSS). The handler only marks the owning service
here and returns; a few threads refresh every marked service once, however many events marked it
meanwhile. A service marked again while its refresh runs is refreshed once more afterwards, so
the last event is always followed by a refresh that started after it: nothing is dropped, only
merged.

A mark also says how much work the refresh needs: ``full`` (run the reconcile, applying
children) when any merged event showed a child the last reconcile did not apply — a moved
``generation``, a deletion, a child the ledger does not know — else only the status is
recomputed and written.

A refresh that fails (an API error, a refused apply, a status patch that did not land) is
marked again after a backoff (:data:`RETRY_DELAYS`), like Kopf retries a failed handler: the
event that asked for it is otherwise gone, and the service would keep a stale status or a
missing child until the fleet-wide resync, minutes later (found by the API-faults drill,
``tests/e2e/test_drill_api_faults.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tokenscale.api.config import OperatorConfig
from tokenscale.controller import events, metrics, observe, statusorder
from tokenscale.controller.reconcile import child_version, reconcile_service, refresh_status
from tokenscale.controller.resync import LEDGER
from tokenscale.k8s.kube import Kube, KubeError

log = logging.getLogger(__name__)

#: Threads refreshing marked services (each holds one service's objects at a time).
THREADS = 4

Key = tuple[str, str]  # (namespace, name)

#: Seconds before a failed refresh runs again, by the number of failures in a row.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


class RefreshQueue:
    """Services waiting for a refresh; each at most once in line and once in progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[Key, bool] = {}  # key -> full reconcile needed
        self._order: deque[Key] = deque()
        self._active: set[Key] = set()
        self._delayed: dict[Key, tuple[float, bool]] = {}  # key -> (due, full): retries
        self._failures: dict[Key, int] = {}
        self._closed = False

    def mark(self, key: Key, full: bool) -> None:
        """Ask for a refresh of ``key`` (a full reconcile if ``full``) that starts after now."""
        with self._cond:
            self._mark(key, full)

    def _mark(self, key: Key, full: bool) -> None:
        _due, was_full = self._delayed.pop(key, (0.0, False))  # now is sooner than a retry
        queued = key in self._pending
        self._pending[key] = self._pending.get(key, False) or full or was_full
        if not queued and key not in self._active:
            self._order.append(key)
            self._cond.notify()

    def retry(self, key: Key, full: bool) -> float:
        """The refresh of ``key`` failed: mark it again after a backoff; returns the delay."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
            due, was_full = self._delayed.get(key, (time.monotonic() + delay, False))
            self._delayed[key] = (due, full or was_full)
            self._cond.notify()
            return delay

    def succeeded(self, key: Key) -> None:
        """The refresh of ``key`` worked: the next failure starts the backoff afresh."""
        with self._cond:
            self._failures.pop(key, None)

    def _promote(self) -> float | None:
        """Move due retries into line; seconds until the next one (None: none waiting)."""
        now = time.monotonic()
        for key, (due, full) in list(self._delayed.items()):
            if due <= now:
                del self._delayed[key]
                self._mark(key, full)
        if not self._delayed:
            return None
        return min(due for due, _ in self._delayed.values()) - now

    def take(self, timeout: float | None = None) -> tuple[Key, bool] | None:
        """The next service to refresh and whether it needs a full reconcile (None: closed or
        nothing within ``timeout``). Call :meth:`done` with the key afterwards."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                next_retry = self._promote()
                if self._closed:
                    return None
                if self._order:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                waits = [w for w in (next_retry, left) if w is not None]
                self._cond.wait(max(0.0, min(waits)) if waits else None)
            key = self._order.popleft()
            self._active.add(key)
            return key, self._pending.pop(key)

    def done(self, key: Key) -> None:
        """The refresh of ``key`` finished; one marked meanwhile goes back in line."""
        with self._cond:
            self._active.discard(key)
            if key in self._pending:
                self._order.append(key)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)


def serve(queue: RefreshQueue, refresh: Callable[[str, str, bool], bool | None]) -> None:
    """Refresh marked services until the queue is closed (the body of each refresh thread).

    ``refresh`` returns False (or raises :class:`KubeError`) when it must run again later."""
    while (item := queue.take()) is not None:
        key, full = item
        namespace, name = key
        worked: bool | None = False
        try:
            worked = refresh(namespace, name, full)
        except KubeError as exc:
            log.info("refresh of %s/%s failed: %s", namespace, name, exc)
        except Exception:  # a refresh thread must outlive one bad service
            log.exception("refresh of %s/%s failed", namespace, name)
            worked = None  # a bug, not the API server: retrying would only repeat it
        finally:
            if worked is False:
                delay = queue.retry(key, full)
                log.info("refresh of %s/%s retried in %.0f s", namespace, name, delay)
            else:
                queue.succeeded(key)
            queue.done(key)


def start(
    queue: RefreshQueue,
    refresh: Callable[[str, str, bool], bool | None],
    threads: int = THREADS,
) -> None:
    for i in range(threads):
        threading.Thread(
            target=serve, args=(queue, refresh), name=f"refresh-{i}", daemon=True
        ).start()


def child_needs_reconcile(event_type: str | None, child: dict[str, Any]) -> bool:
    """Whether a child's event calls for a full reconcile, not just a status refresh.

    Only status moved when the child is the version the owner's last reconcile applied (same
    ``generation``: nobody edited its spec). A deleted or deleting child, an edited one, or one
    the ledger does not know (another process applied it, or this one restarted) is converged.
    """
    meta = child.get("metadata") or {}
    if event_type == "DELETED" or meta.get("deletionTimestamp"):
        return True
    owner = next(
        (r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")), None
    )
    applied = LEDGER.get(str(owner)) if owner else None
    if applied is None:
        return True
    key = (str(child.get("kind") or "Deployment"), str(meta.get("name")))
    return applied.get(key) != child_version(child)


#: How often the status of a service whose pods are not all ready is looked at again.
SETTLING_SECONDS = 10.0


def settling(status: dict[str, Any] | None) -> bool:
    """Replicas are wanted but not all ready: pods may be failing in ways no Deployment event
    reports (a crash loop or an image pull error leaves the Deployment's status as it was).

    The operator does not watch pods, so such a service's status is refreshed every
    :data:`SETTLING_SECONDS` until it settles; the fleet-wide resync (5 min) is too slow for
    the one moment a user watches. Found by the engine-fault drill (issue 17): a crash-looping
    engine's service read Degraded False/Healthy for minutes."""
    conds = {x.get("type"): x for x in (status or {}).get("conditions") or []}
    ready, progressing = conds.get("Ready") or {}, conds.get("Progressing") or {}
    if ready.get("status") == "False" and ready.get("reason") == "ReplicasNotReady":
        return True
    return progressing.get("status") == "True" and progressing.get("reason") == "RollingOut"


def refresh_service(
    kube: Kube, cfg: OperatorConfig, namespace: str, name: str, *, full: bool = True
) -> bool:
    """Re-run the service's reconcile outside its own handler and patch its status.

    ``full=False`` asks only for a status refresh; it is done only when the spec's generation
    was observed and the ledger knows the service, else the reconcile runs in full. It takes
    its turn with the service's handlers (:mod:`statusorder`): the status it writes is never
    overwritten by one a handler read earlier. False when it must run again: an apply was
    refused or the status patch failed (an API error before that raises :class:`KubeError`).
    """
    with statusorder.held(namespace, name):
        return _refresh(kube, cfg, namespace, name, full)


def _refresh(kube: Kube, cfg: OperatorConfig, namespace: str, name: str, full: bool) -> bool:
    owner = kube.get("InferenceService", namespace, name)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        metrics.remove_service(namespace, name)
        return True
    meta = owner["metadata"]
    observed = observe.service_status(owner).observed_generation
    status_only = (
        not full
        and meta.get("generation") == observed
        and LEDGER.get(str(meta.get("uid") or "")) is not None
    )
    if status_only:
        outcome = refresh_status(owner, kube, cfg)
    else:
        outcome = reconcile_service(owner, kube, cfg)
        if outcome.apply_failures:
            metrics.RECONCILES.labels("InferenceService", "error").inc()
    if outcome.children is not None:
        LEDGER.record(meta.get("uid"), outcome.children)
    try:
        kube.patch_merge("InferenceService", namespace, name, {"status": outcome.status}, "status")
    except KubeError as exc:
        log.info("status refresh of %s/%s failed: %s", namespace, name, exc)
        return False
    # The replica gauges follow the status this refresh wrote (pods becoming ready arrive here,
    # not in a handler); after the patch, so a service deleted meanwhile gets no new series.
    metrics.record_pools(namespace, name, outcome.status.get("pools", []), meta.get("uid"))
    events.post(kube, owner, outcome.events)
    return not outcome.apply_failures

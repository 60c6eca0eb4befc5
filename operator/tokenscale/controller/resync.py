"""The level-based safety net: one loop for every service, cheap when nothing changed.

Create/update/resume handlers and child Deployment events keep services converged as things
happen. This loop catches whatever they missed (a dropped watch event, a child edited or deleted
while its event was lost, a pod problem that appeared without a Deployment status change). It
replaced a per-object Kopf timer whose full reconcile — 5 lists, 3 server-side applies and a
status patch per service every 5 minutes — cost a constant 3.3 reconciles/s at 1,000 services
even when nothing had changed.

Each pass lists services and their children in pages (never the whole fleet in memory at once),
reduces every object to a few fields, and reconciles only a service whose observed state
disagrees with what the operator last applied or last reported:

* ``status.observedGeneration`` lags ``metadata.generation``;
* a child the last reconcile applied is missing, an owned child it did not apply exists, or a
  child's ``generation`` (``resourceVersion`` for kinds without one) moved since — someone
  edited or replaced it;
* a pool's reported ``replicas``/``readyReplicas`` differ from its workload's status, or its
  reported pod problems differ from what the pods show now;
* a sleeping scale-to-zero service's Service still selects its (absent) engines although an
  activator has become ready in its namespace since (nothing else would notice: the operator
  does not watch pods);
* its status says a pool waits for AMD node-labeller labels: node facts are read again each
  pass, and nothing else would clear the condition once the labeller runs (the operator does
  not watch nodes).

The :class:`Ledger` (what the last reconcile applied, per service uid) lives in memory; after a
restart it is empty and Kopf's resume handlers refill it, and a service still missing from it is
reconciled on the next pass.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.autoscale.collector import ready_pods
from tokenscale.controller import metrics, nodefacts, observe
from tokenscale.controller.reconcile import (
    CHILD_KINDS,
    WORKLOAD_KINDS,
    child_version,
    kind_available,
)
from tokenscale.k8s.kube import Kube, KubeError
from tokenscale.k8s.peering import Peering, is_active
from tokenscale.render import gpuplacement, names

log = logging.getLogger(__name__)

#: How often the safety net looks at the whole fleet.
RESYNC_SECONDS = 300.0
#: A pass also runs this long after Kopf last logged a failed API request (an outage ended):
#: longer than Kopf's longest retry backoff (30 s, ``handlers.EndlessBackoffs``), so every
#: watch has reconnected by then and whatever it missed meanwhile is caught here.
AFTER_OUTAGE_SECONDS = 35.0
#: How often the loop looks at the clock (the regular pass and the after-outage pass).
TICK_SECONDS = 5.0


class ApiTrouble(logging.Handler):
    """Remembers when Kopf last logged a failed API request attempt.

    Why: a watch that reconnects after an API-server outage resumes from its last
    resourceVersion; a restarted API server no longer has it, so Kopf re-lists, and a re-list
    carries no DELETED event. A child deleted during (or just after) the outage went unseen
    until the regular pass, five minutes later (found by the API-server restart drill,
    ``tests/e2e/test_drill_apiserver.py``). Kopf offers no hook for a re-list; its log line
    for every failed attempt ("Request attempt #N failed; ...") is what it does offer."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last_failure = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith("Request attempt") and "failed" in message:
            self.last_failure = time.monotonic()

    def outage_over(self, now: float) -> bool:
        """An outage happened and has been quiet for :data:`AFTER_OUTAGE_SECONDS`."""
        return bool(self.last_failure) and now - self.last_failure >= AFTER_OUTAGE_SECONDS

    def clear(self) -> None:
        self.last_failure = 0.0


#: Installed on Kopf's logger by ``handlers.startup``.
TROUBLE = ApiTrouble()
#: Objects per list page: bounds the memory a pass holds at once.
PAGE_SIZE = 100

ChildKey = tuple[str, str]  # (kind, name)


class Ledger:
    """Per service uid: the version of every child its last reconcile applied (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._applied: dict[str, dict[ChildKey, str]] = {}

    def record(self, uid: str | None, children: Mapping[ChildKey, str]) -> None:
        if uid:
            with self._lock:
                self._applied[uid] = dict(children)

    def get(self, uid: str) -> dict[ChildKey, str] | None:
        with self._lock:
            return self._applied.get(uid)

    def retain(self, uids: Iterable[str]) -> None:
        """Drop services that no longer exist."""
        keep = set(uids)
        with self._lock:
            for uid in [u for u in self._applied if u not in keep]:
                del self._applied[uid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._applied)


#: The operator's ledger: reconciles record into it, the resync loop reads it.
LEDGER = Ledger()


@dataclass(slots=True)
class ServiceView:
    """The few fields of an InferenceService (and its children) a resync pass compares."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    observed_generation: int | None
    deleting: bool
    #: pool name -> (replicas, readyReplicas, message) as reported in status.pools
    reported: dict[str, tuple[int, int, str]]
    children: dict[ChildKey, str] = field(default_factory=dict)
    #: workload name -> (replicas, readyReplicas) from the workload's status
    workloads: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: pool name -> problems seen on its pods now (same order and wording as status)
    problems: dict[str, list[str]] = field(default_factory=dict)
    #: scaleToZero is on and status reports no ready replica
    sleeping: bool = False
    #: where the Service points (its ``tokenscale.dev/route`` annotation), once listed
    route: str | None = None
    #: status says a pool waits for AMD node-labeller labels (node facts are re-read per pass)
    awaiting_labeller: bool = False


def service_view(obj: Mapping[str, Any]) -> ServiceView:
    meta = obj["metadata"]
    status = obj.get("status") or {}
    reported = {
        str(p.get("name")): (
            int(p.get("replicas") or 0),
            int(p.get("readyReplicas") or 0),
            str(p.get("message") or ""),
        )
        for p in status.get("pools") or []
    }
    return ServiceView(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=str(meta.get("uid") or ""),
        generation=meta.get("generation"),
        observed_generation=status.get("observedGeneration"),
        deleting=bool(meta.get("deletionTimestamp")),
        reported=reported,
        sleeping=bool(((obj.get("spec") or {}).get("scaling") or {}).get("scaleToZero"))
        and not int(status.get("readyReplicas") or 0),
        awaiting_labeller=any(
            cond.get("type") == c.COND_READY
            and gpuplacement.LABELLER_MISSING in str(cond.get("message") or "")
            for cond in status.get("conditions") or []
        ),
    )


def add_child(view: ServiceView, obj: Mapping[str, Any]) -> None:
    """Fold one listed child (already known to carry the service's label) into ``view``."""
    meta = obj["metadata"]
    if not any(ref.get("uid") == view.uid for ref in meta.get("ownerReferences") or []):
        return  # not ours: the reconcile would neither apply nor prune it
    kind = str(obj.get("kind"))
    view.children[(kind, meta["name"])] = child_version(dict(obj))
    if kind == "Service":
        view.route = (meta.get("annotations") or {}).get(c.ANNOTATION_ROUTE, "engines")
    if kind in WORKLOAD_KINDS:
        status = obj.get("status") or {}
        view.workloads[meta["name"]] = (
            int(status.get("replicas") or 0),
            int(status.get("readyReplicas") or 0),
        )


def add_pod(view: ServiceView, pod: Mapping[str, Any]) -> None:
    """Fold one engine pod's problems into ``view`` (merging like :func:`observe.pod_problems`)."""
    for pool, found in observe.pod_problems([dict(pod)]).items():
        bucket = view.problems.setdefault(pool, [])
        bucket.extend(m for m in found if m not in bucket)


def stale_reason(
    view: ServiceView, applied: Mapping[ChildKey, str] | None, activator_ready: bool = False
) -> str | None:
    """Why the service needs a reconcile now, or None when what is observed matches."""
    if view.deleting:
        return None
    if view.sleeping and view.route == "engines" and activator_ready:
        return "no engine is ready and an activator is: the Service should select the activator"
    if view.generation != view.observed_generation:
        return "generation not observed"
    if view.awaiting_labeller:
        return "a pool waits for AMD node-labeller labels: read the nodes again"
    if applied is None:
        return "not reconciled by this operator process"
    missing = sorted(set(applied) - set(view.children))
    if missing:
        return f"{missing[0][0]} {missing[0][1]} is missing"
    extra = sorted(set(view.children) - set(applied))
    if extra:
        return f"{extra[0][0]} {extra[0][1]} was not applied by the last reconcile"
    for key, version in applied.items():
        if view.children[key] != version:
            return f"{key[0]} {key[1]} changed ({version} -> {view.children[key]})"
    for pool, (replicas, ready, message) in view.reported.items():
        workload = view.workloads.get(names.pool_workload(view.name, pool))
        if workload is not None and workload != (replicas, ready):
            return f"pool {pool}: status says {ready}/{replicas} ready, workload {workload}"
        if message != "; ".join(view.problems.get(pool, [])):
            return f"pool {pool}: pod problems changed"
    return None


def resync_pass(
    kube: Kube,
    namespaces: Iterable[str | None],
    child_kinds: Iterable[str],
    ledger: Ledger,
    refresh: Callable[[str, str], None],
    wanted: Callable[[str], bool] = lambda _: True,
    activator_selector: str | None = None,
) -> list[tuple[str, str, str]]:
    """One pass over the fleet; reconciles (via ``refresh``) and returns the stale services.

    ``activator_selector`` (when the activator is enabled) adds one pod list per namespace that
    has a sleeping service whose Service still points at its engines."""
    kinds = list(child_kinds)
    exported = metrics.services()
    views: dict[tuple[str, str], ServiceView] = {}
    for ns in namespaces:
        for page in kube.list_pages("InferenceService", ns, "", PAGE_SIZE):
            for obj in page:
                view = service_view(obj)
                if wanted(view.namespace):
                    views[(view.namespace, view.name)] = view
    labelled = c.LABEL_SERVICE  # exists: what the reconcile lists, for every service at once
    for ns in sorted({v.namespace for v in views.values()}):
        for kind in [*kinds, "Pod"]:
            for page in kube.list_pages(kind, ns, labelled, PAGE_SIZE):
                for obj in page:
                    owner = (obj["metadata"].get("labels") or {}).get(c.LABEL_SERVICE)
                    found = views.get((ns, str(owner)))
                    if found is None:
                        continue
                    if kind == "Pod":
                        add_pod(found, obj)
                    else:
                        add_child(found, {**obj, "kind": kind})
    ledger.retain(v.uid for v in views.values())
    metrics.remove_services(exported - views.keys())
    activators: set[str] = set()
    if activator_selector:
        asleep = {v.namespace for v in views.values() if v.sleeping and v.route == "engines"}
        for ns in sorted(asleep):
            if ready_pods(kube.list("Pod", ns, activator_selector)):
                activators.add(ns)
    stale = []
    for view in views.values():
        reason = stale_reason(view, ledger.get(view.uid), view.namespace in activators)
        if reason is None:
            continue
        stale.append((view.namespace, view.name, reason))
        log.info("resync: %s/%s: %s", view.namespace, view.name, reason)
        try:
            refresh(view.namespace, view.name)
        except KubeError as exc:
            log.warning("resync of %s/%s failed: %s", view.namespace, view.name, exc)
    return stale


def resync_forever(
    kube: Kube,
    cfg: OperatorConfig,
    patterns: list[str],
    stop: threading.Event,
    refresh: Callable[[str, str], None],
    peering: Peering | None = None,
) -> None:
    """Level-based safety net for every service (see :func:`resync_pass`); one pass per interval.

    A thread, not a Kopf timer per object: one loop costs the same at 10 or 10,000 services.
    Kopf pauses its own handlers and daemons on a standby replica, not this thread, so with
    peering each pass first asks whether this replica is the active one.
    """
    exact = all(not set(p) & set("*?!,") for p in patterns)
    namespaces: list[str | None] = list(patterns) if patterns and exact else [None]

    def wanted(namespace: str) -> bool:
        return exact or any(namespace_matches(namespace, p) for p in patterns)

    next_pass = time.monotonic() + RESYNC_SECONDS
    while not stop.wait(TICK_SECONDS):
        now = time.monotonic()
        after_outage = TROUBLE.outage_over(now)
        if now < next_pass and not after_outage:
            continue
        if after_outage:
            TROUBLE.clear()
            log.info("resync: API requests failed until %.0f s ago; checking the fleet now",
                     AFTER_OUTAGE_SECONDS)  # fmt: skip
        next_pass = now + RESYNC_SECONDS
        if peering is not None and not is_active(kube, peering):
            log.debug("resync skipped: standby replica")
            continue
        nodefacts.for_client(kube).invalidate()  # node facts are read once per pass
        try:
            resync_pass(
                kube,
                namespaces,
                [k for k in CHILD_KINDS if kind_available(kube, cfg, k)],
                LEDGER,
                refresh,
                wanted,
                names.selector_string(cfg.activator.selector) if cfg.activator.enabled else None,
            )
        except KubeError as exc:
            log.warning("resync pass failed (next in %.0fs): %s", RESYNC_SECONDS, exc)


def namespace_matches(namespace: str, pattern: str) -> bool:
    """Whether a namespace matches one ``--namespace`` pattern, as Kopf reads it.

    Kopf's documented syntax (its "Scopes" page): comma-separated globs (``*``, ``?``), where
    ``!glob`` excludes and a leading exclusion implies a catch-all first. The first inclusive
    glob decides the initial match; later inclusive globs only re-admit a namespace the first
    one matched. Kopf's own function is private, so this is ours; ``test_resync`` pins the
    semantics with the examples from Kopf's docstring.
    """
    globs = [glob.strip() for glob in pattern.split(",")]
    if not globs or globs[0].startswith("!"):
        globs.insert(0, "*")
    matches = first = fnmatch.fnmatchcase(namespace, globs[0])
    for glob in globs[1:]:
        if glob.startswith("!"):
            matches = matches and not fnmatch.fnmatchcase(namespace, glob.lstrip("!"))
        else:
            matches = matches or (first and fnmatch.fnmatchcase(namespace, glob))
    return matches

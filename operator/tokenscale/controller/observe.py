"""Status from observed state: pure functions over the objects the API server returned.

Level-based on purpose: every pass recomputes conditions from what exists now (Deployments,
pods, the plan), so a restarted operator or a missed event can never leave status stale.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tokenscale import constants as c
from tokenscale.api.base import Condition, ConditionStatus
from tokenscale.api.benchmark import InferenceBenchmarkStatus
from tokenscale.api.status import InferenceServiceStatus

__all__ = ["Condition", "PoolObservation", "condition", "merge_conditions"]

log = logging.getLogger(__name__)

#: Waiting reasons that mean a container cannot start (not just slow to). A missing ConfigMap,
#: Secret or key is CreateContainerConfigError, a malformed image reference InvalidImageName: a
#: pod stuck on either never starts, like one that cannot pull its image.
BAD_WAITING = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerError",
    "CreateContainerConfigError",
}


@dataclass(slots=True)
class PoolObservation:
    """What exists for one pool."""

    name: str
    gpu: str
    desired: int
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    problems: list[str] = field(default_factory=list)
    #: the new version cannot start (reason, message): the rollout is stuck, old pods serve
    stuck: tuple[str, str] | None = None
    #: why a change waits to roll out (a ``wait`` decision), None when it does not wait
    waiting: str | None = None
    #: the SLA gate rolled this pool back (benchmarkOnRollout.rollback): why, in words
    rolled_back: str | None = None


def observe_workload(
    pool: str, gpu: str, desired: int, workload: dict[str, Any] | None
) -> PoolObservation:
    """Replica counts of a pool's Deployment or LeaderWorkerSet (None: not created yet)."""
    obs = PoolObservation(pool, gpu, desired)
    if workload is None:
        return obs
    status = workload.get("status") or {}
    obs.replicas = int(status.get("replicas") or 0)
    obs.ready = int(status.get("readyReplicas") or 0)
    obs.updated = int(status.get("updatedReplicas") or 0)
    generation = int((workload.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or generation) < generation:
        # the controller has not seen the change just applied: none of its pods are updated
        # yet (else the pass applying a rollout reads the old status as settled, and the
        # benchmark after the rollout runs against the old version)
        obs.updated = 0
    return obs


def pod_problems(pods: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Per pool: unschedulable pods (with the scheduler's message), crash loops, pull errors."""
    found: dict[str, list[str]] = {}
    for pod in pods:
        if (pod["metadata"].get("deletionTimestamp")) is not None:
            continue
        pool = (pod["metadata"].get("labels") or {}).get(c.LABEL_POOL, "")
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                msg = cond.get("message") or cond.get("reason") or "unschedulable"
                _add_unschedulable(found, pool, msg, claim_names(pod))
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            looping = crash_loop(cs)
            if looping:
                _add(found, pool, looping)
            elif waiting.get("reason") in BAD_WAITING:
                _add(found, pool, f"{waiting['reason']}: {waiting.get('message', '')}".strip())
    return found


def crash_loop(cs: dict[str, Any]) -> str | None:
    """The problem of a container that keeps failing, in words that stay the same from one
    restart to the next; None for a container that is ready or never failed.

    A crash-looping container spends most of its time waiting (CrashLoopBackOff) and moments
    running between restarts. Reading only the waiting state made Degraded flip to Healthy
    whenever a refresh caught it running, and the kubelet's message changes with every back-off
    step: the engine-fault drill counted 3 status writes and 1.6 Events a minute for one crash
    loop (issue 17). A container not ready whose last run ended with a non-zero exit code is
    crash looping whether it waits or runs right now."""
    if cs.get("ready"):
        return None
    last = (cs.get("lastState") or {}).get("terminated") or {}
    code = last.get("exitCode")
    if not code or not cs.get("restartCount"):
        return None
    why = f", {last['reason']}" if last.get("reason") not in (None, "", "Error") else ""
    return (
        f"CrashLoopBackOff: container {cs.get('name', '?')} keeps exiting (exit code {code}{why})"
    )


def stuck_rollout(
    pods: Iterable[dict[str, Any]], pool: str, workload: dict[str, Any] | None
) -> tuple[str, str] | None:
    """(reason, message) when the pool's new pod template cannot start while old pods remain.

    The new version's pods are those carrying the workload's template hash; an image pull
    failure or a crash loop among them, while pods of another version still exist, is a stuck
    rollout: with maxUnavailable 0 or 1 the Deployment controller keeps the old ones serving, and
    reverting the spec rolls back. A Deployment past its progress deadline is stuck as well."""
    if workload is None:
        return None
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded", str(cond.get("message") or "")
    current = _annotation(((workload.get("spec") or {}).get("template") or {}).get("metadata"))
    if current is None:
        return None
    new, old = [], 0
    for pod in pods:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") is not None:
            continue
        if (meta.get("labels") or {}).get(c.LABEL_POOL) != pool:
            continue
        if _annotation(meta) == current:
            new.append(pod)
        else:
            old += 1
    if old == 0:
        return None  # nothing older serves: a plain failure (Degraded), not a stuck rollout
    for pod in new:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in BAD_WAITING:
                detail = str(waiting.get("message") or "").strip()
                msg = (
                    f"pool {pool}: the new version ({current}) does not start: {reason}"
                    f"{': ' + detail if detail else ''}; {old} pod(s) of the previous version "
                    "keep serving; revert the change to roll back"
                )
                return str(reason), msg
    return None


def _annotation(meta: dict[str, Any] | None) -> str | None:
    found = ((meta or {}).get("annotations") or {}).get(c.ANNOTATION_SPEC_HASH)
    return str(found) if found is not None else None


def claim_names(pod: dict[str, Any]) -> list[str]:
    """ResourceClaims generated for the pod (DRA), as the pod's status names them."""
    statuses = (pod.get("status") or {}).get("resourceClaimStatuses") or []
    return sorted(str(s["resourceClaimName"]) for s in statuses if s.get("resourceClaimName"))


def _add_unschedulable(
    found: dict[str, list[str]], pool: str, message: str, claims: list[str]
) -> None:
    """A pod waiting for DRA devices names its claim (once per pool: one example is enough to
    ``kubectl describe resourceclaim``, and a long list would bury the scheduler's reason)."""
    if not claims:
        _add(found, pool, f"Unschedulable: {message}")
        return
    prefix = "Unschedulable: ResourceClaim "
    if not any(m.startswith(prefix) for m in found.get(pool, [])):
        _add(found, pool, f"{prefix}{', '.join(claims)} waits for devices: {message}")


def _add(found: dict[str, list[str]], pool: str, message: str) -> None:
    bucket = found.setdefault(pool, [])
    if message not in bucket:
        bucket.append(message)


def condition(
    type_: str, ok: bool | None, reason: str, message: str, generation: int | None
) -> Condition:
    status: ConditionStatus = "Unknown" if ok is None else ("True" if ok else "False")
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
    )


def merge_conditions(
    old: Sequence[dict[str, Any]], new: Sequence[Condition], now: datetime
) -> list[Condition]:
    """Keep lastTransitionTime unless the status flipped; keep condition types we don't own.

    A stored condition that does not validate (never written by this operator: the CRD schema
    has the same shape) is dropped rather than failing the pass; ours are recomputed anyway."""
    previous: dict[str, Condition] = {}
    for raw in old:
        try:
            kept = Condition.model_validate(raw)
        except ValidationError:
            continue
        previous[kept.type] = kept
    out: list[Condition] = []
    for cond in new:
        before = previous.pop(cond.type, None)
        same = before is not None and before.status == cond.status
        stamp = before.last_transition_time if same and before is not None else None
        out.append(cond.model_copy(update={"last_transition_time": stamp or now}))
    out.extend(previous.values())
    return sorted(out, key=lambda x: x.type)


def find(conditions: Iterable[Condition], type_: str) -> Condition | None:
    """The condition of that type, if any."""
    return next((x for x in conditions if x.type == type_), None)


def service_status(body: dict[str, Any]) -> InferenceServiceStatus:
    """An InferenceService's stored status through the model (what every reader uses).

    The operator is the only writer and the CRD schema is generated from the same model, so a
    failure means a hand edit; it is logged and read as empty rather than stopping the loop."""
    try:
        return InferenceServiceStatus.model_validate(body.get("status") or {})
    except ValidationError as exc:
        log.warning("status of %s does not validate, read as empty: %s", _name(body), exc)
        return InferenceServiceStatus()


def benchmark_status(body: dict[str, Any]) -> InferenceBenchmarkStatus:
    """An InferenceBenchmark's stored status through the model (see :func:`service_status`)."""
    try:
        return InferenceBenchmarkStatus.model_validate(body.get("status") or {})
    except ValidationError as exc:
        log.warning("status of %s does not validate, read as empty: %s", _name(body), exc)
        return InferenceBenchmarkStatus()


def _name(body: dict[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def service_conditions(
    pools: Sequence[PoolObservation],
    plan_problems: Sequence[str],
    render_problems: Sequence[str],
    generation: int | None,
    apply_failures: Sequence[str] = (),
    router: PoolObservation | None = None,
) -> list[Condition]:
    """Ready / Progressing / Degraded from pools, plan, rendering and refused applies.

    A refused apply (``apply_failures``) leaves Ready to the workloads still running: they
    serve the previous spec, and Degraded says which child the API server refused and why.
    In router mode (``router``: the router Deployment) the service's name reaches the engines
    only through a router, so Ready also needs one ready router pod."""
    desired = sum(p.desired for p in pools)
    ready = sum(p.ready for p in pools)
    serving = [p for p in pools if p.desired > 0]
    blocking = list(plan_problems) + list(render_problems)
    pod_trouble = [f"pool {p.name}: {m}" for p in pools for m in p.problems]
    conds: list[Condition] = []

    if blocking:
        conds.append(condition(c.COND_READY, False, "PlanFailed", "; ".join(blocking), generation))
    elif desired == 0:
        conds.append(condition(c.COND_READY, True, "ScaledToZero", "no replicas", generation))
    elif serving and all(p.ready >= 1 for p in serving) and router and router.ready < 1:
        msg = (
            f"{ready}/{desired} replicas ready, but 0/{router.desired} router pods: requests to "
            f"the service cannot reach them; see kubectl describe deployment {router.name} and "
            "its pods' logs (image, --service-discovery RBAC)"
        )
        conds.append(condition(c.COND_READY, False, "RouterNotReady", msg, generation))
    elif serving and all(p.ready >= 1 for p in serving):
        msg = f"{ready}/{desired} replicas ready"
        conds.append(condition(c.COND_READY, True, "ReplicasReady", msg, generation))
    else:
        msg = f"{ready}/{desired} replicas ready"
        conds.append(condition(c.COND_READY, False, "ReplicasNotReady", msg, generation))

    rolling = [p for p in pools if p.ready < p.desired or p.updated < p.replicas]
    stuck = [p.stuck for p in pools if p.stuck is not None]
    waiting = [f"pool {p.name}: {p.waiting}" for p in pools if p.waiting]
    rolled_back = [f"pool {p.name}: {p.rolled_back}" for p in pools if p.rolled_back]
    if stuck and not blocking:
        reason = stuck[0][0] if len({s[0] for s in stuck}) == 1 else "RolloutStuck"
        msg = "; ".join(s[1] for s in stuck)
        conds.append(condition(c.COND_PROGRESSING, False, reason, msg, generation))
    elif waiting and not blocking:
        msg = "; ".join(waiting)
        conds.append(condition(c.COND_PROGRESSING, False, "RolloutWaiting", msg, generation))
    elif rolled_back and not blocking:
        msg = "; ".join(rolled_back)
        conds.append(condition(c.COND_PROGRESSING, False, "RolledBack", msg, generation))
    elif rolling and not blocking:
        parts = ", ".join(f"{p.name} {p.ready}/{p.desired}" for p in rolling)
        conds.append(condition(c.COND_PROGRESSING, True, "RollingOut", parts, generation))
    else:
        conds.append(condition(c.COND_PROGRESSING, False, "Stable", "", generation))

    if blocking:
        conds.append(
            condition(c.COND_DEGRADED, True, "PlanFailed", "; ".join(blocking), generation)
        )
    elif apply_failures:
        msg = "apply refused, previous version kept: " + "; ".join(apply_failures)
        conds.append(condition(c.COND_DEGRADED, True, "ApplyFailed", msg, generation))
    elif pod_trouble:
        reason = "Unschedulable" if any("Unschedulable" in t for t in pod_trouble) else "PodErrors"
        conds.append(condition(c.COND_DEGRADED, True, reason, "; ".join(pod_trouble), generation))
    else:
        conds.append(condition(c.COND_DEGRADED, False, "Healthy", "", generation))
    return conds

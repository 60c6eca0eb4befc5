"""The reconcile's rollout hook: pick each pool Deployment's strategy before it is applied.

Only a change that replaces pods is decided (the rendered template hash differs from the live
one; a ``wait`` keeps the live template, so it is decided again on every pass). Otherwise the
live Deployment's strategy and decision record are rendered again, so a rollout in progress never
switches strategy and a pass that changes nothing reads no nodes. The decision is recorded on
the Deployment (JSON annotation) and status.pools[].rollout is read back from there, so the
status stays recomputed from what exists. The decision itself is
:func:`tokenscale.autoscale.rollout.decide`.

The SLA gate (``benchmarkOnRollout.rollback``): when the benchmark run after this generation's
rollout fails the SLA, each pool's Deployment gets its previous ReplicaSet's pod template back
(what ``kubectl rollout undo`` does) and the record says which version was rolled back. The spec
is not edited (a GitOps tool would fight it); while it still asks for the failed version, the
pool keeps the previous one, and any other spec change rolls as usual.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.api.status import BenchmarkSummary, InferenceServiceStatus, PoolPlan, PoolRollout
from tokenscale.autoscale import rollout as decision
from tokenscale.autoscale.state import PoolInput
from tokenscale.controller.autoscaler import count_allocatable
from tokenscale.controller.events import Event
from tokenscale.k8s.kube import Kube
from tokenscale.render import deployment as dep
from tokenscale.render import names

log = logging.getLogger(__name__)


def recorded(workload: Mapping[str, Any] | None) -> PoolRollout | None:
    """The decision recorded on a Deployment (None: none, or not ours to read)."""
    raw = dep.recorded_rollout(dict(workload) if workload is not None else None)
    if raw is None:
        return None
    try:
        return PoolRollout.model_validate_json(raw)
    except ValidationError:
        log.warning("ignoring an unreadable %s annotation", dep.ANNOTATION_ROLLOUT)
        return None


def _record(rollout: PoolRollout) -> str:
    return rollout.model_dump_json(by_alias=True, exclude_none=True)


def rollout_benchmark_name(meta: Mapping[str, Any]) -> str:
    """The InferenceBenchmark run after the rollout of the service's current generation."""
    return f"{str(meta['name'])[:28]}-rollout-{meta.get('generation', 0)}"


def gate_failure(
    svc: InferenceService, meta: Mapping[str, Any], latest: BenchmarkSummary | None
) -> str | None:
    """Why the current generation's new version fails the SLA gate, None when it does not (no
    gate, no result yet, or a verdict other than Fail: an Invalid or Unstable run says nothing
    about the version, only that the measurement cannot be trusted)."""
    auto = svc.spec.benchmark_on_rollout
    if auto is None or not auto.rollback or latest is None:
        return None
    if latest.name != rollout_benchmark_name(meta) or latest.verdict != "Fail":
        return None
    sla = svc.spec.sla
    limits = ""
    if sla is not None and sla.ttft_p99_ms is not None and sla.tpot_p99_ms is not None:
        limits = f" (SLA {sla.ttft_p99_ms:g} / {sla.tpot_p99_ms:g} ms)"
    seen = ", ".join(
        f"{label} {value:.0f} ms"
        for label, value in (("TTFT p99", latest.ttft_p99_ms), ("TPOT p99", latest.tpot_p99_ms))
        if value is not None
    )
    return f"benchmark {latest.name} failed the SLA: {seen or 'verdict Fail'}{limits}"


def previous_template(
    replicasets: Sequence[Mapping[str, Any]], deployment: str, failed: str
) -> tuple[str, dict[str, Any]] | None:
    """(hash, pod template) of ``deployment``'s newest ReplicaSet of another version than
    ``failed``: the version before the rollout, as ``kubectl rollout undo`` picks it. The
    ReplicaSet's ``pod-template-hash`` label is the Deployment controller's, so it is dropped
    (the controller then finds that ReplicaSet again and scales it back up)."""
    best: tuple[int, str, dict[str, Any]] | None = None
    for rs in replicasets:
        meta = rs.get("metadata") or {}
        owners = meta.get("ownerReferences") or []
        if not any(o.get("kind") == "Deployment" and o.get("name") == deployment for o in owners):
            continue
        found = dep.rendered_hash(dict(rs))
        if found is None or found == failed:
            continue
        revision = int((meta.get("annotations") or {}).get(_REVISION, "0") or 0)
        if best is None or revision > best[0]:
            template = copy.deepcopy((rs.get("spec") or {}).get("template") or {})
            ((template.get("metadata") or {}).get("labels") or {}).pop(_POD_TEMPLATE_HASH, None)
            best = (revision, found, template)
    return None if best is None else (best[1], best[2])


_REVISION = "deployment.kubernetes.io/revision"
_POD_TEMPLATE_HASH = "pod-template-hash"


def choose(
    body: dict[str, Any],
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    objects: Sequence[dict[str, Any]],
    kube: Kube,
    old: InferenceServiceStatus,
    now: datetime,
) -> list[Event]:
    """Set the strategy of every rendered pool Deployment in ``objects`` (mutated in place);
    the Events of new decisions."""
    meta = body["metadata"]
    rendered = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    if not rendered:
        return []
    live = {
        o["metadata"]["name"]: o
        for o in kube.list("Deployment", meta["namespace"], names.selector_for(meta["name"]))
    }
    gate = gate_failure(svc, meta, old.benchmark)
    replicasets: list[dict[str, Any]] | None = None

    def listed() -> list[dict[str, Any]]:
        nonlocal replicasets
        if replicasets is None:
            replicasets = kube.list(
                "ReplicaSet", meta["namespace"], names.selector_for(meta["name"])
            )
        return replicasets

    pending: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {}
    events: list[Event] = []
    for pool in svc.spec.pools:
        name = names.pool_workload(meta["name"], pool.name)
        obj, current = rendered.get(name), live.get(name)
        if obj is None or current is None:
            continue  # a new Deployment replaces nothing: rendered as surge
        new_hash = dep.rendered_hash(obj) or ""
        before = recorded(current)
        if before is not None and before.rolled_back_from == new_hash:
            # the spec still asks for the version the gate rolled back: keep what runs
            dep.hold_template(obj, current, _record(before))
            continue
        if dep.rendered_hash(current) == new_hash:
            if (
                gate is not None
                and before is not None
                and before.revision == new_hash
                and before.generation == meta.get("generation")
            ):
                # only a version the benchmarked generation's rollout brought (its decision
                # names it): a pool this generation did not change keeps what it runs
                rolled = _roll_back(obj, current, pool.name, new_hash, gate, listed, now)
                if rolled is not None:
                    events.append(rolled)
                    continue
            keep = (
                None
                if before is None or before.strategy == "wait" or before.rolled_back_from
                else _record(before)
            )
            dep.set_rollout(obj, dep.live_strategy(current), keep)  # a wait was reverted
            continue
        pending[pool.name] = (obj, current, new_hash)
    if not pending:
        return events
    free = _free_replicas(svc, cfg, plans, kube, set(pending))
    engines = [live.get(names.pool_workload(meta["name"], p.name)) for p in svc.spec.pools]
    ready = sum(int((d.get("status") or {}).get("readyReplicas") or 0) for d in engines if d)
    floor = decision.sla_floor(old.metrics, svc.spec.scaling.metric, ready, now)
    by_plan = {p.pool: p for p in plans}
    rolling = {
        p.name
        for p in svc.spec.pools
        if p.name not in pending
        and mid_rollout(live.get(names.pool_workload(meta["name"], p.name)))
    }
    for pool in svc.spec.pools:
        if pool.name not in pending:
            continue
        obj, current, new_hash = pending[pool.name]
        plan = by_plan.get(pool.name)
        choice = decision.one_pool_at_a_time(pool.name, rolling) or decision.decide(
            decision.RolloutInput(
                pin=svc.spec.rollout.strategy,
                gpus_per_replica=plan.gpus_per_replica if plan else 0,
                free_replicas=free.get(pool.name),
                ready=ready,
                floor=floor,
                desired=int(obj["spec"].get("replicas") or 0),
                pool_ready=int((current.get("status") or {}).get("readyReplicas") or 0),
            )
        )
        if choice.strategy != "wait":
            rolling.add(pool.name)  # the next pending pool follows this one
        before = recorded(current)
        same = (
            before is not None
            and before.revision == new_hash
            and (before.strategy, before.reason) == (choice.strategy, choice.reason)
        )
        chosen = PoolRollout(
            strategy=choice.strategy,
            reason=choice.reason,
            message=choice.message,
            revision=new_hash,
            decided_at=before.decided_at if same and before is not None else now,
            generation=before.generation if same and before is not None else meta.get("generation"),
        )
        if choice.strategy == "wait":
            dep.hold_template(obj, current, _record(chosen))
        else:
            dep.set_rollout(obj, choice.strategy, _record(chosen))
        if same:
            continue
        held = choice.strategy == "wait" and choice.reason != "OtherPoolRolling"
        kind: Literal["Normal", "Warning"] = "Warning" if held else "Normal"
        verb = "waits" if choice.strategy == "wait" else f"rolls out {choice.strategy}"
        events.append(
            Event(
                f"Rollout{choice.strategy[0].upper()}{choice.strategy[1:]}",
                f"pool {pool.name} {verb} ({choice.reason}): {choice.message}",
                kind,
            )
        )
    return events


def mid_rollout(workload: Mapping[str, Any] | None) -> bool:
    """Whether a pool's Deployment is still replacing pods: its controller has not seen the last
    change, pods of an older template remain, or (after a change of ours) not all are ready."""
    if workload is None:
        return False
    spec, status = workload.get("spec") or {}, workload.get("status") or {}
    want = int(spec.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    generation = int((workload.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or generation) < generation:
        return True
    if updated < want or int(status.get("replicas") or 0) > updated:
        return True
    changed = recorded(workload) is not None
    return changed and int(status.get("readyReplicas") or 0) < want


def _roll_back(
    obj: dict[str, Any],
    current: dict[str, Any],
    pool: str,
    failed: str,
    why: str,
    replicasets: Callable[[], list[dict[str, Any]]],
    now: datetime,
) -> Event | None:
    """Give ``obj`` the pool's previous version (the SLA gate failed); the Event, or None when
    there is no previous version to restore (the first rollout of the pool)."""
    found = previous_template(replicasets(), obj["metadata"]["name"], failed)
    if found is None:
        log.warning("pool %s: %s, but no previous version is left to restore", pool, why)
        return None
    previous, template = found
    strategy = dep.live_strategy(current)
    message = (
        f"{why}; version {failed} rolled back to {previous}; the spec is unchanged and keeps "
        "the previous version until it changes again (fix the engine, or revert the change)"
    )
    obj["spec"]["template"] = template
    record = PoolRollout(
        strategy=strategy,
        reason="SLAGateFailed",
        message=message,
        revision=previous,
        decided_at=now,
        rolled_back_from=failed,
    )
    dep.set_rollout(obj, strategy, _record(record))
    return Event("RolledBack", f"pool {pool}: {message}", "Warning")


def _free_replicas(
    svc: InferenceService,
    cfg: OperatorConfig,
    plans: Sequence[PoolPlan],
    kube: Kube,
    pools: set[str],
) -> Mapping[str, int | None]:
    """Replicas' worth of free GPUs per pool, counted exactly as the autoscaler counts them
    (device-plugin allocatable minus bound pods' requests, or free DRA devices); None for CPU."""
    wanted = [p for p in svc.spec.pools if p.name in pools]
    inputs = [
        PoolInput(
            name=p.name,
            min_replicas=p.min_replicas,
            max_replicas=p.max_replicas,
            replicas=0,
            ready_replicas=0,
            target_per_replica=0.0,
        )
        for p in wanted
    ]
    counted = count_allocatable(inputs, svc, cfg, plans, kube)
    return {i.name: i.allocatable_replicas for i in counted}

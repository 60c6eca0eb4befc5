"""Pure render functions: an InferenceService + operator config + plan in, plain dicts out.

No Kubernetes client and no I/O here: the reconciler applies exactly what :func:`render_all`
returns (server-side apply), and ``tokenscale render`` prints the same objects offline. Output is
deterministic (stable object order, sorted labels and env) so golden files and the spec hash
only change when the spec does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.api.status import PoolPlan
from tokenscale.render import deployment as deployment_mod
from tokenscale.render import gpuplacement, names, pdb, pod, podtemplate, servicemonitor
from tokenscale.render import leaderworkerset as lws_mod
from tokenscale.render import service as service_mod

Obj = dict[str, Any]


@dataclass
class RenderResult:
    """The objects to apply, in apply order, plus notes.

    ``problems`` block a pool (it renders no workload although its plan fits, e.g. multi-node
    without LeaderWorkerSet; or its workload cannot be placed, e.g. no node carries the AMD
    node labeller's labels): the service cannot become Ready. ``warnings`` do not block (a
    stripped ``*_VISIBLE_DEVICES`` variable, an mxfp4 model id that does not look
    pre-quantized). Pools whose plan does not fit are skipped without a note here: the plan's
    own message already says why, and callers report plans themselves.
    """

    objects: list[Obj] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def lws_missing_problem(pool: str, nodes: int) -> str:
    """The condition text when a pool needs multi-node replicas but LWS is not enabled."""
    return (
        f"pool {pool} needs {nodes} nodes per replica; install LeaderWorkerSet and set "
        "leaderWorkerSet: true in operator config"
    )


def _pod_template(
    service: InferenceService,
    pool: GPUPool,
    plan: PoolPlan,
    config: OperatorConfig,
    role: str,
    cluster: gpuplacement.ClusterGPUs | None,
) -> pod.PodTemplate:
    """The operator's pod template with ``spec.podTemplate`` and the pool's merged over it."""
    tpl = pod.pod_template(service, pool, plan, config, role, cluster)
    index = service.spec.pools.index(pool)
    merged, notes = podtemplate.merge(
        tpl.template,
        service.spec.pod_template,
        pool.pod_template,
        f"spec.pools[{index}].podTemplate",
    )
    return pod.PodTemplate(merged, tpl.warnings + [f"pool {pool.name}: {n}" for n in notes])


def render_pool(
    service: InferenceService,
    pool: GPUPool,
    plan: PoolPlan,
    config: OperatorConfig,
    replicas: int,
    cluster: gpuplacement.ClusterGPUs | None = None,
) -> RenderResult:
    """The workload of one pool: a Deployment, a LeaderWorkerSet, or nothing plus a problem.

    A pool whose GPU no labelled node carries still renders (it schedules as soon as the
    labeller runs) but reports why it cannot be placed yet."""
    svc = service.metadata.name
    name = names.pool_workload(svc, pool.name)
    labels = {**names.common_labels(svc), c.LABEL_POOL: pool.name}
    if not plan.fits:
        return RenderResult()
    gpu = config.gpus.get(pool.gpu)
    unplaceable = gpuplacement.labeller_problem(pool, gpu, cluster) if gpu else None
    placement_problems = [unplaceable] if unplaceable else []
    if plan.nodes_per_replica <= 1:
        tpl = _pod_template(service, pool, plan, config, c.ROLE_ENGINE, cluster)
        obj = deployment_mod.deployment(
            service, pool, name, labels, names.pool_selector(svc, pool.name), tpl.template, replicas
        )
        return RenderResult([obj], problems=placement_problems, warnings=tpl.warnings)
    if not config.leader_worker_set:
        return RenderResult(problems=[lws_missing_problem(pool.name, plan.nodes_per_replica)])
    leader = _pod_template(service, pool, plan, config, c.ROLE_LEADER, cluster)
    worker = _pod_template(service, pool, plan, config, c.ROLE_WORKER, cluster)
    obj = lws_mod.leader_worker_set(
        service,
        pool,
        name,
        labels,
        plan.nodes_per_replica,
        leader.template,
        worker.template,
        replicas,
    )
    return RenderResult(
        [obj],
        problems=placement_problems,
        warnings=sorted(set(leader.warnings + worker.warnings)),
    )


def render_all(
    service: InferenceService,
    config: OperatorConfig,
    plans: Sequence[PoolPlan],
    replicas: Mapping[str, int] | None = None,
    route: service_mod.Route = "engines",
    cluster: gpuplacement.ClusterGPUs | None = None,
) -> RenderResult:
    """Every child object of a service: Service, PDB, optional ServiceMonitor, one per pool.

    ``replicas`` maps pool name to the desired count (the autoscaler's decision); a pool that is
    not in it gets its ``minReplicas``. A pool without a fitting plan renders no workload (its
    plan message is the condition), so an impossible spec yields no pods. ``route`` says whether
    the Service selects the engines or the activator (:func:`service_mod.wants_activator`).
    """
    svc = service.metadata.name
    by_pool = {p.pool: p for p in plans}
    labels = names.common_labels(svc)
    result = RenderResult()
    result.objects.append(
        service_mod.service(
            service,
            names.service(svc),
            labels,
            names.service_selector(svc),
            route,
            config.activator.selector,
        )
    )
    result.objects.append(
        pdb.pod_disruption_budget(service, names.service(svc), labels, names.all_pods_selector(svc))
    )
    if service.spec.service_monitor:
        result.objects.append(
            servicemonitor.service_monitor(service, names.service(svc), labels, labels, config)
        )
    for pool in service.spec.pools:
        plan = by_pool.get(pool.name)
        if plan is None:
            result.problems.append(f"pool {pool.name}: no capacity plan")
            continue
        count = (replicas or {}).get(pool.name, pool.min_replicas)
        part = render_pool(service, pool, plan, config, count, cluster)
        result.objects += part.objects
        result.problems += part.problems
        result.warnings += part.warnings
    # No shared sub-dicts between objects: callers mutate them (namespace, ownerReferences).
    result.objects = copy.deepcopy(result.objects)
    return result


__all__ = ["RenderResult", "lws_missing_problem", "render_all", "render_pool"]

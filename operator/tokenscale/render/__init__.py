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
from tokenscale.api.config import Allocation, OperatorConfig
from tokenscale.api.service import GPUPool, InferenceService
from tokenscale.api.status import PoolPlan
from tokenscale.render import deployment as deployment_mod
from tokenscale.render import (
    dra,
    gpuplacement,
    names,
    pdb,
    pdrouter,
    pod,
    podtemplate,
    servicemonitor,
)
from tokenscale.render import inferencepool as inferencepool_mod
from tokenscale.render import leaderworkerset as lws_mod
from tokenscale.render import router as router_mod
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
    claim: str | None = None,
) -> pod.PodTemplate:
    """The operator's pod template (GPUs claimed from ``claim`` on DRA) with
    ``spec.podTemplate`` and the pool's merged over it."""
    tpl = pod.pod_template(service, pool, plan, config, role, cluster)
    if claim:
        dra.use_claims(tpl.template, claim)
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
    allocation: Allocation = "devicePlugin",
) -> RenderResult:
    """The workload of one pool: a Deployment, a LeaderWorkerSet, or nothing plus a problem.

    A device-plugin pool whose GPU no labelled node carries still renders (it schedules as soon
    as the labeller runs) but reports why it cannot be placed yet. ``allocation`` ``dra``
    (resolved per pool by the caller; ``auto`` is not a value here) puts a ResourceClaimTemplate
    first and makes the pods claim their GPUs from it, with no node-label placement.
    """
    svc = service.metadata.name
    name = names.pool_workload(svc, pool.name)
    labels = {**names.common_labels(svc), c.LABEL_POOL: pool.name}
    if not plan.fits:
        return RenderResult()
    claims: list[Obj] = []
    notes: list[str] = []
    problems: list[str] = []
    if allocation == "dra" and pool.gpu != "CPU":
        issue = dra.problem(pool, config.gpus[pool.gpu], config)
        if issue:
            return RenderResult(problems=[issue])
        per_pod = plan.gpus_per_replica // max(1, plan.nodes_per_replica)
        alternatives, notes = dra.usable_alternatives(service, pool, plan, config)
        claims.append(dra.claim_template(service, pool, config, per_pod, alternatives))
    else:
        if pool.alternatives:
            notes = [
                f"pool {pool.name}: alternatives {', '.join(pool.alternatives)} ignored: the "
                "device plugin asks for one GPU model; they need allocation dra (or auto on DRA "
                "nodes)"
            ]
        gpu = config.gpus.get(pool.gpu)
        unplaceable = gpuplacement.labeller_problem(pool, gpu, cluster) if gpu else None
        problems = [unplaceable] if unplaceable else []
    claim = claims[0]["metadata"]["name"] if claims else None

    def template(role: str) -> pod.PodTemplate:
        return _pod_template(service, pool, plan, config, role, cluster, claim)

    if plan.nodes_per_replica <= 1:
        tpl = template(c.ROLE_ENGINE)
        obj = deployment_mod.deployment(
            service, pool, name, labels, names.pool_selector(svc, pool.name), tpl.template, replicas
        )
        return RenderResult([*claims, obj], problems=problems, warnings=notes + tpl.warnings)
    if not config.leader_worker_set:
        return RenderResult(problems=[lws_missing_problem(pool.name, plan.nodes_per_replica)])
    leader = template(c.ROLE_LEADER)
    worker = template(c.ROLE_WORKER)
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
    warnings = notes + sorted(set(leader.warnings + worker.warnings))
    return RenderResult([*claims, obj], problems=problems, warnings=warnings)


def render_all(
    service: InferenceService,
    config: OperatorConfig,
    plans: Sequence[PoolPlan],
    replicas: Mapping[str, int] | None = None,
    route: service_mod.Route = "engines",
    cluster: gpuplacement.ClusterGPUs | None = None,
    allocations: Mapping[str, Allocation] | None = None,
) -> RenderResult:
    """Every child object of a service: Service, PDB, optional ServiceMonitor, one per pool.

    ``replicas`` maps pool name to the desired count (the autoscaler's decision); a pool that is
    not in it gets its ``minReplicas``. A pool without a fitting plan renders no workload (its
    plan message is the condition), so an impossible spec yields no pods. ``route`` says whether
    the Service selects the engines or the activator (:func:`service_mod.wants_activator`).
    ``allocations`` maps pool name to ``devicePlugin`` or ``dra`` (resolved from the operator
    config's ``allocation`` by :func:`tokenscale.allocation.pool_allocations`); missing pools use
    the device plugin.
    """
    svc = service.metadata.name
    by_pool = {p.pool: p for p in plans}
    labels = names.common_labels(svc)
    result = RenderResult()
    if service.spec.disaggregation is not None:
        # vLLM's router in P/D mode (needs routing.mode router); docs/disaggregation.md.
        result.objects += pdrouter.render(service, config.pods.bind_address)
    elif service.spec.routing.mode == "router":
        # The router takes the stable Service name; docs/routing.md.
        result.objects += router_mod.render(service, config.pods.bind_address)
    else:
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
        if service.spec.routing.mode == "inferencePool":
            result.objects += inferencepool_mod.render(service)
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
        mode = (allocations or {}).get(pool.name, "devicePlugin")
        part = render_pool(service, pool, plan, config, count, cluster, mode)
        result.objects += part.objects
        result.problems += part.problems
        result.warnings += part.warnings
    # No shared sub-dicts between objects: callers mutate them (namespace, ownerReferences).
    result.objects = copy.deepcopy(result.objects)
    return result


__all__ = ["RenderResult", "lws_missing_problem", "render_all", "render_pool"]

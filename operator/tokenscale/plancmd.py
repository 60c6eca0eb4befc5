"""``tokenscale plan``: the capacity table, then for P/D the prefill:decode proposal.

Why a module of its own: the capacity table is render/cli.py's (the planner's view, no
simulator), while the P/D proposal needs the simulator's performance profiles; render and sim
are independent layers, so only a module above both may join them.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from tokenscale.api.service import InferenceService
from tokenscale.api.status import PoolPlan
from tokenscale.plan import pd as pdplan
from tokenscale.plan import planner
from tokenscale.render import cli as render_cli
from tokenscale.sim.profiles import ProfileError, get_profile

#: The simulator's OpenOrca-like mean prompt (an assumption, docs/simulator.md) and MLPerf's
#: reference mean output for Llama-2-70B.
DEFAULT_PROMPT_TOKENS = 600.0
DEFAULT_OUTPUT_TOKENS = 294.45


def pd_report(
    svc: InferenceService, plans: list[PoolPlan], prompt: float, output: float
) -> list[str]:
    """Lines of the P/D proposal of one service (per GPU model of its pools)."""
    name = svc.metadata.name
    if svc.spec.sla is None:
        return [f"{name}: P/D: no spec.sla; fix: set sla (e.g. preset llama2-70b-server)"]
    limits = svc.spec.sla.limits()
    workload = pdplan.Workload(prompt, output, limits.ttft_p99_s, limits.tpot_p99_s)
    model = svc.spec.model.architecture or svc.spec.model.name
    by_pool = {p.pool: p for p in plans}
    lines = []
    headroom = svc.spec.scaling.headroom
    seen: set[tuple[str, int]] = set()
    for pool in svc.spec.pools:
        plan = by_pool.get(pool.name)
        if plan is None or not plan.fits:
            continue
        tp = max(1, plan.tensor_parallel)
        if (pool.gpu, tp) in seen:
            continue
        seen.add((pool.gpu, tp))
        try:
            profile = get_profile(pool.gpu, model).scaled(tp)
            proposal = pdplan.propose(pool.gpu, profile, workload)
        except (ProfileError, ValueError) as err:
            lines.append(f"{name}: P/D {pool.gpu}: no proposal: {err}")
            continue
        lines.append(f"{name}: P/D {proposal.why(workload)}")
        if tp > 1:  # the profile was scaled to the TP-``tp`` engine: rates are per replica
            lines.append(
                f"{name}:   (rates per replica of {plan.gpus_per_replica} GPUs, tensor "
                f"parallel {tp})"
            )
        total = max(2, sum(p.min_replicas for p in svc.spec.pools if p.gpu == pool.gpu))
        prefill, decode = proposal.split(total)
        lines.append(
            f"{name}:   proposal for {total} replicas: {prefill} prefill : {decode} decode; "
            f"targets at headroom {headroom:g}: prefill "
            f"{math.floor(proposal.prefill_tokens_per_s_per_gpu * headroom)} prompt tokens/s, "
            f"decode {math.floor(proposal.decode_tokens_per_s_per_gpu * headroom)} generation "
            "tokens/s per replica"
        )
    return lines


@click.command("plan")
@render_cli.FILE_ARG
@render_cli.CONFIG_OPTION
@click.option(
    "--pd",
    "force_pd",
    is_flag=True,
    help="Also propose a prefill/decode split for services without spec.disaggregation.",
)
@click.option(
    "--prompt-tokens",
    type=click.FloatRange(min=1),
    default=DEFAULT_PROMPT_TOKENS,
    show_default=True,
    help="Mean prompt length of the workload (P/D proposal).",
)
@click.option(
    "--output-tokens",
    type=click.FloatRange(min=1),
    default=DEFAULT_OUTPUT_TOKENS,
    show_default=True,
    help="Mean output length of the workload (P/D proposal).",
)
def plan_command(
    file: Path,
    config_path: Path | None,
    force_pd: bool,
    prompt_tokens: float,
    output_tokens: float,
) -> None:
    """Print the capacity plan of every pool in FILE (exit 1 if a pool does not fit) and, for
    disaggregated services (or with --pd), the prefill:decode proposal and why."""
    config = render_cli.load_config(config_path)
    services = render_cli.load_services(file)
    fits = True
    for i, svc in enumerate(services):
        plans = planner.plan_service(svc, config)
        fits = fits and all(p.fits for p in plans)
        if len(services) > 1:
            click.echo(("\n" if i else "") + f"# {svc.metadata.name}")
        click.echo(render_cli.format_table(render_cli.plan_rows(plans)))
        if svc.spec.disaggregation is not None or force_pd:
            for line in pd_report(svc, plans, prompt_tokens, output_tokens):
                click.echo(line)
    if not fits:
        raise SystemExit(1)

"""``tokenscale run``: start the operator with our settings (wraps ``kopf.run``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import kopf

from tokenscale.controller import memtrim
from tokenscale.k8s import peering as k8s_peering
from tokenscale.k8s.kube import Kube, KubeError


@click.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TOKENSCALE_CONFIG",
    default=None,
    help="Operator config YAML (GPU catalogue, images, pod settings); defaults built in.",
)
@click.option(
    "--namespace",
    "-n",
    "namespaces",
    multiple=True,
    envvar="TOKENSCALE_NAMESPACES",
    help="Watch only these namespaces (repeatable); default: all namespaces.",
)
@click.option("--metrics-port", type=int, default=9090, show_default=True, help="0 disables.")
@click.option(
    "--metrics-addr",
    envvar="TOKENSCALE_METRICS_ADDR",
    default="0.0.0.0",  # noqa: S104 - in a pod, metrics are scraped from outside
    show_default=True,
    help="Address the metrics server binds to.",
)
@click.option(
    "--health",
    default="http://0.0.0.0:8080/healthz",
    show_default=True,
    help="Liveness endpoint URL to serve ('' disables).",
)
@click.option(
    "--log-format",
    type=click.Choice(["plain", "full", "json"]),
    default="full",
    show_default=True,
)
@click.option("--verbose", is_flag=True, help="Debug logging.")
@click.option(
    "--peering",
    default="",
    help="Kopf peering name: replicas sharing it never act at once (needs Kopf's peering CRD).",
)
@click.option(
    "--priority",
    type=int,
    default=None,
    envvar="TOKENSCALE_PEERING_PRIORITY",
    help="Peering priority (highest live replica acts); default: random per process, so two "
    "replicas never tie (Kopf freezes all replicas of equal priority).",
)
@click.option("--workers", type=int, default=8, show_default=True, help="Handler threads.")
def run_command(
    config_path: Path | None,
    namespaces: tuple[str, ...],
    metrics_port: int,
    metrics_addr: str,
    health: str,
    log_format: str,
    verbose: bool,
    peering: str,
    priority: int | None,
    workers: int,
) -> None:
    """Run the tokenscale operator against the current kubeconfig or in-cluster account."""
    from tokenscale.render.cli import load_config

    load_config(config_path)  # a bad file stops here naming the field, not in a Kopf traceback
    memtrim.limit_arenas()  # before Kopf starts its threads
    # Imported here, not at the top: importing handlers registers them with Kopf, which only
    # running the operator should do.
    from tokenscale.controller import handlers  # noqa: F401

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[log_format.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    ns_list = [n for item in namespaces for n in item.split(",") if n]
    memo = kopf.Memo(
        config_path=str(config_path) if config_path else None,
        metrics_port=metrics_port or None,
        metrics_addr=metrics_addr,
        workers=workers,
        namespaces=ns_list,
    )
    identity = None
    if peering:
        priority = _prepare_peering(peering, ns_list, priority)
        identity = k8s_peering.own_identity()
        memo.peering = k8s_peering.Peering(peering, tuple(ns_list), identity, priority)
    kopf.run(
        identity=identity,  # type: ignore[arg-type]  # Kopf's Identity is a NewType of str
        clusterwide=not ns_list,
        namespaces=ns_list,
        liveness_endpoint=health or None,
        standalone=not peering,
        peering_name=peering or None,
        priority=priority,
        memo=memo,
    )


def _prepare_peering(name: str, namespaces: list[str], priority: int | None) -> int:
    """Make sure the peering object(s) exist and pick this replica's priority."""
    try:
        created = k8s_peering.ensure_peering_objects(Kube(), name, namespaces)
    except KubeError as exc:
        raise click.ClickException(f"peering {name!r}: {exc}") from None
    for what in created:
        click.echo(f"created {what}", err=True)
    chosen = priority if priority is not None else k8s_peering.random_priority()
    click.echo(f"peering {name!r}: priority {chosen}", err=True)
    return chosen

"""``tokenscale render`` and ``tokenscale plan``: the operator's view of a manifest, offline.

The commands run the same planner and renderer as the reconciler, so what they print is exactly
what the operator would create (render) or report in ``status.plan`` (plan). File reading and
printing live here, keeping ``plan``/``render`` free of I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pydantic
import yaml

from tokenscale import cliinput, render, yamlsafe
from tokenscale import plan as planner
from tokenscale.api.config import Allocation, OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.api.status import PoolPlan
from tokenscale.render import gpuplacement


def load_services(path: Path) -> list[InferenceService]:
    """Every InferenceService document of a (multi-document) YAML file, validated.

    Errors use the shared CLI format (:mod:`tokenscale.cliinput`): one line per bad field.
    """
    services = []
    for index, doc in enumerate(cliinput.documents(path)):
        if not isinstance(doc, dict):  # other kinds are skipped, but a list is a mistake
            cliinput.parse(path, index, doc)
        if doc.get("kind") == "InferenceService":
            model = cliinput.parse(path, index, doc)
            assert isinstance(model, InferenceService)  # kind decides the model
            services.append(model)
    if not services:
        raise cliinput.InputError([cliinput.file_problem(path, "no InferenceService in the file")])
    return services


def load_config(path: Path | None) -> OperatorConfig:
    """The operator config file (same format as the Helm-rendered ConfigMap), or defaults."""
    if path is not None:
        cliinput.documents(path)  # refuse hostile YAML before the config loader parses it
    try:
        return OperatorConfig.load(path)
    except pydantic.ValidationError as exc:
        raise cliinput.validation_error(f"{path}: invalid operator config", exc) from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise cliinput.InputError([cliinput.file_problem(Path(str(path)), str(exc))]) from None


def parse_replicas(values: tuple[str, ...]) -> dict[str, int]:
    """``pool=N`` pairs."""
    out: dict[str, int] = {}
    for item in values:
        pool, sep, count = item.partition("=")
        if not sep or not count.isdigit():
            raise click.BadParameter(f"expected POOL=N, got {item!r}", param_hint="--replicas")
        out[pool] = int(count)
    return out


class _NoAliasDumper(yaml.SafeDumper):
    """Repeated values are written out in full: manifests for people, not anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_objects(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML in render order (keys kept in rendered order)."""
    return yaml.dump_all(
        objects, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=100
    )


def load_nodes(path: Path | None, config: OperatorConfig) -> gpuplacement.ClusterGPUs | None:
    """``kubectl get nodes -o yaml`` output (a List, or Node documents) as the operator reads
    it for ``auto`` resource naming and the labeller check; None without a file."""
    if path is None:
        return None
    docs = cliinput.documents(path, yamlsafe.MAX_NODE_LIST_BYTES)
    found: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Node":
            found.append(doc)
        elif isinstance(doc, dict) and isinstance(doc.get("items"), list):
            found += [
                i for i in doc["items"] if isinstance(i, dict) and i.get("kind", "Node") == "Node"
            ]
    if not found:
        raise cliinput.InputError(
            [cliinput.file_problem(path, "no Node objects (expected `kubectl get nodes -o yaml`)")]
        )
    return gpuplacement.cluster_gpus(found, config.pods.tolerations, config.pods.node_selector)


def render_service(
    svc: InferenceService,
    config: OperatorConfig,
    replicas: dict[str, int],
    cluster: gpuplacement.ClusterGPUs | None = None,
) -> tuple[render.RenderResult, list[str]]:
    """What the operator would apply for one service, and every note about it.

    Notes are ``plan: …`` for pools that do not fit (no workload), ``problem: …`` for pools
    that fit but cannot be rendered, and ``warning: …`` for non-blocking adjustments.
    """
    plans = planner.plan_service(svc, config)
    # Offline there is no cluster to look at: allocation auto renders for the device plugin
    # (what tokenscale.allocation.resolve answers without a cluster view).
    mode: Allocation = "dra" if config.allocation == "dra" else "devicePlugin"
    allocations = {p.name: mode for p in svc.spec.pools if p.gpu != "CPU"}
    result = render.render_all(
        svc, config, plans, replicas, cluster=cluster, allocations=allocations
    )
    notes = [f"plan: {p.message}" for p in plans if not p.fits]
    if config.allocation == "auto":
        notes.append("note: allocation auto renders for the device plugin offline (no cluster)")
    notes += [f"problem: {p}" for p in result.problems]
    notes += [f"warning: {w}" for w in result.warnings]
    return result, notes


COLUMNS = ("POOL", "GPU", "FITS", "TP", "PP", "GPUS/REPLICA", "NODES/REPLICA",
           "WEIGHTS GiB", "KV GiB", "HBM GiB", "MESSAGE")  # fmt: skip


def _gib(value: float) -> str:
    return "<0.1" if 0 < value < 0.05 else f"{value:.1f}"


def plan_rows(plans: list[PoolPlan]) -> list[tuple[str, ...]]:
    """One row per pool, as strings."""
    return [
        (
            p.pool,
            p.gpu,
            "yes" if p.fits else "no",
            str(p.tensor_parallel),
            str(p.pipeline_parallel),
            str(p.gpus_per_replica),
            str(p.nodes_per_replica),
            _gib(p.weights_gib),
            _gib(p.kv_cache_gib),
            _gib(p.hbm_gib),
            p.message,
        )
        for p in plans
    ]


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the last (message) column is not padded."""
    table = [COLUMNS, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


FILE_ARG = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Operator config YAML (defaults built in).",
)


@click.command("render")
@FILE_ARG
@CONFIG_OPTION
@click.option("--replicas", multiple=True, metavar="POOL=N",
              help="Replicas of a pool (default: its minReplicas). Repeatable.")  # fmt: skip
@click.option("--nodes", "nodes_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="`kubectl get nodes -o yaml` output: render resource names as the operator "
                   "would on that cluster (pods.resourceNaming auto).")  # fmt: skip
def render_command(
    file: Path, config_path: Path | None, replicas: tuple[str, ...], nodes_path: Path | None
) -> None:
    """Print the Kubernetes objects the operator would create for FILE, as YAML."""
    config = load_config(config_path)
    counts = parse_replicas(replicas)
    cluster = load_nodes(nodes_path, config)
    chunks = []
    for svc in load_services(file):
        result, notes = render_service(svc, config, counts, cluster)
        chunks.append(dump_objects(result.objects))
        for note in notes:
            click.echo(f"{svc.metadata.name}: {note}", err=True)
    click.echo("---\n".join(chunks), nl=False)


@click.command("plan")
@FILE_ARG
@CONFIG_OPTION
def plan_command(file: Path, config_path: Path | None) -> None:
    """Print the capacity plan of every pool in FILE; exit 1 if a pool does not fit."""
    config = load_config(config_path)
    fits = True
    services = load_services(file)
    for i, svc in enumerate(services):
        plans = planner.plan_service(svc, config)
        fits = fits and all(p.fits for p in plans)
        if len(services) > 1:
            click.echo(("\n" if i else "") + f"# {svc.metadata.name}")
        click.echo(format_table(plan_rows(plans)))
    if not fits:
        raise SystemExit(1)

"""The ``tokenscale`` command: one entry point for users, the operator image and benchmark Jobs.

Subcommands from other areas (render, plan, sim, bench, run) are attached lazily so that
``tokenscale validate`` does not import the operator runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

from tokenscale import __version__

#: name → (module, attribute) of subcommands that live next to their area.
_LAZY: dict[str, tuple[str, str]] = {
    "render": ("tokenscale.render.cli", "render_command"),
    "plan": ("tokenscale.plancmd", "plan_command"),
    "sim": ("tokenscale.sim.cli", "sim_group"),
    "bench": ("tokenscale.bench.cli", "bench_command"),
    "run": ("tokenscale.controller.cli", "run_command"),
    "bench-job": ("tokenscale.bench.job_entrypoint", "bench_job_command"),
    "activator": ("tokenscale.activator.cli", "activator_command"),
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        available = [n for n, (mod, _) in _LAZY.items() if importlib.util.find_spec(mod)]
        return sorted([*super().list_commands(ctx), *available])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY:
            module, attr = _LAZY[cmd_name]
            cmd: click.Command = getattr(importlib.import_module(module), attr)
            return cmd
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """tokenscale: vLLM on AMD Instinct GPUs, autoscaled on tokens/s, SLAs proven."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write one file per CRD here instead of printing them.",
)
@click.option(
    "--chart",
    "chart_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the chart's files/crds/ and values.schema.json into this chart.",
)
@click.option("--check", is_flag=True, help="Fail if the written files differ (drift check).")
def crds(out_dir: Path | None, chart_dir: Path | None, check: bool) -> None:
    """Generate the CustomResourceDefinitions (and chart schema) from the API models."""
    from tokenscale.chartgen import dump_values_schema
    from tokenscale.crdgen import all_crds, dump

    generated = {name: dump(crd) for name, crd in all_crds().items()}
    if out_dir is None and chart_dir is None:
        click.echo("---\n".join(generated.values()), nl=False)
        return
    targets: dict[Path, str] = {}
    for root in [d for d in (out_dir, chart_dir and chart_dir / "files" / "crds") if d]:
        targets.update({root / name: text for name, text in generated.items()})
    if chart_dir is not None:
        targets[chart_dir / "values.schema.json"] = dump_values_schema()
        from tokenscale.k8s.peering import peering_crds

        for crd in peering_crds():  # Kopf's kinds, shipped when peering.enabled
            name = crd["metadata"]["name"]
            targets[chart_dir / "files" / "peering" / f"{name}.yaml"] = dump(
                crd, source="operator/tokenscale/k8s/peering.py (Kopf's peering kinds)"
            )
    stale = sorted(str(p) for p, text in targets.items() if _read(p) != text)
    if check:
        if stale:
            raise click.ClickException(f"out of date: {', '.join(stale)}; fix: run `make crds`")
        return
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    click.echo(f"wrote {len(targets)} files")


@main.command("config-docs")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the reference here (docs/configuration.md) instead of printing it.",
)
@click.option("--check", is_flag=True, help="Fail if the written file differs (drift check).")
def config_docs(out: Path | None, check: bool) -> None:
    """Generate the operator configuration reference from the OperatorConfig model."""
    from tokenscale.chartgen import configuration_markdown

    text = configuration_markdown()
    if out is None:
        click.echo(text, nl=False)
    elif check:
        if _read(out) != text:
            raise click.ClickException(f"out of date: {out}; fix: run `make crds`")
    else:
        out.write_text(text)
        click.echo(f"wrote {out}")


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Validate manifests against the API models; print field-named errors."""
    from tokenscale import cliinput

    failed = 0
    for path in files:
        try:
            docs = cliinput.documents(path)
        except cliinput.InputError as exc:
            failed += 1
            for line in exc.lines:
                click.echo(line, err=True)
            continue
        for index, doc in enumerate(docs):
            try:
                cliinput.parse(path, index, doc)
            except cliinput.InputError as exc:
                failed += 1
                for line in exc.lines:
                    click.echo(line, err=True)
            else:
                click.echo(f"{cliinput.label(path, index, doc)}: valid")
    if failed:
        sys.exit(1)

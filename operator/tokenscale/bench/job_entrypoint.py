"""``tokenscale bench-job``: the benchmark Job's entrypoint — run the load, publish the result.

The result goes to the API server (ConfigMaps owned by the InferenceBenchmark) under the pod's
narrow ServiceAccount, so results never depend on pod logs surviving.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click


@click.command("bench-job", context_settings={"ignore_unknown_options": True})
@click.argument("bench_args", nargs=-1, type=click.UNPROCESSED)
def bench_job_command(bench_args: tuple[str, ...]) -> None:
    """Run `tokenscale bench BENCH_ARGS...` and publish the result for the operator."""
    # Imported here, not at the top: the CLI lists every subcommand lazily, and these pull in
    # the load generator and the Kubernetes client, which only a running bench-job needs.
    from tokenscale.bench import resultchannel
    from tokenscale.bench.cli import bench_command
    from tokenscale.k8s.kube import Kube, KubeError

    name = os.environ["TOKENSCALE_BENCHMARK"]
    namespace = os.environ.get("POD_NAMESPACE") or _namespace_file()
    shard = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        try:
            bench_command.main([*bench_args, "--out", str(out)], standalone_mode=False)
        except click.ClickException as exc:
            exc.show()
            sys.exit(2)
        try:
            parts = resultchannel.publish(
                Kube(),
                namespace,
                name,
                os.environ.get("TOKENSCALE_BENCHMARK_UID"),
                shard,
                out.read_text(),
                run=os.environ.get("TOKENSCALE_BENCH_RUN"),
            )
        except KubeError as exc:  # retried already; say what was lost instead of a traceback
            click.echo(f"error: result of shard {shard} of {name} not published: {exc}", err=True)
            sys.exit(3)
    click.echo(f"published shard {shard} of {name} in {parts} ConfigMap part(s)")


def _namespace_file() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else "default"

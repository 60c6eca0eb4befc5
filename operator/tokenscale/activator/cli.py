"""``tokenscale activator``: serve requests for scaled-to-zero services (see docs/activator.md)."""

from __future__ import annotations

import logging

import click

#: Under Kubernetes' default 30 s termination grace: in-flight streams get this long to finish
#: after SIGTERM before they are cut, so the pod never gets SIGKILLed mid-cleanup.
SHUTDOWN_SECONDS = 20.0
#: Requests still waiting for an engine this long after SIGTERM get a 503 saying to retry,
#: inside SHUTDOWN_SECONDS, rather than a connection closed without an answer.
DRAIN_SECONDS = 15.0


@click.command("activator")
@click.option(
    "--host",
    default="0.0.0.0",  # noqa: S104 - in a pod, the Service sends requests from outside
    show_default=True,
    help="Address to listen on.",
)
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds a request waits for a ready engine before a 503.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between looks for a ready engine while waiting.",
)
def activator_command(host: str, port: int, timeout: float, poll: float) -> None:
    """Wake scaled-to-zero InferenceServices on request and proxy to their engines."""
    from aiohttp import web
    from kubernetes.config import ConfigException

    from tokenscale.activator.backend import KubeBackend
    from tokenscale.activator.server import create_app
    from tokenscale.k8s.kube import Kube

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    try:
        kube = Kube()  # in-cluster service account, else the current kubeconfig
    except ConfigException as exc:
        raise click.ClickException(f"no Kubernetes configuration: {exc}") from None
    app = create_app(
        KubeBackend(kube), timeout_seconds=timeout, poll_seconds=poll, drain_seconds=DRAIN_SECONDS
    )
    logging.getLogger(__name__).info(
        "activator listening on %s:%d (timeout %g s, poll %g s)", host, port, timeout, poll
    )
    web.run_app(  # SIGTERM and SIGINT: stop accepting, drain, run the cleanup, exit 0
        app,
        host=host,
        port=port,
        shutdown_timeout=SHUTDOWN_SECONDS,
        handler_cancellation=True,  # a client gone while waiting leaves the shared wait
        print=None,
        access_log=None,
    )

"""``tokenscale sim engine``: run one or many simulated vLLM engines in this process.

Flag names follow ``vllm serve`` where a vLLM flag exists (``--host``, ``--port``,
``--served-model-name``, ``--tensor-parallel-size``, ``--max-num-seqs``, ``--max-model-len``,
``--max-num-batched-tokens``, ``--seed``) so the operator can render the same argument list for a
simulated pool as for a real one. Other vLLM flags (``--dtype``, ``--enforce-eager``, ...) are
ignored with a warning, because the operator passes them through; ``--strict-args`` turns that
into an error for humans who want typos caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from pathlib import Path

import click
from aiohttp import web

from . import exporter, pd
from .model import Engine
from .profiles import ProfileError, get_profile
from .server import Endpoint, EngineHost, Fleet, PDRole, SimClock

log = logging.getLogger("tokenscale.sim")


@click.group("sim")
def sim_group() -> None:
    """Simulated vLLM engines on modelled AMD Instinct GPUs (no GPU needed)."""


@sim_group.command(
    "engine", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.option("--gpu", default="MI355X", show_default=True, help="GPU model of the profile.")
@click.option("--model", default="llama-2-70b", show_default=True, help="Model of the profile.")
@click.option(
    "--profiles",
    "profiles_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Profile YAML to use instead of the packaged one.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, help="Port (first port with --engines).")
@click.option("--engines", default=1, show_default=True, help="Engines per host address.")
@click.option("--port-base", type=int, help="First port for --engines (default: --port).")
@click.option("--hosts", help="Comma-separated addresses, --engines engines on each.")
@click.option("--speed", default=1.0, show_default=True, help="Simulated seconds per wall second.")
@click.option("--seed", default=0, show_default=True, help="Seed of output-length draws.")
@click.option("--served-model-name", help="Name in the API and metrics (default: --model).")
@click.option("--tensor-parallel-size", "-tp", default=1, show_default=True, help="GPUs/engine.")
@click.option("--max-num-seqs", type=int, help="Override the profile's max_num_seqs.")
@click.option("--max-num-batched-tokens", type=int, help="Override the step token budget.")
@click.option("--max-model-len", type=int, help="Override the context length.")
@click.option("--kv-cache-tokens", type=int, help="Override the KV-cache capacity (tokens).")
@click.option(
    "--stream-flush-ms",
    default=50.0,
    show_default=True,
    help="Wall ms between coalesced stream writes; 0 = only first and last token are pushed "
    "on time, the rest goes with the last (cheapest; benchmarks use it).",
)
@click.option(
    "--startup-seconds",
    default=0.0,
    show_default=True,
    help="Simulated model-load time before the port listens (like vLLM, probes fail meanwhile).",
)
@click.option(
    "--background-qps",
    default=0.0,
    show_default=True,
    help="Per-engine Poisson requests/s (simulated) injected without HTTP, for fleet tests.",
)
@click.option(
    "--shutdown-timeout",
    default=0.0,
    show_default=True,
    help="Like vLLM: on SIGTERM stop listening and let requests in flight finish for up to this "
    "many (wall) seconds; 0 aborts them.",
)
@click.option(
    "--enable-prefix-caching/--no-enable-prefix-caching",
    default=True,
    show_default=True,
    help="Automatic prefix caching (vLLM's flag; on by default as in vLLM v1).",
)
@click.option("--block-size", default=16, show_default=True, help="KV block size (tokens).")
@click.option(
    "--exporter-port",
    default=0,
    show_default=True,
    help="Serve a simulated AMD Device Metrics Exporter (power, energy) on this port of every "
    "address (one per simulated node, as the DaemonSet); 0 = off.",
)
@click.option(
    "--exporter-pod",
    envvar=["POD_NAME", "HOSTNAME"],
    default="",
    help="`pod` label (env POD_NAME, else HOSTNAME: a pod's hostname is its name).",
)
@click.option(
    "--exporter-namespace",
    envvar="POD_NAMESPACE",
    default="",
    help="`namespace` label (env POD_NAMESPACE).",
)
@click.option("--exporter-container", default="vllm", show_default=True, help="`container` label.")
@click.option(
    "--pd-role",
    type=click.Choice(["prefill", "decode"]),
    help="Prefill/decode disaggregation (docs/disaggregation.md): prefill answers a request "
    "with kv_transfer_params.do_remote_decode by handing its KV over; decode admits a request "
    "with do_remote_prefill after the transfer time, its prompt already computed.",
)
@click.option(
    "--kv-transfer-gbps",
    default=50.0,
    show_default=True,
    help="KV link bandwidth in GB/s for --pd-role (transfer time = KV bytes / this).",
)
@click.option("--strict-args", is_flag=True, help="Reject unknown (vLLM-only) arguments.")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def engine_command(
    ctx: click.Context,
    gpu: str,
    model: str,
    profiles_path: Path | None,
    host: str,
    port: int,
    engines: int,
    port_base: int | None,
    hosts: str | None,
    speed: float,
    seed: int,
    served_model_name: str | None,
    tensor_parallel_size: int,
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    max_model_len: int | None,
    kv_cache_tokens: int | None,
    stream_flush_ms: float,
    startup_seconds: float,
    background_qps: float,
    shutdown_timeout: float,
    enable_prefix_caching: bool,
    block_size: int,
    exporter_port: int,
    exporter_pod: str,
    exporter_namespace: str,
    exporter_container: str,
    pd_role: str | None,
    kv_transfer_gbps: float,
    strict_args: bool,
    log_level: str,
) -> None:
    """Serve simulated engines until SIGINT/SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if ctx.args:
        if strict_args:
            raise click.UsageError(f"unknown arguments: {' '.join(ctx.args)}")
        log.warning("ignoring arguments the simulator does not model: %s", " ".join(ctx.args))
    if engines < 1 or speed <= 0 or tensor_parallel_size < 1:
        raise click.BadParameter("--engines and --tensor-parallel-size must be >= 1, --speed > 0")
    try:
        profile = get_profile(gpu, model, profiles_path).scaled(tensor_parallel_size)
    except ProfileError as err:
        raise click.ClickException(str(err)) from err
    role = None
    if pd_role is not None:
        if kv_transfer_gbps <= 0:
            raise click.BadParameter("--kv-transfer-gbps must be > 0")
        try:
            per_token = pd.kv_bytes_per_token(model, profile.precision, tensor_parallel_size)
        except ValueError as err:
            raise click.ClickException(str(err)) from err
        role = PDRole(pd_role, per_token, kv_transfer_gbps)
    addresses = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else [host]
    first_port = port if port_base is None else port_base
    name = served_model_name or model

    try:
        power = exporter.gpu_power(profile.gpu) if exporter_port else None
    except KeyError as err:
        raise click.ClickException(str(err.args[0])) from err

    async def main() -> None:
        clock = SimClock(speed)
        fleet_hosts = []
        exporter_apps: list[tuple[str, web.Application]] = []
        for a, address in enumerate(addresses):
            meters = [exporter.EnergyMeter(power.idle_w) for _ in range(engines)] if power else []
            for i in range(engines):
                index = a * engines + i
                try:
                    engine = Engine(
                        profile,
                        max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens,
                        max_model_len=max_model_len,
                        kv_cache_tokens=kv_cache_tokens,
                        seed=seed * 100_003 + index,
                        enable_prefix_caching=enable_prefix_caching,
                        block_size=block_size,
                    )
                except ValueError as err:
                    raise click.ClickException(str(err)) from err
                endpoint = Endpoint(address, first_port + i, name, model)
                host_ = EngineHost(
                    engine,
                    clock,
                    endpoint,
                    stream_flush_ms / 1000,
                    background_qps=background_qps,
                    background_seed=seed * 100_003 + index + 7_919,
                    on_step=exporter.StepPower(power, meters[i], engine.max_num_seqs)
                    if power
                    else None,
                    pd_role=role,
                )
                fleet_hosts.append(host_)
            if power:
                gpus = exporter.node_gpus(
                    profile.gpu, address, engines, tensor_parallel_size,
                    exporter_pod, exporter_namespace, exporter_container, meters,
                )  # fmt: skip
                collector = exporter.ExporterCollector(gpus, clock.now)
                exporter_apps.append((address, exporter.exporter_app(collector)))
        if startup_seconds > 0:
            await asyncio.sleep(startup_seconds / speed)
        fleet = Fleet(fleet_hosts, shutdown_timeout)
        await fleet.start()
        exporter_runners = []
        for address, app in exporter_apps:
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, address, exporter_port).start()
            exporter_runners.append(runner)
        # Thousands of open streams make each full collection take ~0.1-1 s, which would show up
        # as simulated latency. Freeze the start-up heap and make full collections rare.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "%d engine(s) %s/%s tp=%d on %s ports %d..%d speed=%g seed=%d",
            len(fleet_hosts), profile.gpu, profile.model, tensor_parallel_size,
            ",".join(addresses), first_port, first_port + engines - 1, speed, seed,
        )  # fmt: skip
        try:
            await stop.wait()
        finally:
            for runner in exporter_runners:
                await runner.cleanup()
            await fleet.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())

"""``tokenscale bench``: the load generator's command line, also the benchmark Job's entrypoint.

Exposed as :data:`bench_command` (a click group) for the main ``tokenscale`` CLI to register.
Without a subcommand it runs a benchmark; ``merge`` combines shard results, ``scaling`` turns
per-replica-count results into a replica sweep, ``report`` renders HTML from a result file.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import click
import httpx
import pydantic

from tokenscale import cliinput
from tokenscale import sla as sla_presets
from tokenscale.bench import datasets, metrics, scenarios
from tokenscale.bench.energy import EnergyRecorder, summarise
from tokenscale.bench.models import BenchConfig, BenchResult, BenchSLA, Scenario, Thresholds
from tokenscale.bench.retry import RETRYABLE_STATUSES, GaveUp, with_backoff

EXIT_CODES = {"pass": 0, "no_sla": 0, "fail": 1, "invalid": 3, "unstable": 4}


def parse_seconds(text: str | None) -> float | None:
    """``2``/``2s``/``450ms``/``0.2`` -> seconds."""
    if text is None:
        return None
    t = text.strip().lower()
    try:
        if t.endswith("ms"):
            return float(t[:-2]) / 1000.0
        return float(t.removesuffix("s"))
    except ValueError as exc:
        raise click.BadParameter(f"not a duration: {text!r} (use 2s, 450ms or 0.45)") from exc


def resolve_sla(
    scenario: str,
    preset: str | None,
    ttft: float | None,
    tpot: float | None,
    min_tps: float | None,
    max_error_fraction: float,
) -> BenchSLA | None:
    """Preset or explicit limits; Interactive switches a ``-server`` preset to ``-interactive``."""
    if scenario == "interactive" and preset and preset.endswith("-server"):
        alt = preset.removesuffix("-server") + "-interactive"
        if alt in sla_presets.PRESETS:
            preset = alt
    try:
        limits = sla_presets.limits_for(preset, ttft_p99_s=ttft, tpot_p99_s=tpot)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="--sla") from exc
    if limits is None:
        if scenario == "interactive":
            raise click.UsageError("interactive needs --sla PRESET or --ttft-p99/--tpot-p99")
        return None

    def finite(x: float) -> float | None:
        return None if math.isinf(x) else x

    return BenchSLA(
        preset=preset,
        ttft_s=finite(limits.ttft_p99_s),
        tpot_s=finite(limits.tpot_p99_s),
        percentile=limits.percentile,
        min_tokens_per_s=min_tps if min_tps is not None else limits.min_tokens_per_s,
        max_error_fraction=max_error_fraction,
    )


def _prompt_source(
    dataset: str, input_len: str | None, output_len: str | None, seed: int
) -> tuple[scenarios.PromptSource, datasets.LengthDist | None, datasets.LengthDist]:
    out_dist = datasets.LengthDist.parse(output_len) if output_len else None
    if dataset in datasets.PRESET_DATASETS:
        in_p, out_p = datasets.preset(dataset)
        in_dist = datasets.LengthDist.parse(input_len) if input_len else in_p
        out_final = out_dist or out_p
        return (lambda n: datasets.synthetic(n, in_dist, out_final, seed)), in_dist, out_final
    out_final = out_dist or datasets.LengthDist(kind="fixed", value=128)
    try:
        shared = datasets.parse_shared_prefix(dataset)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--dataset") from err
    if shared is not None:
        systems, tokens, turns = shared
        question = datasets.LengthDist.parse(input_len or "128")
        return (
            (
                lambda n: datasets.shared_prefix(
                    n,
                    systems=systems,
                    system_tokens=tokens,
                    input_len=question,
                    output_len=out_final,
                    seed=seed,
                    turns=turns,
                )
            ),
            None,
            out_final,
        )
    if dataset == "synthetic":
        in_dist = datasets.LengthDist.parse(input_len or "128")
        return (lambda n: datasets.synthetic(n, in_dist, out_final, seed)), in_dist, out_final
    path = Path(dataset)
    if not path.is_file():
        raise click.BadParameter(
            f"{dataset!r} is neither synthetic, a preset "
            f"({', '.join(datasets.PRESET_DATASETS)}) nor a JSONL file",
            param_hint="--dataset",
        )
    try:  # read once up front: a bad file fails here naming the line, not mid-run
        datasets.from_jsonl(path, 1, out_final, seed)
    except (OSError, ValueError, TypeError) as exc:  # JSON, UTF-8 and int() errors are ValueErrors
        raise cliinput.InputError([cliinput.file_problem(path, str(exc))]) from None
    return (lambda n: datasets.from_jsonl(path, n, out_final, seed)), None, out_final


def _detect_model(
    url: str,
    api_key: str | None,
    *,
    transport: httpx.BaseTransport | None = None,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """The served model's id from ``/v1/models``, retried with backoff on connection errors,
    409, 429 and 5xx (a benchmark Job has one chance; an engine or proxy blip must not end it)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def fetch() -> str:
        resp = client.get(url.rstrip("/") + "/v1/models", headers=headers)
        resp.raise_for_status()
        return str(resp.json()["data"][0]["id"])

    def transient(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code in RETRYABLE_STATUSES
        return isinstance(exc, httpx.TransportError)

    try:
        with httpx.Client(transport=transport, timeout=10.0) as client:
            return with_backoff(
                fetch, what=f"GET {url}/v1/models", retryable=transient, attempts=attempts,
                sleep=sleep,
            )  # fmt: skip
    except (GaveUp, httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise click.UsageError(f"--model not given and {url}/v1/models failed: {exc}") from exc


def _emit(result: BenchResult, out: Path | None, html: Path | None) -> None:
    if out is not None:
        out.write_text(result.model_dump_json(indent=1))
    if html is not None:
        from tokenscale.bench import report  # jinja2 is only needed for HTML

        html.write_text(report.render(result))
    s = result.summary()

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f} ms"

    click.echo(
        f"tokens/s {s.tokens_per_s:,.1f}  requests/s {s.requests_per_s:,.2f}  "
        f"TTFT p50/p99 {ms(s.ttft_p50_s)}/{ms(s.ttft_p99_s)}  "
        f"TPOT p50/p99 {ms(s.tpot_p50_s)}/{ms(s.tpot_p99_s)}  "
        f"client CPU {result.self_check.cpu_fraction:.0%}"
    )
    click.echo(f"verdict: {s.verdict}" + (f" ({'; '.join(s.reasons)})" if s.reasons else ""))


@click.group("bench", invoke_without_command=True, context_settings={"show_default": True})
@click.option("--url", envvar="TOKENSCALE_BENCH_URL", help="Base URL, e.g. http://127.0.0.1:8000")
@click.option("--model", default=None, help="Model name (default: first of /v1/models).")
@click.option("--api", type=click.Choice(["completions", "chat"]), default="completions")
@click.option(
    "--scenario",
    type=click.Choice(["offline", "server", "interactive", "sweep"]),
    default="server",
)
@click.option("--qps", type=float, default=None, help="Target Poisson rate (server/interactive).")
@click.option("--concurrency", default=None, help="Max in flight (offline); comma list for sweep.")
@click.option("--requests", "n_requests", type=int, default=None, help="Requests per run.")
@click.option("--duration", type=float, default=None, help="Run length in seconds.")
@click.option(
    "--dataset",
    default="synthetic",
    help="synthetic, openorca-llama2-70b, a .jsonl, or shared-prefix:SYSTEMS:TOKENS[:TURNS] "
    "(multi-tenant chat; --input-len is then the question length)",
)
@click.option("--input-len", default=None, help="N | uniform:LO:HI | normal:MEAN:SD[:LO:HI]")
@click.option("--output-len", default=None, help="Same forms; sent as max_tokens.")
@click.option("--ignore-eos/--no-ignore-eos", default=True, help="Ask the server to skip EOS.")
@click.option(
    "--sla", "sla_preset", default=None, help=f"Preset: {', '.join(sla_presets.PRESET_NAMES)}"
)
@click.option("--ttft-p99", default=None, help="TTFT limit, e.g. 2s or 450ms (overrides preset).")
@click.option("--tpot-p99", default=None, help="TPOT limit, e.g. 200ms.")
@click.option("--min-tokens-per-s", type=float, default=None, help="Throughput floor.")
@click.option("--max-error-fraction", type=float, default=0.0, help="Failures allowed by SLA.")
@click.option("--repeats", type=int, default=1, help="Run the scenario N times.")
@click.option("--stability-margin", type=float, default=0.05, help="Max relative range.")
@click.option("--seed", type=int, default=0)
@click.option("--timeout", type=float, default=600.0, help="Per-request timeout (s).")
@click.option("--max-client-cpu", type=float, default=0.9, help="Invalid above this CPU share.")
@click.option("--max-lag-ms", type=float, default=10.0, help="Invalid above this p99 lag.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--trace",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSONL: every output-chunk arrival per request.",
)
@click.option("--shard-index", type=int, envvar="JOB_COMPLETION_INDEX", default=0)
@click.option("--shard-count", type=int, envvar="TOKENSCALE_BENCH_SHARDS", default=1)
@click.option("--replicas", type=int, default=None, help="Tag: target replicas (replica sweep).")
@click.option("--api-key", envvar="TOKENSCALE_BENCH_API_KEY", default=None, show_default=False)
@click.option("--progress/--no-progress", default=True, help="Live line when stderr is a TTY.")
@click.option(
    "--energy-url",
    "energy_urls",
    multiple=True,
    help="AMD Device Metrics Exporter /metrics URL (repeat per node): record GPU energy and "
    "tokens per joule over the run.",
)
@click.option("--energy-pods", default="", help="Comma list: only GPUs held by these pods.")
@click.option("--energy-interval", type=float, default=1.0, help="Exporter sampling period (s).")
@click.option("--check", is_flag=True, help="Exit non-zero unless the verdict is pass/no_sla.")
@click.pass_context
def bench_command(ctx: click.Context, /, **opts: object) -> None:
    """Benchmark an OpenAI-compatible endpoint the MLPerf way and check an SLA."""
    if ctx.invoked_subcommand is not None:
        return
    url = cast(str | None, opts["url"])
    if not url:
        raise click.UsageError("--url is required (or TOKENSCALE_BENCH_URL)")
    scenario = cast(str, opts["scenario"])
    seed = cast(int, opts["seed"])
    shard_count = cast(int, opts["shard_count"])
    if not 0 <= cast(int, opts["shard_index"]) < shard_count:
        raise click.BadParameter("need 0 <= shard-index < shard-count")
    conc_text = cast(str | None, opts["concurrency"])
    try:
        conc = [int(c) for c in conc_text.split(",")] if conc_text else None
        source, in_dist, out_dist = _prompt_source(
            cast(str, opts["dataset"]),
            cast(str | None, opts["input_len"]),
            cast(str | None, opts["output_len"]),
            seed,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if scenario == "sweep" and not conc:
        raise click.UsageError("sweep needs --concurrency 1,2,4,...")
    if scenario in ("server", "interactive") and not opts["qps"]:
        raise click.UsageError(f"{scenario} needs --qps")
    if not opts["n_requests"] and not opts["duration"]:
        opts["n_requests"] = 1000
    api_key = cast(str | None, opts["api_key"])
    config = BenchConfig(
        url=url,
        model=cast(str | None, opts["model"]) or _detect_model(url, api_key),
        api=cast(Literal["completions", "chat"], opts["api"]),
        scenario=cast(Scenario, scenario),
        qps=cast(float | None, opts["qps"]),
        concurrency=conc,
        requests=cast(int | None, opts["n_requests"]),
        duration_s=cast(float | None, opts["duration"]),
        dataset=cast(str, opts["dataset"]),
        input_len=in_dist,
        output_len=out_dist,
        ignore_eos=cast(bool, opts["ignore_eos"]),
        sla=resolve_sla(
            scenario,
            cast(str | None, opts["sla_preset"]),
            parse_seconds(cast(str | None, opts["ttft_p99"])),
            parse_seconds(cast(str | None, opts["tpot_p99"])),
            cast(float | None, opts["min_tokens_per_s"]),
            cast(float, opts["max_error_fraction"]),
        ),
        thresholds=Thresholds(
            max_cpu_fraction=cast(float, opts["max_client_cpu"]),
            max_lag_p99_s=cast(float, opts["max_lag_ms"]) / 1000.0,
            stability_margin=cast(float, opts["stability_margin"]),
        ),
        repeats=cast(int, opts["repeats"]),
        seed=seed,
        shard_index=cast(int, opts["shard_index"]),
        shard_count=shard_count,
        replicas=cast(int | None, opts["replicas"]),
        timeout_s=cast(float, opts["timeout"]),
    )
    trace_path = cast(Path | None, opts["trace"])
    with contextlib.ExitStack() as stack:
        trace = stack.enter_context(trace_path.open("w")) if trace_path else None
        run = scenarios.run(
            config, source, progress=cast(bool, opts["progress"]), api_key=api_key, trace=trace
        )
        urls = cast(tuple[str, ...], opts["energy_urls"])
        if urls:
            pods = frozenset(p for p in cast(str, opts["energy_pods"]).split(",") if p)
            interval = cast(float, opts["energy_interval"])
            result = asyncio.run(with_energy(run, urls, pods, interval))
        else:
            result = asyncio.run(run)
    _emit(result, cast(Path | None, opts["out"]), cast(Path | None, opts["html"]))
    if opts["check"]:
        sys.exit(EXIT_CODES[result.verdict.status])


async def with_energy(
    run: Coroutine[Any, Any, BenchResult],
    urls: Sequence[str],
    pods: frozenset[str],
    interval: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> BenchResult:
    """Run the benchmark while sampling the exporters; attach ``energy`` to the result."""
    async with httpx.AsyncClient(transport=transport) as client:
        recorder = EnergyRecorder(client, urls, pods, interval_s=interval)
        stop = asyncio.Event()
        task = asyncio.create_task(recorder.run(stop))
        try:
            result = await run
        finally:
            stop.set()
            await task
    tokens = sum(r.metrics.output_tokens for r in result.runs) or result.metrics.output_tokens
    energy = summarise(recorder.samples, tokens, recorder.errors)
    return result.model_copy(update={"energy": energy})


def _load_one(path: Path) -> BenchResult:
    """A result file; errors in the shared CLI format (JSON: no aliases, so no size limit
    beyond the records a long run legitimately holds)."""
    try:
        return BenchResult.model_validate_json(path.read_bytes())
    except pydantic.ValidationError as exc:
        raise cliinput.validation_error(f"{path}: bench result", exc) from None
    except OSError as exc:
        raise cliinput.InputError([cliinput.file_problem(path, str(exc))]) from None


def _load(paths: tuple[Path, ...]) -> list[BenchResult]:
    return [_load_one(p) for p in paths]


_paths = click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
_out = click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
_html = click.option("--html", type=click.Path(dir_okay=False, path_type=Path), default=None)


@bench_command.command("merge")
@_paths
@_out
@_html
def merge_command(files: tuple[Path, ...], out: Path | None, html: Path | None) -> None:
    """Merge shard results (one per Indexed-Job pod) into one exact result."""
    _emit(scenarios.merge(_load(files)), out, html)


@bench_command.command("scaling")
@_paths
@_out
@_html
def scaling_command(files: tuple[Path, ...], out: Path | None, html: Path | None) -> None:
    """Replica sweep: results tagged --replicas N -> throughput per replica and T_N/(N*T_1)."""
    results = _load(files)
    by_n: dict[int, BenchResult] = {}
    for r in results:
        if r.config.replicas is None:
            raise click.UsageError("every result needs a replicas tag (run with --replicas N)")
        by_n[r.config.replicas] = r
    points = metrics.replica_points({n: r.metrics.tokens_per_s for n, r in by_n.items()})
    for p in points:
        eff = "-" if p.scaling_efficiency is None else f"{p.scaling_efficiency:.1%}"
        click.echo(
            f"{p.replicas:>4} replicas  {p.tokens_per_s:>12,.1f} tok/s  "
            f"{p.tokens_per_s_per_replica:>10,.1f} per replica  efficiency {eff}"
        )
    largest = by_n[max(by_n)].model_copy(update={"replica_sweep": points})
    if out is not None:
        out.write_text(largest.model_dump_json(indent=1))
    if html is not None:
        from tokenscale.bench import report

        html.write_text(report.render(largest))


@bench_command.command("report")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), required=True)
def report_command(file: Path, html: Path) -> None:
    """Render the HTML report of a result file."""
    from tokenscale.bench import report

    html.write_text(report.render(_load_one(file)))

"""The whole client against a real (fake) OpenAI streaming server on 127.0.0.1.

Exercises what unit tests cannot: sockets, keep-alive reuse, chunked SSE from a server, usage
accounting, latency injection, failures, the CLI, shard merge files and the HTML report. The
server runs in a thread with its own event loop so the CLI can own the main one; since it shares
the process, the client-CPU limit is raised (2.5 cores) so its CPU is not blamed on the client.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tokenscale.bench import datasets, fakeserver, report, scenarios
from tokenscale.bench.cli import bench_command
from tokenscale.bench.models import BenchConfig, BenchResult, BenchSLA, Thresholds


class ServerThread:
    def __init__(self, config: fakeserver.FakeConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.config = config
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server, state = self.loop.run_until_complete(fakeserver.start("127.0.0.1", 0, self.config))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        state.stop()
        server.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    s = ServerThread(fakeserver.FakeConfig(ttft_s=0.02, itl_s=0.002))
    yield s
    s.stop()


def cfg(url: str, **kw: object) -> BenchConfig:
    base: dict[str, object] = dict(
        url=url,
        model="fake",
        api="completions",
        scenario="offline",
        requests=40,
        concurrency=[8],
        dataset="synthetic",
        ignore_eos=True,
        seed=1,
        timeout_s=20.0,
        thresholds=Thresholds(max_cpu_fraction=2.5, max_lag_p99_s=0.5),
    )
    base.update(kw)
    return BenchConfig.model_validate(base)


def source(out: int = 16):  # type: ignore[no-untyped-def]
    return lambda n: datasets.synthetic(
        n,
        datasets.LengthDist(kind="fixed", value=12),
        datasets.LengthDist(kind="fixed", value=out),
        1,
    )


async def test_offline_and_chat_against_fake_server(server: ServerThread) -> None:
    for api in ("completions", "chat"):
        r = await scenarios.run(cfg(server.url, api=api), source(16))
        m = r.metrics
        assert (m.requests_ok, m.requests_failed) == (40, 0)
        assert m.output_tokens == 40 * 16 and m.output_tokens_from_usage == 1.0
        assert all(rec.chunks == 16 and rec.input_tokens for rec in r.records)
        assert all(
            rec.ttft_s is not None
            and rec.last_token_s is not None
            and rec.e2e_s is not None
            and rec.ttft_s < rec.last_token_s <= rec.e2e_s
            for rec in r.records
        )
        assert m.ttft.p50 is not None and 0.015 < m.ttft.p50 < 0.5  # injected 20 ms
        assert m.tpot.p50 is not None and 0.001 < m.tpot.p50 < 0.1  # injected 2 ms per tick
        assert m.itl.count == 40 * 15
        assert r.self_check.max_in_flight == 8 and r.self_check.connections_opened == 8
        assert r.verdict.status == "no_sla" and r.valid


async def test_server_scenario_poisson_with_sla(server: ServerThread) -> None:
    r = await scenarios.run(
        cfg(
            server.url,
            scenario="server",
            qps=100.0,
            concurrency=None,
            requests=60,
            sla=BenchSLA(ttft_s=5.0, tpot_s=1.0),
        ),
        source(8),
    )
    assert r.metrics.requests_ok == 60
    assert r.self_check.schedule_lag is not None and r.self_check.offered_rps is not None
    assert r.verdict.status == "pass"
    assert r.metrics.goodput_fraction == 1.0
    tight = cfg(server.url, sla=BenchSLA(ttft_s=0.001, tpot_s=1.0))
    r2 = await scenarios.run(tight, source(4))
    assert r2.verdict.status == "fail" and r2.verdict.reasons[0].startswith("p99 TTFT")


async def test_failures_are_counted_by_kind() -> None:
    s = ServerThread(fakeserver.FakeConfig(fail_every=4))
    try:
        r = await scenarios.run(cfg(s.url, requests=20, sla=BenchSLA(ttft_s=5.0)), source(4))
    finally:
        s.stop()
    assert r.metrics.errors == {"http_500": 5} and r.metrics.requests_ok == 15
    assert r.verdict.status == "fail" and "5 of 20 requests failed" in r.verdict.reasons[0]
    refused = await scenarios.run(cfg("http://127.0.0.1:9", requests=3), source(4))
    assert refused.metrics.errors == {"connect_error": 3}


def test_cli_run_repeats_sweep_merge_and_report(server: ServerThread, tmp_path: Path) -> None:
    runner = CliRunner()
    common = [
        "--url",
        server.url,
        "--model",
        "fake",
        "--max-client-cpu",
        "2.5",
        "--max-lag-ms",
        "500",
        "--input-len",
        "8",
        "--output-len",
        "8",
    ]
    shards = []
    for k in range(2):
        out = tmp_path / f"shard{k}.json"
        res = runner.invoke(
            bench_command,
            [
                *common,
                "--scenario",
                "server",
                "--qps",
                "80",
                "--requests",
                "30",
                "--sla",
                "llama2-70b-server",
                "--out",
                str(out),
            ],
            env={"JOB_COMPLETION_INDEX": str(k), "TOKENSCALE_BENCH_SHARDS": "2"},
        )
        assert res.exit_code == 0, res.output
        assert "verdict: pass" in res.output
        shards.append(out)
    merged, html = tmp_path / "merged.json", tmp_path / "merged.html"
    res = runner.invoke(
        bench_command, ["merge", *map(str, shards), "--out", str(merged), "--html", str(html)]
    )
    assert res.exit_code == 0, res.output
    m = BenchResult.model_validate_json(merged.read_text())
    assert m.shards_merged == 2 and m.metrics.requests_ok == 60
    assert "MLPerf" in html.read_text() and "<svg" in html.read_text()

    sweep = tmp_path / "sweep.json"
    res = runner.invoke(
        bench_command,
        [
            *common,
            "--scenario",
            "sweep",
            "--concurrency",
            "1,4",
            "--requests",
            "12",
            "--out",
            str(sweep),
            "--html",
            str(tmp_path / "sweep.html"),
        ],
    )
    assert res.exit_code == 0, res.output
    sw = BenchResult.model_validate_json(sweep.read_text())
    assert sw.sweep is not None and [p.concurrency for p in sw.sweep] == [1, 4]
    assert "Throughput vs concurrency" in (tmp_path / "sweep.html").read_text()

    reps = tmp_path / "reps.json"
    res = runner.invoke(
        bench_command,
        [
            *common,
            "--scenario",
            "offline",
            "--concurrency",
            "4",
            "--requests",
            "12",
            "--repeats",
            "3",
            "--stability-margin",
            "10",
            "--out",
            str(reps),
        ],
    )
    assert res.exit_code == 0, res.output
    rp = BenchResult.model_validate_json(reps.read_text())
    assert rp.repeats is not None and rp.repeats.runs == 3 and rp.stable and len(rp.runs) == 3

    tagged = []
    for n in (1, 2):
        p = tmp_path / f"r{n}.json"
        p.write_text(
            m.model_copy(
                update={"config": m.config.model_copy(update={"replicas": n})}
            ).model_dump_json()
        )
        tagged.append(str(p))
    res = runner.invoke(bench_command, ["scaling", *tagged, "--html", str(tmp_path / "s.html")])
    assert res.exit_code == 0, res.output
    assert "efficiency 50.0%" in res.output
    assert "Throughput vs replicas" in (tmp_path / "s.html").read_text()


def test_cli_usage_errors(server: ServerThread) -> None:
    runner = CliRunner()
    res = runner.invoke(
        bench_command, ["--url", server.url, "--model", "f", "--scenario", "server"]
    )
    assert res.exit_code == 2 and "needs --qps" in res.output
    res = runner.invoke(
        bench_command, ["--url", server.url, "--model", "f", "--sla", "nope", "--qps", "1"]
    )
    assert res.exit_code == 2 and "known" in res.output
    res = runner.invoke(
        bench_command,
        [
            "--url",
            server.url,
            "--scenario",
            "interactive",
            "--qps",
            "5",
            "--requests",
            "5",
            "--output-len",
            "4",
            "--input-len",
            "4",
            "--max-client-cpu",
            "2.5",
            "--max-lag-ms",
            "500",
            "--sla",
            "llama2-70b-server",
            "--check",
        ],
    )
    # model auto-detected from /v1/models; interactive swaps in the -interactive preset
    # (pass names the preset; a fail under machine load names the 450 ms interactive limit)
    assert res.exit_code in (0, 1), res.output
    assert "llama2-70b-interactive" in res.output or "> 450 ms" in res.output, res.output


def test_report_escapes_untrusted_text(server: ServerThread) -> None:
    r = asyncio.run(scenarios.run(cfg(server.url, requests=5), source(4)))
    evil = r.model_copy(
        update={"config": r.config.model_copy(update={"model": "<script>x</script>"})}
    )
    html = report.render(evil)
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    data = json.loads(evil.model_dump_json())
    assert set(r.summary().model_dump()) >= {"tokens_per_s", "ttft_p99_s", "verdict", "valid"}
    assert data["schema_version"].startswith("tokenscale.dev/")


def test_progress_line_and_help() -> None:
    import time

    from tokenscale.bench.progress import Progress

    line = Progress("server", 10, lambda: (5, 4, 1, 512), time.perf_counter() - 2.0).line()
    assert "server" in line and "4/10 done" in line and "1 in flight" in line and "tok/s" in line
    res = CliRunner().invoke(bench_command, ["--help"])
    assert res.exit_code == 0 and "--shard-index" in res.output and "merge" in res.output


def test_cli_trace_has_every_chunk(server: ServerThread, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    res = CliRunner().invoke(
        bench_command,
        [
            "--url",
            server.url,
            "--model",
            "fake",
            "--scenario",
            "offline",
            "--requests",
            "6",
            "--output-len",
            "5",
            "--input-len",
            "3",
            "--max-client-cpu",
            "2.5",
            "--trace",
            str(trace),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [ln["i"] for ln in lines] == list(range(6))
    assert all(len(ln["chunks_ms"]) == 5 and ln["error"] is None for ln in lines)
    assert all(ln["chunks_ms"] == sorted(ln["chunks_ms"]) for ln in lines)

"""P3: streamed requests/s and tokens/s that ONE client core drives against a fast fake server.

Why this harness measures from the outside: every tool reports its own throughput differently
(and some include start-up), so the fake server counts completed streams and tokens itself
(``GET /stats``) and the harness samples the client's process-tree CPU time from /proc. After a
warm-up it takes a fixed window and reports, per client, the server-side request and token
rates and the CPU the client burned in that window; then it stops the client. The server is
pinned to core 0 and every client to core 1 (``taskset``), so "per core" means per core.

The fake server is a small Go program (embedded below, built once into ~/.cache) so that the
server, not the client, has headroom; without Go it falls back to
``tokenscale.bench.fakeserver``. 128-token streamed completions, one write per token.

Clients: tokenscale (raw asyncio HTTP/1.1 + ``bench/sse.py``'s ``SSEStream``), the issue's
"plain client" baselines on aiohttp and httpx (line iteration + ``json.loads`` per event),
``aiohttp-sse`` (aiohttp's transport feeding ``content.iter_any()`` into the same ``SSEStream``:
plain-aiohttp -> aiohttp-sse is the gain of the SSE strategy, aiohttp-sse -> tokenscale the gain
of the raw transport), and, when installed in their own venvs under ~/.cache/tokenscale-peers,
``vllm bench serve``, guidellm and inference-perf. A peer that cannot be installed or run records
why instead of a number. With ``--rounds N`` every client runs N times, the order reversed every
other round (so drifting machine load does not favour one client); the median round is reported.

    .venv/bin/python benchmarks/loadgen_per_core.py [--window 10] [--rounds 3] \
        [--only tokenscale,aiohttp-sse]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "loadgen-per-core.json"
CACHE = Path.home() / ".cache" / "tokenscale-bench"
PEERS = Path.home() / ".cache" / "tokenscale-peers"
PORT = 8791
URL = f"http://127.0.0.1:{PORT}"
TOKENS = 128
CONCURRENCY = 256
GO_FALLBACKS = ("/usr/local/go/bin/go",)
SERVER_CORE, CLIENT_CORE = "0", "1"

GO_SERVER = r"""
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync/atomic"
)

var maxTokRe = regexp.MustCompile(`"max_tokens" ?: ?(\d+)`)
var completed, tokens atomic.Int64

func frame(p string) []byte { return []byte("data: " + p + "\n\n") }

const hdr = `"created":0,"model":"fake","choices":[{"index":0,`
const tail = `"logprobs":null,"finish_reason":null}]}`

var tokCompl = frame(`{"id":"cmpl-fake","object":"text_completion",` + hdr +
	`"text":" tok",` + tail)
var tokChat = frame(`{"id":"chatcmpl-fake","object":"chat.completion.chunk",` + hdr +
	`"delta":{"content":" tok"},` + tail)
var roleChat = frame(`{"id":"chatcmpl-fake","object":"chat.completion.chunk",` + hdr +
	`"delta":{"role":"assistant","content":""},` + tail)

const usageFmt = `{"id":"fake","object":"chunk","created":0,"model":"fake","choices":[],` +
	`"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`
var done = frame("[DONE]")

func main() {
	addr := flag.String("addr", "127.0.0.1:8791", "listen address (loopback only)")
	def := flag.Int("tokens", 128, "tokens when max_tokens is absent")
	flag.Parse()
	http.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"completed":%d,"tokens":%d}`, completed.Load(), tokens.Load())
	})
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {})
	http.HandleFunc("/v1/models", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"object":"list","data":[{"id":"fake","object":"model",`+
			`"owned_by":"fake","max_model_len":8192}]}`)
	})
	h := func(chat bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			n := *def
			if m := maxTokRe.FindSubmatch(body); m != nil {
				n, _ = strconv.Atoi(string(m[1]))
			}
			if n < 1 {
				n = 1
			}
			prompt := bytes.Count(body, []byte(" ")) + 1
			stream := bytes.Contains(body, []byte(`"stream":true`)) ||
				bytes.Contains(body, []byte(`"stream": true`))
			if !stream {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"id":"x","object":"text_completion","created":0,"model":"fake",`+
					`"choices":[{"index":0,"text":"x","finish_reason":"length"}],`+
					`"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
					prompt, n, prompt+n)
				completed.Add(1)
				tokens.Add(int64(n))
				return
			}
			fl := w.(http.Flusher)
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			tok := tokCompl
			if chat {
				w.Write(roleChat)
				fl.Flush()
				tok = tokChat
			}
			for i := 0; i < n; i++ {
				if _, err := w.Write(tok); err != nil {
					return // client gone: not a completed request
				}
				fl.Flush()
			}
			if r.Context().Err() != nil {
				return
			}
			fmt.Fprintf(w, "data: "+usageFmt+"\n\n", prompt, n, prompt+n)
			w.Write(done)
			completed.Add(1)
			tokens.Add(int64(n))
		}
	}
	http.HandleFunc("/v1/completions", h(false))
	http.HandleFunc("/v1/chat/completions", h(true))
	fmt.Println("listening on", *addr)
	if err := http.ListenAndServe(*addr, nil); err != nil {
		panic(err)
	}
}
"""

# The "plain asyncio client" baselines: a typical streaming loop (line iteration +
# json.loads per event), closed loop at CONCURRENCY. Same shape on aiohttp and on httpx.
PLAIN_CLIENT = r"""
import asyncio, json, sys
LIB, URL, CONC, TOKENS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
BODY = {"model": "fake", "prompt": "hello " * 16, "max_tokens": TOKENS, "stream": True,
        "ignore_eos": True, "stream_options": {"include_usage": True}}

def handle(line, st):
    if line.startswith("data: ") and line[6:] != "[DONE]":
        obj = json.loads(line[6:])
        if obj.get("choices") and obj["choices"][0].get("text"):
            st[0] += 1

async def main():
    if LIB == "aiohttp":
        import aiohttp
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def worker():
                while True:
                    st = [0]
                    async with s.post(URL + "/v1/completions", json=BODY) as r:
                        async for raw in r.content:
                            handle(raw.decode().strip(), st)
            await asyncio.gather(*[worker() for _ in range(CONC)])
    else:
        import httpx
        limits = httpx.Limits(max_connections=CONC, max_keepalive_connections=CONC)
        async with httpx.AsyncClient(limits=limits, timeout=600) as c:
            async def worker():
                while True:
                    st = [0]
                    async with c.stream("POST", URL + "/v1/completions", json=BODY) as r:
                        async for line in r.aiter_lines():
                            handle(line, st)
            await asyncio.gather(*[worker() for _ in range(CONC)])

asyncio.run(main())
"""

# aiohttp's transport with tokenscale's SSE parser, otherwise the plain-aiohttp loop (same
# ``json=BODY``): the one variable against plain-aiohttp is the per-event work, the one variable
# against tokenscale is the HTTP transport. A stream with the wrong token count ends the client,
# which the harness records (``note``) instead of a rate.
AIOHTTP_SSE_CLIENT = r"""
import asyncio, sys, time
import aiohttp
from tokenscale.bench.sse import SSEStream
URL, CONC, TOKENS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
BODY = {"model": "fake", "prompt": "hello " * 16, "max_tokens": TOKENS, "stream": True,
        "ignore_eos": True, "stream_options": {"include_usage": True}}

async def main():
    clock = time.perf_counter
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def worker():
            while True:
                stream = SSEStream()
                async with s.post(URL + "/v1/completions", json=BODY) as r:
                    async for data in r.content.iter_any():
                        stream.feed(data, clock())
                stream.finish(clock())
                if len(stream.arrivals) != TOKENS or not stream.done:
                    sys.exit(f"bad stream: {len(stream.arrivals)} token events, done={stream.done}")
        await asyncio.gather(*[worker() for _ in range(CONC)])

asyncio.run(main())
"""


DIAGNOSTIC = ("aiohttp-sse",)
"""Rows that take tokenscale apart rather than compare it with another tool."""


def get_stats() -> tuple[int, int]:
    with urllib.request.urlopen(URL + "/stats", timeout=5) as resp:  # loopback only
        data = json.loads(resp.read())
    return int(data["completed"]), int(data["tokens"])


def tree_cpu_seconds(root_pid: int) -> float:
    """utime+stime (+ reaped children) of a process and all its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def measure(
    name: str,
    argv: list[str],
    *,
    warmup: int,
    window: float,
    env: dict[str, str] | None = None,
    version: str | None = None,
    startup_timeout: float = 240.0,
) -> dict[str, Any]:
    """Run one client pinned to the client core; measure a steady-state window from outside."""
    fd, log_name = tempfile.mkstemp(prefix=f"p3-{name}-", suffix=".log")
    log = os.fdopen(fd, "wb")
    cmd = ["taskset", "-c", CLIENT_CORE, *argv]
    print(f"[{name}] {' '.join(argv)[:200]}", file=sys.stderr)
    time.sleep(1.0)  # let streams of the previous client drain
    base, _ = get_stats()
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            done, _ = get_stats()
            if done - base >= warmup:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_name).read_text(errors="replace")[-1500:]
                return {
                    "error": f"client did not complete {warmup} requests "
                    f"(exit {proc.poll()}): {tail.strip()}",
                    "command": " ".join(cmd),
                }
            time.sleep(0.1)
        c0, t0 = get_stats(), time.perf_counter()
        cpu0 = tree_cpu_seconds(proc.pid)
        time.sleep(window)
        cpu1 = tree_cpu_seconds(proc.pid)
        c1, t1 = get_stats(), time.perf_counter()
        alive = proc.poll() is None
    finally:
        kill_tree(proc)
        log.close()
    wall = t1 - t0
    reqs, toks, cpu = c1[0] - c0[0], c1[1] - c0[1], cpu1 - cpu0
    out: dict[str, Any] = {
        "tokens_per_s": round(toks / wall, 1),
        "requests_per_s": round(reqs / wall, 1),
        "cpu_seconds": round(cpu, 3),
        "window_seconds": round(wall, 3),
        "cpu_fraction": round(cpu / wall, 3),
        "requests_per_cpu_second": round(reqs / cpu, 1) if cpu > 0 else None,
        "tokens_per_cpu_second": round(toks / cpu, 1) if cpu > 0 else None,
        "version": version,
        "command": " ".join(cmd),
    }
    if not alive:
        out["note"] = "client exited before the window ended; rates cover its run only"
    elif cpu / wall < 0.8:
        out["note"] = (
            "client used < 80 % of its core: the fake server was the limit, so requests_per_s "
            "is a lower bound and requests_per_cpu_second the capacity estimate"
        )
    print(
        f"[{name}] {out['requests_per_s']} req/s, {out['tokens_per_s']} tok/s, "
        f"cpu {out['cpu_fraction']:.0%}, {out['requests_per_cpu_second']} req/cpu-s",
        file=sys.stderr,
    )
    return out


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    go = shutil.which("go") or next((g for g in GO_FALLBACKS if Path(g).exists()), None)
    digest = hashlib.sha256(GO_SERVER.encode()).hexdigest()[:12]
    binary = CACHE / f"fakesrv-{digest}"
    if go and not binary.exists():
        src = CACHE / "fakesrv-src"
        src.mkdir(parents=True, exist_ok=True)
        (src / "main.go").write_text(GO_SERVER)
        (src / "go.mod").write_text("module fakesrv\n\ngo 1.21\n")
        subprocess.run([go, "build", "-o", str(binary), "."], cwd=src, check=True)
    if binary.exists():
        argv = [str(binary), "-addr", f"127.0.0.1:{PORT}", "-tokens", str(TOKENS)]
        kind, env = "go net/http fake server (GOMAXPROCS=1)", {"GOMAXPROCS": "1"}
    else:
        argv = [sys.executable, "-m", "tokenscale.bench.fakeserver", "--port", str(PORT)]
        kind, env = "tokenscale.bench.fakeserver (python)", {}
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *argv],
        start_new_session=True,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            get_stats()
            return proc, kind
        except OSError:
            time.sleep(0.1)
    kill_tree(proc)
    raise RuntimeError("fake server did not start")


MAKE_TOKENIZER = r"""
import json, random, sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
words = ("the of and to in is you that it he was for on are as with his they at be this have "
         "from or one had by word but not what all were we when your can said there use an each "
         "which she do how their if will up other about out many then them these so some her "
         "would make like him into time has look two more write go see number no way could people "
         "my than first water been call who oil its now find long down day did get come made"
         ).split()
rng = random.Random(0)
corpus = [" ".join(rng.choices(words, k=64)) for _ in range(2000)]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(corpus, trainers.BpeTrainer(
    vocab_size=2000, special_tokens=["<s>", "</s>", "<unk>", "<pad>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok.save(str(out / "tokenizer.json"))
(out / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192, "unk_token": "<unk>",
    "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
    "clean_up_tokenization_spaces": False}))
(out / "config.json").write_text(json.dumps({"model_type": "llama",
    "vocab_size": tok.get_vocab_size(), "max_position_embeddings": 8192,
    "architectures": ["LlamaForCausalLM"]}))
"""


def tokenizer_dir() -> Path:
    """A tiny local byte-level BPE tokenizer: every peer insists on a tokenizer to build prompts
    and there is no hub access here. Trained on first use with a peer venv's `tokenizers`."""
    path = PEERS / "tokenizer-bpe"
    if not (path / "tokenizer.json").exists():
        for venv in ("inference-perf", "vllm", "guidellm"):
            python = peer_python(venv)
            if python is not None:
                res = subprocess.run([str(python), "-c", MAKE_TOKENIZER, str(path)], check=False)
                if res.returncode == 0:
                    break
    return path


def peer_python(venv: str) -> Path | None:
    py = PEERS / venv / "bin" / "python"
    return py if py.exists() else None


def pkg_version(python: Path | str, dist: str) -> str | None:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    res = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return res.stdout.strip() or None if res.returncode == 0 else None


def run_all(only: set[str] | None, window: float, warmup: int, rounds: int) -> dict[str, Any]:
    server, kind = start_server()
    py = sys.executable
    results: dict[str, Any] = {}
    try:
        clients: dict[str, Callable[[], dict[str, Any]]] = {
            "tokenscale": lambda: measure(
                "tokenscale",
                [
                    py,
                    "-c",
                    "from tokenscale.bench.cli import bench_command; bench_command()",
                    "--url",
                    URL,
                    "--model",
                    "fake",
                    "--scenario",
                    "offline",
                    "--concurrency",
                    str(CONCURRENCY),
                    "--duration",
                    "600",
                    "--input-len",
                    "16",
                    "--output-len",
                    str(TOKENS),
                    "--no-progress",
                    "--max-client-cpu",
                    "1.01",
                ],
                warmup=warmup,
                window=window,
                version=pkg_version(py, "tokenscale"),
            ),
            "plain-aiohttp": lambda: measure(
                "plain-aiohttp",
                [py, "-c", PLAIN_CLIENT, "aiohttp", URL, str(CONCURRENCY), str(TOKENS)],
                warmup=warmup,
                window=window,
                version=pkg_version(py, "aiohttp"),
            ),
            "aiohttp-sse": lambda: measure(
                "aiohttp-sse",
                [py, "-c", AIOHTTP_SSE_CLIENT, URL, str(CONCURRENCY), str(TOKENS)],
                warmup=warmup,
                window=window,
                version=pkg_version(py, "aiohttp"),
            ),
            "plain-httpx": lambda: measure(
                "plain-httpx",
                [py, "-c", PLAIN_CLIENT, "httpx", URL, "32", str(TOKENS)],
                warmup=max(20, warmup // 10),
                window=window,
                version=pkg_version(py, "httpx"),
            ),
        }
        clients.update(peer_clients(warmup, window))
        chosen = [name for name in clients if not only or name in only]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
        for r in range(rounds):
            for name in chosen if r % 2 == 0 else reversed(chosen):
                try:
                    runs[name].append(clients[name]())
                except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
                    runs[name].append({"error": f"{type(exc).__name__}: {exc}"})
        results = {name: median_round(rs) for name, rs in runs.items()}
    finally:
        kill_tree(server)
    return {"server": kind, "clients": results}


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests per CPU-second, plus every round's figure and when it
    was measured; the first error if no round produced a figure."""
    ok = [r for r in runs if isinstance(r.get("requests_per_cpu_second"), (int, float))]
    if not ok:
        return {**runs[0], "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ok.sort(key=lambda r: r["requests_per_cpu_second"])
    out = dict(ok[(len(ok) - 1) // 2])
    out["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if len(runs) > 1:
        out["rounds_requests_per_cpu_second"] = [r.get("requests_per_cpu_second") for r in runs]
    return out


def _ip_config(workdir: Path) -> Path:
    """inference-perf: one worker (one core), concurrent load, random 16-in/128-out prompts."""
    fixed = "{{min: {n}, max: {n}, mean: {n}, std_dev: 0, type: fixed}}"
    cfg = workdir / "inference-perf.yaml"
    cfg.write_text(
        "api: {type: completion, streaming: true}\n"
        f"server: {{type: vllm, model_name: fake, base_url: '{URL}', ignore_eos: true}}\n"
        f"tokenizer: {{pretrained_model_name_or_path: '{tokenizer_dir()}'}}\n"
        "data:\n  type: random\n"
        f"  input_distribution: {fixed.format(n=16)}\n"
        f"  output_distribution: {fixed.format(n=TOKENS)}\n"
        f"load:\n  type: concurrent\n  num_workers: 1\n  worker_max_concurrency: {CONCURRENCY}\n"
        f"  stages: [{{num_requests: 10000000, concurrency_level: {CONCURRENCY}}}]\n"
        f"storage: {{local_storage: {{path: '{workdir / 'reports'}'}}}}\n"
    )
    return cfg


def peer_clients(warmup: int, window: float) -> dict[str, Callable[[], dict[str, Any]]]:
    """Peers from their own venvs (PEERS/<name>); a missing one explains itself instead."""
    out: dict[str, Callable[[], dict[str, Any]]] = {}
    work = Path(tempfile.mkdtemp(prefix="p3-peers-"))
    tok = str(tokenizer_dir())
    specs: dict[str, tuple[str, str, list[str], dict[str, str]]] = {
        "vllm-bench-serve": (
            "vllm",
            "vllm",
            [
                "-m",
                "vllm.entrypoints.cli.main",
                "bench",
                "serve",
                "--backend",
                "openai",
                "--base-url",
                URL,
                "--endpoint",
                "/v1/completions",
                "--model",
                "fake",
                "--tokenizer",
                tok,
                "--dataset-name",
                "random",
                "--random-input-len",
                "16",
                "--random-output-len",
                str(TOKENS),
                "--ignore-eos",
                "--num-prompts",
                "1000000",
                "--request-rate",
                "inf",
                "--max-concurrency",
                str(CONCURRENCY),
                "--disable-tqdm",
            ],
            {"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"},
        ),
        "guidellm": (
            "guidellm",
            "guidellm",
            [
                "-m",
                "guidellm",
                "run",
                "--backend",
                f"kind=openai_http,target={URL},model=fake,request_format=/v1/completions",
                "--profile",
                f"kind=concurrent,streams={CONCURRENCY}",
                "--constraint",
                "kind=max_duration,seconds=600",
                "--tokenizer",
                f"kind=huggingface_auto,model={tok}",
                "--data",
                f"kind=synthetic_text,prompt_tokens=16,output_tokens={TOKENS}",
                "--output",
                "kind=console",
                "--disable-progress",
            ],
            {"HF_HUB_OFFLINE": "1"},
        ),
        "inference-perf": (
            "inference-perf",
            "inference-perf",
            ["-m", "inference_perf.main", "-c", str(_ip_config(work))],
            {"HF_HUB_OFFLINE": "1"},
        ),
    }
    for name, (venv, dist, args, env) in specs.items():
        python = peer_python(venv)
        version = pkg_version(python, dist) if python else None
        if python is None or version is None:
            out[name] = lambda v=venv, d=dist: {
                "error": f"not installed: {d} missing from venv {PEERS / v} "
                "(see docs/benchmarks.md for the install commands)"
            }
            continue
        if not tokenizer_dir().joinpath("tokenizer.json").exists():
            out[name] = lambda: {"error": f"no local tokenizer at {tokenizer_dir()}"}
            continue
        out[name] = lambda n=name, py=python, a=args, e=env, v=version: measure(
            n, [str(py), *a], warmup=warmup, window=window, env=e, version=v
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--window", type=float, default=10.0, help="measurement window (s)")
    ap.add_argument("--warmup", type=int, default=300, help="requests before the window opens")
    ap.add_argument("--rounds", type=int, default=1, help="runs per client; median reported")
    ap.add_argument("--only", default=None, help="comma list of client names")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    load_before = os.getloadavg()
    data = run_all(only, args.window, args.warmup, max(1, args.rounds))
    previous: dict[str, Any] = {}
    if args.out.exists() and only:
        # Clients not rerun keep their figures from an earlier run; each says when it was
        # measured, so a ratio across runs is visible as one.
        old = json.loads(args.out.read_text())
        previous = {
            name: {"measured_utc": old.get("date_utc"), **figures, "from_earlier_run": True}
            for name, figures in old.get("clients", {}).items()
        }
    fresh = {k: v.get("requests_per_cpu_second") for k, v in data["clients"].items()}
    data["clients"] = {**previous, **data["clients"]}
    # Ratios only between clients of this run: per-CPU cost depends on the machine's load (a
    # client held below its core reads several events per read and looks cheaper).
    ours = fresh.get("tokenscale")
    peers = {
        k: v
        for k, v in fresh.items()
        if k not in ("tokenscale", *DIAGNOSTIC) and isinstance(v, (int, float))
    }
    report = {
        "benchmark": "P3 loadgen per core",
        "what": f"{TOKENS}-token streamed /v1/completions from a fast fake server; one client "
        f"core (taskset -c {CLIENT_CORE}), server on core {SERVER_CORE}; closed loop at "
        f"{CONCURRENCY} in flight; rates counted by the server over a {args.window:g} s window "
        f"after {args.warmup} warm-up requests; cpu_seconds = client process-tree CPU in the "
        "window. requests_per_cpu_second is the per-core capacity figure; requests_per_s is "
        "what the client achieved on a shared machine.",
        "command": f".venv/bin/python benchmarks/loadgen_per_core.py --window {args.window:g}"
        + (f" --warmup {args.warmup}" if args.warmup != 300 else "")
        + (f" --rounds {args.rounds}" if args.rounds != 1 else "")
        + (f" --only {args.only}" if args.only else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **data,
    }
    if ours and peers:
        best = max(peers, key=lambda k: peers[k] or 0)
        report["tokenscale_vs_best_peer_per_cpu"] = {
            "best_peer": best,
            "ratio": round(ours / peers[best], 2),
        }
    sse, plain = fresh.get("aiohttp-sse"), fresh.get("plain-aiohttp")
    if ours and isinstance(sse, (int, float)) and isinstance(plain, (int, float)) and sse * plain:
        report["gain_decomposition_per_cpu"] = {
            "sse_strategy": round(sse / plain, 2),
            "raw_transport": round(ours / sse, 2),
            "note": "plain-aiohttp -> aiohttp-sse changes only the per-event work (line "
            "iteration + json.loads -> bench/sse.py SSEStream); aiohttp-sse -> tokenscale changes "
            "only the HTTP transport (aiohttp -> bench/httpclient.py). Same run, same server.",
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

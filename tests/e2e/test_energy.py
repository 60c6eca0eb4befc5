"""Tokens per joule end to end: simulated MI300X and MI355X engines serve the AMD Device Metrics
Exporter's power and energy series (as the exporter DaemonSet would, one endpoint per simulated
node, labelled with the pod); the operator, configured to scrape them, shows tokens/J in
``kubectl get tsvc`` and the benchmark records it. Both agree with the simulator's own energy
counter, read by this test straight from the engines, within 2 %.

Writes ``benchmarks/results/energy-e2e.json`` with the figures it compared.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import apply, condition, get, pods_of, wait_for
from tests.e2e.operator_proc import OPERATOR_CONFIG, OperatorProcess
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
EXPORTER_PORT = 19400
GPUS = {"mi300x": ("MI300X", 8.0), "mi355x": ("MI355X", 30.0)}  # pool -> (gpu, QPS)
LOAD_SECONDS = 80


@pytest.fixture
def energy_operator(cluster: Cluster, operator: OperatorProcess, namespace: str) -> Iterator[None]:
    """The session operator steps aside for one that reads energy from the engine pods."""
    operator.stop()
    cfg = yaml.safe_load(OPERATOR_CONFIG.read_text()) or {}
    cfg["energy"] = {
        "type": "scrape",
        "windowSeconds": 40,
        "scrape": {
            "namespace": namespace,
            "selector": {"tokenscale.dev/role": "engine"},
            "port": EXPORTER_PORT,
        },
    }
    path = cluster.work_dir / "operator-config-energy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = OperatorProcess(cluster, config=path, name="operator-energy").start()
    try:
        yield
    finally:
        proc.stop()
        print(f"\noperator-energy log (tail):\n{proc.tail(30)}")
        operator.start()


def _service(pool: str, gpu: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": f"sim-{pool}"},
        "spec": {
            "model": {"name": "llama-2-70b", "architecture": "llama-2-70b",
                      "source": {"huggingFace": "meta-llama/Llama-2-70b-chat-hf"},
                      "dtype": "fp8", "maxModelLen": 4096},
            "engine": {"mode": "simulated", "args": [
                "--exporter-port", str(EXPORTER_PORT), "--exporter-namespace", namespace]},
            "pools": [{"name": pool, "gpu": gpu, "minReplicas": 1, "maxReplicas": 1}],
            "scaling": {"mode": "builtin", "targetPerReplica": 100000, "windowSeconds": 10},
            "sla": {"preset": "llama2-70b-server"},
        },
    }  # fmt: skip


def _bench(pool: str, qps: float) -> dict[str, Any]:
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceBenchmark",
        "metadata": {"name": f"load-{pool}"},
        "spec": {
            "target": {"service": f"sim-{pool}"},
            "scenario": "server",
            "load": {"qps": qps, "durationSeconds": LOAD_SECONDS},
            "dataset": {"input": {"kind": "fixed", "mean": 64},
                        "output": {"kind": "fixed", "mean": 128}},
            "sla": {"preset": "llama2-70b-server"},
        },
    }  # fmt: skip


def _read(ip: str) -> tuple[float, float]:
    """(generation tokens, joules) now, from the engine's /metrics and its exporter."""
    with urllib.request.urlopen(f"http://{ip}:8000/metrics", timeout=5) as r:
        engine = r.read().decode()
    with urllib.request.urlopen(f"http://{ip}:{EXPORTER_PORT}/metrics", timeout=5) as r:
        exporter = r.read().decode()
    tokens = sum(
        s.value
        for f in text_string_to_metric_families(engine)
        for s in f.samples
        if s.name == "vllm:generation_tokens_total"
    )
    microjoules = sum(
        s.value
        for f in text_string_to_metric_families(exporter)
        for s in f.samples
        if s.name == "gpu_energy_consumed"
    )
    return tokens, microjoules / 1e6


class Sampler(threading.Thread):
    """Reads one engine's counters every 0.25 s: the simulator's own tokens/J over any window."""

    def __init__(self, ip: str) -> None:
        super().__init__(daemon=True)
        self.ip = ip
        self.samples: list[tuple[float, float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                tokens, joules = _read(self.ip)
                self.samples.append((time.time(), tokens, joules))
            except OSError:
                pass
            self.stop.wait(0.25)

    def tokens_per_joule(self, start: float, end: float, busy_only: bool = False) -> float:
        """Tokens per joule between the readings in ``[start, end]``; with ``busy_only``,
        from the last reading before tokens started to grow to the first after they stopped
        (the load's own window inside a Job's, which includes pod start-up and publishing)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if busy_only:
            grew = [i for i in range(1, len(inside)) if inside[i][1] > inside[i - 1][1]]
            assert grew, inside[:3]
            inside = inside[grew[0] - 1 : grew[-1] + 1]
        assert len(inside) >= 2, (start, end, self.samples[:3])
        (_, t0, j0), (_, t1, j1) = inside[0], inside[-1]
        return (t1 - t0) / (j1 - j0)


def _ready(cluster: Cluster, namespace: str, name: str) -> bool:
    return condition(get(cluster, "tsvc", name, "-n", namespace), "Ready").get("status") == "True"


def test_tokens_per_joule_in_service_and_benchmark_status_agree_with_the_simulator(
    cluster: Cluster, energy_operator: None, namespace: str
) -> None:
    for pool, (gpu, _) in GPUS.items():
        apply(cluster, namespace, _service(pool, gpu, namespace))
    for pool in GPUS:
        name = f"sim-{pool}"
        wait_for(partial(_ready, cluster, namespace, name), timeout=150, what=f"{name} Ready")
    samplers = {}
    for pool in GPUS:
        (pod,) = pods_of(cluster, namespace, f"sim-{pool}")
        samplers[pool] = Sampler(pod["status"]["podIP"])
        samplers[pool].start()
    for pool, (_, qps) in GPUS.items():
        apply(cluster, namespace, _bench(pool, qps))
    # While the load runs: the service's tokens/J (40 s window, wholly inside the load once it
    # has run 50 s) against the simulator's own over the same 40 s, read from the engine's
    # counters by this test. observedAt has whole seconds: a 40 s window keeps that edge small.
    time.sleep(50)
    seen: dict[str, dict[str, float]] = {}
    for pool in GPUS:

        def service_energy(p: str = pool) -> dict[str, Any] | None:
            svc = get(cluster, "tsvc", f"sim-{p}", "-n", namespace) or {}
            energy = (svc.get("status") or {}).get("energy") or {}
            window = energy.get("windowSeconds") or 0
            return energy if energy.get("tokensPerJoule") and window >= 35 else None

        energy = wait_for(service_energy, timeout=20, what=f"sim-{pool} energy")
        observed = _epoch(energy["observedAt"])
        time.sleep(1)  # the sampler's next readings
        reference = samplers[pool].tokens_per_joule(observed - energy["windowSeconds"], observed)
        seen[pool] = {"service": energy["tokensPerJoule"], "service_reference": reference,
                      "watts": energy["watts"]}  # fmt: skip
    table = cluster.kubectl("get", "tsvc", "-n", namespace).stdout
    assert "TOK/J" in table.splitlines()[0], table
    for pool in GPUS:
        row = next(line for line in table.splitlines() if line.startswith(f"sim-{pool} "))
        assert any(_float(cell) for cell in row.split()), row

    results: dict[str, Any] = {}
    for pool, (gpu, qps) in GPUS.items():
        done = wait_for(
            partial(_finished, cluster, namespace, f"load-{pool}"),
            timeout=LOAD_SECONDS + 180,
            what=f"load-{pool} finished",
        )
        status = done["status"]
        assert status["phase"] == "Succeeded", status
        bench_energy = status["results"]["energy"]
        assert bench_energy["reason"] == "" and bench_energy["gpus"] == 1, bench_energy
        job = get(cluster, "job", f"load-{pool}-run", "-n", namespace)
        start = _epoch(job["status"]["startTime"])
        end = _epoch(job["status"]["completionTime"])
        reference = samplers[pool].tokens_per_joule(start, end, busy_only=True)
        results[gpu] = {
            "qps": qps,
            "tokens_per_joule": bench_energy["tokensPerJoule"],
            "reference_tokens_per_joule": round(reference, 5),
            "service_tokens_per_joule": seen[pool]["service"],
            "service_reference_tokens_per_joule": round(seen[pool]["service_reference"], 5),
            "avg_watts_per_gpu": bench_energy["avgWattsPerGpu"],
            "peak_watts_per_gpu": bench_energy["peakWattsPerGpu"],
            "verdict": status["verdict"],
        }
    for sampler in samplers.values():
        sampler.stop.set()
    (ROOT / "benchmarks/results/energy-e2e.json").write_text(json.dumps(results, indent=1) + "\n")
    for gpu, row in results.items():
        reference = row["reference_tokens_per_joule"]
        assert row["tokens_per_joule"] == pytest.approx(reference, rel=0.02), (gpu, row)
        assert row["service_tokens_per_joule"] == pytest.approx(
            row["service_reference_tokens_per_joule"], rel=0.02
        ), (gpu, row)
    assert results["MI355X"]["tokens_per_joule"] > results["MI300X"]["tokens_per_joule"]


def _finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    bench = get(cluster, "tsbench", name, "-n", namespace) or {}
    phase = (bench.get("status") or {}).get("phase")
    return dict(bench) if phase in ("Succeeded", "Failed") else None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

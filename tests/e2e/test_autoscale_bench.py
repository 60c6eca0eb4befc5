"""Engines that really run: a simulated MI355X service (vLLM's metrics from tokenscale's
performance model) and a real vLLM-cpu service, both run by the process kubelet. Load comes
from InferenceBenchmarks (Jobs run under their narrow ServiceAccount, reaching the service by
its DNS name); the autoscaler reads vLLM's counters and replicas follow; the benchmark's
verdict lands in its status and in the service's SLAMet condition."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import apply, condition, example, get, wait_condition, wait_for
from tests.e2e.operator_proc import OperatorProcess
from tests.testbed.cluster import Cluster
from tests.testbed.request_job import sleeping_service

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]

#: The report recipes users are given (NOTES.txt, docs/benchmarks.md), by status.report key.
REPORT_RECIPES = {
    "report.html": "kubectl get cm {cm} -o jsonpath='{{.data.report\\.html}}' > report.html",
    "report.html.gz": "kubectl get cm {cm} -o jsonpath='{{.binaryData.report\\.html\\.gz}}'"
    " | base64 -d | gunzip > report.html",
}


def fetch_report_as_documented(cluster: Cluster, namespace: str, report: str, workdir: Path) -> str:
    """Run the documented recipe for ``status.report`` in a shell, as a user would; the text of
    the report.html it writes."""
    for recipe in REPORT_RECIPES.values():
        example = recipe.format(cm="llama2-70b-server-report")
        for doc in ("charts/tokenscale/templates/NOTES.txt", "docs/benchmarks.md"):
            assert example in (ROOT / doc).read_text(), f"{doc} lost the recipe {example}"
    kind, cm, key = report.split("/")
    assert kind == "configmap" and key in REPORT_RECIPES, report
    kubectl = f'"{cluster.bin_dir / "kubectl"}" --kubeconfig="{cluster.kubeconfig}" -n {namespace}'
    script = f'kubectl() {{ {kubectl} "$@"; }}\nset -o pipefail\n'
    script += REPORT_RECIPES[key].format(cm=cm)
    subprocess.run(["bash", "-c", script], cwd=workdir, check=True, timeout=60)
    return (workdir / "report.html").read_text()


def bench(name: str, target: str, qps: float, seconds: int, sla: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceBenchmark",
        "metadata": {"name": name},
        "spec": {
            "target": {"service": target},
            "scenario": "server",
            "load": {"qps": qps, "durationSeconds": seconds},
            "dataset": {
                "input": {"kind": "fixed", "mean": 64},
                "output": {"kind": "fixed", "mean": 128},
            },
            "sla": sla,
        },
    }


def replicas(cluster: Cluster, namespace: str, name: str) -> int:
    obj = get(cluster, "tsvc", name, "-n", namespace) or {}
    return int((obj.get("status") or {}).get("replicas") or 0)


def test_simulated_engines_scale_up_and_down_with_load_and_benchmark_judges_sla(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    doc = example("simulated-llama2-70b.yaml")
    doc["metadata"]["name"] = "sim"
    doc["spec"]["pools"] = [{"name": "mi355x", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": 4}]
    doc["spec"]["scaling"] = {
        "mode": "builtin",
        "targetPerReplica": 1000,
        "windowSeconds": 10,
        "scaleDownStabilizationSeconds": 15,
        "maxScaleDownStep": 4,
    }
    apply(cluster, namespace, doc)
    wait_for(
        lambda: (
            condition(get(cluster, "tsvc", "sim", "-n", namespace), "Ready").get("status") == "True"
        ),
        timeout=120,
        what="simulated service Ready",
    )
    assert replicas(cluster, namespace, "sim") == 1

    # ~20 req/s x 128 output tokens ≈ 2,560 tok/s: needs 3 replicas at 1,000 tok/s each.
    apply(cluster, namespace, bench("load", "sim", 20, 75, {"preset": "llama2-70b-server"}))
    peak = wait_for(
        lambda: (n := replicas(cluster, namespace, "sim")) >= 3 and n,
        timeout=150,
        what="scale-up under load",
    )
    svc = get(cluster, "tsvc", "sim", "-n", namespace)
    assert svc["status"]["metrics"]["tokensPerSecond"] > 1000
    ups = [d for d in svc["status"]["scalingHistory"] if d["toReplicas"] > d["fromReplicas"]]
    assert ups, svc["status"]["scalingHistory"]

    done = wait_for(
        lambda: (
            (b := get(cluster, "tsbench", "load", "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=240,
        what="benchmark finished",
    )
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["verdict"] in ("Pass", "Fail", "Invalid", "Unstable")
    assert status["results"]["tokensPerSecond"] > 1000
    assert status["results"]["ttftMs"]["p99"] is not None
    assert status["report"].startswith("configmap/load-report/")
    html = fetch_report_as_documented(cluster, namespace, status["report"], tmp_path)
    assert html.lstrip().lower().startswith("<!doctype html") and "</html>" in html, html[:200]
    assert "<title>tokenscale bench — server" in html  # this benchmark's report, not any file
    # A report too large for text is gzipped into binaryData: the same recipe for that key,
    # on a ConfigMap stored that way, gives back the same document.
    packed = base64.b64encode(gzip.compress(html.encode())).decode()
    big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big-report"},
           "binaryData": {"report.html.gz": packed}}  # fmt: skip
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(big))
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    report_gz = "configmap/big-report/report.html.gz"
    assert fetch_report_as_documented(cluster, namespace, report_gz, gz_dir) == html
    svc = get(cluster, "tsvc", "sim", "-n", namespace)
    assert svc["status"]["benchmark"]["name"] == "load"
    sla = wait_condition(
        cluster,
        namespace,
        "sim",
        "SLAMet",
        lambda cd: str(cd.get("reason", "")).startswith("Benchmark"),
        timeout=60,
    )
    assert (sla["status"] == "True") == (status["verdict"] == "Pass")

    wait_for(
        lambda: replicas(cluster, namespace, "sim") == 1,
        timeout=180,
        what="scale-down after the load",
    )
    # The load stopped before its Job completed (the pod still published its result); the
    # last step down must come at least the 15 s stabilisation window after the load, so at
    # least 15 s minus that publishing time after the Job's completion.
    job = get(cluster, "job", "load-run", "-n", namespace)
    load_done = _time(job["status"]["completionTime"])
    history = get(cluster, "tsvc", "sim", "-n", namespace)["status"]["scalingHistory"]
    last_down = _time(next(d for d in reversed(history) if d["toReplicas"] == 1)["time"])
    assert (last_down - load_done).total_seconds() >= 8, "scaled down inside the window"
    assert peak >= 3


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.vllm
@pytest.mark.slow
def test_real_vllm_cpu_engine_scales_up_on_generation_tokens(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    vllm_cpu = pytest.importorskip("tests.testbed.vllm_cpu")
    try:
        vllm_cpu.ensure_venv()
        model = vllm_cpu.ensure_tiny_model()
    except Exception as exc:  # the engine's own test reports install errors in detail
        pytest.skip(f"vllm-cpu not installable here: {exc}")
    for obj in vllm_cpu.model_volume_manifests(namespace, model):
        apply(cluster, namespace, obj)
    doc = example("tiny-cpu.yaml")
    doc["spec"]["model"]["source"]["pvc"]["path"] = model.name
    doc["spec"]["scaling"].update(targetPerReplica=40, windowSeconds=10)
    apply(cluster, namespace, doc)
    wait_for(
        lambda: (
            condition(get(cluster, "tsvc", "tiny-cpu", "-n", namespace), "Ready").get("status")
            == "True"
        ),
        timeout=400,
        what="real vLLM-cpu engine Ready",
    )
    apply(
        cluster,
        namespace,
        bench("cpu-load", "tiny-cpu", 4, 90, {"ttftP99Ms": 5000, "tpotP99Ms": 500}),
    )
    wait_for(
        lambda: replicas(cluster, namespace, "tiny-cpu") >= 2,
        timeout=240,
        what="scale-up from vLLM's generation_tokens_total",
    )
    svc = get(cluster, "tsvc", "tiny-cpu", "-n", namespace)
    assert svc["status"]["metrics"]["tokensPerSecond"] > 40
    done = wait_for(
        lambda: (
            (b := get(cluster, "tsbench", "cpu-load", "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=400,
        what="benchmark against the real engine finished",
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["results"]["tokensPerSecond"] > 0


def test_replica_sweep_steps_scale_runs_each_level_and_gives_scale_back(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = example("simulated-llama2-70b.yaml")
    doc["metadata"]["name"] = "sweep-svc"
    doc["spec"]["pools"] = [{"name": "mi355x", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": 4}]
    doc["spec"]["scaling"] = {"mode": "builtin", "targetPerReplica": 100000, "windowSeconds": 10}
    apply(cluster, namespace, doc)
    wait_condition(cluster, namespace, "sweep-svc", "Ready", lambda cd: cd["status"] == "True")
    sweep = example("bench-replica-sweep.yaml")
    sweep["metadata"]["name"] = "sweep"
    sweep["spec"]["target"]["service"] = "sweep-svc"
    # Saturating for 4 simulated MI355X engines, small enough for one bench pod on this machine.
    sweep["spec"]["load"] = {"replicas": [1, 2, 4], "concurrency": 512, "durationSeconds": 15}
    sweep["spec"]["dataset"] = {
        "input": {"kind": "fixed", "mean": 64},
        "output": {"kind": "fixed", "mean": 128},
    }
    apply(cluster, namespace, sweep)

    # While it runs, the benchmark owns /scale: the autoscaler (which at this target would hold
    # 1 replica) reports Held and the replicas follow the levels.
    held = wait_for(
        lambda: (
            (s := get(cluster, "tsvc", "sweep-svc", "-n", namespace))
            and (s["status"].get("scaling") or {}).get("reason") == "Held"
            and replicas(cluster, namespace, "sweep-svc") >= 2
            and s
        ),
        timeout=240,
        what="autoscaler held while the sweep scales the service up",
    )
    assert "benchmark/sweep" in held["status"]["scaling"]["message"]
    done = wait_for(
        lambda: (
            (b := get(cluster, "tsbench", "sweep", "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=480,
        what="replica sweep finished",
    )
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    points = status["sweep"]["points"]
    assert [p["replicas"] for p in points] == [1, 2, 4]
    assert [p["job"] for p in points] == ["sweep-run-r1", "sweep-run-r2", "sweep-run-r4"]
    t = {p["replicas"]: p["tokensPerSecond"] for p in points}
    # A saturating load on more engines gives more tokens/s; the efficiency is what was measured.
    assert t[1] > 0 and t[2] > t[1] and t[4] > t[2], t
    assert status["results"]["scalingEfficiency"] == pytest.approx(t[4] / (4 * t[1]), abs=1e-3)
    assert points[-1]["scalingEfficiency"] == status["results"]["scalingEfficiency"]

    # Scale given back: spec.replicas restored (unset → minReplicas), hold lifted, autoscaler on.
    wait_for(
        lambda: (
            (s := get(cluster, "tsvc", "sweep-svc", "-n", namespace))
            and "tokenscale.dev/scaling-hold" not in (s["metadata"].get("annotations") or {})
            and (s["status"].get("scaling") or {}).get("reason") != "Held"
            and replicas(cluster, namespace, "sweep-svc") == 1
        ),
        timeout=120,
        what="replicas restored and autoscaling resumed",
    )


def test_a_benchmark_wakes_a_service_scaled_to_zero_and_it_idles_back_to_zero(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = sleeping_service("sleepy", 20, windowSeconds=10)
    apply(cluster, namespace, doc)
    asleep = wait_condition(cluster, namespace, "sleepy", "Ready", lambda c: c["status"] == "True")
    assert asleep["reason"] == "ScaledToZero"
    assert replicas(cluster, namespace, "sleepy") == 0

    apply(cluster, namespace, bench("wake", "sleepy", 5, 15, {"preset": "llama2-70b-server"}))
    done = wait_for(
        lambda: (
            (b := get(cluster, "tsbench", "wake", "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=240,
        what="benchmark against a woken service finished",
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["results"]["requests"] > 0 and done["status"]["results"]["errors"] == 0
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "WokeFromZero" in events
    # No demand after the run: back to zero after the grace period (20 s here).
    wait_for(
        lambda: replicas(cluster, namespace, "sleepy") == 0,
        timeout=150,
        what="idle service back to zero",
    )

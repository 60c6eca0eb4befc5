"""The operator's resident memory with one Kubernetes transport against another.

The ``Kube`` facade moved from the client's generated plumbing (``ApiClient.param_serialize`` +
``call_api``) to its public dynamic client (``DynamicClient.request``). Both variants run on
one test bed with the same S InferenceServices: each variant is the operator package of a
source tree (this checkout, and ``--before COMMIT`` exported with ``git archive``), put first on
``PYTHONPATH`` of an otherwise identical ``tokenscale run``. Rounds alternate the order, so
neither variant always runs on a warmer API server. Per run: start, wait until every service
is Ready again, let it settle, then sample VmRSS once a second.

A second, smaller number isolates the client: a bare interpreter that imports Kopf and the
facade and makes one ``Kube().list`` call (which, for the dynamic client, includes its
discovery).

    python -m benchmarks.operator_rss --services 100 --before b0de403
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.e2e.operator_proc import OperatorProcess, install_crds_and_rbac
from tests.testbed.cluster import Cluster
from tests.testbed.nodes import scale_pools

from benchmarks.procstat import rss_mb
from benchmarks.reconcile_scale import create_namespace, manifest, ready_services, wait_count
from tokenscale.k8s.kube import Kube

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "operator-rss.json"

PROBE = """
import os, sys
import kopf  # noqa: F401 - Kopf imports the kubernetes client when it is installed
try:
    from tokenscale.k8s.kube import Kube
except ImportError:  # a commit from before the k8s/ layer
    from tokenscale.controller.kube import Kube
Kube().list("Pod", "default")
for line in open(f"/proc/{os.getpid()}/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024.0)
"""


@contextmanager
def exported(commit: str) -> Iterator[Path]:
    """``operator/`` of ``commit`` in a temporary directory (the package dir for PYTHONPATH)."""
    with tempfile.TemporaryDirectory(prefix="tokenscale-before-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "operator"],
            check=True,
            capture_output=True,
        ).stdout
        path = Path(tmp) / "src.tar"
        path.write_bytes(archive)
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / "operator"


@contextmanager
def pythonpath(source: Path) -> Iterator[None]:
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(source) + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def transport_of(source: Path) -> str:
    text = (source / "tokenscale" / "controller" / "kube.py").read_text()
    return "dynamic-client" if "DynamicClient" in text else "apiclient-call_api"


def operator_run(
    cluster: Cluster, source: Path, services: int, settle: float, window: float, name: str
) -> dict[str, Any]:
    with pythonpath(source):
        start = time.monotonic()
        operator = OperatorProcess(cluster, name=name).start()
        healthy = time.monotonic() - start
    assert operator.proc is not None
    try:
        admin = Kube(cluster.api_client())
        wait_count(lambda: ready_services(admin, "fleet"), services, 1800)
        time.sleep(settle)
        samples = []
        for _ in range(int(window)):
            samples.append(rss_mb(operator.proc.pid))
            time.sleep(1)
    finally:
        operator.stop()
    return {
        "seconds_to_healthy": round(healthy, 2),
        "rss_mb_median": round(statistics.median(samples), 1),
        "rss_mb_max": round(max(samples), 1),
    }


def probe(cluster: Cluster, source: Path) -> float:
    """RSS (MiB) of a bare interpreter after importing Kopf + the facade and one list call."""
    env = {**os.environ, "PYTHONPATH": str(source), "KUBECONFIG": str(cluster.kubeconfig)}
    with tempfile.TemporaryDirectory() as tmp:  # no discovery cache from an earlier run
        env["TMPDIR"] = tmp
        out = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
        )
    return float(out.stdout.strip())


def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        exported(args.before) as before,
        Cluster(pools=scale_pools(args.nodes), start_kubelet=False) as cluster,
    ):
        variants = {
            transport_of(ROOT / "operator"): ROOT / "operator",
            transport_of(before): before,
        }
        if len(variants) != 2:
            raise SystemExit(f"--before {args.before} uses the same transport as this checkout")
        install_crds_and_rbac(cluster)
        api = cluster.api_client()
        admin = Kube(api)
        create_namespace(api, cluster, "fleet")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(admin.apply, (manifest(i, "fleet") for i in range(args.services))))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        probes: dict[str, list[float]] = {name: [] for name in variants}
        order = list(variants)
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else reversed(order):
                result = operator_run(cluster, variants[name], args.services, args.settle,
                                      args.window, f"rss-{name}-{round_}")  # fmt: skip
                print(f"round {round_} {name}: {result}", flush=True)
                runs[name].append(result)
                probes[name].append(probe(cluster, variants[name]))
        api.close()
    summary = {
        name: {
            "operator_rss_mb_median": round(statistics.median(r["rss_mb_median"] for r in rs), 1),
            "operator_rss_mb_per_round": [r["rss_mb_median"] for r in rs],
            "seconds_to_healthy_median": round(
                statistics.median(r["seconds_to_healthy"] for r in rs), 2
            ),
            "client_probe_rss_mb_median": round(statistics.median(probes[name]), 1),
        }
        for name, rs in runs.items()
    }
    return {
        "services": args.services,
        "nodes": args.nodes,
        "rounds": args.rounds,
        "settle_seconds": args.settle,
        "window_seconds": args.window,
        "before_commit": args.before,
        "variants": summary,
        "runs": runs,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.operator_rss " + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after all Ready")
    parser.add_argument("--window", type=float, default=15.0, help="seconds of RSS samples")
    parser.add_argument("--before", required=True, help="commit with the other transport")
    args = parser.parse_args()
    result = run(args)
    for name, row in result["variants"].items():
        print(f"{name:<22} {row}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

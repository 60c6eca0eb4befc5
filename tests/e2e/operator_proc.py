"""Run the operator as a subprocess under the Helm chart's RBAC, the way it runs in a cluster.

The chart's ServiceAccount and (Cluster)Roles are rendered with ``helm template`` and applied;
the operator gets a kubeconfig holding that ServiceAccount's token — never the admin's — so
every e2e test also proves the chart's RBAC is sufficient.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.testbed.cluster import Cluster

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "tokenscale"
OPERATOR_CONFIG = ROOT / "tests" / "testbed" / "operator-config.yaml"
SYSTEM_NS = "tokenscale-system"
RELEASE = "tokenscale"


def _die_with_parent() -> None:
    """The operator must not outlive pytest, even when pytest is killed without teardown."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def helm_template(cluster: Cluster, *show_only: str, values: dict[str, Any] | None = None) -> str:
    args = [str(cluster.bin_dir / "helm"), "template", RELEASE, str(CHART), "-n", SYSTEM_NS]
    for item in show_only:
        args += ["--show-only", item]
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def install_crds_and_rbac(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.kubectl("create", "namespace", SYSTEM_NS, check=False)
    rbac = helm_template(
        cluster, "templates/serviceaccount.yaml", "templates/rbac.yaml", "templates/rbac-dra.yaml"
    )
    path = cluster.work_dir / "operator-rbac.yaml"
    path.write_text(rbac)
    cluster.kubectl("apply", "-f", str(path))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/inferenceservices.tokenscale.dev",
        "--timeout=60s",
    )


def service_account_kubeconfig(cluster: Cluster) -> Path:
    token = cluster.create_token(SYSTEM_NS, RELEASE, seconds=6 * 3600)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tb",
                "cluster": {
                    "server": cluster.api_url,
                    "certificate-authority": str(cluster.ca_path),
                },
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "tb", "context": {"cluster": "tb", "user": "operator"}}],
        "current-context": "tb",
    }
    path = cluster.work_dir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorProcess:
    """``tokenscale run`` in its own process group, logs in the test bed's logs dir."""

    def __init__(
        self,
        cluster: Cluster,
        config: Path = OPERATOR_CONFIG,
        extra_args: Sequence[str] = (),
        name: str = "operator",
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.extra_args = list(extra_args)
        self.name = name
        self.kubeconfig = service_account_kubeconfig(cluster)
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = cluster.logs_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        # POD_ID is Kopf's peering identity (the pod name in a real deployment).
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_ID": self.name}
        cmd = [
            sys.executable, "-m", "tokenscale", "run",
            "--config", str(self.config),
            "--metrics-port", str(self.metrics_port), "--metrics-addr", "127.0.0.1",
            "--health", f"http://127.0.0.1:{self.health_port}/healthz",
            "--log-format", "plain", *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only a prctl: safe in the forked child
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited early:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.health_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"operator did not become healthy:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        """A crash: SIGKILL, no graceful shutdown (peers only notice when its record expires)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def peered_replicas(
    cluster: Cluster, operator: OperatorProcess, peering: str, prefix: str
) -> Iterator[list[OperatorProcess]]:
    """The session's standalone operator steps aside; two replicas peered through ``peering``
    (the chart's peering CRDs and RBAC applied first) take its place, and it comes back after."""
    manifests = helm_template(
        cluster,
        "templates/peering-crds.yaml",
        "templates/serviceaccount.yaml",
        "templates/rbac.yaml",
        values={"peering.enabled": True},
    )
    path = cluster.work_dir / f"{prefix}-peering.yaml"
    path.write_text(manifests)
    cluster.kubectl("apply", "-f", str(path))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s"
    )
    operator.stop()
    replicas = [
        OperatorProcess(
            cluster, extra_args=["--peering", peering, "--log-format", "json"], name=f"{prefix}-{x}"
        )
        for x in ("a", "b")
    ]
    try:
        for proc in replicas:
            proc.start()
        yield replicas
    finally:
        for proc in replicas:
            proc.stop()
        operator.start()

"""A real Kubernetes control plane (etcd, apiserver, controller-manager, scheduler, KWOK).

Why: the operator must be tested against real API semantics, a real scheduler and real
workload controllers, on machines without Docker.  Everything binds 127.0.0.1 on random
free ports, lives in one work dir, and is torn down by PID (see :mod:`.procs`).  Pods
labelled ``testbed.tokenscale.dev/run=process`` are left to the process kubelet (started
last if ``tests/testbed/kubelet`` exists); KWOK's pod stages ignore them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

from . import build, dra, nodes, pki
from .procs import (
    Proc,
    add_cleanup,
    free_port,
    remove_cleanup,
    spawn,
    tail,
    terminate,
    wait_until,
)

log = logging.getLogger("tokenscale.testbed")

REPO_ROOT = Path(__file__).resolve().parents[2]
PROCESS_LABEL = nodes.PROCESS_LABEL
PROCESS_LABEL_VALUE = nodes.PROCESS_LABEL_VALUE
KUBELET_MAIN = Path(__file__).resolve().parent / "kubelet" / "__main__.py"


class ClusterError(RuntimeError):
    """The control plane failed to start; the message includes logs and state."""


@dataclass
class ExtraComponent:
    """A process started after the control plane (e.g. the process kubelet)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def _http_ok(url: str, *, ca: Path | None = None, token: str | None = None) -> bool:
    if url.startswith("https"):
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if ca is None:  # kcm/scheduler serve a self-signed cert on loopback
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = None
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=3, context=ctx) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


class Cluster:
    """Start with :meth:`start` (or ``with Cluster() as c``), stop with :meth:`stop`."""

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        pools: Sequence[nodes.NodePool] = nodes.DEFAULT_POOLS,
        extra_components: Sequence[ExtraComponent] = (),
        start_kubelet: bool | None = None,
        keep_work_dir: bool = False,
        state_file: Path | None = None,
    ) -> None:
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="tokenscale-testbed-"))
        self.pools = tuple(pools)
        self.extra_components = list(extra_components)
        if start_kubelet is None:  # TOKENSCALE_TESTBED_KUBELET=0 runs KWOK-only
            start_kubelet = KUBELET_MAIN.exists() and _env_flag("TOKENSCALE_TESTBED_KUBELET", True)
        self.start_kubelet = start_kubelet
        self.keep_work_dir = keep_work_dir or _env_flag("TOKENSCALE_TESTBED_KEEP", False)
        self.bin_dir: Path = build.bin_dir_for()
        self.procs: list[Proc] = []
        self.ports: dict[str, int] = {}
        self.tokens: dict[str, str] = {}
        self.node_names: list[str] = []
        self.state_file = state_file
        self._stopped = False
        self._detached = False
        self._lock = threading.Lock()

    # -- paths ------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.work_dir / "admin.kubeconfig"

    @property
    def ca_path(self) -> Path:
        return self.work_dir / "pki" / "ca.crt"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    # -- lifecycle ----------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, detached: bool = False, timeout: float = 180.0) -> Cluster:
        """Build (if needed), generate PKI, start every component and create nodes.

        ``detached`` leaves the processes running after this Python process exits
        (``python -m tests.testbed up``); otherwise they die with it.
        """
        self._detached = detached
        if not detached:
            atexit.register(self.stop)
            add_cleanup(self.stop)
        self.bin_dir = build.ensure_binaries(build.DEFAULT_COMPONENTS).bin_dir
        try:
            self._start(timeout)
        except (TimeoutError, ClusterError, OSError, subprocess.SubprocessError) as exc:
            report = self.dump_state()
            self.stop()
            raise ClusterError(f"test bed failed to start: {exc}\n{report}") from exc
        return self

    def _start(self, timeout: float) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for name in ("etcd", "etcd-peer", "apiserver", "kcm", "sched", "kwok"):
            self.ports[name] = free_port()
        p = pki.generate(self.work_dir / "pki")
        self.tokens = dict(p.tokens)
        for user in pki.CLIENTS:
            path = self.kubeconfig if user == "admin" else self.work_dir / f"{user}.kubeconfig"
            pki.write_kubeconfig(
                path, server=self.api_url, ca_path=p.ca_crt, user=user, token=p.tokens[user]
            )

        etcd_url = f"http://127.0.0.1:{self.ports['etcd']}"
        peer_url = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn("etcd", [
            "--name=testbed", f"--data-dir={self.work_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=testbed={peer_url}",
            "--unsafe-no-fsync=true", "--auto-compaction-retention=1", "--log-level=warn",
        ])  # fmt: skip
        self._wait_http("etcd", f"{etcd_url}/health", timeout=60)

        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['apiserver']}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p.apiserver_crt}", f"--tls-private-key-file={p.apiserver_key}",
            f"--client-ca-file={p.ca_crt}", f"--token-auth-file={p.tokens_csv}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true",
            "--profiling=false", f"--cert-dir={self.work_dir / 'apiserver-certs'}", "--v=1",
        ])  # fmt: skip
        self._wait_http("kube-apiserver", f"{self.api_url}/readyz", timeout=timeout, auth=True)

        self._spawn("kube-controller-manager", [
            *self._client_flags("kcm"), f"--secure-port={self.ports['kcm']}",
            "--leader-elect=false", f"--cert-dir={self.work_dir / 'kcm-certs'}",
            f"--service-account-private-key-file={p.sa_key}", f"--root-ca-file={p.ca_crt}",
            "--v=1",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            *self._client_flags("sched"), f"--secure-port={self.ports['sched']}",
            "--leader-elect=false", f"--cert-dir={self.work_dir / 'sched-certs'}", "--v=1",
        ])  # fmt: skip
        kwok_cfg = nodes.write_kwok_config(
            self.work_dir / "kwok.yaml", self.bin_dir / "kwok-stages"
        )
        self._spawn("kwok", [
            f"--kubeconfig={self.work_dir / 'kwok.kubeconfig'}", f"--config={kwok_cfg}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={nodes.FAKE_NODE_ANNOTATION}=fake",
            "--node-ip=127.0.0.1", "--cidr=127.244.0.0/16", "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
        ])  # fmt: skip
        self._wait_http("kube-controller-manager", self._local("kcm", "https") + "/healthz", 90)
        self._wait_http("kube-scheduler", self._local("sched", "https") + "/healthz", 90)
        self._wait_http("kwok", self._local("kwok", "http") + "/healthz", 60)

        self.node_names = nodes.create_nodes(self.api_client(), self.pools)
        dra.publish(self.api_client(), self.pools)  # GPUs of DRA pools as ResourceSlices
        wait_until(self._nodes_ready, timeout=timeout, interval=0.5, what="fake nodes Ready")
        self.wait_default_sa("default", timeout=60)
        self._start_extra_components()

    def _client_flags(self, user: str) -> list[str]:
        kc = self.work_dir / f"{user}.kubeconfig"
        return [
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1",
        ]  # fmt: skip

    def _local(self, port_name: str, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.ports[port_name]}"

    def _spawn(self, name: str, args: list[str], *, binary: str | None = None) -> Proc:
        argv = [str(self.bin_dir / (binary or name)), *args]
        proc = spawn(name, argv, self.logs_dir / f"{name}.log", die_with_parent=not self._detached)
        self._record(proc)
        return proc

    def _record(self, proc: Proc) -> None:
        with self._lock:
            self.procs.append(proc)
        if self.state_file is not None:  # written at every step: a crash still leaves PIDs
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps(self.to_state(), indent=2))

    def _wait_http(self, name: str, url: str, timeout: float, *, auth: bool = False) -> None:
        proc = next(p for p in self.procs if p.name == name)

        def ready() -> bool:
            if not proc.alive():
                raise ClusterError(f"{name} exited early (rc={proc.returncode()})")
            token = self.tokens.get("admin") if auth else None
            return _http_ok(url, ca=self.ca_path if auth else None, token=token)

        wait_until(ready, timeout=timeout, interval=0.3, what=f"{name} at {url}")

    def _nodes_ready(self) -> bool:
        items = client.CoreV1Api(self.api_client()).list_node().items
        ready = {
            n.metadata.name
            for n in items
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        }
        return set(self.node_names) <= ready

    def _start_extra_components(self) -> None:
        extras = list(self.extra_components)
        if self.start_kubelet:
            extras.insert(0, ExtraComponent("kubelet", [
                sys.executable, "-m", "tests.testbed.kubelet",
                "--kubeconfig", str(self.kubeconfig), "--work-dir", str(self.work_dir / "kubelet"),
                "--api-url", self.api_url, "--ca", str(self.ca_path),
            ]))  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["KUBECONFIG"] = str(self.kubeconfig)
        for extra in extras:
            self.start_component(extra, env=env)
        time.sleep(1.0 if extras else 0)
        for proc in self.procs:
            if not proc.alive():
                raise ClusterError(f"{proc.name} exited right after start")

    def start_component(self, extra: ExtraComponent, *, env: dict[str, str] | None = None) -> Proc:
        """Start one more process owned by the test bed (stopped with it, in reverse order).

        Also the hook for components started lazily after :meth:`start`, like the LWS
        manager (:mod:`.lws`).
        """
        proc = spawn(
            extra.name, extra.argv, self.logs_dir / f"{extra.name}.log",
            env={**(env if env is not None else os.environ), **extra.env}, cwd=REPO_ROOT,
            die_with_parent=not self._detached,
        )  # fmt: skip
        self._record(proc)
        if extra.health_url:
            self._wait_http(extra.name, extra.health_url, timeout=60)
        return proc

    def stop(self) -> None:
        """Terminate everything in reverse start order; idempotent, safe from atexit."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            procs = list(reversed(self.procs))
        killed = terminate(procs)
        if killed:
            log.warning("test bed: SIGKILLed %s after grace period", ", ".join(killed))
        remove_cleanup(self.stop)
        if not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- helpers for tests --------------------------------------------------------
    def api_client(self) -> client.ApiClient:
        return kube_config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, check=check, input=input, timeout=timeout,
        )  # fmt: skip

    def create_token(self, namespace: str, serviceaccount: str, *, seconds: int = 3600) -> str:
        """A ServiceAccount token from the TokenRequest API (like ``kubectl create token``)."""
        req = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
        )
        with self.api_client() as api:
            resp = client.CoreV1Api(api).create_namespaced_service_account_token(
                serviceaccount, namespace, req
            )
        return str(resp.status.token)

    def wait_default_sa(self, namespace: str, timeout: float = 60) -> None:
        def exists() -> bool:
            with self.api_client() as api:
                sas = client.CoreV1Api(api).list_namespaced_service_account(
                    namespace, field_selector="metadata.name=default"
                )
            return bool(sas.items)

        wait_until(exists, timeout=timeout, what=f"default ServiceAccount in {namespace}")

    def health(self) -> dict[str, bool]:
        return {p.name: p.alive() for p in self.procs}

    def dump_state(self, lines: int = 40) -> str:
        """Log tails of every component plus ``kubectl get all,nodes,events -A``."""
        out = []
        for p in self.procs:
            state = "running" if p.alive() else f"exited rc={p.returncode()}"
            out.append(f"===== {p.name} ({state}) {p.log_path} =====\n{tail(p.log_path, lines)}")
        if (
            (self.bin_dir / "kubectl").exists()
            and self.kubeconfig.exists()
            and "apiserver" in self.ports
        ):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                res = self.kubectl(
                    "get", "all,nodes,events", "-A", "-o", "wide", check=False, timeout=20
                )
                out.append(f"===== kubectl get all,nodes,events -A =====\n{res.stdout}{res.stderr}")
        return "\n".join(out)

    # -- state file (CLI up/down across processes) ----------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "work_dir": str(self.work_dir),
            "bin_dir": str(self.bin_dir),
            "ports": self.ports,
            "api_url": self.api_url if "apiserver" in self.ports else None,
            "kubeconfig": str(self.kubeconfig),
            "node_names": self.node_names,
            "procs": [p.to_dict() for p in self.procs],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Cluster:
        c = cls(Path(state["work_dir"]), start_kubelet=False)
        c.bin_dir = Path(state["bin_dir"])
        c.ports = {k: int(v) for k, v in state["ports"].items()}
        c.node_names = list(state.get("node_names", []))
        c.procs = [Proc.from_dict(d) for d in state["procs"]]
        c._detached = True
        with contextlib.suppress(OSError, json.JSONDecodeError):
            tokens_csv = (c.work_dir / "pki" / "tokens.csv").read_text()
            c.tokens = {ln.split(",")[1]: ln.split(",")[0] for ln in tokens_csv.splitlines()}
        return c

"""One pod's lifecycle: prepare files, run init containers, run containers, probe, report, stop.

Why one asyncio task per pod: the kubelet's job per pod is a small state machine (Pending ->
Running -> Succeeded/Failed, restarts per restartPolicy, graceful deletion) and keeping it in one
place makes "every process we started is stopped" easy to guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from . import process
from .api import Api, ApiError, event_body, pod_path
from .container import Conditions, Container, now, pod_status, pre_stop, probe_loop
from .imagemap import ImageMap, ImageMapError, unpullable
from .security import verify_run_as_non_root
from .spec import SpecError, build_env, resolve_argv, restart_wanted
from .volumes import PodVolumes, fetch_env_data, render_hosts, render_resolv, write_in_place

log = logging.getLogger(__name__)
Obj = Mapping[str, Any]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class _PullRetry(Exception):
    """The image cannot be pulled (yet): wait, then try the whole start again."""


class Host(Protocol):
    api: Api
    image_map: ImageMap
    work_dir: Path
    api_port: int
    ca_pem: bytes
    inject_pod_ip: bool

    def hosts_services(self) -> list[tuple[str, str, str]]: ...
    def hosts_peers(self) -> list[tuple[str, str, str, str]]: ...
    def service_env(self, namespace: str) -> dict[str, str]: ...


@dataclass
class PodWorker:
    host: Host
    pod: dict[str, Any]
    ip: str
    containers: list[Container] = field(default_factory=list)
    inits: list[Container] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    phase: str = "Pending"
    initialized: bool = False
    _conditions: Conditions = field(default_factory=Conditions)
    _last_sent: dict[str, Any] | None = None
    _push_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        spec = self.pod["spec"]
        for c in spec.get("initContainers", []) or []:
            self.inits.append(Container(c, init=True, sidecar=c.get("restartPolicy") == "Always"))
        self.containers = [Container(c) for c in spec["containers"]]
        meta = self.pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.root = self.host.work_dir / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.log_path = self.host.work_dir / "logs" / f"{self.ns}_{self.name}.log"
        # Short on purpose: unix socket paths (vLLM's zmq ipc:// in TMPDIR) max out at 107 bytes.
        self.tmp = Path(tempfile.gettempdir()) / f"tbk-{self.uid[:13]}"
        self.volumes = PodVolumes(
            self.host.api,
            self.pod,
            self.root,
            self.ip,
            self.host.work_dir / "pvc",
            self.host.ca_pem,
        )
        self.logf = process.open_log(self.log_path)
        self.env_data: dict[tuple[str, str], dict[str, str] | None] = {}

    @property
    def policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    @property
    def hostname(self) -> str:
        return str(self.pod["spec"].get("hostname") or self.name)[:63]

    @property
    def subdomain(self) -> str:
        return str(self.pod["spec"].get("subdomain") or "")

    @property
    def labels(self) -> Mapping[str, str]:
        return self.pod["metadata"].get("labels", {}) or {}

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod

    def note(self, text: str, reason: str = "", warning: bool = False) -> None:
        """Log to the pod's log file and, with a ``reason``, post an Event (fire and forget)."""
        process.log_line(self.logf, text)
        if reason:
            body = event_body(self.pod, "Warning" if warning else "Normal", reason, text, now())
            task = asyncio.create_task(self._post_event(body))
            self._tasks.append(task)

    async def _post_event(self, body: dict[str, Any]) -> None:
        with contextlib.suppress(ApiError, OSError, aiohttp.ClientError, TimeoutError):
            await self.host.api.request("POST", f"/api/v1/namespaces/{self.ns}/events", body=body)

    # ---- files -------------------------------------------------------------------------------
    def write_hosts(self) -> None:
        text = render_hosts(
            namespace=self.ns,
            pod_name=self.name,
            pod_ip=self.ip,
            hostname=self.hostname,
            subdomain=self.subdomain,
            services=self.host.hosts_services(),
            peers=self.host.hosts_peers(),
        )
        write_in_place(self.root / "etc" / "hosts", text)

    def _exec_plan(self, c: Container) -> tuple[list[str], dict[str, str], str, list[Any]]:
        """argv, env, cwd, mounts of a container (raises SpecError / ImageMapError)."""
        entry = self.host.image_map.lookup(str(c.spec.get("image", "")))
        bin_dir = entry.bin_dir()
        base = {
            "PATH": f"{bin_dir}:{DEFAULT_PATH}" if bin_dir else DEFAULT_PATH,
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.tmp),
            "HOSTNAME": self.hostname,
            "LANG": "C.UTF-8",
        }
        if self.pod["spec"].get("enableServiceLinks", True) is not False:
            base.update(self.host.service_env(self.ns))
        port = str(self.host.api_port)
        base.update(
            {
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
            }
        )
        if self.host.inject_pod_ip:
            base["POD_IP"] = self.ip
        base.update(entry.env)
        env = build_env(
            self.pod, c.spec, pod_ip=self.ip, host_ip="127.0.0.1", data=self.env_data, base=base
        )
        env[process.MARKER] = self.uid
        argv = resolve_argv(
            c.spec, env, entrypoint=entry.entrypoint, default_args=entry.cmd, rewrites=entry.rewrite
        )
        mounts = [
            {"src": str(self.root / "etc" / "hosts"), "dst": "/etc/hosts"},
            {"src": str(self.root / "etc" / "resolv.conf"), "dst": "/etc/resolv.conf"},
            *self.volumes.mounts(c.spec),
        ]
        cwd = str(c.spec.get("workingDir") or self.root / "home")
        return argv, env, cwd, mounts

    # ---- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return pod_status(
            self.pod,
            self.phase,
            self.ip,
            self.initialized,
            self.containers,
            self.inits,
            self._conditions,
        )

    async def push(self, force: bool = False) -> None:
        """Send the status if it changed since the last successful send (``force``: anyway)."""
        async with self._push_lock:
            st = self.status()
            comparable = {k: v for k, v in st.items() if k != "startTime"}
            if comparable == self._last_sent and not force:
                return
            try:
                updated = await self.host.api.merge_patch(
                    pod_path(self.ns, self.name, "status"), {"status": st}
                )
                self.pod["status"] = updated.get("status", st)
                self._last_sent = comparable
            except ApiError as exc:
                if exc.status != 404:
                    log.warning("pod %s/%s: status update failed: %s", self.ns, self.name, exc)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except (OSError, ApiError, SpecError, ImageMapError, ValueError, KeyError) as exc:
            log.exception("pod %s/%s: worker failed", self.ns, self.name)
            process.log_line(self.logf, f"worker failed: {exc!r}")

    async def _run(self) -> None:
        for sub in ("home", "etc"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(mode=0o1777, parents=True, exist_ok=True)
        self.write_hosts()
        write_in_place(self.root / "etc" / "resolv.conf", render_resolv(self.ns))
        await self.push()
        pulls = 0
        while not self.stopping.is_set():  # config errors: retry like the kubelet does
            try:
                await self.volumes.prepare()
                self.env_data = await fetch_env_data(self.host.api, self.pod)
                for c in [*self.inits, *self.containers]:
                    failed = unpullable(str(c.spec.get("image", "")))
                    if failed:  # as a kubelet whose runtime cannot pull: ErrImagePull, back-off
                        c.waiting = ("ImagePullBackOff" if pulls else "ErrImagePull", failed)
                        pulls += 1
                        self.note(failed, "Failed", warning=True)
                        await self.push()
                        await self._sleep(min(5.0 * pulls, 20.0))
                        raise _PullRetry
                    # a bin provider may build a venv first (minutes): keep the loop responsive
                    entry = self.host.image_map.lookup(str(c.spec.get("image", "")))
                    await asyncio.to_thread(entry.bin_dir)
                    refused = verify_run_as_non_root(
                        self.pod["spec"], c.spec, entry.user, f"{self.ns}/{self.name}"
                    )
                    if refused:
                        raise SpecError(refused)
                    self._exec_plan(c)
                break
            except _PullRetry:
                continue
            except (SpecError, ImageMapError, ApiError) as exc:
                for c in [*self.inits, *self.containers]:
                    c.waiting = ("CreateContainerConfigError", str(exc))
                self.note(f"cannot start yet: {exc}", "Failed", warning=True)
                await self.push()
                await self._sleep(3)
        self._tasks.append(asyncio.create_task(self._refresh_tokens()))
        for c in self.inits:
            if self.stopping.is_set():
                return
            if c.sidecar:
                self._tasks.append(asyncio.create_task(self._supervise(c)))
                continue
            await self._supervise(c)
            if not (c.terminated and c.terminated["exitCode"] == 0):
                if not self.stopping.is_set():
                    self.phase = "Failed"
                    await self.push()
                return
        self.initialized = True
        if self.stopping.is_set():
            return
        self.phase = "Running"
        await asyncio.gather(*(self._supervise(c) for c in self.containers))
        if not self.stopping.is_set():
            ok = all(c.terminated and c.terminated["exitCode"] == 0 for c in self.containers)
            self.phase = "Succeeded" if ok else "Failed"
            for c in self.inits:
                if c.sidecar and c.proc is not None:
                    await process.stop(c.proc, 5)
            await self.push()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _supervise(self, c: Container) -> None:
        backoff = 0.0
        while not self.stopping.is_set():
            argv, env, cwd, mounts = self._exec_plan(c)
            self.note(f"start {c.name} (restart {c.restarts}): {argv}")
            c.proc = await process.spawn(
                self.root / f"{c.name}.exec.json",
                argv=argv,
                env=env,
                cwd=cwd,
                mounts=mounts,
                log_file=self.logf,
                hostname=self.hostname,
            )
            if self.stopping.is_set():  # stop() ran while this restart was spawning
                await process.stop(c.proc, 0)
                c.done = True
                return
            c.started_at, c.ready, c.started, c.waiting = now(), False, False, ("", "")
            self.note(f"Started container {c.name} (pid {c.proc.pid})", "Started")
            c.terminated = None
            await self.push()
            prober = asyncio.create_task(probe_loop(self, c))
            rc = await c.proc.wait()
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
            reason = "Completed" if rc == 0 else "Error"
            c.terminated = {
                "exitCode": rc if rc >= 0 else 128 - rc,
                "reason": reason,
                "startedAt": c.started_at,
                "finishedAt": now(),
                "containerID": f"process://{c.proc.pid}",
            }
            c.ready = c.started = False
            self.note(f"{c.name} exited with {rc}")
            policy = (
                "Always"
                if c.sidecar
                else ("OnFailure" if c.init and self.policy == "Always" else self.policy)
            )
            if self.stopping.is_set() or not restart_wanted(policy, rc):
                c.done = True
                await self.push()
                return
            backoff = min(max(backoff * 2, 1.0), 20.0)
            c.last, c.terminated = c.terminated, None
            c.waiting = ("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting {c.name}")
            self.note(
                f"Back-off {backoff:.0f}s restarting failed container {c.name}",
                "BackOff",
                warning=True,
            )
            await self.push()
            await self._sleep(backoff)
            c.restarts += 1

    async def exec_in(self, c: Container, command: list[str], limit: float) -> int:
        _, env, cwd, mounts = self._exec_plan(c)
        proc = await process.spawn(
            self.root / f"{c.name}.probe.json",
            argv=command,
            env=env,
            cwd=cwd,
            mounts=mounts,
            log_file=self.logf,
            hostname=self.hostname,
        )
        try:
            return await asyncio.wait_for(proc.wait(), limit)
        except TimeoutError:
            await process.stop(proc, 0)
            return -1

    def grace(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if meta_grace is not None:
            return float(meta_grace)
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    async def _refresh_tokens(self) -> None:
        while not self.stopping.is_set():
            await self._sleep(600)
            if self.stopping.is_set():
                return
            try:
                await self.volumes.refresh_tokens()
            except (ApiError, OSError, SpecError) as exc:
                log.warning("pod %s/%s: token refresh failed: %s", self.ns, self.name, exc)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: preStop hooks, SIGTERM, wait ``grace``, SIGKILL, sweep strays."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        grace = self.grace() if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        running = [
            c
            for c in [*self.containers, *self.inits]
            if c.proc is not None and c.proc.returncode is None
        ]

        async def stop_one(c: Container) -> None:
            try:
                await asyncio.wait_for(pre_stop(self, c, deadline), timeout=max(grace, 0.1))
            except (TimeoutError, OSError, SpecError, ImageMapError) as exc:
                process.log_line(self.logf, f"{c.name} preStop: {exc!r}")
            assert c.proc is not None
            self.note(f"Stopping container {c.name} (pid {c.proc.pid})", "Killing")
            await process.stop(c.proc, max(0.0, deadline - loop.time()))

        await asyncio.gather(*(stop_one(c) for c in running))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        process.sweep(self.uid)

    async def stop_processes(self) -> None:
        """Kill whatever still runs for this pod (after its worker task was cancelled)."""
        for c in [*self.containers, *self.inits]:
            if c.proc is not None and c.proc.returncode is None:
                await process.stop(c.proc, 0)
        process.sweep(self.uid)

    def cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self.logf.close()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

"""Container state, its status block, the probe loop and preStop hooks.

Why separate from ``pod.py``: these are per-container concerns of the kubelet (what the API shows
for a container; when it counts as started/ready; how it is asked to stop), kept apart from the
pod-level state machine so each stays readable.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from . import process
from .probes import ProbeTracker, run_probe

Obj = Mapping[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Conditions:
    """Pod conditions whose ``lastTransitionTime`` only moves when their status changes."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, str]] = {}

    def __call__(self, ctype: str, ok: bool, reason: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        prev = self._since.get(ctype)
        if prev is None or prev[0] != status:
            self._since[ctype] = (status, now())
        cond = {"type": ctype, "status": status, "lastTransitionTime": self._since[ctype][1]}
        if reason and not ok:
            cond["reason"] = reason
        return cond


OWN_CONDITIONS = frozenset(
    {"PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"}
)


def pod_status(
    pod: Obj,
    phase: str,
    ip: str,
    initialized: bool,
    containers: list[Container],
    inits: list[Container],
    cond: Conditions,
) -> dict[str, Any]:
    """The full pod status the kubelet reports (conditions of other writers are kept)."""
    old = pod.get("status", {}) or {}
    ready = all(c.ready for c in containers) and phase == "Running"
    others = [c for c in old.get("conditions") or [] if c.get("type") not in OWN_CONDITIONS]
    st: dict[str, Any] = {
        "phase": phase,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "startTime": old.get("startTime") or now(),
        "conditions": [
            cond("PodScheduled", True),
            cond("PodReadyToStartContainers", True),
            cond("Initialized", initialized, "ContainersNotInitialized"),
            cond("ContainersReady", ready, "ContainersNotReady"),
            cond("Ready", ready, "ContainersNotReady"),
            *others,
        ],
        "containerStatuses": [c.status() for c in containers],
    }
    if old.get("qosClass"):
        st["qosClass"] = old["qosClass"]
    if inits:
        st["initContainerStatuses"] = [c.status() for c in inits]
    return st


class Worker(Protocol):
    """What the probe loop and hooks need from the pod worker."""

    ip: str
    containers: list[Container]
    logf: IO[bytes]
    root: Path

    async def push(self) -> None: ...
    def note(self, text: str, reason: str = "", warning: bool = False) -> None: ...
    async def exec_in(self, c: Container, command: list[str], limit: float) -> int: ...
    def grace(self) -> float: ...


@dataclass
class Container:
    spec: Obj
    init: bool = False
    sidecar: bool = False
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: str | None = None
    ready: bool = False
    started: bool = False
    terminated: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    waiting: tuple[str, str] = ("ContainerCreating", "")
    done: bool = False  # terminated and will not be restarted

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> dict[str, Any]:
        if self.proc is not None and self.proc.returncode is None and self.started_at:
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated}
        else:
            reason, msg = self.waiting
            state = {
                "waiting": {
                    "reason": reason or "ContainerCreating",
                    **({"message": msg} if msg else {}),
                }
            }
        image = str(self.spec.get("image", ""))
        st: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": f"testbed-process://{image}",
            "ready": self.ready,
            "restartCount": self.restarts,
            "state": state,
            "started": self.started if "running" in state else False,
            "lastState": {"terminated": self.last} if self.last else {},
        }
        if self.proc is not None:
            st["containerID"] = f"process://{self.proc.pid}"
        return st


async def probe_loop(pod: Worker, c: Container) -> None:
    """Startup probe gates the rest; then readiness and liveness run side by side."""
    spec = c.spec

    async def check(tracker: ProbeTracker) -> bool:
        ok, msg = await run_probe(
            tracker.spec,
            pod_ip=pod.ip,
            containers=[x.spec for x in pod.containers],
            exec_runner=lambda cmd, t: pod.exec_in(c, cmd, t),
            limit=tracker.timeout,
        )
        return tracker.record(ok, msg)

    assert c.proc is not None
    t0 = asyncio.get_running_loop().time()
    if spec.get("startupProbe"):
        st = ProbeTracker("startup", spec["startupProbe"])
        await asyncio.sleep(st.initial_delay)
        while not await check(st):
            if st.failures >= st.failure_threshold:
                pod.note(
                    f"Startup probe of {c.name} failed: {st.last_message}; killing",
                    "Unhealthy",
                    warning=True,
                )
                await process.stop(c.proc, pod.grace())
                return
            await asyncio.sleep(st.period)
    c.started = True
    await pod.push()

    async def readiness() -> None:
        if not spec.get("readinessProbe"):
            c.ready = True
            await pod.push()
            return
        rt = ProbeTracker("readiness", spec["readinessProbe"])
        await asyncio.sleep(max(0.0, rt.initial_delay - (asyncio.get_running_loop().time() - t0)))
        while True:
            before = c.ready
            c.ready = await check(rt)
            if c.ready != before:
                pod.note(
                    f"{c.name} ready={c.ready}: {rt.last_message}",
                    "" if c.ready else "Unhealthy",
                    warning=not c.ready,
                )
                await pod.push()
            await asyncio.sleep(rt.period)

    async def liveness() -> None:
        if not spec.get("livenessProbe"):
            return
        lt = ProbeTracker("liveness", spec["livenessProbe"])
        await asyncio.sleep(lt.initial_delay)
        while True:
            if not await check(lt):
                break
            await asyncio.sleep(lt.period)
        pod.note(
            f"Liveness probe of {c.name} failed: {lt.last_message}; killing",
            "Unhealthy",
            warning=True,
        )
        assert c.proc is not None
        await process.stop(c.proc, pod.grace())

    await asyncio.gather(readiness(), liveness())


async def pre_stop(pod: Worker, c: Container, deadline: float) -> None:
    """Run the preStop hook; ``sleep N`` hooks just wait (no need to exec a sleep)."""
    hook = ((c.spec.get("lifecycle") or {}).get("preStop")) or {}
    loop = asyncio.get_running_loop()
    remaining = max(0.0, deadline - loop.time())
    if "sleep" in hook:
        await asyncio.sleep(min(float(hook["sleep"].get("seconds", 0)), remaining))
    elif "exec" in hook:
        cmd = [str(x) for x in hook["exec"].get("command", [])]
        m = re.fullmatch(r"(?:/bin/)?(?:sh -c )?(?:/bin/)?sleep (\d+(?:\.\d+)?)", " ".join(cmd))
        if m:  # the common "sleep N" hook: just wait
            await asyncio.sleep(min(float(m.group(1)), remaining))
        elif remaining > 0:
            await pod.exec_in(c, cmd, remaining)
    elif "httpGet" in hook:
        await run_probe(
            {"httpGet": hook["httpGet"]},
            pod_ip=pod.ip,
            containers=[x.spec for x in pod.containers],
            exec_runner=lambda cmd, t: pod.exec_in(c, cmd, t),
            limit=remaining,
        )

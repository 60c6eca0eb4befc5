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


class Worker(Protocol):
    """What the probe loop and hooks need from the pod worker."""

    ip: str
    containers: list[Container]
    logf: IO[bytes]
    root: Path

    async def push(self) -> None: ...
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
                process.log_line(
                    pod.logf, f"{c.name} startup probe failed: {st.last_message}; killing"
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
                process.log_line(pod.logf, f"{c.name} ready={c.ready}: {rt.last_message}")
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
        process.log_line(pod.logf, f"{c.name} liveness failed: {lt.last_message}; killing")
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

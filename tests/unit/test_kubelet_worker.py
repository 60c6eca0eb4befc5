"""Process kubelet: one pod's lifecycle against a stub API (real processes, no cluster).

Why: starting, probing, reporting and stopping real processes is the kubelet's core; checking it
without a control plane keeps failures here cheap to diagnose.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.kubelet.imagemap import ImageEntry, ImageMap
from tests.testbed.kubelet.pod import PodWorker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")


class StubApi:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def get(self, path: str, **_: Any) -> dict[str, Any] | None:
        if path.endswith("/configmaps/kube-root-ca.crt"):
            return {"data": {"ca.crt": "CA"}}
        if path.endswith("/configmaps/cfg"):
            return {"data": {"greeting": "hello"}}
        return None

    async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        assert method == "POST", (method, path)
        if path.endswith("/events"):
            self.events.append(kw["body"])
            return kw["body"]
        assert path.endswith("/serviceaccounts/default/token"), path
        return {"status": {"token": "TOKEN"}}

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(body["status"])
        return body


class StubHost:
    def __init__(self, work_dir: Path) -> None:
        self.api: Any = StubApi()
        self.image_map = ImageMap(
            [ImageEntry(prefix="img", bin=str(Path(sys.executable).parent))],
            allow_unmapped=False,
        )
        self.work_dir = work_dir
        self.api_port = 6443
        self.ca_pem = b"CA"
        self.inject_pod_ip = True

    def hosts_services(self) -> list[tuple[str, str, str]]:
        return [("web", "ns", "127.20.0.9")]

    def hosts_peers(self) -> list[tuple[str, str, str, str]]:
        return [("leader", "grp", "ns", "127.10.99.9")]

    def service_env(self, namespace: str) -> dict[str, str]:
        return {}


def _pod(command: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "0123456789abcdef", "labels": {}},
        "spec": {
            "nodeName": "n",
            "containers": [{"name": "main", "image": "img:1", "command": command}],
            **spec,
        },
        "status": {},
    }


async def _until(cond: Any, limit: float = 15) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.1)


async def test_http_pod_becomes_ready_and_stops(tmp_path: Path) -> None:
    host = StubHost(tmp_path)
    script = (
        "import os, http.server, pathlib\n"
        "sa = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount')\n"
        "print('token', (sa / 'token').read_text(), (sa / 'namespace').read_text(), flush=True)\n"
        "print('cfg', pathlib.Path('/cfg/greeting').read_text(), flush=True)\n"
        "h = pathlib.Path('/etc/hosts').read_text()\n"
        "print('hosts', 'web.ns.svc' in h, '127.10.99.9\\tleader.grp.ns.svc' in h, flush=True)\n"
        "import socket\n"
        "me = socket.gethostname()\n"
        "print('me', me, socket.gethostbyname(me), flush=True)\n"
        "s = http.server.HTTPServer((os.environ['POD_IP'], 8080), "
        "http.server.SimpleHTTPRequestHandler)\n"
        "s.serve_forever()\n"
    )
    pod = _pod(
        ["python", "-c", script],
        volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}],
    )
    c = pod["spec"]["containers"][0]
    c["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"}]
    c["readinessProbe"] = {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 1}
    w = PodWorker(host, pod, "127.10.99.2")  # type: ignore[arg-type]
    task = asyncio.create_task(w.run())
    try:
        await _until(lambda: w.containers[0].ready)
        last = host.api.patches[-1]
        assert last["phase"] == "Running" and last["podIP"] == "127.10.99.2"
        assert {x["type"]: x["status"] for x in last["conditions"]}["Ready"] == "True"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen("http://127.10.99.2:8080/", timeout=5).status
        )
        assert body == 200
        pid = w.containers[0].proc.pid  # type: ignore[union-attr]
    finally:
        await w.stop(grace=2)
        await asyncio.wait_for(task, 10)
    _check_stopped(pid, w.log_path)
    w.cleanup()


def _check_stopped(pid: int, log_path: Path) -> None:
    assert not Path(f"/proc/{pid}").exists()
    log = log_path.read_text()
    assert "token TOKEN ns" in log and "cfg hello" in log and "hosts True True" in log, log
    assert "me p 127.10.99.2" in log, log


async def test_job_pod_exit_codes_and_restart_policy(tmp_path: Path) -> None:
    host = StubHost(tmp_path)
    never = PodWorker(host, _pod(["sh", "-c", "exit 3"], restartPolicy="Never"), "127.10.99.3")  # type: ignore[arg-type]
    await asyncio.wait_for(never.run(), 15)
    assert never.phase == "Failed"
    assert host.api.patches[-1]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3

    # OnFailure: fails once (marker file absent), then succeeds -> Succeeded with 1 restart
    marker = tmp_path / "once"
    cmd = ["sh", "-c", f"test -e {marker} && exit 0; touch {marker}; exit 1"]
    await asyncio.sleep(0.1)
    seen = len(host.api.events)
    retry = PodWorker(host, _pod(cmd, restartPolicy="OnFailure"), "127.10.99.4")  # type: ignore[arg-type]
    await asyncio.wait_for(retry.run(), 20)
    assert retry.phase == "Succeeded" and retry.containers[0].restarts == 1
    final = host.api.patches[-1]["containerStatuses"][0]
    assert final["lastState"]["terminated"]["exitCode"] == 1
    await asyncio.sleep(0.1)  # events are posted in the background
    reasons = [e["reason"] for e in host.api.events[seen:]]
    assert reasons.count("Started") == 2 and "BackOff" in reasons
    for w in (never, retry):
        w.cleanup()


async def test_sigterm_ignoring_process_is_killed_and_swept(tmp_path: Path) -> None:
    host = StubHost(tmp_path)
    # the child escapes the process group with setsid; the marker sweep must still find it
    cmd = ["sh", "-c", "trap '' TERM; setsid sleep 300 & sleep 300"]
    w = PodWorker(host, _pod(cmd, terminationGracePeriodSeconds=1), "127.10.99.5")  # type: ignore[arg-type]
    task = asyncio.create_task(w.run())
    await _until(lambda: w.containers[0].started)
    await asyncio.sleep(0.5)
    from tests.testbed.kubelet.process import marked_pids

    assert len(marked_pids(w.uid)) >= 2
    await w.stop()
    await asyncio.wait_for(task, 10)
    await _until(lambda: not marked_pids(w.uid), limit=5)
    w.cleanup()

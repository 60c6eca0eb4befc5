"""Process kubelet under faults (issue 17): an unreachable API server is one retryable error
type (it used to escape as aiohttp's and kill pod workers, losing the pods being started across
an API-server restart), and a stop that lands while a crash-looping container is being
restarted still ends the worker (it used to leave the pod Terminating forever)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.kubelet import pod as pod_module
from tests.testbed.kubelet.api import Api, ApiError, KubeConfig
from tests.testbed.kubelet.pod import PodWorker
from tests.testbed.procs import free_port
from tests.unit.test_kubelet_worker import StubHost, _pod, _until


async def test_an_unreachable_api_server_is_an_api_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    api = Api(KubeConfig(kubeconfig))
    try:
        with pytest.raises(ApiError) as caught:
            await api.merge_patch("/api/v1/namespaces/ns/pods/p/status", {"status": {}})
        assert caught.value.status == 0
        with pytest.raises(ApiError):
            await api.get("/api/v1/namespaces/ns/configmaps/c")
    finally:
        await api.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
async def test_a_stop_during_a_crash_loop_restart_ends_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = StubHost(tmp_path)
    marker = tmp_path / "crashed"
    cmd = ["sh", "-c", f"test -e {marker} && exec sleep 1000; touch {marker}; exit 1"]
    worker = PodWorker(host, _pod(cmd), "127.10.99.7")  # type: ignore[arg-type]
    real_spawn = pod_module.process.spawn
    spawned: list[Any] = []

    async def spawn_then_stop(*args: Any, **kwargs: Any) -> Any:
        proc = await real_spawn(*args, **kwargs)
        spawned.append(proc)
        if len(spawned) == 2:  # the restart: the pod is deleted while it spawns
            await worker.stop(grace=1)
        return proc

    monkeypatch.setattr(pod_module.process, "spawn", spawn_then_stop)
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: len(spawned) == 2)
        await asyncio.wait_for(task, 10)  # used to wait on the new process forever
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.stop_processes()
        worker.cleanup()
    assert spawned[1].returncode is not None, "the restarted process was left running"

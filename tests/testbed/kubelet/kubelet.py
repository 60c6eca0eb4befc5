"""The process kubelet's control loop: watch labelled pods and all Services, dispatch, shut down.

Why this shape: one asyncio loop owns all state (pod workers, Service proxy, loopback address
pools), so backend selection for the proxy reads the workers' live readiness directly and
shutdown can stop every process it started, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import RUN_LABEL, RUN_LABEL_VALUE
from .api import Api, ApiError, pod_path
from .imagemap import ImageMap
from .pod import PodWorker
from .proxy import AddressPool, ServiceProxy, claim_block
from .spec import resolve_port, service_env

log = logging.getLogger(__name__)
Obj = Mapping[str, Any]


class Kubelet:
    def __init__(
        self,
        api: Api,
        image_map: ImageMap,
        work_dir: Path,
        *,
        pod_cidr: str = "127.10.0.0/16",
        service_cidr: str = "127.20.0.0/16",
        inject_pod_ip: bool = True,
        shutdown_grace: float = 10.0,
        run_images: Iterable[str] = (),
    ):
        self.api = api
        self.run_images = frozenset(run_images)
        self.image_map = image_map
        self.work_dir = work_dir
        self.api_port = api.cfg.port
        ca = api.cfg.ca_path
        self.ca_pem = Path(ca).read_bytes() if ca else b""
        self.inject_pod_ip = inject_pod_ip
        self.shutdown_grace = shutdown_grace
        pod_block, self._pod_claim = claim_block(pod_cidr)
        svc_block, self._svc_claim = claim_block(service_cidr)
        log.info("pod IPs from %s, Service addresses from %s", pod_block, svc_block)
        self.ips = AddressPool(pod_block)
        self.proxy = ServiceProxy(self.backends, self.api_port, svc_block)
        self.workers: dict[str, PodWorker] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._services_synced = asyncio.Event()
        self._service_objs: dict[tuple[str, str], Obj] = {}
        self._background: set[asyncio.Task[None]] = set()

    # ---- Host protocol for pod workers --------------------------------------------------------
    def hosts_services(self) -> list[tuple[str, str, str]]:
        return self.proxy.entries()

    def hosts_peers(self) -> list[tuple[str, str, str, str]]:
        return [
            (w.hostname, w.subdomain, w.ns, w.ip)
            for w in self.workers.values()
            if w.subdomain and not w.stopping.is_set()
        ]

    def _refresh_hosts(self) -> None:
        for w in list(self.workers.values()):
            if not w.stopping.is_set():
                w.write_hosts()

    def service_env(self, namespace: str) -> dict[str, str]:
        triples = []
        for (ns, name), svc in sorted(self._service_objs.items()):
            addr = self.proxy.address_of(ns, name)
            if addr and (ns == namespace or (ns, name) == ("default", "kubernetes")):
                if (ns, name) == ("default", "kubernetes"):
                    continue  # KUBERNETES_SERVICE_* point at the real apiserver port instead
                triples.append((name, addr, list(svc.get("spec", {}).get("ports", []) or [])))
        return service_env(triples)

    def backends(
        self, namespace: str, selector: Mapping[str, str], sport: Obj, not_ready: bool
    ) -> list[tuple[str, int]]:
        out = []
        target = sport.get("targetPort", sport["port"])
        for w in self.workers.values():
            if w.ns != namespace or w.stopping.is_set() or w.phase != "Running":
                continue
            if any(w.labels.get(k) != v for k, v in selector.items()):
                continue
            if not (not_ready or all(c.ready for c in w.containers)):
                continue
            port = resolve_port(target, w.pod["spec"].get("containers", []))
            if port is not None:
                out.append((w.ip, port))
        return sorted(out)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- pods ---------------------------------------------------------------------------------
    def is_ours(self, pod: dict[str, Any]) -> bool:
        """Labelled for us, or running one of the configured run images (KWOK skips both)."""
        labels = pod["metadata"].get("labels") or {}
        if labels.get(RUN_LABEL) == RUN_LABEL_VALUE:
            return True
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        return str(containers[0].get("image", "")) in self.run_images

    async def _handle_pod(self, pod: dict[str, Any], resync: bool = False) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        uid = meta["uid"]
        if not spec.get("nodeName"):
            return
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            if meta.get("deletionTimestamp") and not worker.stopping.is_set():
                self._spawn(self._delete(worker))
            elif resync:  # after a relist (API restart): re-send what a failed push lost
                self._spawn(worker.push(force=True))
            return
        if meta.get("deletionTimestamp"):
            # nothing of ours runs for it (e.g. finished, or from before a restart): finish it
            await self.api.delete(pod_path(meta["namespace"], meta["name"]), grace=0)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        ip = self.ips.allocate(uid, preferred=pod.get("status", {}).get("podIP"))
        worker = PodWorker(self, pod, ip)
        self.workers[uid] = worker
        log.info("pod %s/%s: running as process on %s", worker.ns, worker.name, ip)
        self.tasks[uid] = asyncio.create_task(worker.run())
        if worker.subdomain:
            self._refresh_hosts()

    async def _delete(self, worker: PodWorker) -> None:
        """Graceful deletion: stop processes, then remove the pod object (grace 0).

        The final delete always happens: a worker task that does not end in time (a crash
        loop caught mid-restart) is cancelled, and a failed delete (API server restarting) is
        retried. Giving up on either left the pod Terminating forever and its namespace's
        deletion hanging."""
        await worker.stop()
        task = self.tasks.get(worker.uid)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 15)
            if not task.done():
                log.warning("pod %s/%s: worker did not end; cancelling", worker.ns, worker.name)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await worker.stop_processes()
        delay = 0.5
        while True:
            try:
                await self.api.delete(pod_path(worker.ns, worker.name), grace=0)
                break
            except ApiError as exc:
                log.warning("pod %s/%s: final delete failed (retrying in %.0f s): %s",
                            worker.ns, worker.name, delay, exc)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._forget(worker)

    async def _vanished(self, uid: str) -> None:
        worker = self.workers.get(uid)
        if worker is None:
            return
        await worker.stop(grace=min(worker.grace(), 2.0))
        self._forget(worker)

    def _forget(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
            task = self.tasks.pop(worker.uid, None)
            if task is not None and not task.done():
                task.cancel()
            self.ips.release(worker.uid)
            worker.cleanup()
            if worker.subdomain:
                self._refresh_hosts()
            log.info("pod %s/%s: gone", worker.ns, worker.name)

    async def watch_pods(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._services_synced.wait(), 30)
        async for kind, obj in self.api.watch("/api/v1/pods"):
            try:
                if kind == "SYNC":
                    ours = [p for p in obj.get("items", []) if self.is_ours(p)]
                    present = {p["metadata"]["uid"] for p in ours}
                    for uid in list(self.workers):
                        if uid not in present:
                            self._spawn(self._vanished(uid))
                    for pod in ours:
                        await self._handle_pod(pod, resync=True)
                elif kind == "DELETED":
                    self._spawn(self._vanished(obj["metadata"]["uid"]))
                elif self.is_ours(obj):
                    await self._handle_pod(obj)
            except (ApiError, OSError, KeyError, ValueError):
                log.exception("pod event %s failed; continuing", kind)

    # ---- services -----------------------------------------------------------------------------
    async def watch_services(self) -> None:
        async for kind, obj in self.api.watch("/api/v1/services"):
            try:
                if kind == "SYNC":
                    items = obj.get("items", [])
                    self._service_objs = {
                        (s["metadata"]["namespace"], s["metadata"]["name"]): s for s in items
                    }
                    changed = await self.proxy.sync(items)
                    self._services_synced.set()
                else:
                    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                    if kind == "DELETED":
                        self._service_objs.pop(key, None)
                        changed = await self.proxy.remove(*key)
                    else:
                        self._service_objs[key] = obj
                        changed = await self.proxy.upsert(obj)
                if changed:
                    self._refresh_hosts()
            except (OSError, KeyError, ValueError):
                log.exception("service event %s failed; continuing", kind)

    # ---- run / shutdown -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        watchers = [
            asyncio.create_task(self.watch_services()),
            asyncio.create_task(self.watch_pods()),
        ]
        try:
            done, _ = await asyncio.wait(
                [*watchers, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t in watchers and t.exception():
                    log.error("watcher died: %r", t.exception())
        finally:
            for t in watchers:
                t.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every process we started (pods stay in the API; the cluster is going away)."""
        workers = list(self.workers.values())
        await asyncio.gather(
            *(w.stop(grace=min(w.grace(), self.shutdown_grace)) for w in workers),
            return_exceptions=True,
        )
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for w in workers:
            w.cleanup()
        self.workers.clear()
        await self.proxy.close()
        await self.api.close()
        self._pod_claim.close()
        self._svc_claim.close()

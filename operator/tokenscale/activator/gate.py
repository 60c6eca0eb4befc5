"""One wake and one wait per service, shared by every request that arrives while it is down.

Why shared: a burst of requests to a scaled-to-zero service would otherwise each patch
``/scale``, post a WokeFromZero Event and poll the API server, multiplying the load on the
API server exactly when a client retries in a loop. Here the first request starts a task; the
others await the same task, each with its own deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from tokenscale.activator.backend import Backend
from tokenscale.activator.metrics import Metrics
from tokenscale.k8s.wake import at_zero

log = logging.getLogger(__name__)


class WakeFailed(RuntimeError):
    """Scaling the service up failed; every request waiting on that wake gets this."""


@dataclass
class _Wait:
    task: asyncio.Task[list[str]]
    waiters: int = field(default=0)


class Gate:
    """Wakes services at zero and waits for a ready engine, one task per (namespace, name)."""

    def __init__(self, backend: Backend, metrics: Metrics, poll_seconds: float) -> None:
        self.backend = backend
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self._waits: dict[tuple[str, str], _Wait] = {}

    async def ready_ips(
        self, namespace: str, name: str, body: dict[str, Any], patience: float
    ) -> list[str]:
        """IPs of ready engines once there is one; wakes the service first if ``body`` (the
        object as just read) is at zero and no other request is already waking it.

        Raises TimeoutError after ``patience`` seconds and WakeFailed if the wake failed. The
        task is cancelled when its last waiter leaves (a timeout or a client gone): nobody
        needs the answer, and the next request starts afresh.
        """
        key = (namespace, name)
        entry = self._waits.get(key)
        if entry is None or entry.task.done():
            entry = _Wait(asyncio.create_task(self._wake_and_poll(namespace, name, body)))
            entry.task.add_done_callback(functools.partial(self._unlink, key, entry))
            self._waits[key] = entry
        entry.waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(entry.task), patience)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                self._forget(key, entry)
                entry.task.cancel()

    async def close(self) -> None:
        """Cancel every wait (shutdown); the waiting requests end with the server."""
        tasks = [entry.task for entry in self._waits.values()]
        self._waits.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def waiting(self) -> int:
        """Services with a wait in progress (tests and debugging)."""
        return len(self._waits)

    def _unlink(self, key: tuple[str, str], entry: _Wait, _task: object) -> None:
        self._forget(key, entry)

    def _forget(self, key: tuple[str, str], entry: _Wait) -> None:
        if self._waits.get(key) is entry:
            del self._waits[key]
        if entry.task.done() and not entry.task.cancelled():
            entry.task.exception()  # retrieved: no "never retrieved" warning if all left

    async def _wake_and_poll(
        self, namespace: str, name: str, body: dict[str, Any] | None
    ) -> list[str]:
        """Wake if at zero, then poll for ready engines. Until it has woken the service it
        re-reads the object each round: a request that lands while a scale-down is still
        being applied (``spec.replicas`` 0, pods terminating) is not yet "at zero", and must
        wake the service once it is rather than wait for engines nobody will start."""
        woken = False
        while True:
            if not woken and body is not None and at_zero(body):
                await self._wake(namespace, name, body)
                woken = True
            try:
                ips = await self.backend.ready_ips(namespace, name)
            except Exception as exc:  # noqa: BLE001 - a blip of the API server; the deadline rules
                log.warning("listing engine pods of %s/%s: %s", namespace, name, exc)
                ips = []
            if ips:
                return ips
            await asyncio.sleep(self.poll_seconds)
            if not woken:
                body = await self._reread(namespace, name)

    async def _wake(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        try:
            message = await self.backend.wake(body)
        except Exception as exc:
            log.warning("could not wake %s/%s: %s", namespace, name, exc)
            raise WakeFailed(f"could not wake InferenceService {namespace}/{name}: {exc}") from exc
        if message is None:
            log.info("%s/%s: already woken by another writer", namespace, name)
            return
        self.metrics.wakes.labels(namespace, name).inc()
        log.info("%s/%s: %s", namespace, name, message)

    async def _reread(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.backend.get_service(namespace, name)
        except Exception as exc:  # noqa: BLE001 - as for listing pods: try again next round
            log.warning("reading InferenceService %s/%s: %s", namespace, name, exc)
            return None

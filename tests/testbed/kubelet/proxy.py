"""Userspace Service proxy on loopback: one address per Service, one TCP listener per port.

Why: there is no kube-proxy and EndpointSlices reject loopback IPs ("may not be in the loopback
range"), so Services selecting process-run pods would have no endpoints. Instead each Service gets
an address from 127.20.0.0/16 (pods find it through their private ``/etc/hosts``) and connections
are forwarded round robin to *ready process-run pods* matching the selector, which the kubelet
resolves from its own pod state. KWOK pods (fake non-loopback IPs) are never backends, and the
``default/kubernetes`` Service forwards to the real API server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
Obj = Mapping[str, Any]
#: (namespace, selector, service port object, publishNotReadyAddresses) -> [(ip, port)]
BackendResolver = Callable[[str, Mapping[str, str], Obj, bool], list[tuple[str, int]]]


CLAIM_PORT = 1


def claim_block(cidr: str, prefixlen: int = 24) -> tuple[str, socket.socket]:
    """Claim a free /24 of ``cidr`` by binding a socket to its ``.1``; returns (block, socket).

    Why: several test beds (a pytest session and a ``testbed up`` for the demo) may share one
    machine; their kubelets must hand out disjoint pod and Service addresses. The kernel releases
    the claim when the process exits, even on SIGKILL. ``AddressPool`` never hands out ``.1``.
    """
    net = ipaddress.IPv4Network(cidr)
    blocks = [net] if net.prefixlen >= prefixlen else list(net.subnets(new_prefix=prefixlen))
    for block in blocks:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((str(block.network_address + 1), CLAIM_PORT))
        except OSError:
            sock.close()
            continue
        return str(block), sock
    raise RuntimeError(f"no free address block left in {cidr}")


class AddressPool:
    """Sequential loopback addresses from a network, skipping .0/.255, reused only after wrap."""

    def __init__(self, cidr: str, *, skip_first: int = 1):
        self.net = ipaddress.ip_network(cidr)
        if not self.net.is_loopback:
            raise ValueError(f"{cidr} is not loopback")
        self._hosts = [str(h) for h in self.net.hosts() if h.packed[-1] not in (0, 255)]
        self._hosts = self._hosts[skip_first:]
        self._next = 0
        self.used: dict[str, str] = {}  # key -> address

    def allocate(self, key: str, preferred: str | None = None) -> str:
        if key in self.used:
            return self.used[key]
        taken = set(self.used.values())
        if preferred and preferred not in taken and preferred in self._hosts_set():
            self.used[key] = preferred
            return preferred
        for _ in range(len(self._hosts)):
            addr = self._hosts[self._next]
            self._next = (self._next + 1) % len(self._hosts)
            if addr not in taken:
                self.used[key] = addr
                return addr
        raise RuntimeError(f"address pool {self.net} exhausted")

    def _hosts_set(self) -> set[str]:
        return set(self._hosts)

    def release(self, key: str) -> None:
        self.used.pop(key, None)


@dataclass
class _Service:
    namespace: str
    name: str
    address: str
    spec: Obj
    servers: dict[int, asyncio.Server] = field(default_factory=dict)
    rr: itertools.count[int] = field(default_factory=itertools.count)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


class ServiceProxy:
    def __init__(self, resolver: BackendResolver, api_port: int, cidr: str = "127.20.0.0/16"):
        self.resolver = resolver
        self.api_port = api_port
        self.pool = AddressPool(cidr)
        self.services: dict[tuple[str, str], _Service] = {}
        self._conns: set[asyncio.Task[None]] = set()

    def entries(self) -> list[tuple[str, str, str]]:
        """(name, namespace, address) of every proxied Service, for hosts files."""
        return [(s.name, s.namespace, s.address) for s in self.services.values()]

    def address_of(self, namespace: str, name: str) -> str | None:
        svc = self.services.get((namespace, name))
        return svc.address if svc else None

    async def upsert(self, svc: Obj) -> bool:
        """Create/update the proxy for a Service; returns True if the address set changed."""
        meta, spec = svc["metadata"], svc.get("spec", {})
        key = (meta["namespace"], meta["name"])
        if spec.get("type") == "ExternalName":
            return await self.remove(*key)
        current = self.services.get(key)
        changed = current is None
        if current is None:
            addr = self.pool.allocate(f"{key[0]}/{key[1]}")
            current = self.services[key] = _Service(key[0], key[1], addr, spec)
        current.spec = spec
        wanted = {
            int(p["port"]) for p in spec.get("ports", []) or [] if p.get("protocol", "TCP") == "TCP"
        }
        for port in set(current.servers) - wanted:
            current.servers.pop(port).close()
        for port in wanted - set(current.servers):
            try:
                current.servers[port] = await asyncio.start_server(
                    functools.partial(self._accept, current, port),
                    host=current.address,
                    port=port,
                    reuse_address=True,
                )
            except OSError as exc:
                log.error(
                    "service %s/%s: cannot listen on %s:%s: %s", *key, current.address, port, exc
                )
        return changed

    async def remove(self, namespace: str, name: str) -> bool:
        svc = self.services.pop((namespace, name), None)
        if svc is None:
            return False
        for server in svc.servers.values():
            server.close()
        self.pool.release(f"{namespace}/{name}")
        return True

    async def sync(self, services: list[Obj]) -> bool:
        present = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services}
        changed = False
        for key in list(self.services):
            if key not in present:
                changed |= await self.remove(*key)
        for svc in services:
            changed |= await self.upsert(svc)
        return changed

    def backends(self, svc: _Service, port: int) -> list[tuple[str, int]]:
        if (svc.namespace, svc.name) == ("default", "kubernetes"):
            return [("127.0.0.1", self.api_port)]
        selector = svc.spec.get("selector") or {}
        if not selector:
            return []
        sport = next((p for p in svc.spec.get("ports", []) if int(p["port"]) == port), None)
        if sport is None:
            return []
        found = self.resolver(
            svc.namespace, selector, sport, bool(svc.spec.get("publishNotReadyAddresses"))
        )
        return [(ip, p) for ip, p in found if ip.startswith("127.")]  # loopback only, always

    def _accept(
        self, svc: _Service, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.create_task(self._forward(svc, port, reader, writer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _forward(
        self, svc: _Service, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        backends = self.backends(svc, port)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        if backends:
            start = next(svc.rr)
            for i in range(len(backends)):
                host, bport = backends[(start + i) % len(backends)]
                try:
                    upstream = await asyncio.wait_for(asyncio.open_connection(host, bport), 5)
                    break
                except (OSError, TimeoutError) as exc:
                    log.info(
                        "service %s/%s:%s: backend %s:%s failed: %s",
                        svc.namespace,
                        svc.name,
                        port,
                        host,
                        bport,
                        exc,
                    )
        if upstream is None:
            log.debug("service %s/%s:%s: no ready backend", svc.namespace, svc.name, port)
            writer.close()
            return
        ureader, uwriter = upstream
        try:
            await asyncio.gather(_pipe(reader, uwriter), _pipe(ureader, writer))
        finally:
            for w in (writer, uwriter):
                w.close()

    async def close(self) -> None:
        for key in list(self.services):
            await self.remove(*key)
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

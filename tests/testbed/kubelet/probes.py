"""Container probes (startup, readiness, liveness) with the kubelet's thresholds and defaults.

Why: readiness is what the autoscaler and the Service proxy act on, so it must come from the
pod's own probe, not from "the process started". ``ProbeTracker`` is the pure threshold logic
(unit-tested); ``run_probe`` performs one check (httpGet / tcpSocket / exec / grpc as TCP) against
the pod's loopback IP only.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .spec import resolve_port

ExecRunner = Callable[[list[str], float], Awaitable[int]]


@dataclass
class ProbeTracker:
    """Consecutive-result bookkeeping of one probe (``kind``: startup, readiness, liveness)."""

    kind: str
    spec: Mapping[str, Any]
    successes: int = 0
    failures: int = 0
    result: bool = False
    last_message: str = ""

    def __post_init__(self) -> None:
        # liveness starts "alive"; readiness and startup start "not yet"
        self.result = self.kind == "liveness"

    @property
    def initial_delay(self) -> float:
        return float(self.spec.get("initialDelaySeconds", 0) or 0)

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10) or 10)

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1) or 1)

    @property
    def success_threshold(self) -> int:
        return int(self.spec.get("successThreshold", 1) or 1)

    @property
    def failure_threshold(self) -> int:
        return int(self.spec.get("failureThreshold", 3) or 3)

    def record(self, ok: bool, message: str = "") -> bool:
        """Record one probe outcome; returns the (possibly changed) probe result."""
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_threshold:
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.failure_threshold:
                self.result = False
        return self.result

    def reset(self) -> None:
        self.successes = self.failures = 0
        self.result = self.kind == "liveness"


async def _http_get(
    host: str, port: int, spec: Mapping[str, Any], limit: float
) -> tuple[bool, str]:
    scheme = str(spec.get("scheme", "HTTP")).upper()
    ctx: ssl.SSLContext | None = None
    if scheme == "HTTPS":  # the kubelet does not verify probe certificates either
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    path = str(spec.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    headers = {"Host": f"{host}:{port}", "User-Agent": "kube-probe/1.34", "Accept": "*/*"}
    for h in spec.get("httpHeaders", []) or []:
        headers[str(h["name"])] = str(h.get("value", ""))
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request += "Connection: close\r\n\r\n"
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), limit)
    try:
        writer.write(request.encode("latin-1"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), limit)
    finally:
        writer.close()
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"malformed HTTP response {line[:80]!r}"
    code = int(parts[1])
    return 200 <= code < 400, f"HTTP probe {path} -> {code}"


async def run_probe(
    spec: Mapping[str, Any],
    *,
    pod_ip: str,
    containers: Iterable[Mapping[str, Any]],
    exec_runner: ExecRunner,
    limit: float,
) -> tuple[bool, str]:
    """Perform one probe; returns (success, message). Never contacts a non-loopback address."""
    containers = list(containers)
    try:
        if "exec" in spec:
            command = [str(c) for c in spec["exec"].get("command", [])]
            code = await exec_runner(command, limit)
            return code == 0, f"exec {command} -> {code}"
        for kind in ("httpGet", "tcpSocket", "grpc"):
            if kind not in spec:
                continue
            sub = spec[kind]
            host = str(sub.get("host") or pod_ip)
            if not host.startswith("127."):
                return False, f"refusing to probe non-loopback host {host}"
            port = resolve_port(sub.get("port", 0), containers)
            if port is None:
                return False, f"unknown named port {sub.get('port')!r}"
            if kind == "httpGet":
                return await _http_get(host, port, sub, limit)
            # tcpSocket, and grpc approximated as "the port accepts connections"
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
            writer.close()
            return True, f"tcp {host}:{port} open"
        return False, f"unsupported probe handler {sorted(spec)}"
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        return False, f"{type(exc).__name__}: {exc}"

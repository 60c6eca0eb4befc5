"""Process kubelet: probe thresholds and probe execution against loopback servers."""

from __future__ import annotations

import asyncio

import pytest

from tests.testbed.kubelet.probes import ProbeTracker, run_probe


def test_readiness_needs_success_threshold_and_drops_after_failures() -> None:
    t = ProbeTracker("readiness", {"successThreshold": 2, "failureThreshold": 2})
    assert t.result is False
    assert t.record(True) is False
    assert t.record(True) is True
    assert t.record(False) is True  # one failure is tolerated
    assert t.record(False) is False
    assert t.record(True) is False


def test_liveness_starts_alive_and_defaults() -> None:
    t = ProbeTracker("liveness", {})
    assert t.result is True
    assert (t.period, t.timeout, t.failure_threshold, t.success_threshold) == (10, 1, 3, 1)
    t.record(False)
    t.record(False)
    assert t.record(False) is False
    t.reset()
    assert t.result is True


async def _never_exec(cmd: list[str], limit: float) -> int:
    raise AssertionError("no exec expected")


async def _server(status: int) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (503, False)])
async def test_http_probe(status: int, ok: bool) -> None:
    server, port = await _server(status)
    async with server:
        result, msg = await run_probe(
            {"httpGet": {"path": "health", "port": "http"}},
            pod_ip="127.0.0.1",
            containers=[{"ports": [{"name": "http", "containerPort": port}]}],
            exec_runner=_never_exec,
            limit=2,
        )
    assert result is ok, msg
    assert "/health" in msg


async def test_tcp_probe_open_and_closed() -> None:
    server, port = await _server(200)
    async with server:
        ok, _ = await run_probe(
            {"tcpSocket": {"port": port}},
            pod_ip="127.0.0.1",
            containers=[],
            exec_runner=_never_exec,
            limit=2,
        )
    assert ok
    ok, msg = await run_probe(
        {"tcpSocket": {"port": port}},
        pod_ip="127.0.0.1",
        containers=[],
        exec_runner=_never_exec,
        limit=2,
    )
    assert not ok and "Error" in msg


async def test_exec_probe_and_non_loopback_refused() -> None:
    async def runner(cmd: list[str], limit: float) -> int:
        return 0 if cmd == ["true"] else 1

    ok, _ = await run_probe(
        {"exec": {"command": ["true"]}}, pod_ip="", containers=[], exec_runner=runner, limit=1
    )
    assert ok
    ok, msg = await run_probe(
        {"httpGet": {"host": "10.244.0.5", "port": 80}},
        pod_ip="127.10.0.2",
        containers=[],
        exec_runner=runner,
        limit=1,
    )
    assert not ok and "non-loopback" in msg

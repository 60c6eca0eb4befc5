"""A saturated engine answers /health slowly; the rendered readiness probe must not flap.

Why this shape: readiness is what takes a pod out of the Service, so a probe that gives up on a
busy-but-healthy engine sheds capacity exactly at peak load (llm-d-benchmark#1734, gonka#1421).
The check runs the process kubelet's own probe code (``run_probe`` + ``ProbeTracker``) with the
probe the operator renders, against a /health server whose answers take as long as a saturated
engine's. Time is scaled by ``SCALE`` on both sides (server latency and probe timeout), so the
test takes seconds, not minutes. The old probe (timeout 5 s, 3 failures) flaps on the same
trace, and a dead engine (503) still leaves the endpoints within the failure budget.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.testbed.kubelet.probes import ProbeTracker, run_probe
from tokenscale.api.service import EngineSpec
from tokenscale.render import patches

SCALE = 0.02
#: seconds /health takes under load: warm, then saturated (7 s), with three 20 s stalls in a row
#: (the probe gives up on those at its timeout). None = the engine answers 503 (dead).
LOAD_TRACE: list[float | None] = [0.05] * 3 + [7.0] * 6 + [20.0] * 3 + [7.0] * 6
DEAD_TRACE: list[float | None] = [0.05] * 3 + [None] * 8
OLD_READINESS = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5,
                 "timeoutSeconds": 5, "failureThreshold": 3}  # fmt: skip


def rendered_readiness() -> dict[str, Any]:
    container: dict[str, Any] = {}
    patches.probes(container, EngineSpec())
    probe: dict[str, Any] = container["readinessProbe"]
    return probe


async def _slow_health(trace: list[float | None]) -> tuple[asyncio.Server, int]:
    answers = iter(trace)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        latency = next(answers)
        status = 503 if latency is None else 200
        await asyncio.sleep((latency or 0.0) * SCALE)
        try:
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except ConnectionError:
            pass  # the prober gave up (timeout) and closed
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def readiness_over(probe: dict[str, Any], trace: list[float | None]) -> list[bool]:
    """The pod's readiness after each probe of ``trace`` (the kubelet's logic and timeout)."""
    server, port = await _slow_health(trace)
    tracker = ProbeTracker("readiness", probe)
    containers = [{"ports": [{"name": "http", "containerPort": port}]}]

    async def no_exec(cmd: list[str], limit: float) -> int:
        raise AssertionError("httpGet probe expected")

    states = []
    async with server:
        for _ in trace:
            ok, _msg = await run_probe(
                probe,
                pod_ip="127.0.0.1",
                containers=containers,
                exec_runner=no_exec,
                limit=tracker.timeout * SCALE,
            )
            states.append(tracker.record(ok))
    return states


async def test_saturated_engine_stays_ready_with_the_rendered_probe() -> None:
    probe = rendered_readiness()
    states = await readiness_over(probe, LOAD_TRACE)
    assert states[2] is True
    assert all(states[2:]), f"readiness flapped under load: {states}"


async def test_the_old_probe_flaps_on_the_same_trace() -> None:
    """Proof the trace bites: 7 s answers exceed a 5 s timeout three times in a row."""
    states = await readiness_over(OLD_READINESS, LOAD_TRACE)
    assert states[2] is True and False in states[3:]


async def test_a_dead_engine_still_leaves_the_endpoints() -> None:
    probe = rendered_readiness()
    states = await readiness_over(probe, DEAD_TRACE)
    threshold = probe["failureThreshold"]
    assert states[2] is True
    assert states[2 + threshold] is False and all(states[2 : 2 + threshold])
    # worst case out of the endpoints: failureThreshold x period (503s answer at once)
    assert threshold * probe["periodSeconds"] <= 30


@pytest.mark.parametrize("kind", ["readinessProbe", "livenessProbe"])
def test_probe_budgets(kind: str) -> None:
    container: dict[str, Any] = {}
    patches.probes(container, EngineSpec())
    probe = container[kind]
    assert 10 <= probe["timeoutSeconds"] <= 15 and probe["failureThreshold"] >= 6

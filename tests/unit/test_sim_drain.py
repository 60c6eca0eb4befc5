"""The simulator drains like vLLM's ``--shutdown-timeout``: on stop a stream in flight finishes
(and new connections are refused), while timeout 0 cuts it, as vLLM's default does. Rollouts on
simulated engines rely on it to show zero failed requests (docs/rollouts.md)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx
import pytest

from tokenscale.sim.model import Engine
from tokenscale.sim.profiles import get_profile
from tokenscale.sim.server import Endpoint, EngineHost, Fleet, SimClock


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _stream_during_stop(shutdown_timeout: float) -> tuple[bool, int]:
    """(whether the stream in flight completed, tokens it got) when the fleet stops mid-way."""
    port = _port()
    engine = Engine(get_profile("MI355X", "llama-2-70b"), seed=1)
    host = EngineHost(engine, SimClock(1.0), Endpoint("127.0.0.1", port, "m", "llama-2-70b"), 0.0)
    fleet = Fleet([host], shutdown_timeout)
    await fleet.start()
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"model": "m", "prompt": "x", "max_tokens": 64, "stream": True, "ignore_eos": True}
    got, done = 0, False
    started = asyncio.Event()

    async def consume() -> None:
        nonlocal got, done
        async with (
            httpx.AsyncClient(timeout=30, trust_env=False) as client,
            client.stream("POST", url, json=body) as resp,
        ):
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    got += 1
                    if got >= 2:  # the stream is under way
                        started.set()

    reader = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    await fleet.stop()
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        await asyncio.wait_for(reader, 10)
    return done, got


async def test_shutdown_timeout_lets_the_stream_in_flight_finish() -> None:
    done, tokens = await _stream_during_stop(10.0)
    assert done and tokens >= 64


async def test_zero_timeout_aborts_like_vllms_default() -> None:
    done, _ = await _stream_during_stop(0.0)
    assert not done


@pytest.mark.parametrize("drain", [0.0, 5.0])
async def test_a_stopped_fleet_refuses_new_connections(drain: float) -> None:
    port = _port()
    engine = Engine(get_profile("MI355X", "llama-2-70b"), seed=1)
    host = EngineHost(engine, SimClock(1.0), Endpoint("127.0.0.1", port, "m", "llama-2-70b"), 0.0)
    fleet = Fleet([host], drain)
    await fleet.start()
    await fleet.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.get(f"http://127.0.0.1:{port}/health")

"""Activator-fault drill (issue 17): a flood of requests to a sleeping service, the activator
stopped while requests wait, and a wake that times out. Every client gets a response or a clear
error (never a hang), and the service wakes exactly once.

The activators here are ``tokenscale activator`` processes on loopback, started by the test with
the test bed's kubeconfig; the test sends requests straight to them with the Host header a
client of the Service would send (``NAME.NAMESPACE.svc``), so it can fire many at once and see
each answer. Engines are simulated pods of the process kubelet, reachable on their loopback pod
IPs like in a cluster. Two activators share the flood, as ``activator.replicas: 2`` would.
Wakes are counted from the API server: WokeFromZero Events and the writes of ``spec.replicas``
seen by a watch (tests/e2e/writecount.py counts every change of the object).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import apply, condition, get, wait_for
from tests.e2e.operator_proc import OperatorProcess, _die_with_parent, free_port
from tests.testbed import nodes
from tests.testbed.cluster import Cluster
from tests.testbed.request_job import sleeping_service

pytestmark = pytest.mark.e2e

LONG = os.environ.get("TOKENSCALE_DRILL_LONG") == "1"
FLOOD = 200 if LONG else 40
MODEL = "llama-2-70b"
BROKEN_IMAGE = "registry.invalid/tokenscale/engine:does-not-exist"


class Activator:
    """One ``tokenscale activator`` process on a free loopback port."""

    def __init__(self, cluster: Cluster, name: str, timeout: float) -> None:
        self.port = free_port()
        self.log = cluster.logs_dir / f"{name}.log"
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        cmd = [sys.executable, "-m", "tokenscale", "activator", "--host", "127.0.0.1",
               "--port", str(self.port), "--timeout", str(timeout), "--poll", "0.5"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        wait_for(self._healthy, timeout=60, what=f"{name} listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"activator exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/activator/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def activators(cluster: Cluster) -> Iterator[list[Activator]]:
    """Activators the test starts (``started.append``); every one is stopped afterwards."""
    started: list[Activator] = []
    try:
        yield started
    finally:
        for one in started:
            one.stop()


async def _one(client: httpx.AsyncClient, url: str, host: str) -> dict[str, Any]:
    """One streamed completion; what the client saw (status, chunks, or the error)."""
    body = {"model": MODEL, "prompt": "wake up", "max_tokens": 8, "stream": True}
    t0 = time.monotonic()
    try:
        async with client.stream(
            "POST", f"{url}/v1/completions", json=body, headers={"Host": host}
        ) as resp:
            chunks, text = 0, ""
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks += 1
                elif resp.status_code != 200:
                    text += line
            out: dict[str, Any] = {"status": resp.status_code, "chunks": chunks}
            if resp.status_code != 200:
                out["error"] = _message(text)
    except httpx.HTTPError as exc:
        out = {"status": None, "error": f"{type(exc).__name__}: {exc}"}
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text


def fire(urls: list[str], host: str, n: int, client_timeout: float) -> list[dict[str, Any]]:
    """``n`` concurrent requests spread round-robin over ``urls``."""

    async def run() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=n + 10)
        async with httpx.AsyncClient(
            timeout=client_timeout, limits=limits, trust_env=False
        ) as client:
            return list(
                await asyncio.gather(*(_one(client, urls[i % len(urls)], host) for i in range(n)))
            )

    return asyncio.run(run())


def unanswered(answers: list[dict[str, Any]]) -> int:
    """Clients left without a response or an error they can act on: no HTTP status at all (a
    connection dropped or timed out), or an error status without the OpenAI error message."""
    return sum(
        1
        for a in answers
        if a["status"] is None or (a["status"] != 200 and not (a.get("error") or "").strip())
    )


def wakes(cluster: Cluster, namespace: str, name: str) -> int:
    events = get(cluster, "events", "-n", namespace) or {"items": []}
    return sum(
        (e.get("count") or 1)
        for e in events["items"]
        if e.get("reason") == "WokeFromZero" and (e.get("involvedObject") or {}).get("name") == name
    )


def asleep(cluster: Cluster, namespace: str, names: list[str]) -> None:
    """Every named service Ready with reason ScaledToZero (asleep behind nothing yet)."""

    def all_asleep() -> bool:
        for name in names:
            cond = condition(get(cluster, "tsvc", name, "-n", namespace), "Ready")
            if (cond.get("status"), cond.get("reason")) != ("True", "ScaledToZero"):
                return False
        return True

    wait_for(all_asleep, timeout=120, what=f"{names} asleep at zero")


def record(figures: dict[str, Any]) -> None:
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        Path(out, "activator_faults.json").write_text(json.dumps(figures, indent=2))


def services() -> list[dict[str, Any]]:
    """flood: a plain sleeping service; stopped: engines that load for longer than the
    activator's drain (15 s after SIGTERM); never: an engine image that cannot be pulled, run
    by the process kubelet (not faked Running by KWOK)."""
    flood = sleeping_service("flood", 600, windowSeconds=10)
    stopped = sleeping_service("stopped", 600, windowSeconds=10)
    stopped["spec"]["engine"] = {"mode": "simulated", "args": ["--startup-seconds", "25"]}
    never = sleeping_service("never", 600, windowSeconds=10)
    never["spec"]["engine"] = {"mode": "simulated", "image": BROKEN_IMAGE}
    never["spec"]["podTemplate"] = {"labels": {nodes.PROCESS_LABEL: nodes.PROCESS_LABEL_VALUE}}
    return [flood, stopped, never]


def test_activator_faults_every_client_gets_an_answer_and_each_service_wakes_once(
    cluster: Cluster, operator: OperatorProcess, namespace: str, activators: list[Activator]
) -> None:
    docs = services()
    for doc in docs:
        apply(cluster, namespace, doc)
    asleep(cluster, namespace, [d["metadata"]["name"] for d in docs])
    figures = {
        "flood": flood(cluster, namespace, activators),
        "activator_stopped": stopped(cluster, namespace, activators),
        "wake_timeout": timed_out(cluster, namespace, activators),
    }
    record(figures)
    print(json.dumps(figures, indent=2))
    for case, got in figures.items():
        assert got["unanswered"] == 0, (case, figures)
        assert got["wake_events"] == 1, (case, figures)
    assert figures["flood"]["answered_200"] == FLOOD, figures
    for answer in figures["activator_stopped"]["answers"]:
        status, error = json.loads(answer)
        # a response, or the 503 that says the activator is going and to retry
        assert status == 200 or (status == 503 and "activator is shutting down" in error), figures
    assert figures["activator_stopped"]["retry_after_restart"] == [200] * 3, figures
    timeout = figures["wake_timeout"]
    assert timeout["statuses"] == ["503"], figures
    assert "did not become ready" in timeout["message"] and "never" in timeout["message"]
    assert timeout["slowest_seconds"] < timeout["activator_timeout_seconds"] + 10, figures


def flood(cluster: Cluster, namespace: str, activators: list[Activator]) -> dict[str, Any]:
    """FLOOD streamed completions at once over two activators to a service at zero."""
    pair = [Activator(cluster, f"activator-{namespace}-{i}", 120) for i in range(2)]
    activators += pair
    t0 = time.monotonic()
    answers = fire([a.url for a in pair], f"flood.{namespace}.svc", FLOOD, client_timeout=180)
    ok = [a for a in answers if a["status"] == 200 and a["chunks"] > 0]
    return {
        "requests": FLOOD,
        "answered_200": len(ok),
        "unanswered": unanswered(answers),
        "failed": [a for a in answers if a not in ok][:5],
        "wake_events": wakes(cluster, namespace, "flood"),
        "seconds": round(time.monotonic() - t0, 1),
        "slowest_seconds": max(a["seconds"] for a in answers),
    }


def stopped(cluster: Cluster, namespace: str, activators: list[Activator]) -> dict[str, Any]:
    """SIGTERM to the activator 4 s after 10 requests started waiting for slow engines; then a
    replacement activator serves the retries."""
    host = f"stopped.{namespace}.svc"
    first = Activator(cluster, f"activator-{namespace}-a", 120)
    activators.append(first)
    n = 10

    async def run() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
            waiting = [asyncio.create_task(_one(client, first.url, host)) for _ in range(n)]
            await asyncio.sleep(4)
            first.signal(signal.SIGTERM)  # what a pod deletion or a rollout sends
            return list(await asyncio.gather(*waiting))

    t0 = time.monotonic()
    answers = asyncio.run(run())
    answered_within = round(time.monotonic() - t0, 1)
    second = Activator(cluster, f"activator-{namespace}-b", 120)
    activators.append(second)
    retry = fire([second.url], host, 3, client_timeout=120)
    return {
        "requests_waiting": n,
        "unanswered": unanswered(answers),
        "answers": sorted({json.dumps([a.get("status"), a.get("error")]) for a in answers}),
        "all_answered_within_seconds": answered_within,
        "retry_after_restart": [a["status"] for a in retry],
        "wake_events": wakes(cluster, namespace, "stopped"),
    }


def timed_out(cluster: Cluster, namespace: str, activators: list[Activator]) -> dict[str, Any]:
    """10 requests to a service whose engine never gets ready, through ``--timeout 8``."""
    timeout = 8.0
    one = Activator(cluster, f"activator-{namespace}-t", timeout)
    activators.append(one)
    n = 10
    answers = fire([one.url], f"never.{namespace}.svc", n, client_timeout=60)
    return {
        "requests": n,
        "activator_timeout_seconds": timeout,
        "unanswered": unanswered(answers),
        "statuses": sorted({str(a["status"]) for a in answers}),
        "slowest_seconds": max(a["seconds"] for a in answers),
        "message": answers[0].get("error"),
        "wake_events": wakes(cluster, namespace, "never"),
    }

"""Metrics faults drill: engines that answer garbage must never move the replica count.

The real collector (:class:`ScrapeCollector`, behind an ``httpx.MockTransport``) and the real
autoscaling pass (:func:`run_pass` on the in-memory API) run a scale-to-zero service at a steady
1,500 generation tok/s over two engines (target 1,000 per replica: two replicas wanted). Each
fault then lasts 70 s of simulated time, longer than every window and the idle grace
(timeouts, HTML, truncated bodies, 500s, refused connections, counters reset to zero, NaN and
+Inf samples), followed by recovery. Measured: ``spec.replicas`` changes during faults (the
figure; must be 0, and never to zero), and ``status.scaling`` naming why it holds.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.autoscale.collector import ScrapeCollector
from tokenscale.controller.autoscaler import LoopState, run_pass

CFG = OperatorConfig()
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STEP = 2  # seconds between passes (the operator's scrape interval in the test bed)
PODS = {"127.10.9.1": "llm-mi300x-a", "127.10.9.2": "llm-mi300x-b"}
TOKENS_PER_POD = 750.0  # tok/s: 1,500 in total, 2 replicas at a target of 1,000

Handler = Callable[[httpx.Request, float], httpx.Response]


def _vllm_scalars(text: str) -> str:
    """The vLLM counter and gauge families of an exposition, in its order and format (the
    histograms and process metrics, which the collector skips, only cost parse time here)."""
    keep, out = False, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            keep = name.startswith("vllm:") and kind in ("counter", "gauge")
        if (keep and not line.startswith("#")) or (line.startswith("# TYPE ") and keep):
            out.append(line)
    return "\n".join(out) + "\n"


#: A real vLLM 0.32 exposition (tests/fixtures), its generation counter replaced per scrape.
REAL = _vllm_scalars(
    (Path(__file__).parents[1] / "fixtures" / "vllm-metrics-under-load.txt").read_text()
)
GENERATION = re.compile(r"^(vllm:generation_tokens_total\{[^}]*\}) \S+$", re.MULTILINE)
assert len(GENERATION.findall(REAL)) == 1


def exposition(tokens: float) -> str:
    return GENERATION.sub(lambda m: f"{m.group(1)} {tokens!r}", REAL)


def cut_in_counter(text: str) -> str:
    """The body cut two characters into the generation counter's value (a dropped
    connection): every line before it is intact, the counter reads 10 to 10,000 times low."""
    match = GENERATION.search(text)
    assert match is not None
    return text[: match.end(1) + 3]


def healthy(_: httpx.Request, t: float) -> httpx.Response:
    return httpx.Response(200, text=exposition(TOKENS_PER_POD * t))


def _raise(exc: type[httpx.HTTPError]) -> Handler:
    def handler(request: httpx.Request, _: float) -> httpx.Response:
        raise exc("injected", request=request)

    return handler


def transport_faults(gone: str) -> dict[str, Handler]:
    """The faults any /metrics port can show, whoever serves it (engine, energy exporter,
    router); ``gone`` names what a refused connection means."""
    return {
        "timeout": _raise(httpx.ReadTimeout),
        f"connection refused ({gone} gone)": _raise(httpx.ConnectError),
        "http 500": lambda _, t: httpx.Response(500, text="Internal Server Error"),
        "html page": lambda _, t: httpx.Response(
            200, text="<!doctype html><html><body><h1>502 Bad Gateway</h1></body></html>"
        ),
        "empty body": lambda _, t: httpx.Response(200, text=""),
    }


FAULTS: dict[str, Handler] = {
    **transport_faults("engine"),
    "truncated body (after the counters)": lambda _, t: httpx.Response(
        200, text=exposition(TOKENS_PER_POD * t)[: int(len(REAL) * 0.8)]
    ),
    "truncated body (inside the counter)": lambda _, t: httpx.Response(
        200, text=cut_in_counter(exposition(TOKENS_PER_POD * t))
    ),
    # The engines restarted when the fault starts (t=40): counters begin again from zero.
    "counters reset": lambda _, t: httpx.Response(200, text=exposition(TOKENS_PER_POD * (t - 40))),
    "NaN counter": lambda _, t: httpx.Response(200, text=exposition(math.nan)),
    "+Inf counter": lambda _, t: httpx.Response(200, text=exposition(math.inf)),
}
FIGURES: dict[str, Any] = {}


def _cluster(**spec: Any) -> FakeKube:
    """The drill's service (``spec`` replaces top-level spec keys), its nodes and engine pods."""
    kube = FakeKube()
    doc = service(
        **{
            "scaling": {
                "mode": "builtin",
                "targetPerReplica": 1000,
                "windowSeconds": 10,
                "scaleToZero": True,
                "scaleToZeroGraceSeconds": 30,
                "scaleDownStabilizationSeconds": 10,
            },
            "pools": [{"name": "mi300x", "gpu": "MI300X", "minReplicas": 0, "maxReplicas": 8}],
            "replicas": 2,
            **spec,
        }
    )
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    doc["status"] = {
        "pools": [{"name": "mi300x", "gpu": "MI300X", "desiredReplicas": 2, "readyReplicas": 2}]
    }
    kube.put(doc)
    for i in range(2):
        kube.put({
            "apiVersion": "v1", "kind": "Node",
            # what the node labeller writes on an unpartitioned MI300X (device id and vram)
            "metadata": {"name": f"n{i}", "labels": {c.NODE_LABEL_DEVICE_ID: "74a1",
                                                     "amd.com/gpu.vram": "192G"}},
            "status": {"allocatable": {c.RESOURCE_GPU: "8"}},
        })  # fmt: skip
    for ip, name in PODS.items():
        kube.put({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {c.LABEL_SERVICE: "llm", c.LABEL_POOL: "mi300x"}},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip
    return kube


class Drill:
    """One service, one collector, a clock; ``handler`` answers every scrape."""

    def __init__(self, cfg: OperatorConfig = CFG, **spec: Any) -> None:
        self.cfg = cfg
        self.kube = _cluster(**spec)
        self.loop = LoopState()
        self.t = 0.0
        self.handler: Handler = healthy
        self.status_errors: list[str] = []
        transport = httpx.MockTransport(lambda request: self.handler(request, self.t))
        self.client = httpx.AsyncClient(transport=transport)
        self.source = ScrapeCollector(self.client)

    def replicas(self) -> int:
        svc = self.kube.get("InferenceService", "ns", "llm")
        assert svc is not None
        return int(svc["spec"]["replicas"])

    def scaling(self) -> dict[str, Any]:
        svc = self.kube.get("InferenceService", "ns", "llm")
        assert svc is not None
        return dict((svc.get("status") or {}).get("scaling") or {})

    async def run(self, seconds: float) -> list[int]:
        """Passes for ``seconds``; the replica count after each."""
        seen = []
        end = self.t + seconds
        while self.t < end:
            self.t += STEP
            body = self.kube.get("InferenceService", "ns", "llm")
            assert body is not None
            await run_pass(
                body, self.kube, self.cfg, self.source, self.loop, T0 + timedelta(seconds=self.t)
            )
            seen.append(self.replicas())
        return seen


def loaded(factor: float) -> Handler:
    """Healthy engines at ``factor`` times the steady load."""
    return lambda _, t: httpx.Response(200, text=exposition(TOKENS_PER_POD * factor * t))


async def test_controls_the_loop_does_move_replicas(caplog: pytest.LogCaptureFixture) -> None:
    """Positive controls: without them "no change under faults" could mean a dead loop. The
    same drill scales up under 3x load and down when the engines go idle (the fake API runs no
    Deployment controller, so pods and ready counts stay as seeded; the /scale writes are what
    is measured)."""
    drill = Drill()
    try:
        steady = await drill.run(40)
        assert steady[-10:] == [2] * 10, steady
        assert "does not validate" not in caplog.text, "the drill's status is invalid"
        drill.handler = loaded(3.0)
        assert max(await drill.run(60)) >= 4
        drill.handler = loaded(0.0)
        idle = await drill.run(120)
        assert idle[-1] < 2, (idle, drill.scaling())
    finally:
        await drill.client.aclose()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        (Path(out) / "metrics_faults.json").write_text(json.dumps(FIGURES, sort_keys=True))


#: Faults known to crash the decision (strict xfail). Empty since the fix of issue 17 ("a NaN
#: or +Inf in an engine's /metrics raises an error the autoscaler loop does not catch"): such
#: a sample is now a bad scrape, and the drill counts NaN/+Inf among the faults that hold.
KNOWN_CRASHES: set[str] = set()
#: Found by this drill, not fixed here (autoscale/rates.py is another engineer's in issue 17): a
#: body cut inside the generation counter still parses, as a counter 10-10,000x low, so the
#: rate collapses and the service scales down. The fix belongs in ``parse_metrics``: require
#: the families vLLM always writes after that counter (e.g. ``vllm:request_success_total``).
KNOWN_WRONG: set[str] = set()


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            f,
            marks=pytest.mark.xfail(
                strict=True, raises=(ValueError, OverflowError), reason="issue 17: NaN/Inf"
            ),
        )
        if f in KNOWN_CRASHES
        else pytest.param(
            f,
            marks=pytest.mark.xfail(
                strict=True, raises=AssertionError, reason="a truncated counter parses"
            ),
        )
        if f in KNOWN_WRONG
        else f
        for f in sorted(FAULTS)
    ],
)
async def test_metrics_fault_holds_replicas(fault: str) -> None:
    drill = Drill()
    FIGURES["faults"] = FIGURES.get("faults", 0) + 1
    try:
        steady = await drill.run(40)
        assert steady[-10:] == [2] * 10, f"the healthy service is not steady at 2: {steady}"
        drill.handler = FAULTS[fault]
        during = await drill.run(70)
        scaling = drill.scaling()
        changes = sum(1 for a, b in zip([2, *during], during, strict=False) if a != b)
        FIGURES["replica_changes"] = FIGURES.get("replica_changes", 0) + changes
        FIGURES["scaled_to_zero"] = FIGURES.get("scaled_to_zero", 0) + (0 in during)
        FIGURES.setdefault("scaling_message", {})[fault] = scaling.get("message")
        assert 0 not in during, f"{fault}: scaled to zero: {during}"
        assert changes == 0, f"{fault}: replicas moved: {during}"
        message = f"{scaling.get('reason')} {scaling.get('message')}".lower()
        assert any(word in message for word in ("metric", "scrape", "hold")), scaling
        # Recovery: healthy engines (a restarted one keeps its new counters).
        drill.handler = FAULTS[fault] if fault == "counters reset" else healthy
        after = await drill.run(30)
        assert after[-1] == 2, f"{fault}: not back to steady after recovery: {after}"
    except Exception as exc:
        FIGURES.setdefault("crashed", {})[fault] = f"{type(exc).__name__}: {exc}"[:200]
        raise
    finally:
        await drill.client.aclose()

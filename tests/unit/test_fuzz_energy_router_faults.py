"""Metrics faults drill, second half: the energy exporter and the router answer garbage while
the engines are healthy.

The harness is the engine drill's (:mod:`tests.unit.test_fuzz_metrics_faults`): the real
collector and the real autoscaling pass on the in-memory API, a steady 1,500 tok/s over two
engines (two replicas wanted). Here ``energy.type: scrape`` reads two AMD Device Metrics Exporter
pods (one per node, two GPUs per engine pod at 250 W: 1.5 output tokens per joule), and a
second service in router mode is read through its router's metrics port (20 requests/s). Each
fault lasts 70 s (longer than the 60 s energy window), then the exporter or router recovers.

Asserted on every pass: the pass never raises, the replica count and the Scaling condition are
the same as in a run with a healthy exporter/router (energy and router figures never scale), no
figure in status or in the energy gauges is wrong (tokens/J, watts and requests/s are the true
values or absent: never stale, negative, infinite, or bogus after a counter reset). At the end of
each fault the status says the figures are unknown with a reason naming the fault; after
recovery they come back. Positive controls check that a healthy exporter and router do produce
the figures, so that "absent" cannot pass by default.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.unit.test_fuzz_metrics_faults import (
    CFG,
    PODS,
    STEP,
    Drill,
    Handler,
    healthy,
    transport_faults,
)
from tokenscale.api.config import OperatorConfig
from tokenscale.autoscale.routermetrics import DEFAULT_NAMES
from tokenscale.controller import energy, metrics
from tokenscale.render.router import METRICS_PORT, router_pod_labels

#: exporter pod IP -> (node, [(gpu_id, engine pod)])
EXPORTERS = {
    "127.10.8.1": ("n0", [("0", "llm-mi300x-a"), ("1", "llm-mi300x-a")]),
    "127.10.8.2": ("n1", [("0", "llm-mi300x-b"), ("1", "llm-mi300x-b")]),
}
WATTS_PER_GPU = 250.0
TRUE_TOKENS_PER_JOULE = 1500.0 / (4 * WATTS_PER_GPU)  # 1.5
ROUTER_IP = "127.10.7.1"
ROUTER_RPS = 20.0
WORKERS = [f"http://{ip}:8000" for ip in PODS]
FAULT_STARTS = 40.0  # the healthy lead-in; every fault then lasts FAULT_SECONDS
FAULT_SECONDS = 70.0
RECOVERY_SECONDS = 30.0
ENERGY_CFG = OperatorConfig.model_validate(
    {"energy": {"type": "scrape", "scrape": {"namespace": "kube-amd-gpu"}}}
)
EXPORTER_LABELS = dict(CFG.energy.scrape.selector)

#: A GPU's value at (t, node, gpu_id); None leaves its series out of the body.
Value = Callable[[float, str, str], float | None]


def exporter_body(
    ip: str, t: float, energy: Value | None = None, watts: Value | None = None
) -> str:
    """One exporter's body at t: every GPU's energy counter (µJ) and power in the exporter's
    label shape; ``energy``/``watts`` replace the true values."""
    node, gpus = EXPORTERS[ip]
    power = ["# HELP gpu_power_usage power usage", "# TYPE gpu_power_usage gauge"]
    joules = ["# HELP gpu_energy_consumed energy consumed", "# TYPE gpu_energy_consumed gauge"]
    for gpu_id, pod in gpus:
        labels = (
            f'card_model="AMD Instinct MI300X",container="vllm",gpu_id="{gpu_id}",'
            f'hostname="{node}",namespace="ns",pod="{pod}",serial_number="S{node}{gpu_id}"'
        )
        uj = (energy or _true_uj)(t, node, gpu_id)
        w = (watts or (lambda *_: WATTS_PER_GPU))(t, node, gpu_id)
        if w is not None:
            power.append(f"gpu_power_usage{{{labels}}} {w!r}")
        if uj is not None:
            joules.append(f"gpu_energy_consumed{{{labels}}} {uj!r}")
    return "\n".join(power + joules) + "\n"


def _true_uj(t: float, node: str, gpu_id: str) -> float:
    # a counter that did not start at zero with the drill (the exporter has run for a while)
    return (3.6e12 if node == "n0" else 1.8e12) + WATTS_PER_GPU * t * 1e6


def _exporter(energy: Value | None = None, watts: Value | None = None, only: str = "") -> Handler:
    """Healthy exporters, with ``energy``/``watts`` overrides (on ``only``'s node if given)."""

    def handler(request: httpx.Request, t: float) -> httpx.Response:
        ip = request.url.host
        mine = not only or EXPORTERS[ip][0] == only
        body = exporter_body(ip, t, energy if mine else None, watts if mine else None)
        return httpx.Response(200, text=body)

    return handler


def _on_node(node: str, fault: Handler) -> Handler:
    """``fault`` on one node's exporter, the other healthy."""
    ok = _exporter()
    return lambda request, t: (
        fault(request, t) if EXPORTERS[request.url.host][0] == node else ok(request, t)
    )


def _cut_in_energy(request: httpx.Request, t: float) -> httpx.Response:
    """A dropped connection two digits into the last energy counter's value."""
    body = exporter_body(request.url.host, t)
    last = body.rstrip("\n").rsplit("\n", 1)[1]
    return httpx.Response(200, text=body[: len(body) - len(last) - 1 + last.index("} ") + 4])


ENERGY_FAULTS: dict[str, Handler] = {
    **transport_faults("exporter"),
    "truncated body (inside an energy counter)": _cut_in_energy,
    "one exporter down (node n1)": _on_node(
        "n1", transport_faults("exporter")["connection refused (exporter gone)"]
    ),
    "one GPU missing from the exporter": _exporter(
        energy=lambda t, node, gpu: None if gpu == "1" else _true_uj(t, node, gpu), only="n1"
    ),
    "NaN energy": _exporter(energy=lambda *_: math.nan),
    "+Inf energy": _exporter(energy=lambda *_: math.inf),
    "negative energy": _exporter(energy=lambda *_: -1.0),
}
#: Faults that leave tokens/J measurable, which must then stay true: an energy counter that
#: restarts (driver reload, node reboot) between two scrapes, mid-interval (no bogus tokens/J
#: from the partial pass), and a GPU whose power reads NaN (tokens/J needs no power; the pool's
#: watts must be absent, not a sum that counts that GPU as 0 W).
ENERGY_KEPT: dict[str, Handler] = {
    "energy counter reset (exporter restarted)": _exporter(
        energy=lambda t, node, gpu: WATTS_PER_GPU * (t - FAULT_STARTS - 1) * 1e6
    ),
    "NaN power": _exporter(watts=lambda *_: math.nan, only="n1"),
}
#: The word of status.energy.reason that names each fault.
ENERGY_REASON = {
    "timeout": "timeout",
    "connection refused (exporter gone)": "ConnectError",
    "http 500": "http 500",
    "html page": "ExporterGarbage: exporter-0: unparsable",
    "empty body": "ExporterGarbage",
    "truncated body (inside an energy counter)": "truncated",
    "one exporter down (node n1)": "ConnectError",
    "one GPU missing from the exporter": "missing",
    "NaN energy": "no usable energy",
    "+Inf energy": "no usable energy",
    "negative energy": "no usable energy",
}


def router_body(t: float, total: float | None = None, extra: str = "") -> str:
    n = DEFAULT_NAMES
    total = ROUTER_RPS * t if total is None else total
    lines = [
        f"# TYPE {n.requests_total} counter",
        f'{n.requests_total}{{route="/v1/completions"}} {total!r}',
        f"# TYPE {n.running_requests} gauge",
        *(f'{n.running_requests}{{worker="{w}"}} 3' for w in WORKERS),
        f"# TYPE {n.processed_requests} counter",
        *(f'{n.processed_requests}{{worker="{w}"}} {total / 2!r}' for w in WORKERS),
        f"# TYPE {n.worker_health} gauge",
        *(f'{n.worker_health}{{worker="{w}"}} 1' for w in WORKERS),
    ]
    return "\n".join(lines) + "\n" + extra


HEALTHY: dict[str, Handler] = {
    "energy": _exporter(),
    "router": lambda _, t: httpx.Response(200, text=router_body(t)),
}


def _router(total: Callable[[float], float]) -> Handler:
    return lambda _, t: httpx.Response(200, text=router_body(t, total(t)))


ROUTER_FAULTS: dict[str, Handler] = {
    **transport_faults("router"),
    "truncated body (inside a label)": lambda _, t: httpx.Response(200, text=router_body(t)[:-9]),
    # cut after the last value's first digit: every line parses, the end is missing
    "truncated body (last line feed lost)": lambda _, t: httpx.Response(
        200, text=router_body(t)[:-1]
    ),
    "an engine's port, not a router's": lambda _, t: httpx.Response(
        200, text="# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total 5\n"
    ),
    "NaN requests counter": _router(lambda _: math.nan),
    "+Inf requests counter": _router(lambda _: math.inf),
}
ROUTER_KEPT: dict[str, Handler] = {
    "router counters reset (router restarted)": _router(
        lambda t: ROUTER_RPS * (t - FAULT_STARTS - 1)
    ),
}
ROUTER_REASON = {
    "timeout": "RouterMetricsUnreachable",
    "connection refused (router gone)": "ConnectError",
    "http 500": "HTTP 500",
    "html page": "RouterMetricsGarbage: not a Prometheus exposition",
    "empty body": "RouterMetricsGarbage",
    "truncated body (inside a label)": "RouterMetricsGarbage: not a Prometheus exposition",
    "truncated body (last line feed lost)": "RouterMetricsGarbage: truncated",
    "an engine's port, not a router's": "not a vllm-router",
    "NaN requests counter": "nan",
    "+Inf requests counter": "inf",
}

ROUTER_SCALING = {
    "mode": "builtin",
    "targetPerReplica": 1000,
    "windowSeconds": 10,
    "scaleDownStabilizationSeconds": 10,
}
FIGURES: dict[str, Any] = {}


class Bed(Drill):
    """The engine drill plus exporter pods or a router pod; ``side`` answers their scrapes."""

    def __init__(self, kind: str) -> None:
        if kind == "energy":
            super().__init__(ENERGY_CFG)
            for i, ip in enumerate(EXPORTERS):
                self._pod("kube-amd-gpu", f"exporter-{i}", ip, EXPORTER_LABELS)
        else:
            # router mode cannot scale to zero yet (validation says so): the same policy without
            super().__init__(routing={"mode": "router"}, scaling=ROUTER_SCALING)
            self._pod("ns", "llm-router-0", ROUTER_IP, router_pod_labels("llm"))
        energy.forget("ns", "llm")  # the tracker is per process; each run starts cold
        self.side = HEALTHY[kind]
        self.handler = self._dispatch
        self.trace: list[tuple[int, str, str]] = []

    def _pod(self, ns: str, name: str, ip: str, labels: dict[str, str]) -> None:
        self.kube.put({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip

    def _dispatch(self, request: httpx.Request, t: float) -> httpx.Response:
        if request.url.host in PODS:
            return healthy(request, t)
        if request.url.host == ROUTER_IP:
            assert request.url.port == METRICS_PORT
        return self.side(request, t)

    def status(self, key: str) -> dict[str, Any]:
        svc = self.kube.get("InferenceService", "ns", "llm")
        assert svc is not None
        return dict((svc.get("status") or {}).get(key) or {})

    async def passes(self, seconds: float, check: Callable[[Bed], None]) -> None:
        """Run ``seconds`` of passes, recording (replicas, scaling reason and message) and
        calling ``check`` after each."""
        end = self.t + seconds
        while self.t < end:
            seen = await self.run(STEP)
            scaling = self.scaling()
            self.trace.append((seen[-1], str(scaling.get("reason")), str(scaling.get("message"))))
            check(self)


def energy_gauges() -> dict[str, float | None]:
    get = metrics.REGISTRY.get_sample_value
    pool = {"namespace": "ns", "service": "llm", "pool": "mi300x"}
    return {
        "watts": get("tokenscale_pool_power_watts", pool),
        "tokens_per_joule": get("tokenscale_pool_tokens_per_joule", pool),
        "joules_per_token": get("tokenscale_pool_joules_per_token", pool),
        "unknown": get("tokenscale_service_energy_unknown", {"namespace": "ns", "service": "llm"}),
    }


def energy_true_or_absent(bed: Bed) -> None:
    """No wrong energy figure, in status or in the gauges, on any pass."""
    energy = bed.status("energy")
    pools = energy.get("pools") or []
    gauges = energy_gauges()
    for where, tpj, jpt, watts in (
        ("status", energy.get("tokensPerJoule"), energy.get("joulesPerToken"), energy.get("watts")),
        *(
            (f"pool {p['name']}", p.get("tokensPerJoule"), p.get("joulesPerToken"), p.get("watts"))
            for p in pools
        ),
        ("gauges", gauges["tokens_per_joule"], gauges["joules_per_token"], gauges["watts"]),
    ):
        if tpj is not None:
            assert tpj == pytest.approx(TRUE_TOKENS_PER_JOULE, rel=0.02), (where, bed.t, energy)
        if jpt is not None:
            assert jpt == pytest.approx(1 / TRUE_TOKENS_PER_JOULE, rel=0.02), (where, bed.t)
        if watts is not None:
            assert watts == pytest.approx(4 * WATTS_PER_GPU, rel=0.01), (where, bed.t, energy)
    if energy.get("reason"):
        assert energy.get("tokensPerJoule") is None, f"numbers beside a reason: {energy}"
    assert energy.get("observedAt"), energy


def router_true_or_absent(bed: Bed) -> None:
    router = bed.status("router")
    rps = router.get("requestsPerSecond")
    if rps is not None:
        assert rps == pytest.approx(ROUTER_RPS, rel=0.01), (bed.t, router)
    total = router.get("requestsTotal")
    if total is not None:
        assert math.isfinite(total) and total >= 0, router
    if router.get("reason"):
        assert rps is None and total is None and not router.get("workers"), (
            f"figures beside a reason: {router}"
        )


def energy_known(bed: Bed) -> None:
    energy = bed.status("energy")
    assert not energy.get("reason"), energy
    assert energy.get("tokensPerJoule") == pytest.approx(TRUE_TOKENS_PER_JOULE, rel=0.02), energy
    assert energy_gauges()["tokens_per_joule"] is not None
    assert energy_gauges()["unknown"] == 0.0


def router_known(bed: Bed) -> None:
    router = bed.status("router")
    assert not router.get("reason"), router
    assert router.get("requestsPerSecond") == pytest.approx(ROUTER_RPS, rel=0.01), router
    assert len(router.get("workers") or []) == len(WORKERS)


KINDS = {
    "energy": (energy_true_or_absent, energy_known),
    "router": (router_true_or_absent, router_known),
}
BASELINE: dict[str, list[tuple[int, str, str]]] = {}


async def _baseline(kind: str) -> list[tuple[int, str, str]]:
    """The healthy run of the same length: what the faulted runs' decisions must equal."""
    if kind not in BASELINE:
        bed = Bed(kind)
        try:
            check, known = KINDS[kind]
            await bed.passes(FAULT_STARTS + FAULT_SECONDS + RECOVERY_SECONDS, check)
            known(bed)
        finally:
            await bed.client.aclose()
        BASELINE[kind] = bed.trace
    return BASELINE[kind]


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_controls_a_healthy_exporter_and_router_give_figures(kind: str) -> None:
    """Positive control: the figures the faults must blank are there when all is healthy, and
    a healthy run holds two replicas (so "unchanged" is not "the loop is dead")."""
    trace = await _baseline(kind)
    assert [r for r, _, _ in trace[-10:]] == [2] * 10, trace


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        for figures in FIGURES.values():
            figures["crashes"] = len(figures.get("crashed", {}))
        (Path(out) / "energy_router_faults.json").write_text(json.dumps(FIGURES, sort_keys=True))


CASES = [
    *(("energy", f, h, True) for f, h in sorted(ENERGY_FAULTS.items())),
    *(("energy", f, h, False) for f, h in sorted(ENERGY_KEPT.items())),
    *(("router", f, h, True) for f, h in sorted(ROUTER_FAULTS.items())),
    *(("router", f, h, False) for f, h in sorted(ROUTER_KEPT.items())),
]


@pytest.mark.parametrize(
    ("kind", "fault", "handler", "unknown"), CASES, ids=[f"{k}: {f}" for k, f, _, _ in CASES]
)
async def test_energy_and_router_faults_change_nothing_but_their_status(
    kind: str, fault: str, handler: Handler, unknown: bool
) -> None:
    baseline = await _baseline(kind)
    figures = FIGURES.setdefault(kind, {})
    figures["faults"] = figures.get("faults", 0) + 1
    check, known = KINDS[kind]
    bed = Bed(kind)
    try:
        await bed.passes(FAULT_STARTS, check)
        known(bed)
        bed.side = handler
        await bed.passes(FAULT_SECONDS, check)
        status = bed.status(kind)
        figures.setdefault("reason", {})[fault] = status.get("reason")
        if unknown:
            word = (ENERGY_REASON if kind == "energy" else ROUTER_REASON)[fault]
            assert word.lower() in str(status.get("reason")).lower(), (fault, status)
            if kind == "energy":
                assert energy_gauges()["unknown"] == 1.0
                assert energy_gauges()["tokens_per_joule"] is None
        elif fault == "NaN power":
            assert status.get("watts") is None and energy_gauges()["watts"] is None, status
            assert status.get("tokensPerJoule") is not None, status
        # Recovery (a restarted component keeps its new counters).
        bed.side = handler if not unknown else HEALTHY[kind]
        await bed.passes(RECOVERY_SECONDS, check)
        known(bed)
        figures["passes"] = figures.get("passes", 0) + len(bed.trace)
        figures["recovered"] = figures.get("recovered", 0) + 1
        replicas = [r for r, _, _ in bed.trace]
        changes = sum(1 for a, b in itertools.pairwise(replicas) if a != b)
        figures["replica_changes"] = figures.get("replica_changes", 0) + changes
        figures["scaled_to_zero"] = figures.get("scaled_to_zero", 0) + (0 in replicas)
        differ = sum(1 for a, b in zip(bed.trace, baseline, strict=True) if a != b)
        figures["decisions_differing_from_healthy_run"] = (
            figures.get("decisions_differing_from_healthy_run", 0) + differ
        )
        assert 0 not in replicas and changes == 0, (fault, replicas)
        assert differ == 0, (fault, [(a, b) for a, b in zip(bed.trace, baseline, strict=True)])
    except Exception as exc:
        # an exception out of the pass is a crash (the loop would stop); an assertion, a wrong
        # figure or decision
        what = "failed" if isinstance(exc, AssertionError) else "crashed"
        figures.setdefault(what, {})[fault] = f"{type(exc).__name__}: {exc}"[:300]
        raise
    finally:
        await bed.client.aclose()

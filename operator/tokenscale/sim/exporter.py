"""A simulated AMD Device Metrics Exporter: board power and an energy counter per simulated GPU.

Why: tokens per joule needs a power source that behaves like the real one (same metric names,
types, units and labels) so the operator and the benchmark read the simulator exactly as they
would read ``rocm/device-metrics-exporter`` on a GPU node. The real exporter runs as a DaemonSet,
one endpoint per node, reporting every GPU of the node with the pod that holds it; so does this:
one endpoint per simulated node address, one series set per GPU (a TP-``n`` engine holds ``n``).

Power model (sources and assumptions in docs/simulator.md, "Power and energy"): the linear
server power model of Fan, Weber and Barroso (ISCA 2007) ``P = P_idle + (P_busy - P_idle) * u``
applied per engine step. An idle GPU draws ``idle_w``. During a step the activity is
``u = floor + (1 - floor) * min(1, tokens_in_step / saturation_tokens)``: the weights are read
every step whatever the batch (the floor), and a full decode batch or a prefill chunk of
``saturation_tokens`` tokens runs the board at its total board power (TBP). Power is piecewise
constant per step, so the energy counter is the exact integral of the power the exporter reports.

Metric families (as the exporter's Prometheus output, all declared ``gauge`` like the exporter's
own registration, even the monotonically growing energy one):
``gpu_package_power`` (W, instantaneous), ``gpu_power_usage`` (W, average over the last
simulated second), ``gpu_energy_consumed`` (µJ accumulated since the exporter started).
Labels: ``card_model``, ``container``, ``gpu_id``, ``hostname``, ``namespace``, ``pod``,
``serial_number`` (the exporter's default ``MetricLabel`` set with the Kubernetes pod labels).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from .model import StepResult

LABELS = ("card_model", "container", "gpu_id", "hostname", "namespace", "pod", "serial_number")
"""Label names of every exporter series (sorted, as the exporter emits them)."""

POWER_AVERAGE_WINDOW_S = 1.0
"""``gpu_power_usage`` is the mean power over this many simulated seconds."""


@dataclass(frozen=True, slots=True)
class GpuPower:
    """Power parameters of one GPU model (watts per GPU)."""

    tbp_w: float
    """Total board power: AMD's published TBP, drawn at full activity."""
    idle_w: float
    """Board power with no kernel running (assumption; docs/simulator.md)."""
    busy_floor: float = 0.45
    """Activity of a step with a single token (weights still stream from HBM)."""

    def step_watts(self, tokens: int, saturation_tokens: int) -> float:
        """Board power while a step with ``tokens`` (decoded + prefilled) runs."""
        load = min(1.0, max(0, tokens) / max(1, saturation_tokens))
        activity = self.busy_floor + (1.0 - self.busy_floor) * load if tokens > 0 else 0.0
        return self.idle_w + (self.tbp_w - self.idle_w) * activity


GPU_POWER: dict[str, GpuPower] = {
    "MI300X": GpuPower(tbp_w=750.0, idle_w=140.0),
    "MI325X": GpuPower(tbp_w=1000.0, idle_w=160.0),
    "MI355X": GpuPower(tbp_w=1400.0, idle_w=190.0),
}
"""TBP from AMD's product pages; idle power is an assumption stated in docs/simulator.md."""


def gpu_power(gpu: str) -> GpuPower:
    """Power parameters for a GPU model name (case-insensitive); ``KeyError`` if unknown."""
    key = gpu.strip().upper()
    if key not in GPU_POWER:
        raise KeyError(f"no power model for GPU {gpu!r}; known: {', '.join(GPU_POWER)}")
    return GPU_POWER[key]


class EnergyMeter:
    """Piecewise-constant power of one GPU over simulated time and its exact integral.

    Each step is kept as ``(start, end, watts, joules at start)``; between steps the GPU draws
    ``idle_w``. The engine schedules a step before it happens (its end lies in the simulated
    future), so a query integrates the latest step only up to the queried time. Steps older than
    ``keep_s`` before the latest are dropped (their energy stays in the later entries).
    """

    __slots__ = ("_steps", "idle_w", "keep_s")

    def __init__(self, idle_w: float, t0: float = 0.0, keep_s: float = 5.0) -> None:
        self.idle_w = idle_w
        self.keep_s = keep_s
        self._steps: deque[tuple[float, float, float, float]] = deque([(t0, t0, idle_w, 0.0)])

    def record(self, start: float, end: float, watts: float) -> None:
        """A step drawing ``watts`` ran (or will run) over ``[start, end]`` simulated seconds."""
        s0, e0, w0, j0 = self._steps[-1]
        start = max(start, e0)  # steps never overlap; clamps float rounding
        joules = j0 + w0 * (e0 - s0) + self.idle_w * (start - e0)
        self._steps.append((start, max(start, end), watts, joules))
        steps = self._steps
        while len(steps) > 2 and steps[1][0] <= start - self.keep_s:
            steps.popleft()

    def _at(self, t: float) -> tuple[float, float, float, float]:
        for step in reversed(self._steps):
            if step[0] <= t:
                return step
        return self._steps[0]

    def energy_j(self, t: float) -> float:
        """Joules from ``t0`` to simulated time ``t`` (``t`` within ``keep_s`` of the last step)."""
        s, e, w, j = self._at(t)
        if t < s:
            return j
        return j + w * (min(t, e) - s) + self.idle_w * max(0.0, t - e)

    def watts(self, t: float) -> float:
        """Instantaneous power at simulated time ``t``."""
        s, e, w, _ = self._at(t)
        return w if s <= t < e else self.idle_w


@dataclass(frozen=True, slots=True)
class SimGpu:
    """One simulated GPU as the exporter labels it, with its meter."""

    gpu_id: int
    card_model: str
    serial_number: str
    hostname: str
    pod: str
    namespace: str
    container: str
    meter: EnergyMeter

    def label_values(self) -> list[str]:
        """Values in ``LABELS`` order."""
        return [self.card_model, self.container, str(self.gpu_id), self.hostname,
                self.namespace, self.pod, self.serial_number]  # fmt: skip


def card_model(gpu: str) -> str:
    """The ``card_model`` label value for a GPU model (as amd-smi's product name)."""
    return f"AMD Instinct {gpu.strip().upper()}"


class ExporterCollector:
    """Renders the exporter's power and energy families for the GPUs of one node."""

    def __init__(self, gpus: Sequence[SimGpu], now: Callable[[], float]) -> None:
        self.gpus = list(gpus)
        self._now = now

    def collect(self) -> Iterator[Metric]:
        """Yield ``gpu_package_power``, ``gpu_power_usage`` and ``gpu_energy_consumed``."""
        now = self._now()
        package = GaugeMetricFamily("gpu_package_power", "package power", labels=LABELS)
        usage = GaugeMetricFamily("gpu_power_usage", "power usage", labels=LABELS)
        energy = GaugeMetricFamily("gpu_energy_consumed", "energy consumed", labels=LABELS)
        for gpu in self.gpus:
            values = gpu.label_values()
            joules = gpu.meter.energy_j(now)
            window = min(POWER_AVERAGE_WINDOW_S, now)
            if window > 0:
                average = (joules - gpu.meter.energy_j(now - window)) / window
            else:
                average = gpu.meter.watts(now)
            package.add_metric(values, gpu.meter.watts(now))
            usage.add_metric(values, average)
            energy.add_metric(values, joules * 1e6)
        yield package
        yield usage
        yield energy


def exporter_app(collector: ExporterCollector) -> web.Application:
    """The exporter's HTTP surface: ``GET /metrics`` only, like the real one on port 5000."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics)])
    return app


class StepPower:
    """Feeds an engine's steps into the meter its GPUs share (every TP rank draws alike)."""

    __slots__ = ("meter", "power", "saturation_tokens")

    def __init__(self, power: GpuPower, meter: EnergyMeter, saturation_tokens: int) -> None:
        self.power = power
        self.meter = meter
        self.saturation_tokens = saturation_tokens

    def __call__(self, result: StepResult) -> None:
        """Record one engine step (``EngineHost`` calls this after ``Engine.step``)."""
        tokens = result.decoded + result.prefill_tokens
        watts = self.power.step_watts(tokens, self.saturation_tokens)
        self.meter.record(result.start, result.end, watts)


def node_gpus(
    gpu: str,
    hostname: str,
    engines: int,
    tensor_parallel_size: int,
    pod: str,
    namespace: str,
    container: str,
    meters: Sequence[EnergyMeter],
) -> list[SimGpu]:
    """The GPUs of one simulated node: engine ``i`` holds GPUs ``i*tp`` .. ``i*tp+tp-1``."""
    gpus: list[SimGpu] = []
    for i in range(engines):
        for rank in range(tensor_parallel_size):
            gpu_id = i * tensor_parallel_size + rank
            gpus.append(
                SimGpu(
                    gpu_id,
                    card_model(gpu),
                    f"SIM{hostname}-{gpu_id}".replace(".", ""),
                    hostname,
                    pod,
                    namespace,
                    container,
                    meters[i],
                )
            )
    return gpus

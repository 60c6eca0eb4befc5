"""P2 benchmark: replay a bursty, diurnal token-load trace against simulated MI355X engines.

Why this exists: issue 7 promises that replicas follow the token load within the SLA without
wasting GPUs. This replays one seeded trace in virtual time (no sleeps, ~1 minute of CPU) against
four policies that see the same simulated engines:

* ``tokenscale`` - :func:`tokenscale.autoscale.decision.decide` with the CRD's default policy
  (``ScalingSpec()`` defaults) and ``targetFromBenchmark`` (capacity at the SLA x headroom), fed
  5-second scrapes of generation tokens/s, running and waiting requests, every 5 s.
* ``hpa`` - the Kubernetes HPA algorithm on the signal an HPA user would configure,
  ``sum(rate(vllm:generation_tokens_total[1m]))`` per ready pod: ratio rule, 10 % tolerance,
  5-minute scale-down stabilisation, default scale-up policy (max(4 pods, 100 %) per 15 s),
  15 s sync, pods still starting count as 0 on scale-up and as on-target on scale-down.
* ``kpa`` - Knative's KPA on the same signal: 60 s stable / 6 s panic windows (1 s samples),
  panic threshold 200 %, never scale down in panic, max scale-down rate 2, 2 s tick.
* ``oracle`` - knows the future: every 15 s, replicas = ceil(max demand over the next
  startup delay + sync / capacity at the SLA); it pays for replicas while they start, too.

HPA and KPA use the same per-replica target as tokenscale, so differences come from the signal
(tokenscale adds the queue's hidden demand to tokens/s) and the decision, not from the target. The
extra
``hpa_demand_signal`` row gives HPA tokenscale's signal too, to separate the two effects.

Engine model (fluid, per second; a documented stand-in for ``tokenscale.sim``, whose engine model
is not importable yet): each ready replica serves up to ``C_MAX`` output tokens/s; demand beyond
that queues as a backlog served first-come-first-served. Capacity at the SLA is
``C_SLA = 0.9 * C_MAX = 12,500 tok/s`` (``OperatorConfig`` MI355X ``tokens_per_second_per_gpu``,
Llama-2-70B, 1 GPU/replica). New replicas become ready after ``STARTUP_S`` = 180 s; removal is
immediate (unready replicas are removed first, as a ReplicaSet does).

SLA proxy (latency rising as utilisation -> 1): with ``rho`` the 10-second EWMA of served /
available and ``Wq`` the backlog's drain time, the p99 TTFT proxy is
``Wq + 0.0471 s * (1 + ln(100) * rho / (1 - rho))`` (an M/M/1-style p99 wait), which crosses the
2 s limit exactly at ``rho = 0.9`` (that is what "capacity at the SLA" means here). A minute meets
the SLA when at most 1 % of the tokens demanded in it arrive in seconds whose proxy exceeds 2 s
(a token-weighted p99). Demand with no ready replica counts as violating.

Run: ``.venv/bin/python benchmarks/autoscale_trace.py`` (writes
``benchmarks/results/autoscale-trace.json`` and prints a table). The same comparison is repeated
on holdout seeds (``--holdout-seeds``, default 8,9) that were not used to choose the defaults; the
issue-7 verdict per seed is in the JSON (``targets``, ``holdout``, ``conclusion``). ``--bounds``
adds ``slow_component_bounds``: reference provisioners that know the trace without its spikes and
noise (not policies; they show how far a reactive policy could get with perfect denoising).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from tokenscale.api.service import ScalingSpec
from tokenscale.autoscale.decision import decide, history_seconds, window_load
from tokenscale.autoscale.rates import PoolSignal, Sample
from tokenscale.autoscale.state import PoolInput, ScalerState

C_SLA = 12_500.0
RHO_SLA = 0.9
C_MAX = C_SLA / RHO_SLA
STARTUP_S = 180
TTFT_LIMIT_S = 2.0
LAT_BASE_S = TTFT_LIMIT_S / (1 + math.log(100) * RHO_SLA / (1 - RHO_SLA))
TOKENS_PER_RUNNING_REQUEST_S = 25.0  # 40 ms TPOT
OUTPUT_TOKENS_PER_REQUEST = 300.0
MAX_REPLICAS = 48
COST_PER_GPU_HOUR = 3.0


@dataclass(frozen=True)
class TraceSpec:
    """The seeded trace; every number here is reported in the JSON."""

    hours: float = 8.0
    seed: int = 7
    peak_tps: float = 200_000.0
    trough_fraction: float = 0.2
    wave_amplitude: float = 0.06
    wave_period_s: float = 2400.0
    bursts_per_hour: float = 1.0
    burst_gain: tuple[float, float] = (0.2, 0.6)
    burst_rise_s: tuple[float, float] = (300.0, 900.0)
    burst_duration_s: tuple[float, float] = (600.0, 1800.0)
    spikes_per_hour: float = 6.0
    spike_gain: tuple[float, float] = (0.1, 0.25)
    spike_duration_s: tuple[float, float] = (5.0, 20.0)
    noise_sigma: float = 0.04
    noise_tau_s: float = 20.0

    def describe(self) -> str:
        """One paragraph for the results file."""
        return (
            f"{self.hours:g} h seeded (seed {self.seed}) output-token demand: diurnal half-cosine "
            f"from {self.trough_fraction:.0%} of a {self.peak_tps:,.0f} tok/s peak up to the peak "
            f"and back, x (1 +/- {self.wave_amplitude:.0%}) {self.wave_period_s / 60:.0f}-min "
            f"wave; {self.bursts_per_hour:g}/h Poisson bursts of +{self.burst_gain[0]:.0%}.."
            f"+{self.burst_gain[1]:.0%} rising over {self.burst_rise_s[0]:.0f}-"
            f"{self.burst_rise_s[1]:.0f} s and lasting {self.burst_duration_s[0] / 60:.0f}-"
            f"{self.burst_duration_s[1] / 60:.0f} min; {self.spikes_per_hour:g}/h step spikes of "
            f"+{self.spike_gain[0]:.0%}..+{self.spike_gain[1]:.0%} for "
            f"{self.spike_duration_s[0]:.0f}-{self.spike_duration_s[1]:.0f} s; AR(1) noise "
            f"sigma {self.noise_sigma:.0%}, tau {self.noise_tau_s:.0f} s. Engines: simulated "
            f"MI355X, Llama-2-70B, 1 GPU/replica, {C_SLA:,.0f} tok/s at the SLA "
            f"({C_MAX:,.0f} max), {STARTUP_S} s startup."
        )


def make_trace(spec: TraceSpec) -> list[float]:
    """Demand in output tokens/s for each second."""
    rng = random.Random(spec.seed)
    n = int(spec.hours * 3600)
    gain = [0.0] * n

    def add_events(rate_per_hour: float, make: Callable[[int], None]) -> None:
        t = 0.0
        while True:
            t += rng.expovariate(rate_per_hour / 3600)
            if t >= n:
                return
            make(int(t))

    def burst(start: int) -> None:
        g = rng.uniform(*spec.burst_gain)
        rise = rng.uniform(*spec.burst_rise_s)
        dur = rng.uniform(*spec.burst_duration_s)
        for i in range(start, min(n, start + int(dur + rise))):
            x = i - start
            shape = min(1.0, x / rise) if x < dur else max(0.0, 1 - (x - dur) / rise)
            gain[i] += g * shape

    def spike(start: int) -> None:
        g = rng.uniform(*spec.spike_gain)
        for i in range(start, min(n, start + int(rng.uniform(*spec.spike_duration_s)))):
            gain[i] += g

    add_events(spec.bursts_per_hour, burst)
    add_events(spec.spikes_per_hour, spike)
    out: list[float] = []
    noise = 0.0
    phi = math.exp(-1 / spec.noise_tau_s)
    for i in range(n):
        noise = phi * noise + math.sqrt(1 - phi * phi) * rng.gauss(0, spec.noise_sigma)
        day = 0.5 - 0.5 * math.cos(2 * math.pi * i / n)
        base = spec.peak_tps * (spec.trough_fraction + (1 - spec.trough_fraction) * day)
        wave = 1 + spec.wave_amplitude * math.sin(2 * math.pi * i / spec.wave_period_s)
        out.append(max(0.0, base * wave * (1 + gain[i]) * (1 + noise)))
    return out


@dataclass
class Engines:
    """The fluid engine pool: replicas with ready times, a shared backlog, latency proxy."""

    ready_at: list[float] = field(default_factory=list)
    backlog: float = 0.0
    rho: float = 0.0
    served_total: float = 0.0

    def ready(self, now: float) -> int:
        return sum(1 for t in self.ready_at if t <= now)

    def scale(self, desired: int, now: float) -> None:
        if desired > len(self.ready_at):
            self.ready_at += [now + STARTUP_S] * (desired - len(self.ready_at))
        while len(self.ready_at) > desired:  # unready (latest ready time) go first
            self.ready_at.remove(max(self.ready_at))

    def step(self, now: float, demand: float) -> tuple[float, float]:
        """Advance one second; return (served tokens, p99 TTFT proxy)."""
        avail = self.ready(now) * C_MAX
        served = min(demand + self.backlog, avail)
        self.backlog = demand + self.backlog - served
        self.served_total += served
        util = served / avail if avail > 0 else 1.0
        self.rho += (util - self.rho) / 10.0
        if avail <= 0:
            return served, math.inf if demand > 0 else 0.0
        rho = min(self.rho, 0.999)
        wait = self.backlog / avail
        return served, wait + LAT_BASE_S * (1 + math.log(100) * rho / (1 - rho))

    def gauges(self, served_tps: float) -> tuple[float, float]:
        """(running, waiting) requests as a vLLM engine would report them."""
        return served_tps / TOKENS_PER_RUNNING_REQUEST_S, self.backlog / OUTPUT_TOKENS_PER_REQUEST


Point = tuple[int, float, float, float, int]
"""One second of engine signal: (time, served tok/s, running, waiting, ready replicas)."""


class Policy:
    """A replica policy called every ``period`` seconds."""

    name = ""
    period = 15

    def desired(self, now: int, engines: Engines, signal: deque[Point], demand: list[float]) -> int:
        raise NotImplementedError


class Tokenscale(Policy):
    name, period = "tokenscale", 5

    def __init__(self, policy: ScalingSpec) -> None:
        self.policy = policy
        self.state = ScalerState()
        self.target = C_SLA * policy.headroom
        self.lead = float(STARTUP_S)

    def desired(self, now: int, engines: Engines, signal: deque[Point], demand: list[float]) -> int:
        window = _samples(signal, now, int(history_seconds(self.policy)))
        pool = PoolInput(
            "mi355x",
            1,
            MAX_REPLICAS,
            len(engines.ready_at),
            engines.ready(now),
            self.target,
            C_SLA,
            COST_PER_GPU_HOUR,
            startup_seconds=self.lead,
        )
        decision = decide(window, self.policy, [pool], self.state, float(now))
        self.state = ScalerState.from_json(decision.state.to_json())  # restart-safe round trip
        return decision.desired()["mi355x"]


def _samples(signal: deque[Point], now: int, window: int) -> list[Sample]:
    """What ScrapeCollector would hand to decide: one Sample per 5-second scrape."""
    return [
        Sample(
            t,
            {
                "mi355x": PoolSignal(
                    generation_tps=s,
                    requests_running=r,
                    requests_waiting=w,
                    pods_reporting=max(1, n),
                    finished_per_s=s / OUTPUT_TOKENS_PER_REQUEST,
                )
            },
        )
        for t, s, r, w, n in _scrapes(signal, now, window)
    ]


def _scrapes(
    signal: deque[Point], now: int, window: int
) -> list[tuple[float, float, float, float, int]]:
    """5-second scrapes: (time, served tok/s over 5 s, running, waiting, ready pods)."""
    points = list(signal)  # one point per second, consecutive times
    first = points[0][0] if points else 0
    out = []
    for t in range(now - window + 5, now + 1, 5):
        lo, hi = max(0, t - 4 - first), max(0, t + 1 - first)
        chunk = points[lo:hi]
        if chunk:
            served = sum(x[1] for x in chunk) / len(chunk)
            out.append((float(t), served, chunk[-1][2], chunk[-1][3], chunk[-1][4]))
    return out


class HPA(Policy):
    name, period = "hpa", 15

    def __init__(self, target: float, queue_aware: bool = False) -> None:
        self.target, self.queue_aware = target, queue_aware
        self.recs: deque[tuple[int, int]] = deque()
        if queue_aware:
            self.name = "hpa_demand_signal"

    def desired(self, now: int, engines: Engines, signal: deque[Point], demand: list[float]) -> int:
        recent = [x for x in signal if x[0] > now - 60]
        if self.queue_aware:
            total = window_load(
                _samples(signal, now, 60), ["mi355x"], "generationTokensPerSecond", 60.0
            )
        else:
            total = sum(x[1] for x in recent) / max(1, len(recent))
        current, ready = len(engines.ready_at), max(1, engines.ready(now))
        missing = current - engines.ready(now)
        ratio = total / ready / self.target
        if abs(ratio - 1) <= 0.1:
            rec = current
        elif ratio > 1:
            rec = math.ceil(total / self.target) if missing else math.ceil(ratio * ready)
            if missing and abs(total / (ready + missing) / self.target - 1) <= 0.1:
                rec = current
        else:
            rec = math.ceil((total + missing * self.target) / self.target)
        rec = max(1, min(MAX_REPLICAS, rec))
        self.recs.append((now, rec))
        while self.recs[0][0] <= now - 300:
            self.recs.popleft()
        if rec < current:
            rec = min(current, max(r for _, r in self.recs))
        rec = min(rec, current + max(4, current))
        return max(1, min(MAX_REPLICAS, rec))


class KPA(Policy):
    name, period = "kpa", 2

    def __init__(self, target: float) -> None:
        self.target, self.max_panic = target, 0
        self.panic_since: int | None = None
        self.last_over: float = -1e9

    def desired(self, now: int, engines: Engines, signal: deque[Point], demand: list[float]) -> int:
        stable = [x[1] for x in signal if x[0] > now - 60]
        panic = [x[1] for x in signal if x[0] > now - 6]
        ready = max(1, engines.ready(now))
        want_stable = math.ceil(sum(stable) / max(1, len(stable)) / self.target)
        want_panic = math.ceil(sum(panic) / max(1, len(panic)) / self.target)
        over = want_panic / ready >= 2.0
        if over:
            self.last_over = now
            if self.panic_since is None:
                self.panic_since, self.max_panic = now, len(engines.ready_at)
        elif self.panic_since is not None and now - self.last_over > 60:
            self.panic_since = None
        if self.panic_since is not None:
            self.max_panic = max(self.max_panic, want_panic)
            want = self.max_panic
        else:
            want = want_stable
        want = max(want, math.floor(ready / 2.0))  # max scale-down rate 2
        return max(1, min(MAX_REPLICAS, want))


class Oracle(Policy):
    name, period = "oracle", 15

    def desired(self, now: int, engines: Engines, signal: deque[Point], demand: list[float]) -> int:
        horizon = demand[now : now + STARTUP_S + self.period + 1] or [0.0]
        return max(1, min(MAX_REPLICAS, math.ceil(max(horizon) / C_SLA)))


def slow_component(spec: TraceSpec) -> list[float]:
    """The trace without spikes and noise (diurnal x wave x bursts), from the same random draws."""
    return make_trace(replace(spec, spike_gain=(0.0, 0.0), noise_sigma=0.0))


class SlowBound(Policy):
    """A bound, not a policy: provisions for the slow component at ``headroom`` x capacity.

    ``future=True`` sees the slow component over the next startup + sync (spikes and noise stay
    unknown); ``future=False`` sees it exactly up to now and extrapolates its current slope that
    far: what a reactive policy could do with perfect denoising and a perfect trend.
    """

    period = 5

    def __init__(self, slow: list[float], headroom: float, future: bool) -> None:
        self.slow, self.headroom, self.future = slow, headroom, future

    def desired(self, now: int, engines: Engines, signal: deque[Point], demand: list[float]) -> int:
        lead = STARTUP_S + self.period
        if self.future:
            need = max(self.slow[now : now + lead + 1] or [0.0])
        else:
            slope = (self.slow[now] - self.slow[max(0, now - self.period)]) / self.period
            need = self.slow[now] + max(0.0, slope) * lead
        return max(1, min(MAX_REPLICAS, math.ceil(need / (self.headroom * C_SLA))))


def bounds(spec: TraceSpec, seeds: list[int]) -> dict[str, object]:
    """SLA minutes and GPU-hours x oracle of both slow-component bounds per headroom and seed."""
    out: dict[str, object] = {}
    for seed in seeds:
        seeded = replace(spec, seed=seed)
        demand, slow = make_trace(seeded), slow_component(seeded)
        oracle = run(Oracle(), demand, math.ceil(demand[0] / C_SLA))["gpu_hours"]
        rows: dict[str, object] = {}
        for future in (True, False):
            for headroom in (0.80, 0.83, 0.86):
                start = math.ceil(demand[0] / (headroom * C_SLA))
                r = run(SlowBound(slow, headroom, future), demand, start)
                key = f"{'knows_next_startup' if future else 'reactive_exact'}@{headroom:.2f}"
                rows[key] = {
                    "sla_minutes_fraction": r["sla_minutes_fraction"],
                    "gpu_hours_vs_oracle": round(r["gpu_hours"] / oracle, 3),
                }
                print(f"bound seed {seed} {key}: {r['sla_minutes_fraction']:.2%}, "
                      f"{r['gpu_hours'] / oracle:.3f}x oracle")  # fmt: skip
        out[str(seed)] = rows
    return out


def run(policy: Policy, demand: list[float], initial: int) -> dict[str, float]:
    """Simulate one policy; return SLA-minute fraction and GPU-hours."""
    engines = Engines(ready_at=[-1e9] * initial)
    signal: deque[Point] = deque()
    gpu_seconds = 0.0
    bad_minutes = minutes = 0
    minute_demand = minute_bad = 0.0
    flips, direction = 0, 0
    for now, d in enumerate(demand):
        if now % policy.period == 0:
            want = policy.desired(now, engines, signal, demand)
            step = (want > len(engines.ready_at)) - (want < len(engines.ready_at))
            if step and direction and step != direction:
                flips += 1
            direction = step or direction
            engines.scale(want, now)
        served, latency = engines.step(now, d)
        running, waiting = engines.gauges(served)
        signal.append((now, served, running, waiting, engines.ready(now)))
        while signal[0][0] <= now - 300:
            signal.popleft()
        gpu_seconds += len(engines.ready_at)
        minute_demand += d
        if latency > TTFT_LIMIT_S:
            minute_bad += d
        if now % 60 == 59:
            minutes += 1
            bad_minutes += minute_bad > 0.01 * minute_demand
            minute_demand = minute_bad = 0.0
    return {
        "sla_minutes_fraction": round(1 - bad_minutes / minutes, 4),
        "gpu_hours": round(gpu_seconds / 3600, 2),
        "sla_violated_minutes": bad_minutes,
        "direction_changes": flips,
    }


def compare(spec: TraceSpec, policy: ScalingSpec) -> dict[str, dict[str, float]]:
    """All policies on one trace, at the same per-replica target."""
    demand = make_trace(spec)
    target = C_SLA * policy.headroom
    initial = math.ceil(demand[0] / target)
    policies: list[Policy] = [
        Tokenscale(policy),
        HPA(target),
        KPA(target),
        Oracle(),
        HPA(target, queue_aware=True),
    ]
    return {p.name: run(p, demand, initial) for p in policies}


def iso_sla(spec: TraceSpec, goal: float = 0.99) -> dict[str, dict[str, float]]:
    """For HPA and KPA: the largest headroom (0.80 down to 0.30, step 0.05) meeting ``goal``."""
    demand = make_trace(spec)
    out: dict[str, dict[str, float]] = {}
    for make in (HPA, KPA):
        for step in range(16, 5, -1):
            headroom = step / 20
            target = C_SLA * headroom
            result = run(make(target), demand, math.ceil(demand[0] / target))
            if result["sla_minutes_fraction"] >= goal:
                out[make.name] = {"headroom": headroom, **result}
                break
        else:
            out[make.name] = {"headroom": math.nan, "sla_minutes_fraction": math.nan,
                              "gpu_hours": math.nan}  # fmt: skip
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    """The printed comparison."""
    oracle = results["oracle"]["gpu_hours"]
    lines = [
        f"{'policy':<20} {'SLA minutes':>12} {'GPU-hours':>10} {'x oracle':>9} "
        f"{'bad min':>8} {'flips':>6}"
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<20} {r['sla_minutes_fraction']:>12.2%} {r['gpu_hours']:>10.2f} "
            f"{r['gpu_hours'] / oracle:>9.3f} {r['sla_violated_minutes']:>8} "
            f"{r['direction_changes']:>6}"
        )
    return "\n".join(lines)


def verdict(results: dict[str, dict[str, float]]) -> dict[str, object]:
    """Issue 7's target on one trace: >= 99 % SLA minutes, <= 1.10x the oracle's GPU-hours,
    and better than HPA and KPA on both (more SLA minutes, fewer GPU-hours)."""
    ours, oracle = results["tokenscale"], results["oracle"]["gpu_hours"]
    checks = {
        "sla_minutes_at_least_0.99": ours["sla_minutes_fraction"] >= 0.99,
        "gpu_hours_at_most_1.10x_oracle": ours["gpu_hours"] <= 1.10 * oracle,
        **{
            f"better_than_{b}_on_both": ours["sla_minutes_fraction"]
            > results[b]["sla_minutes_fraction"]
            and ours["gpu_hours"] < results[b]["gpu_hours"]
            for b in ("hpa", "kpa")
        },
    }
    return {**checks, "met": all(checks.values())}


def holdout(spec: TraceSpec, policy: ScalingSpec, seeds: list[int]) -> dict[str, object]:
    """The same comparison on other seeds: the defaults were tuned on ``spec.seed`` only."""
    out: dict[str, object] = {}
    for seed in seeds:
        results = compare(replace(spec, seed=seed), policy)
        print(f"holdout seed {seed}")
        print(table(results), "\n")
        oracle = results["oracle"]["gpu_hours"]
        out[str(seed)] = {
            "policies": {
                k: {
                    "sla_minutes_fraction": v["sla_minutes_fraction"],
                    "gpu_hours": v["gpu_hours"],
                    "gpu_hours_vs_oracle": round(v["gpu_hours"] / oracle, 3),
                }
                for k, v in results.items()
            },
            "targets": verdict(results),
        }
    return out


def conclusion(seed: int, results: dict[str, dict[str, float]], held: dict[str, object]) -> str:
    """One sentence on issue 7's target over the main and the holdout seeds."""
    verdicts = {str(seed): verdict(results)}
    verdicts.update({k: v["targets"] for k, v in held.items() if isinstance(v, dict)})
    met = [k for k, v in verdicts.items() if v["met"]]
    sla = [k for k, v in verdicts.items() if v["sla_minutes_at_least_0.99"]]
    return (
        f"issue 7 target (>= 99% SLA minutes, <= 1.10x oracle GPU-hours, better than HPA and "
        f"KPA on both) met on seeds {met or 'none'} of {list(verdicts)}; >= 99% SLA minutes on "
        f"{sla or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hours", type=float, default=TraceSpec.hours)
    parser.add_argument("--seed", type=int, default=TraceSpec.seed)
    parser.add_argument(
        "--holdout-seeds",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[8, 9],
        help="comma-separated seeds to re-run the comparison on (not used for tuning)",
    )
    parser.add_argument(
        "--bounds",
        action="store_true",
        help="also run the slow-component bounds (what perfect denoising could reach)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "autoscale-trace.json"
    )
    args = parser.parse_args(argv)
    spec = TraceSpec(hours=args.hours, seed=args.seed)
    policy = ScalingSpec(mode="builtin", target_from_benchmark=True)  # the CRD defaults
    results = compare(spec, policy)
    print(spec.describe(), "\n")
    print(table(results), "\n")
    steep = TraceSpec(hours=args.hours, seed=args.seed, burst_rise_s=(30.0, 120.0))
    steep_results = compare(steep, policy)
    print("variant: bursts rising within 30-120 s (faster than a replica starts)")
    print(table(steep_results), "\n")
    iso = iso_sla(spec)
    for name, r in iso.items():
        if math.isnan(r["headroom"]):
            print(f"iso-SLA: {name} does not reach 99% of minutes at any headroom >= 0.30")
        else:
            print(
                f"iso-SLA: {name} needs headroom {r['headroom']:.2f} for >= 99% of minutes: "
                f"{r['gpu_hours']:.2f} GPU-hours"
            )
    held = holdout(spec, policy, args.holdout_seeds)
    oracle = results["oracle"]["gpu_hours"]
    payload = {
        "trace": spec.describe(),
        "trace_parameters": dict(vars(spec)),
        "sla": f"minute met when <= 1% of its demanded tokens arrive while the p99 TTFT proxy "
        f"Wq + {LAT_BASE_S:.4f}s*(1+ln(100)*rho/(1-rho)) exceeds {TTFT_LIMIT_S} s "
        "(rho: 10 s EWMA of utilisation; Wq: backlog drain time)",
        "engine_model": f"fluid per-second queue; {C_SLA:.0f} tok/s per replica at the SLA, "
        f"{C_MAX:.0f} max; {STARTUP_S} s startup; 1 MI355X GPU per replica",
        "policy": policy.model_dump(mode="json", by_alias=True, exclude_none=True),
        "target_per_replica": C_SLA * policy.headroom,
        "command": "python benchmarks/autoscale_trace.py"
        + (f" --hours {args.hours:g}" if args.hours != TraceSpec.hours else "")
        + (f" --seed {args.seed}" if args.seed != TraceSpec.seed else "")
        + (
            f" --holdout-seeds {','.join(map(str, args.holdout_seeds))}"
            if args.holdout_seeds != [8, 9]
            else ""
        )
        + (" --bounds" if args.bounds else ""),
        "policies": results,
        "gpu_hours_vs_oracle": {k: round(v["gpu_hours"] / oracle, 3) for k, v in results.items()},
        "targets": {
            "sla_minutes_fraction_min": 0.99,
            "gpu_hours_vs_oracle_max": 1.10,
            "better_than": ["hpa", "kpa"],
            **verdict(results),
        },
        "variants": {
            "steep_bursts": {
                "trace": steep.describe(),
                "policies": steep_results,
                "targets": verdict(steep_results),
            }
        },
        "holdout": {
            "note": "same trace parameters and policies, other seeds; defaults were chosen on "
            f"seed {spec.seed} only",
            "seeds": held,
        },
        "conclusion": conclusion(spec.seed, results, held),
        "iso_sla_baselines": {
            k: {
                kk: (None if isinstance(vv, float) and math.isnan(vv) else vv)
                for kk, vv in v.items()
            }
            for k, v in iso.items()
        },
    }
    if args.bounds:
        payload["slow_component_bounds"] = {
            "note": "not policies: provision ceil(slow / (headroom x capacity at the SLA)) for the "
            "trace without spikes and noise; knows_next_startup sees it over the next startup + "
            "sync, reactive_exact sees it exactly up to now and extrapolates its slope. How far "
            "perfect denoising and trend estimation could take a reactive policy.",
            "seeds": bounds(spec, [args.seed, *args.holdout_seeds]),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Seeded request generators shared by the tests and the benchmarks.

Why here and not in ``benchmarks/``: the calibration search (virtual time) and the HTTP
benchmark must draw *the same* requests, and the unit tests pin the distribution, so there is
one implementation.

OpenOrca-like lengths (MLPerf Llama-2-70B): the reference mean output is 294.45 tokens (MLPerf),
input and output are both < 1024 tokens. The mean *input* length is not published; we assume
~600 tokens (see docs/simulator.md). Both are log-normal, clipped to [3, 1023]; ``mu`` is chosen
so that the clipped means land on the targets (checked by ``tests/unit/test_sim_model.py``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

MAX_LEN = 1023
MIN_LEN = 3


@dataclass(frozen=True, slots=True)
class Request:
    """One synthetic request: arrival offset (s), prompt and output length (tokens)."""

    at: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class LengthModel:
    """Log-normal lengths clipped to [MIN_LEN, MAX_LEN]."""

    input_mu: float = math.log(600.0) - 0.5 * 0.55**2 + 0.08
    input_sigma: float = 0.55
    output_mu: float = math.log(294.45) - 0.5 * 0.85**2 + 0.06
    output_sigma: float = 0.85

    def draw(self, rng: random.Random) -> tuple[int, int]:
        """(prompt tokens, output tokens)."""
        prompt = round(rng.lognormvariate(self.input_mu, self.input_sigma))
        output = round(rng.lognormvariate(self.output_mu, self.output_sigma))
        return min(MAX_LEN, max(MIN_LEN, prompt)), min(MAX_LEN, max(MIN_LEN, output))


OPENORCA = LengthModel()


def poisson(
    qps: float, count: int, seed: int, lengths: LengthModel = OPENORCA
) -> Iterator[Request]:
    """MLPerf Server: exponential inter-arrival times at ``qps`` (LoadGen's schedule)."""
    arrivals = random.Random(seed)
    sizes = random.Random(seed + 1)
    t = 0.0
    for _ in range(count):
        t += arrivals.expovariate(qps)
        prompt, output = lengths.draw(sizes)
        yield Request(t, prompt, output)


def offline(count: int, seed: int, lengths: LengthModel = OPENORCA) -> Iterator[Request]:
    """MLPerf Offline: every sample issued at t=0."""
    sizes = random.Random(seed + 1)
    for _ in range(count):
        prompt, output = lengths.draw(sizes)
        yield Request(0.0, prompt, output)

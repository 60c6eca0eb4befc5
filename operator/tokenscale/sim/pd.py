"""Prefill/decode disaggregation in the simulator: the KV hand-over and a virtual-time driver.

What is modelled, following vLLM's P/D flow behind its router (checked against vllm-router
0.1.17 in NIXL mode: the router sends the request to a prefill engine with ``max_tokens: 1`` and
``kv_transfer_params.do_remote_decode``, then the same prompt to a decode engine with the
``kv_transfer_params`` the prefill engine answered):

- a prefill engine computes the prompt and its one token as any engine does;
- the KV cache then travels for ``prompt tokens x KV bytes per token / link bandwidth``;
- the decode engine admits the request with all prompt tokens but the last already in its KV
  cache (no prefill compute for them, KV space taken at admission), computes the last one and
  generates the whole output; the client's first token is the decode engine's.

Deliberate simplifications (docs/disaggregation.md): the link is not shared (each transfer gets
the full bandwidth), the prefill engine frees its KV when it answers rather than when the
decode engine has pulled it, and dispatch is least-loaded on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tokenscale.plan import catalog

from .model import Engine, Seq
from .summary import RunSummary
from .workload import Request


def kv_bytes_per_token(model: str, precision: str, tensor_parallel: int = 1) -> float:
    """KV bytes one token occupies, from the model catalogue and the profile's KV precision
    (``fp8 KV`` in the profile's precision note: 1 byte per value, else 2)."""
    arch = catalog.lookup(model)
    if arch is None:
        raise ValueError(f"model {model!r} is not in the catalogue; its KV size is unknown")
    dtype_bytes = 1.0 if "fp8 kv" in precision.lower() else 2.0
    return arch.kv_bytes_per_token(dtype_bytes, tensor_parallel)


def transfer_seconds(prompt_tokens: int, bytes_per_token: float, gbytes_per_s: float) -> float:
    """Time to move a prompt's KV from the prefill to the decode engine."""
    if gbytes_per_s <= 0:
        raise ValueError("the KV link bandwidth must be > 0 GB/s")
    return prompt_tokens * bytes_per_token / (gbytes_per_s * 1e9)


def handed_over(prompt_tokens: int) -> int:
    """Prompt tokens whose KV the decode engine receives (it computes the last one itself)."""
    return max(0, prompt_tokens - 1)


@dataclass(frozen=True, slots=True)
class PDRequest:
    """One request's path through both roles (simulated seconds)."""

    arrival: float
    prefill: Seq
    decode: Seq
    transfer_s: float


def _advance(engine: Engine, until: float) -> None:
    while engine.has_work() and engine.clock < until:
        engine.step(engine.clock)


def _least_loaded(engines: Sequence[Engine]) -> Engine:
    return min(engines, key=lambda e: len(e.running) + len(e.waiting))


def _run(engines: Sequence[Engine], arrivals: Iterable[tuple[float, int, int, int]]) -> list[Seq]:
    """Submit (at, prompt, output, kv_transferred) in time order, least loaded first; drain."""
    seqs = []
    for at, prompt, output, transferred in arrivals:
        for engine in engines:
            _advance(engine, at)
        target = _least_loaded(engines)
        seqs.append(target.submit(prompt, output, at, ignore_eos=True, kv_transferred=transferred))
    for engine in engines:
        _advance(engine, math.inf)
    return seqs


def replay_pd(
    prefill: Sequence[Engine],
    decode: Sequence[Engine],
    requests: Iterable[Request],
    bytes_per_token: float,
    gbytes_per_s: float,
) -> list[PDRequest]:
    """Run ``requests`` through prefill engines, the KV link and decode engines.

    Prefill never waits for decode in this model, so the two roles run one after the other:
    first every prompt on the prefill engines, then the hand-overs, in arrival order at the
    decode side, on the decode engines.
    """
    reqs = list(requests)
    firsts = _run(prefill, ((r.at, r.prompt_tokens, 1, 0) for r in reqs))
    handoffs = []
    for i, (req, seq) in enumerate(zip(reqs, firsts, strict=True)):
        delay = transfer_seconds(req.prompt_tokens, bytes_per_token, gbytes_per_s)
        handoffs.append((seq.first_token_at + delay, i, delay))
    handoffs.sort()
    order = [i for _, i, _ in handoffs]
    decoded = _run(
        decode,
        (
            (at, reqs[i].prompt_tokens, reqs[i].output_tokens, handed_over(reqs[i].prompt_tokens))
            for at, i, _ in handoffs
        ),
    )
    by_request = dict(zip(order, decoded, strict=True))
    delays = {i: d for _, i, d in handoffs}
    return [PDRequest(r.at, firsts[i], by_request[i], delays[i]) for i, r in enumerate(reqs)]


def summarise_pd(runs: Sequence[PDRequest], start: float = 0.0) -> RunSummary:
    """MLPerf-style figures of a P/D run as the client sees them (first token from decode)."""
    done = [r for r in runs if r.decode.done and r.decode.first_token_at >= 0]
    tokens = sum(r.decode.generated for r in done)
    end = max((r.decode.finished_at for r in done), default=start)
    duration = max(end - start, 1e-9)
    return RunSummary.of(
        requests=len(runs),
        completed=len(done),
        output_tokens=tokens,
        duration_s=duration,
        tokens_per_s=tokens / duration,
        ttfts=[r.decode.first_token_at - r.arrival for r in done],
        tpots=[
            (r.decode.finished_at - r.decode.first_token_at) / (r.decode.generated - 1)
            for r in done
            if r.decode.generated > 1
        ],
        preemptions=sum(r.prefill.preemptions + r.decode.preemptions for r in runs),
    )

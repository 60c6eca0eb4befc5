"""Split the service's total replicas (the ``/scale`` value) across its GPU pools.

``kubectl scale``, HPA and KEDA only know one number; the operator owns the per-pool split.
The built-in autoscaler leaves its own split as a hint; when the total changed behind its
back (an external scaler), the split is recomputed: every pool gets its minimum, the rest
goes to the cheapest pool per token first, up to each pool's maximum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenscale.api.service import GPUPool


def split_replicas(
    total: int | None,
    pools: Sequence[GPUPool],
    cost_per_token: Mapping[str, float],
    hint: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Per-pool replicas that sum to ``total`` (clamped to the pools' bounds)."""
    lows = {p.name: p.min_replicas for p in pools}
    highs = {p.name: p.max_replicas for p in pools}
    if hint and set(hint) == set(lows):
        fits = all(lows[n] <= hint[n] <= highs[n] for n in hint)
        if fits and (total is None or sum(hint.values()) == total):
            return dict(hint)
    if total is None:
        return lows
    out = dict(lows)
    remaining = total - sum(out.values())
    order = sorted(pools, key=lambda p: (cost_per_token.get(p.name, 1.0), p.name))
    for pool in order:
        if remaining <= 0:
            break
        add = min(remaining, highs[pool.name] - out[pool.name])
        out[pool.name] += add
        remaining -= add
    return out

"""vLLM's automatic prefix caching, per simulated engine: a block-hash LRU over the KV budget.

Why: routing policies (vllm-router's cache_aware, an InferencePool's endpoint picker) win by
sending a prompt to the engine that already holds its prefix. Without a cache model, every
engine would prefill every prompt in full and routing would show no effect.

What is modelled (vLLM v1, ``vllm/v1/core/kv_cache_manager.py``): a prompt is cut into full
blocks of ``block_size`` tokens; block *i*'s hash chains the hash of block *i-1* with its own
tokens, so a hit on block *i* implies the whole prefix up to it matches. A request's hit is the
run of leading blocks found in the cache; those tokens skip prefill. Blocks stay cached after
their request ends until the KV space is needed, least recently used first; here the cache holds
at most ``capacity_blocks`` (the engine's KV budget in blocks). Counters are in tokens, as
``vllm:prefix_cache_queries_total`` / ``vllm:prefix_cache_hits_total`` are.

Simplification (stated in docs/simulator.md): a hit saves compute but is not shared KV memory -
each running request still counts its whole prompt against the KV budget, so the model is
conservative on memory and exact-in-kind on prefill work.

The simulator's tokenizer is "four characters per token" (``openai.count_text_tokens``), so a
block is ``4 * block_size`` characters of prompt text.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

CHARS_PER_TOKEN = 4
DEFAULT_BLOCK_SIZE = 16  # vLLM's default block size on GPUs


def block_hashes(text: str, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[int, ...]:
    """Chained hashes of the full blocks of ``text`` (a partial last block is never cached)."""
    width = CHARS_PER_TOKEN * block_size
    out: list[int] = []
    parent = b""
    for start in range(0, len(text) - width + 1, width):
        digest = hashlib.blake2b(parent + text[start : start + width].encode(), digest_size=8)
        parent = digest.digest()
        out.append(int.from_bytes(parent, "big"))
    return tuple(out)


class PrefixCache:
    """Block hashes resident in one engine's KV cache, least recently used first."""

    def __init__(self, capacity_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if capacity_blocks < 1 or block_size < 1:
            raise ValueError("prefix cache needs at least one block of at least one token")
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.queries = 0  # tokens queried
        self.hits = 0  # tokens found

    def __len__(self) -> int:
        return len(self._blocks)

    def peek(self, hashes: tuple[int, ...], prompt_tokens: int) -> int:
        """What :meth:`lookup` would return, without counting or touching anything."""
        found = 0
        for h in hashes:
            if h not in self._blocks:
                break
            found += 1
        return max(0, min(found * self.block_size, prompt_tokens - 1))

    def lookup(self, hashes: tuple[int, ...], prompt_tokens: int) -> int:
        """Tokens of the prompt already cached (leading blocks only), counted as a query.

        At least one prompt token is always computed (vLLM recomputes the last token of a fully
        cached prompt to get its logits), so the hit is capped at ``prompt_tokens - 1``.
        """
        found = 0
        for h in hashes:
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            found += 1
        hit = max(0, min(found * self.block_size, prompt_tokens - 1))
        self.queries += prompt_tokens
        self.hits += hit
        return hit

    def insert(self, hashes: tuple[int, ...]) -> None:
        """Make these blocks resident (most recently used), evicting the oldest beyond capacity."""
        blocks = self._blocks
        for h in hashes:
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)

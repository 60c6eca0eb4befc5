"""The engine performance model: vLLM-style continuous batching in virtual (simulated) time.

Why a model instead of sleeps: autoscaling and SLA decisions depend on *how* an engine degrades
- throughput that saturates with concurrency, queueing that makes TTFT explode past saturation,
preemptions when the KV cache is short. A fixed per-token sleep has none of that.

The model is pure and clock-free: ``Engine.step(now)`` schedules one engine iteration starting at
``now`` (simulated seconds), returns when it ends and what it produced. The HTTP server maps
simulated to wall time (``--speed``); tests and the calibration search call ``step`` directly.

Scheduling follows vLLM v1 (FCFS, chunked prefill always on):

1. every decoding sequence gets one token of the step's token budget and one new KV slot; while
   the KV cache cannot hold that, the most recently admitted running sequence is preempted (its
   KV is dropped and it goes back to the head of the queue to be recomputed later);
2. partially prefilled running sequences continue their prompt with what is left of the budget;
3. waiting sequences are admitted (up to ``max_num_seqs``) while budget and KV remain, unless
   this step preempted.

Step time ``= base + per_seq * decoding + per_kv * resident KV + per_prefill * prompt tokens``.

Cost: decoding sequences advance as a group - a step is O(1) in the batch size plus O(sequences
admitted, prefilled, preempted or finished) - so one Python process can run 88 busy engines.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from .metrics import EngineMetrics
from .prefix_cache import DEFAULT_BLOCK_SIZE, PrefixCache, block_hashes
from .profiles import Profile


class RequestError(ValueError):
    """The request can never be served (vLLM answers these with HTTP 400)."""


@dataclass(slots=True, eq=False)
class Seq:
    """One request inside the engine. Times are simulated seconds; -1 means "not yet"."""

    rid: int
    prompt_tokens: int
    output_tokens: int
    """Tokens this request will generate (decided at submission, see ``Engine.submit``)."""
    finish_reason: str
    arrival: float
    state: str = "waiting"  # waiting | prefill | decode | done
    computed: int = 0
    """Tokens whose KV is resident (materialised; decoding adds implicitly, see ``dec_base``)."""
    generated: int = 0
    """Tokens generated (materialised; while decoding the live value is ``Engine.generated``)."""
    dec_base: int = -1
    """Engine decode-step counter when ``generated``/``computed`` were materialised."""
    epoch: int = 0
    scheduled_at: float = -1.0
    first_token_at: float = -1.0
    last_token_at: float = -1.0
    finished_at: float = -1.0
    preemptions: int = 0
    block_hashes: tuple[int, ...] = ()
    """Chained hashes of the prompt's full blocks (prefix caching; empty: never cached)."""
    cached_blocks: int = 0
    """Leading prompt blocks already inserted into the engine's prefix cache."""
    kv_transferred: int = 0
    """Prompt tokens whose KV a prefill engine computed and handed over (P/D decode side)."""

    @property
    def done(self) -> bool:
        """True once finished or aborted."""
        return self.state == "done"


@dataclass(slots=True)
class StepResult:
    """What one engine iteration did."""

    start: float
    end: float
    decoded: int
    prefill_tokens: int
    first_tokens: list[Seq] = field(default_factory=list)
    finished: list[Seq] = field(default_factory=list)


class Engine:
    """One simulated vLLM engine (one GPU or one TP group)."""

    def __init__(
        self,
        profile: Profile,
        *,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        max_model_len: int | None = None,
        kv_cache_tokens: int | None = None,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        self.profile = profile
        self.max_num_seqs = max_num_seqs or profile.max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens or profile.max_num_batched_tokens
        self.max_model_len = max_model_len or profile.max_model_len
        self.kv_capacity = kv_cache_tokens or profile.kv_cache_tokens
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (as in vLLM)")
        if self.kv_capacity < self.max_model_len:
            raise ValueError(
                f"KV cache ({self.kv_capacity} tokens) cannot hold one max_model_len "
                f"({self.max_model_len}) sequence; lower max_model_len (as vLLM would demand)"
            )
        self.metrics = EngineMetrics(self.max_model_len)
        # vLLM v1 enables automatic prefix caching by default (--no-enable-prefix-caching).
        self.prefix_cache = (
            PrefixCache(max(1, self.kv_capacity // block_size), block_size)
            if enable_prefix_caching
            else None
        )
        self.rng = random.Random(seed)
        self.waiting: deque[Seq] = deque()
        self.running: dict[int, Seq] = {}  # admission order; the last one is preempted first
        self.prefilling: dict[int, Seq] = {}  # running sequences still computing their prompt
        self.n_decoding = 0
        self.kv_used = 0
        self.clock = 0.0  # end of the last step
        self.steps = 0
        self._dec_step = 0
        self._finish_heap: list[tuple[int, int, int, Seq]] = []
        self._next_rid = 0

    # -- queries -------------------------------------------------------------------------
    def has_work(self) -> bool:
        """True while any request is queued or running."""
        return bool(self.running or self.waiting)

    def generated(self, seq: Seq) -> int:
        """Live number of tokens generated for ``seq`` (O(1) while it decodes in the group)."""
        if seq.dec_base >= 0:
            return seq.generated + self._dec_step - seq.dec_base
        return seq.generated

    def gauges(self) -> tuple[int, int, float]:
        """(running, waiting, KV-cache usage 0..1) for ``/metrics``."""
        return len(self.running), len(self.waiting), self.kv_used / self.kv_capacity

    def prompt_blocks(self, text: str) -> tuple[int, ...]:
        """The prefix-cache block hashes of a prompt (none when caching is off)."""
        if self.prefix_cache is None or not text:
            return ()
        return block_hashes(text, self.prefix_cache.block_size)

    # -- requests ------------------------------------------------------------------------
    def submit(
        self,
        prompt_tokens: int,
        max_tokens: int | None,
        now: float,
        *,
        ignore_eos: bool = False,
        min_tokens: int = 0,
        block_hashes: tuple[int, ...] = (),
        kv_transferred: int = 0,
    ) -> Seq:
        """Queue a request arriving at ``now``; its output length is drawn here, seeded.

        ``kv_transferred`` (P/D decode engines, :mod:`.pd`): that many prompt tokens arrive with
        their KV computed elsewhere; they take KV space at admission but no prefill compute.

        With ``ignore_eos`` the output is exactly ``max_tokens`` ("length"); otherwise a
        log-normal "natural" length (profile ``output_len_mean``) floored at ``min_tokens`` and
        capped by ``max_tokens`` ("stop" if it ended before the cap, as EOS would).
        """
        if prompt_tokens < 1:
            raise RequestError("prompt must contain at least one token")
        room = self.max_model_len - prompt_tokens
        if room < 1:
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your request has {prompt_tokens} input tokens."
            )
        if max_tokens is None:
            max_tokens = room
        if max_tokens < 1 or max_tokens > room:
            raise RequestError(
                f"max_tokens={max_tokens} is invalid: must be >= 1 and prompt + max_tokens <= "
                f"{self.max_model_len} (prompt has {prompt_tokens} tokens)"
            )
        if ignore_eos:
            n, reason = max_tokens, "length"
        else:
            sigma = self.profile.output_len_sigma
            mu = math.log(self.profile.output_len_mean) - sigma * sigma / 2
            n = max(1, min_tokens, round(self.rng.lognormvariate(mu, sigma)))
            reason = "stop" if n < max_tokens else "length"
            n = min(n, max_tokens)
        if not self.has_work():
            self.clock = max(self.clock, now)  # an idle engine starts its next step on arrival
        seq = Seq(self._next_rid, prompt_tokens, n, reason, now, block_hashes=block_hashes)
        seq.kv_transferred = max(0, min(kv_transferred, prompt_tokens - 1))
        self._next_rid += 1
        self.waiting.append(seq)
        return seq

    def abort(self, seq: Seq, now: float) -> None:
        """Drop a request (client went away); counted as ``finished_reason="abort"``."""
        if seq.done:
            return
        if seq.state == "waiting":
            self.waiting.remove(seq)
            seq.state = "done"
            seq.finished_at = now
            self.metrics.request_success["abort"] += 1
            return
        seq.finish_reason = "abort"
        self._finish(seq, max(now, seq.arrival))

    # -- internals -----------------------------------------------------------------------
    def _materialise(self, seq: Seq) -> None:
        if seq.dec_base >= 0:
            advanced = self._dec_step - seq.dec_base
            if advanced:
                seq.last_token_at = self.clock
            seq.generated += advanced
            seq.computed += advanced
            seq.dec_base = -1
            self.n_decoding -= 1

    def _release(self, seq: Seq) -> None:
        self._materialise(seq)
        del self.running[seq.rid]
        self.prefilling.pop(seq.rid, None)
        self.kv_used -= seq.computed

    def _preempt(self, seq: Seq) -> None:
        self._release(seq)
        seq.computed = 0
        seq.cached_blocks = 0
        seq.kv_transferred = 0  # the handed-over KV is dropped too: recomputed here
        seq.state = "waiting"
        seq.preemptions += 1
        self.metrics.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _finish(self, seq: Seq, end: float) -> None:
        self._release(seq)
        seq.state = "done"
        seq.finished_at = end
        m = self.metrics
        m.request_success[seq.finish_reason] += 1
        n = seq.generated
        m.prompt_tokens_hist.observe(seq.prompt_tokens)
        m.generation_tokens_hist.observe(n)
        m.e2e.observe(end - seq.arrival)
        if seq.scheduled_at >= 0:
            m.queue_time.observe(seq.scheduled_at - seq.arrival)
            m.inference_time.observe(end - seq.scheduled_at)
        if seq.first_token_at >= 0:
            m.prefill_time.observe(seq.first_token_at - seq.scheduled_at)
            decode = end - seq.first_token_at
            m.decode_time.observe(decode)
            m.tpot.observe(decode / (n - 1) if n > 1 else 0.0)

    def _join_decode(self, seq: Seq) -> None:
        seq.state = "decode"
        seq.dec_base = self._dec_step
        seq.epoch += 1
        self.n_decoding += 1
        finish_step = self._dec_step + seq.output_tokens - seq.generated
        heapq.heappush(self._finish_heap, (finish_step, seq.rid, seq.epoch, seq))

    def _schedule_prefill(self, budget: int) -> tuple[int, list[Seq]]:
        """Continue partial prefills, then admit from the queue. Returns (tokens, completed)."""
        tokens = 0
        completed: list[Seq] = []
        for seq in list(self.prefilling.values()):
            chunk = min(seq.prompt_tokens + seq.generated - seq.computed, budget - tokens,
                        self.kv_capacity - self.kv_used)  # fmt: skip
            if chunk <= 0:
                break
            seq.computed += chunk
            self.kv_used += chunk
            tokens += chunk
            self._cache_blocks(seq)
            if seq.computed == seq.prompt_tokens + seq.generated:
                completed.append(seq)
        return tokens, completed

    def _cache_blocks(self, seq: Seq) -> None:
        """Insert the prompt blocks ``seq`` has fully computed (vLLM caches full blocks)."""
        cache = self.prefix_cache
        if cache is None or not seq.block_hashes:
            return
        full = min(seq.computed, seq.prompt_tokens) // cache.block_size
        full = min(full, len(seq.block_hashes))
        if full > seq.cached_blocks:
            cache.insert(seq.block_hashes[seq.cached_blocks : full])
            seq.cached_blocks = full

    def _admit(self, budget: int, start: float) -> None:
        cache = self.prefix_cache
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            total = seq.prompt_tokens + seq.generated
            hit = cache.peek(seq.block_hashes, seq.prompt_tokens) if cache else 0
            hit = max(hit, seq.kv_transferred)
            first_chunk = min(total - hit, budget)
            # Cached tokens skip prefill but their KV still counts against the budget (no
            # sharing modelled, see prefix_cache.py).
            if self.kv_capacity - self.kv_used < hit + first_chunk:
                break
            self.waiting.popleft()
            transferred = seq.kv_transferred
            if cache is not None:  # vLLM queries the cache each time it schedules a request
                hit = cache.lookup(seq.block_hashes, seq.prompt_tokens)
                self.metrics.prefix_cache_queries = cache.queries
                self.metrics.prefix_cache_hits = cache.hits
                seq.cached_blocks = hit // cache.block_size
                hit = max(hit, transferred)
                seq.computed = hit
                self.kv_used += hit
            elif transferred:
                seq.computed = transferred
                self.kv_used += transferred
            seq.state = "prefill"
            if seq.scheduled_at < 0:
                seq.scheduled_at = start
            self.running[seq.rid] = seq
            self.prefilling[seq.rid] = seq
            budget -= first_chunk

    def step(self, now: float) -> StepResult | None:
        """Run one engine iteration starting at ``max(now, end of last step)``.

        Returns ``None`` when there is nothing to do. Metrics are updated as of the step end.
        """
        if not self.has_work():
            return None
        start = max(now, self.clock)
        p = self.profile
        preempted = False
        while self.kv_used + self.n_decoding > self.kv_capacity and self.running:
            self._preempt(next(reversed(self.running.values())))
            preempted = True
        n_dec = self.n_decoding
        kv_read = self.kv_used
        budget = self.max_num_batched_tokens - n_dec
        if not preempted:
            # Admission reserves the first chunk; the prefill pass below then computes it.
            self._admit(budget - self._pending_prefill(budget), start)
        prefill_tokens, completed = self._schedule_prefill(budget)
        while n_dec == 0 and prefill_tokens == 0 and self.running:
            # KV exhausted by partial prefills with no decoder to free it: preempt, retry.
            self._preempt(next(reversed(self.running.values())))
            prefill_tokens, completed = self._schedule_prefill(budget)
        end = start + (p.step_base_s + p.step_per_seq_s * n_dec + p.step_per_kv_token_s * kv_read
                       + p.prefill_per_token_s * prefill_tokens)  # fmt: skip
        result = StepResult(start, end, n_dec, prefill_tokens)
        m = self.metrics
        if n_dec:
            self._dec_step += 1
            self.kv_used += n_dec
            m.generation_tokens += n_dec
            m.itl.observe(end - self.clock, n_dec)
            heap = self._finish_heap
            while heap and heap[0][0] <= self._dec_step:
                _, _, epoch, seq = heapq.heappop(heap)
                if seq.epoch == epoch and seq.state == "decode":
                    self._finish(seq, end)
                    result.finished.append(seq)
        for seq in completed:
            del self.prefilling[seq.rid]
            seq.generated += 1
            m.generation_tokens += 1
            if seq.generated == 1:
                seq.first_token_at = end
                m.prompt_tokens += seq.prompt_tokens
                m.prompt_tokens_external += seq.kv_transferred
                m.ttft.observe(end - seq.arrival)
                result.first_tokens.append(seq)
            else:
                m.itl.observe(end - seq.last_token_at)
            seq.last_token_at = end
            if seq.generated >= seq.output_tokens:
                self._finish(seq, end)
                result.finished.append(seq)
            else:
                self._join_decode(seq)
        self.clock = end
        self.steps += 1
        return result

    def _pending_prefill(self, budget: int) -> int:
        """Budget the already-running partial prefills will take this step (admitted later)."""
        pending = 0
        for seq in self.prefilling.values():
            pending += seq.prompt_tokens + seq.generated - seq.computed
            if pending >= budget:
                return budget
        return pending

"""Prompts and token-length distributions, turned into pre-encoded request bodies.

Bodies are built before the run starts so the send path only writes bytes. Output length is
controlled with ``max_tokens`` plus ``ignore_eos`` (vLLM honours it; other servers may ignore it,
which is why the real output count is taken from the server's ``usage``). Synthetic prompts are
random common English words, which most BPE tokenizers encode as one token each (" word"), so
``n`` words is close to ``n`` prompt tokens; the server's ``usage.prompt_tokens`` is recorded as
the truth. Random words also keep prefix caching from collapsing the prompts into one.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water been "
    "call who oil its now find long down day did get come made may part over new sound take only "
    "little work know place year live me back give most very after thing our just name good man "
    "think say great where help through much before line right too mean old any same tell boy "
    "follow came want show also around form three small set put end does another well large must "
    "big even such because turn here why ask went men read need land different home us move try"
)
_WORDS = _WORD_TEXT.split()


class LengthDist(BaseModel):
    """A token-length distribution; ``sample`` draws integer lengths from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fixed", "uniform", "normal", "histogram"] = Field(
        description="fixed: always `value`; uniform: integers in [low, high]; normal: "
        "N(mean, std) rounded and clipped to [low, high]; histogram: a bin by weight, then "
        "an integer uniformly in [edges[i], edges[i+1])."
    )
    value: int | None = Field(default=None, description="Length for kind=fixed.")
    low: int = Field(default=1, ge=1, description="Lower bound (uniform, normal).")
    high: int | None = Field(default=None, description="Upper bound (uniform, normal).")
    mean: float | None = Field(default=None, description="Mean for kind=normal.")
    std: float | None = Field(default=None, description="Standard deviation for kind=normal.")
    edges: list[int] | None = Field(default=None, description="Bin edges for kind=histogram.")
    weights: list[float] | None = Field(default=None, description="Bin weights (histogram).")

    def sample(self, rng: random.Random) -> int:
        """Draw one length (≥ 1)."""
        if self.kind == "fixed":
            return max(1, self.value or 1)
        if self.kind == "uniform":
            return rng.randint(self.low, self.high or self.low)
        if self.kind == "normal":
            mean, std = self.mean or 1.0, self.std or 0.0
            hi = self.high or max(self.low, int(mean + 6 * std))
            return min(hi, max(self.low, round(rng.gauss(mean, std))))
        edges, weights = self.edges or [1, 2], self.weights or [1.0]
        i = rng.choices(range(len(weights)), weights=weights)[0]
        return rng.randrange(edges[i], edges[i + 1])

    def expected(self) -> float:
        """The distribution's mean (ignoring clipping), for docs and sanity checks."""
        if self.kind == "fixed":
            return float(self.value or 1)
        if self.kind == "uniform":
            return (self.low + (self.high or self.low)) / 2
        if self.kind == "normal":
            return self.mean or 1.0
        edges, weights = self.edges or [1, 2], self.weights or [1.0]
        mids = [(edges[i] + edges[i + 1] - 1) / 2 for i in range(len(weights))]
        return sum(w * m for w, m in zip(weights, mids, strict=True)) / sum(weights)

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        """``128`` | ``fixed:128`` | ``uniform:LO:HI`` | ``normal:MEAN:STD[:LO:HI]``."""
        parts = text.split(":")
        try:
            if len(parts) == 1:
                return cls(kind="fixed", value=int(parts[0]))
            kind, nums = parts[0], [float(p) for p in parts[1:]]
            if kind == "fixed" and len(nums) == 1:
                return cls(kind="fixed", value=int(nums[0]))
            if kind == "uniform" and len(nums) == 2:
                return cls(kind="uniform", low=int(nums[0]), high=int(nums[1]))
            if kind == "normal" and len(nums) in (2, 4):
                lo, hi = (int(nums[2]), int(nums[3])) if len(nums) == 4 else (1, None)
                return cls(kind="normal", mean=nums[0], std=nums[1], low=lo, high=hi)
        except ValueError:
            pass
        raise ValueError(f"bad length distribution {text!r}: use N, uniform:LO:HI, normal:M:SD")


def preset(name: str) -> tuple[LengthDist, LengthDist]:
    """(input, output) histograms of a shipped dataset shape, e.g. ``openorca-llama2-70b``."""
    text = resources.files("tokenscale.bench").joinpath(f"data/{name}.json").read_text()
    raw = json.loads(text)
    return (
        LengthDist(kind="histogram", edges=raw["input"]["edges"], weights=raw["input"]["weights"]),
        LengthDist(
            kind="histogram", edges=raw["output"]["edges"], weights=raw["output"]["weights"]
        ),
    )


PRESET_DATASETS = ("openorca-llama2-70b",)


class Prompt(BaseModel):
    """One prompt before encoding: text (completions) or messages (chat), and its output cap."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, description="Prompt for /v1/completions.")
    messages: list[dict[str, str]] | None = Field(default=None, description="Chat messages.")
    input_tokens: int | None = Field(default=None, description="Intended prompt length.")
    max_tokens: int = Field(ge=1, description="Output cap sent as max_tokens.")


def synthetic(n: int, input_len: LengthDist, output_len: LengthDist, seed: int) -> list[Prompt]:
    """``n`` random-word prompts with lengths drawn from the given distributions."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = input_len.sample(rng)
        text = " ".join(rng.choices(_WORDS, k=k))
        out.append(Prompt(text=text, input_tokens=k, max_tokens=output_len.sample(rng)))
    return out


def shared_prefix(
    n: int,
    *,
    systems: int,
    system_tokens: int,
    input_len: LengthDist,
    output_len: LengthDist,
    seed: int,
    turns: int = 1,
) -> list[Prompt]:
    """Multi-tenant chat: ``systems`` system prompts of ``system_tokens`` words, each request
    one tenant's (uniformly drawn) system prompt plus its own question; with ``turns`` > 1,
    conversations whose every turn resends the earlier turns (question and a synthetic answer of
    the turn's output length), interleaved so turn k of a conversation precedes its turn k+1.

    Why: prefix-aware routing (docs/routing.md) only shows when prompts share prefixes; random
    words (``synthetic``) share none by design.
    """
    if systems < 1 or system_tokens < 1 or turns < 1:
        raise ValueError("shared-prefix needs systems, system tokens and turns >= 1")
    rng = random.Random(seed)
    prompts = [" ".join(rng.choices(_WORDS, k=system_tokens)) for _ in range(systems)]
    conversations = max(1, -(-n // turns))  # ceil: every request belongs to a conversation
    history: list[list[dict[str, str]]] = []
    for _ in range(conversations):
        history.append([{"role": "system", "content": prompts[rng.randrange(systems)]}])
    out: list[Prompt] = []
    for turn in range(turns):
        for conv in history:
            if len(out) == n:
                return out
            k = input_len.sample(rng)
            conv.append({"role": "user", "content": " ".join(rng.choices(_WORDS, k=k))})
            cap = output_len.sample(rng)
            tokens = sum(len(m["content"].split()) for m in conv)
            out.append(
                Prompt(messages=[dict(m) for m in conv], input_tokens=tokens, max_tokens=cap)
            )
            if turn + 1 < turns:  # the next turn carries this turn's answer
                answer = " ".join(rng.choices(_WORDS, k=cap))
                conv.append({"role": "assistant", "content": answer})
    return out


def parse_shared_prefix(text: str) -> tuple[int, int, int] | None:
    """``shared-prefix:SYSTEMS:TOKENS[:TURNS]`` -> (systems, tokens, turns); None if not one."""
    parts = text.split(":")
    if parts[0] != "shared-prefix":
        return None
    try:
        nums = [int(p) for p in parts[1:]]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or min(nums) < 1:
        raise ValueError(
            f"bad dataset {text!r}: use shared-prefix:SYSTEMS:TOKENS[:TURNS], e.g. "
            "shared-prefix:32:2000 or shared-prefix:32:2000:4"
        )
    return nums[0], nums[1], nums[2] if len(nums) == 3 else 1


def from_jsonl(path: Path, n: int, output_len: LengthDist, seed: int) -> list[Prompt]:
    """Prompts from JSON lines: ``{"prompt": ...}`` or ``{"messages": [...]}``, optional
    ``max_tokens``/``output_tokens``; cycled to ``n`` when the file is shorter."""
    rng = random.Random(seed)
    rows: list[Prompt] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            cap = obj.get("max_tokens") or obj.get("output_tokens")
            rows.append(
                Prompt(
                    text=obj.get("prompt") or obj.get("text"),
                    messages=obj.get("messages"),
                    max_tokens=int(cap) if cap else output_len.sample(rng),
                )
            )
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return [rows[i % len(rows)] for i in range(n)]


def encode(
    prompt: Prompt, *, api: Literal["completions", "chat"], model: str, ignore_eos: bool
) -> bytes:
    """The JSON body for one streamed request, asking for server-side ``usage``."""
    body: dict[str, object] = {"model": model}
    if api == "chat":
        body["messages"] = prompt.messages or [{"role": "user", "content": prompt.text or ""}]
    else:
        body["prompt"] = prompt.text if prompt.text is not None else _flatten(prompt.messages)
    body.update(
        max_tokens=prompt.max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.0,
    )
    if ignore_eos:
        body["ignore_eos"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def _flatten(messages: list[dict[str, str]] | None) -> str:
    return "\n".join(m.get("content", "") for m in messages or [])

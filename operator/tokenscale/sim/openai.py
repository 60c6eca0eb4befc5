"""OpenAI-compatible request parsing and response formatting, pure (no I/O).

Why separate from the server: the SSE framing and JSON shapes are what clients and the benchmark
job parse, so they are unit-tested byte-for-byte without sockets, and the hot path (one chunk per
token) is string concatenation of pre-encoded pieces rather than ``json.dumps`` per token.

Tokenizer rule (documented in docs/simulator.md): a text prompt counts ``ceil(chars / 4)`` tokens
(OpenAI's rule of thumb; ``workload.prompt_text(n)`` builds an exactly ``n``-token prompt), a
token-id list counts its length, a chat request counts its message contents plus 4 tokens of
template per message plus 3 for the assistant header.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass
from typing import Any

_VOCABULARY = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "they", "you", "were", "her", "she", "there", "one", "all", "we", "their", "been", "has",
    "when", "who", "will", "more", "no", "if", "out", "so", "said", "what", "up", "its",
    "about", "into", "than", "them", "can", "only", "other", "new", "some", "could", "time",
    "these", "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our",
    "over", "man", "me", "even", "most", "made",
)  # fmt: skip
WORDS = tuple(f" {w}" for w in _VOCABULARY)
"""Synthetic output vocabulary: token ``i`` of request ``r`` is ``WORDS[(r + i) % len]``."""
_WORDS_JSON = tuple(json.dumps(w) for w in WORDS)


class BadRequest(ValueError):
    """Invalid request body; answered with HTTP 400 in vLLM's error shape."""


def count_text_tokens(text: str) -> int:
    """The simulator's tokenizer: about four characters per token, at least one."""
    return max(1, math.ceil(len(text) / 4))


@dataclass(frozen=True, slots=True)
class Params:
    """The sampling parameters the simulator honours."""

    chat: bool
    model: str | None
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    ignore_eos: bool
    min_tokens: int
    prompt_text: str = ""
    """The prompt as text (chat: rendered messages); prefix caching hashes its blocks."""
    kv_transfer_params: dict[str, Any] | None = None
    """vLLM's P/D hand-over fields (what vllm-router sends in P/D mode), when present."""


def _int_field(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    return value


def _prompt_tokens(prompt: Any) -> int:
    if isinstance(prompt, str):
        return count_text_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        return _prompt_tokens(prompt[0])
    raise BadRequest("prompt must be a string or a list of token ids (batched prompts: use n=1)")


def _prompt_text(prompt: Any) -> str:
    """Text a prompt's prefix-cache blocks are hashed from (token ids: their decimal form)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return "".join(f"{t:>4}"[-4:] for t in prompt)  # one token, four characters
    if isinstance(prompt, list) and len(prompt) == 1:
        return _prompt_text(prompt[0])
    return ""


def _chat_text(messages: list[dict[str, Any]]) -> str:
    """A chat template stand-in: role markers and contents, in order (so turns share prefixes)."""
    parts = []
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"<|{message.get('role', '')}|>{content}")
    return "".join(parts)


def tokenize(text: str) -> list[int]:
    """Deterministic content-derived token ids, one per four bytes of UTF-8 (the simulator's
    tokenizer is four characters per token), so identical prefixes give identical ids in every
    engine process (vllm-router's cache_aware tokenizes through one engine and matches the
    result against all). ``array`` does the split in C: a 2,000-token prompt costs ~0.1 ms,
    where hashing every chunk in Python cost ~10 ms and saturated a many-engine process."""
    raw = text.encode()
    raw += b" " * (-len(raw) % 4)
    words = array("I")
    words.frombytes(raw)
    return [w % 32000 for w in words] or [0]


def tokenize_body(body: Any, max_model_len: int) -> dict[str, Any]:
    """vLLM's ``POST /tokenize`` answer (``count``, ``max_model_len``, ``tokens``)."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if "messages" in body:
        _chat_tokens(body["messages"])  # validates
        text = _chat_text(body["messages"])
    elif "prompt" in body:
        text = _prompt_text(body["prompt"])
    else:
        raise BadRequest("prompt or messages is required")
    tokens = tokenize(text)
    return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens,
            "token_strs": None}  # fmt: skip


def _chat_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    total = 3
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object")
        content = message.get("content") or ""
        if isinstance(content, list):  # content parts: count the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise BadRequest("message content must be a string or a list of parts")
        total += 4 + (count_text_tokens(content) if content else 0)
    return total


def parse(body: Any, chat: bool) -> Params:
    """Validate a /v1/completions or /v1/chat/completions body."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if body.get("n", 1) != 1:
        raise BadRequest("the simulator supports n=1 only")
    if chat:
        prompt_tokens = _chat_tokens(body.get("messages"))
        prompt_text = _chat_text(body["messages"])
        max_tokens = _int_field(body, "max_completion_tokens", None)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", None)
    else:
        if "prompt" not in body:
            raise BadRequest("prompt is required")
        prompt_tokens = _prompt_tokens(body["prompt"])
        prompt_text = _prompt_text(body["prompt"])
        max_tokens = _int_field(body, "max_tokens", 16)  # vLLM's completions default
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object")
    model = body.get("model")
    transfer = body.get("kv_transfer_params")
    if transfer is not None and not isinstance(transfer, dict):
        raise BadRequest("kv_transfer_params must be an object")
    return Params(
        chat=chat,
        model=model if isinstance(model, str) else None,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stream=bool(body.get("stream", False)),
        include_usage=bool(options.get("include_usage", False)),
        ignore_eos=bool(body.get("ignore_eos", False)),
        min_tokens=_int_field(body, "min_tokens", 0) or 0,
        prompt_text=prompt_text,
        kv_transfer_params=transfer,
    )


def error_body(message: str, code: int, kind: str = "BadRequestError") -> dict[str, Any]:
    """vLLM's ``ErrorResponse`` shape."""
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI usage block."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def text(rid: int, start: int, stop: int) -> str:
    """The synthetic text of tokens ``start..stop`` of request ``rid``."""
    n = len(WORDS)
    return "".join(WORDS[(rid + i) % n] for i in range(start, stop))


class StreamFormatter:
    """Builds SSE ``data: {...}\\n\\n`` chunks for one request, one chunk per token (as vLLM)."""

    def __init__(self, chat: bool, request_id: str, created: int, model: str, rid: int) -> None:
        self.chat = chat
        self.rid = rid
        self._head = json.dumps(
            {
                "id": request_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
            },
            separators=(",", ":"),
        )[:-1]
        if chat:
            self._pre = "data: " + self._head + ',"choices":[{"index":0,"delta":{"content":'
            self._mid = '},"logprobs":null,"finish_reason":'
            self._post = "}]}\n\n"
        else:
            self._pre = "data: " + self._head + ',"choices":[{"index":0,"text":'
            self._mid = ',"logprobs":null,"finish_reason":'
            self._post = ',"stop_reason":null}]}\n\n'

    def role(self) -> str:
        """Chat streams open with an empty assistant delta."""
        return (
            "data: " + self._head + ',"choices":[{"index":0,"delta":{"role":"assistant",'
            '"content":""},"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def tokens(self, start: int, stop: int, finish_reason: str | None) -> str:
        """Chunks for tokens ``start..stop``; the last carries ``finish_reason`` if given."""
        n = len(_WORDS_JSON)
        parts = []
        for i in range(start, stop):
            reason = "null"
            if finish_reason is not None and i == stop - 1:
                reason = json.dumps(finish_reason)
            parts.append(self._pre + _WORDS_JSON[(self.rid + i) % n] + self._mid + reason)
            parts.append(self._post)
        return "".join(parts)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        """The final ``choices: []`` chunk with usage (``stream_options.include_usage``)."""
        block = json.dumps(usage(prompt_tokens, completion_tokens), separators=(",", ":"))
        return "data: " + self._head + ',"choices":[],"usage":' + block + "}\n\n"


DONE = "data: [DONE]\n\n"


def completion_body(
    params: Params, request_id: str, created: int, model: str, rid: int, n: int, reason: str
) -> dict[str, Any]:
    """Non-streamed response, with usage (as vLLM always includes it)."""
    content = text(rid, 0, n)
    if params.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": reason,
        }
        kind = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": content,
            "logprobs": None,
            "finish_reason": reason,
            "stop_reason": None,
        }
        kind = "text_completion"
    return {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(params.prompt_tokens, n),
    }

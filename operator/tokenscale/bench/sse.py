"""Incremental Server-Sent-Events parser for OpenAI-compatible streams, built to be cheap.

A bench client has to saturate the server, not itself: at ~1,000 streamed requests/s of 128 tokens
each, the client sees ~130,000 events per second on one core, so a ``json.loads`` per event (~3 µs)
would alone eat a third of the core. The parser therefore classifies each event with one
pre-compiled regex search over the raw bytes (a completions ``text`` string, or a non-empty
``content``/``reasoning`` string?) and only decodes JSON for the rare events that carry no token:
the chat role preamble, the final ``usage`` chunk, errors. Event boundaries may fall anywhere in a
TCP read; the parser keeps the unfinished tail and stamps every completed event with the time of
the read that completed it.
"""

from __future__ import annotations

import json
import re
from array import array
from typing import Any, Final

#: Matches an output-bearing field, then the rest of its line so that one event line counts once.
#: Completions: any ``text`` string, even empty: vLLM streams a completions chunk only for a
#: generated token, and a token whose text the detokenizer holds back (a partial UTF-8 sequence, a
#: skipped special token) arrives as ``"text":""`` — it is still the first token for TTFT, as for
#: the engine's own histogram and ``vllm bench serve``. Chat: ``content`` must be non-empty, so the
#: role preamble (``"content":""``) is not a token. ``reasoning_content``/``reasoning`` count as
#: output: servers bill and time them as generated tokens.
_TOKEN_RE: Final = re.compile(
    rb'"text" ?: ?"[^\n]*|"(?:content|reasoning_content|reasoning)" ?: ?"[^"][^\n]*'
)


class SSEStream:
    """Accumulates one response stream; collects token-chunk arrival times, usage and errors."""

    __slots__ = (
        "_buf",
        "arrivals",
        "completion_tokens",
        "done",
        "error",
        "prompt_tokens",
    )

    def __init__(self) -> None:
        self._buf = b""
        #: perf_counter() of every event that carried output text, in arrival order.
        self.arrivals: array[float] = array("d")
        #: ``usage.prompt_tokens`` / ``usage.completion_tokens`` as reported by the server.
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        #: True once ``data: [DONE]`` arrived.
        self.done = False
        #: Error text from an in-band ``{"error": ...}`` event, if any.
        self.error: str | None = None

    def feed(self, data: bytes, now: float) -> None:
        """Consume body bytes that arrived at ``now``; count every event they complete.

        Bulk path: one regex ``findall`` over all events completed by this read counts the
        output-bearing ones (the pattern swallows the rest of its line, so a line counts once);
        JSON is decoded only for the events that mention usage, errors or tool calls.
        """
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            # CRLF framing is legal SSE; normalise once. A trailing lone "\r" stays in the
            # buffer (it can't end an event by itself), so a CRLF split across reads is safe.
            buf = buf.replace(b"\r\n", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._buf = buf
            return
        block, self._buf = buf[: cut + 2], buf[cut + 2 :]
        k = len(_TOKEN_RE.findall(block))
        if k:
            self.arrivals.extend([now] * k)
        if b"[DONE]" in block:
            self.done = True
        if b'"error"' in block or b'"tool_calls"' in block:
            for event in block.split(b"\n\n"):
                if b'"usage"' in event or b'"error"' in event or b'"tool_calls"' in event:
                    self._special(event, now)
        elif b'"usage"' in block:
            # Usage is cumulative: only the last event that carries it matters.
            at = block.rfind(b'"usage"')
            begin = block.rfind(b"\n\n", 0, at)
            self._special(block[begin + 2 if begin >= 0 else 0 : block.find(b"\n\n", at)], now)

    def _special(self, event: bytes, now: float) -> None:
        payload = _join_data_lines(event)
        if payload is not None:
            self._slow_path(payload, now, _TOKEN_RE.search(payload) is not None)

    def _slow_path(self, payload: bytes, now: float, counted: bool) -> None:
        """Decode the rare special events: usage, errors, tool calls (``counted``: the bulk
        path already counted this event as output)."""
        try:
            obj = json.loads(payload)
        except ValueError:
            self.error = self.error or "malformed event"
            return
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            err = obj["error"]
            self.error = str(err.get("message", err)) if isinstance(err, dict) else str(err)
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._set_usage(usage)
        if counted:
            return
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                self.arrivals.append(now)
                break

    def _set_usage(self, usage: dict[str, Any]) -> None:
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        if isinstance(completion, int):
            self.completion_tokens = completion

    def finish(self, now: float) -> None:
        """Flush a final event that was not followed by a blank line (some servers do that)."""
        if self._buf.strip():
            tail, self._buf = self._buf, b""
            self.feed(tail + b"\n\n", now)


def _join_data_lines(event: bytes) -> bytes | None:
    """Join the ``data:`` lines of a multi-line event; None for comments/keep-alives."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    if not lines:
        return None
    return b"\n".join(lines)

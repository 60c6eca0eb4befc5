"""Incremental Server-Sent-Events parser for OpenAI-compatible streams, built to be cheap.

A bench client has to saturate the server, not itself: at ~1,000 streamed requests/s of 128 tokens
each, the client sees ~130,000 events per second on one core, so a ``json.loads`` per event (~3 µs)
would alone eat a third of the core. The parser therefore classifies each event with one
pre-compiled regex search over the raw bytes ("does a ``text``/``content``/``reasoning`` field
hold a non-empty string?") and only decodes JSON for the rare events that carry no token: the
chat role preamble, the final ``usage`` chunk, errors. Event boundaries may fall anywhere in a
TCP read; the parser keeps the unfinished tail and stamps every completed event with the time of
the read that completed it.
"""

from __future__ import annotations

import json
import re
from array import array
from typing import Any, Final

#: Matches an output-bearing field whose string value is non-empty. ``reasoning_content`` and
#: ``reasoning`` count as output: servers bill and time them as generated tokens.
_TOKEN_RE: Final = re.compile(rb'"(?:text|content|reasoning_content|reasoning)" ?: ?"[^"]')
_DONE: Final = b"[DONE]"


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
        """Consume body bytes that arrived at ``now``; parse every event they complete."""
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            # CRLF framing is legal SSE; normalise once. A trailing lone "\r" stays in the
            # buffer (it can't end an event by itself), so a CRLF split across reads is safe.
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        token_re = _TOKEN_RE
        arrivals = self.arrivals
        for event in parts:
            if event.startswith(b"data: ") and b"\n" not in event:
                payload = event[6:]
            else:
                joined = _join_data_lines(event)
                if joined is None:
                    continue
                payload = joined
            if token_re.search(payload) is not None:
                arrivals.append(now)
                if b'"usage":{' in payload:
                    self._take_usage(payload)
            elif payload == _DONE:
                self.done = True
            else:
                self._slow_path(payload, now)

    def _slow_path(self, payload: bytes, now: float) -> None:
        """Decode the rare non-token events: usage, errors, tool calls, role preambles."""
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
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                self.arrivals.append(now)
                break

    def _take_usage(self, payload: bytes) -> None:
        try:
            obj = json.loads(payload)
        except ValueError:
            return
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            self._set_usage(usage)

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

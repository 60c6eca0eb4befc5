"""Forwarding one request to an engine pod, its response streamed back as it arrives.

Why streamed chunk by chunk: a streaming completion is a text/event-stream whose whole point
is that the first token reaches the client before the last is generated; buffering the body
would turn time-to-first-token into end-to-end latency.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

log = logging.getLogger(__name__)

#: RFC 9110 §7.6.1 connection-specific fields, plus the old Proxy-Connection; a proxy never
#: forwards them (and each hop frames its own body, so Transfer-Encoding is per hop too).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


class UpstreamUnavailable(RuntimeError):
    """No engine pod we tried accepted the request (nothing was sent to the client yet)."""


@dataclass(frozen=True, slots=True)
class Relayed:
    """A response that went to the client; ``complete`` is False if the engine broke off."""

    response: web.StreamResponse
    pod_ip: str
    complete: bool


def _filtered(headers: CIMultiDictProxy[str], also_drop: frozenset[str]) -> CIMultiDict[str]:
    # Connection may name more per-hop fields ("Connection: close, X-Foo").
    listed = {
        token.strip().lower()
        for value in headers.getall(hdrs.CONNECTION, [])
        for token in value.split(",")
    }
    drop = HOP_BY_HOP | also_drop | listed
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def request_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers for the engine: no hop-by-hop fields; Host and Content-Length are
    the client session's to set for the new hop, and Expect was answered here (the body is
    already read); X-Forwarded-* say where it came from."""
    out = _filtered(request.headers, frozenset({"host", "content-length", "expect"}))
    forwarded_for = request.headers.get("X-Forwarded-For")
    remote = request.remote or ""
    out["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
    out["X-Forwarded-Host"] = request.headers.get(hdrs.HOST, "")
    out["X-Forwarded-Proto"] = request.scheme
    return out


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    """The engine's headers for the client, minus what this hop's chunked framing replaces."""
    return _filtered(upstream.headers, frozenset({"content-length"}))


async def forward(
    session: aiohttp.ClientSession,
    request: web.Request,
    body: bytes,
    pod_ips: Sequence[str],
    port: int,
) -> Relayed:
    """Send the request to ``pod_ips[0]``, or ``pod_ips[1]`` if the first refuses the
    connection (a pod that just became unready); at most one retry, so a failing fleet costs
    the client two connect attempts, not one per pod.

    Raises UpstreamUnavailable when no tried pod answered.
    """
    headers = request_headers(request)
    failures: list[str] = []
    for ip in pod_ips[:2]:
        url = URL(f"http://{ip}:{port}{request.raw_path}", encoded=True)
        try:
            upstream = await session.request(
                request.method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectionError as exc:
            log.warning("engine %s:%d: %s", ip, port, exc or type(exc).__name__)
            failures.append(f"{ip}:{port}: {exc or type(exc).__name__}")
            continue
        try:
            return await _relay(request, upstream, ip)
        finally:
            if upstream.content.is_eof():
                upstream.release()  # the connection goes back to the pool
            else:  # the engine sees the client leave and stops generating for nobody
                upstream.close()
    raise UpstreamUnavailable("; ".join(failures) or "no engine pod to send to")


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse, ip: str) -> Relayed:
    response = web.StreamResponse(
        status=upstream.status, reason=upstream.reason, headers=response_headers(upstream)
    )
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except ConnectionResetError:  # the client left; closing upstream aborts the generation
        return Relayed(response, ip, complete=True)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("engine %s broke off the response to %s: %s", ip, request.raw_path, exc)
        # Without the final empty chunk the client knows the body is truncated.
        if request.transport is not None:
            request.transport.close()
        return Relayed(response, ip, complete=False)
    await response.write_eof()
    return Relayed(response, ip, complete=True)

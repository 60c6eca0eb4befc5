"""A minimal asyncio Kubernetes REST client (aiohttp) working on plain dicts.

Why not the ``kubernetes`` package: its v37 models are pydantic objects and its watches are
blocking; a fake kubelet only needs GET/LIST/WATCH/PATCH/POST/DELETE on a handful of core
resources, as JSON, inside one event loop. Kubeconfig support: token / tokenFile / client cert,
CA file or data. The server must be loopback (the test bed never talks to anything else).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import yaml

log = logging.getLogger(__name__)
Json = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str, what: str):
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class KubeConfig:
    """Server URL, TLS context and auth header from a kubeconfig's current context."""

    def __init__(self, path: str | Path, *, api_url: str | None = None, ca: str | None = None):
        cfg = yaml.safe_load(Path(path).read_text())
        ctx_name = cfg.get("current-context") or cfg["contexts"][0]["name"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user: dict[str, Any] = next(
            (u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {}
        )
        self.server = (api_url or cluster["server"]).rstrip("/")
        host = urlsplit(self.server).hostname or ""
        if not (host.startswith("127.") or host == "localhost"):
            raise ValueError(f"refusing non-loopback API server {self.server}")
        self._tmp = tempfile.TemporaryDirectory(prefix="kubelet-kcfg-")
        self.ca_path = ca or self._file(cluster, "certificate-authority", Path(path).parent)
        self.ssl = ssl.create_default_context(cafile=self.ca_path) if self.ca_path else None
        if cluster.get("insecure-skip-tls-verify"):
            self.ssl = ssl.create_default_context()
            self.ssl.check_hostname = False
            self.ssl.verify_mode = ssl.CERT_NONE
        self.headers: dict[str, str] = {}
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        cert = self._file(user, "client-certificate", Path(path).parent)
        key = self._file(user, "client-key", Path(path).parent)
        if cert and key:
            if self.ssl is None:
                self.ssl = ssl.create_default_context()
            self.ssl.load_cert_chain(cert, key)

    def _file(self, section: Mapping[str, Any], key: str, base: Path) -> str | None:
        if section.get(f"{key}-data"):
            target = Path(self._tmp.name) / key
            target.write_bytes(base64.b64decode(section[f"{key}-data"]))
            return str(target)
        if section.get(key):
            p = Path(section[key])
            return str(p if p.is_absolute() else base / p)
        return None

    @property
    def port(self) -> int:
        return urlsplit(self.server).port or 443


class Api:
    def __init__(self, cfg: KubeConfig):
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self.cfg.headers,
                connector=aiohttp.TCPConnector(ssl=self.cfg.ssl or False, limit=20),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        time_limit: float = 30,
    ) -> Json:
        url = self.cfg.server + path + (("?" + urlencode(params)) if params else "")
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        sess = await self.session()
        try:
            async with sess.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=time_limit),
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise ApiError(resp.status, text, f"{method} {path}")
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The API server is unreachable (restarting): one error type for every caller, so
            # status pushes, config fetches and deletes treat an outage as a retryable failure
            # instead of killing the pod worker (which lost pods across an API restart).
            raise ApiError(0, repr(exc), f"{method} {path}") from exc

    async def get(self, path: str, **params: Any) -> Json | None:
        """GET, or None on 404."""
        try:
            return await self.request("GET", path, params=params or None)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def merge_patch(self, path: str, body: Json) -> Json:
        return await self.request(
            "PATCH", path, body=body, content_type="application/merge-patch+json"
        )

    async def delete(self, path: str, grace: int | None = None) -> None:
        body = {"gracePeriodSeconds": grace} if grace is not None else None
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def watch(
        self, path: str, *, label_selector: str | None = None
    ) -> AsyncIterator[tuple[str, Json]]:
        """LIST then WATCH forever; yields ("SYNC", list) after every (re)list, then events.

        On 410 Gone / stream errors it relists, so consumers must treat SYNC as the full state.
        """
        params: dict[str, Any] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            try:
                listing = await self.request("GET", path, params=params)
                rv = listing["metadata"]["resourceVersion"]
                yield "SYNC", listing
                async for kind, obj in self._watch_from(path, params, rv):
                    yield kind, obj
            except (aiohttp.ClientError, ApiError, TimeoutError, json.JSONDecodeError) as exc:
                log.warning("watch %s interrupted (%s); relisting", path, exc)
                await asyncio.sleep(1)

    async def _watch_from(
        self, path: str, params: Mapping[str, Any], rv: str
    ) -> AsyncIterator[tuple[str, Json]]:
        while True:
            q = {
                **params,
                "watch": "1",
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "300",
            }
            url = f"{self.cfg.server}{path}?{urlencode(q)}"
            sess = await self.session()
            async with sess.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=330)) as r:
                if r.status >= 400:
                    raise ApiError(r.status, await r.text(), f"WATCH {path}")
                async for line in r.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        raise ApiError(int(obj.get("code", 500)), json.dumps(obj), f"WATCH {path}")
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind != "BOOKMARK":
                        yield kind, obj


def event_body(pod: Json, kind: str, reason: str, message: str, when: str) -> Json:
    """A core/v1 Event about a pod, as the kubelet would post it (``kubectl describe pod``)."""
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "reason": reason,
        "message": message[:1000],
        "type": kind,
        "source": {"component": "process-kubelet", "host": pod["spec"].get("nodeName", "")},
        "reportingComponent": "process-kubelet",
        "reportingInstance": pod["spec"].get("nodeName", ""),
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }


def pod_path(ns: str, name: str = "", sub: str = "") -> str:
    p = f"/api/v1/namespaces/{ns}/pods"
    if name:
        p += f"/{name}"
    if sub:
        p += f"/{sub}"
    return p

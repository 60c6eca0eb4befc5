"""The test bed's fault proxy against a small HTTPS upstream: it forwards what it should
(keep-alive, chunked watch streams), injects each fault kind as specified, records what the
client got, and counts requests while the upstream is down."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.testbed import pki
from tests.testbed.faultproxy import FaultPlan, FaultProxy, Record, retries


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        if "watch=true" in self.path:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(8):
                line = json.dumps({"type": "ADDED", "n": i}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                time.sleep(0.25)
            self.wfile.write(b"0\r\n\r\n")
            return
        payload = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_PATCH(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> pki.Pki:
    return pki.generate(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def upstream(certs: pki.Pki) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs.apiserver_crt), str(certs.apiserver_key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _proxy(certs: pki.Pki, port: int, plan: FaultPlan | None = None) -> FaultProxy:
    return FaultProxy(
        f"https://127.0.0.1:{port}",
        ca=certs.ca_crt,
        cert=certs.apiserver_crt,
        key=certs.apiserver_key,
        plan=plan,
    ).start()


def _client(certs: pki.Pki, proxy: FaultProxy) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(certs.ca_crt))
    return http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)


def test_forwards_requests_on_one_kept_alive_connection(
    certs: pki.Pki, upstream: ThreadingHTTPServer
) -> None:
    proxy = _proxy(certs, upstream.server_address[1])
    try:
        conn = _client(certs, proxy)
        conn.request("GET", "/api/v1/pods?limit=1")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"path": "/api/v1/pods?limit=1"}
        conn.request("PATCH", "/apis/x/y", body=b'{"a": 1}', headers={"Content-Length": "8"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b'{"a": 1}')
        conn.request("GET", "/api/v1/pods?watch=true")
        resp = conn.getresponse()
        lines = resp.read().splitlines()
        assert [json.loads(x)["n"] for x in lines] == list(range(8))
        conn.close()
    finally:
        proxy.stop()
    records = proxy.snapshot()
    assert [(r.method, r.path, r.watch, r.status, r.fault) for r in records] == [
        ("GET", "/api/v1/pods", False, 200, ""),
        ("PATCH", "/apis/x/y", False, 200, ""),
        ("GET", "/api/v1/pods", True, 200, ""),
    ]
    assert len(proxy.connections) == 1


@pytest.mark.parametrize("code", [429, 500])
def test_answers_injected_errors_as_api_status(
    certs: pki.Pki, upstream: ThreadingHTTPServer, code: int
) -> None:
    proxy = _proxy(certs, upstream.server_address[1], FaultPlan({str(code): 1.0}))
    try:
        conn = _client(certs, proxy)
        conn.request("GET", "/api/v1/nodes")
        resp = conn.getresponse()
        status = json.loads(resp.read())
        assert resp.status == code == status["code"]
        if code == 429:
            assert resp.getheader("Retry-After") == "1"
            assert status["details"]["retryAfterSeconds"] == 1
        proxy.set_plan(FaultPlan())  # the same connection carries on once the faults stop
        conn.request("GET", "/api/v1/nodes")
        assert conn.getresponse().status == 200
    finally:
        proxy.stop()
    assert [r.fault for r in proxy.snapshot()] == [str(code), ""]


def test_a_plan_can_target_one_path_and_method(
    certs: pki.Pki, upstream: ThreadingHTTPServer
) -> None:
    plan = FaultPlan({"500": 1.0}, paths=("/apis/x/",), methods=("PATCH",))
    proxy = _proxy(certs, upstream.server_address[1], plan)
    try:
        conn = _client(certs, proxy)
        for method, path in [("PATCH", "/apis/x/y"), ("GET", "/apis/x/y"), ("PATCH", "/api/v1/z")]:
            body = b"{}" if method == "PATCH" else None
            conn.request(method, path, body=body)
            conn.getresponse().read()
    finally:
        proxy.stop()
    assert [(r.method, r.path, r.status) for r in proxy.snapshot()] == [
        ("PATCH", "/apis/x/y", 500),
        ("GET", "/apis/x/y", 200),
        ("PATCH", "/api/v1/z", 200),
    ]


def test_drops_a_watch_stream_mid_way_but_not_plain_requests(
    certs: pki.Pki, upstream: ThreadingHTTPServer
) -> None:
    plan = FaultPlan({"drop_watch": 1.0}, drop_after=(0.6, 0.6))
    proxy = _proxy(certs, upstream.server_address[1], plan)
    try:
        conn = _client(certs, proxy)
        conn.request("GET", "/api/v1/pods")
        assert conn.getresponse().read()  # not a watch: forwarded
        conn.request("GET", "/api/v1/pods?watch=true")
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        assert 0 < len(cut.value.partial.splitlines()) < 8
    finally:
        proxy.stop()
    assert [r.fault for r in proxy.snapshot()] == ["", "drop_watch"]


def test_a_timeout_never_answers(certs: pki.Pki, upstream: ThreadingHTTPServer) -> None:
    proxy = _proxy(certs, upstream.server_address[1], FaultPlan({"timeout": 1.0}, hold_seconds=0.5))
    try:
        conn = _client(certs, proxy)
        started = time.monotonic()
        conn.request("GET", "/api/v1/pods")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.getresponse()
        assert time.monotonic() - started >= 0.5
    finally:
        proxy.stop()
    (rec,) = proxy.snapshot()
    assert (rec.fault, rec.status) == ("timeout", 0)


def test_counts_requests_while_the_upstream_is_down(certs: pki.Pki, tmp_path: Path) -> None:
    from tests.testbed.procs import free_port

    proxy = _proxy(certs, free_port())  # nothing listens there
    try:
        for _ in range(3):
            conn = _client(certs, proxy)
            conn.request("GET", "/api/v1/pods")
            with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
                conn.getresponse()
            conn.close()
        kubeconfig = tmp_path / "in.kubeconfig"
        pki.write_kubeconfig(kubeconfig, server="https://x:1", ca_path=certs.ca_crt, user="a",
                             token="t")  # fmt: skip
        written = proxy.write_kubeconfig(kubeconfig, tmp_path / "out.kubeconfig")
        assert proxy.url in written.read_text()
    finally:
        proxy.stop()
    records = proxy.snapshot()
    assert len(records) == 3 and all(r.upstream_down and r.status == 0 for r in records)
    assert len(proxy.connections) == 3


def test_retries_pairs_each_fault_with_the_next_same_request() -> None:
    def rec(t: float, path: str, fault: str = "") -> Record:
        return Record(t, "GET", path, False, fault=fault, end=t + 0.1)

    records = [rec(0, "/a", "429"), rec(0.5, "/b"), rec(2.1, "/a"), rec(3, "/c", "500")]
    assert retries(records) == pytest.approx([2.0])  # /c was never retried


def test_a_plan_refuses_unknown_kinds_and_rates_over_one() -> None:
    with pytest.raises(ValueError, match="unknown kinds"):
        FaultPlan({"503": 0.1})
    with pytest.raises(ValueError, match="more than 1"):
        FaultPlan({"429": 0.6, "500": 0.6})

"""Process kubelet: image map, hosts files, loopback address pool, Service proxy, nsexec."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testbed.kubelet.imagemap import ImageMap, ImageMapError, unpullable
from tests.testbed.kubelet.nsexec import __file__ as NSEXEC
from tests.testbed.kubelet.proxy import AddressPool, ServiceProxy, claim_block
from tests.testbed.kubelet.volumes import render_hosts, write_in_place


def test_image_map_longest_prefix_file_and_flags(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    f = tmp_path / "map.yaml"
    f.write_text(
        "images:\n"
        f"  - prefix: example.com/app\n    bin: {tmp_path}\n    env: {{A: '1'}}\n"
        "    entrypoint: [app]\n"
    )
    m = ImageMap.load(f, [f"example.com/app/special={tmp_path / 'bin'}"])
    e = m.lookup("example.com/app:1.0")
    assert e.entrypoint == ["app"] and e.env == {"A": "1"}
    assert e.bin_dir() == str(tmp_path / "bin")  # venv dir -> its bin/
    assert m.lookup("example.com/app/special:2").prefix == "example.com/app/special"
    assert m.lookup("example.com/application").prefix == ""  # no partial-word match
    proj = m.lookup("ghcr.io/tokenscale/tokenscale:0.1.0")
    assert proj.bin_dir() and Path(proj.bin_dir() or "", "python").exists()
    strict = ImageMap([], allow_unmapped=False)
    with pytest.raises(ImageMapError):
        strict.lookup("busybox")


def test_image_map_provider_function(tmp_path: Path) -> None:
    m = ImageMap.load(None, ["x.io/img=os.path:expanduser"], defaults=False)
    # os.path.expanduser() needs an argument -> provider error surfaces as TypeError, not silence
    with pytest.raises(TypeError):
        m.lookup("x.io/img").bin_dir()
    m = ImageMap.load(None, ["x.io/img=no.such.module:f"], defaults=False)
    with pytest.raises(ImageMapError):
        m.lookup("x.io/img:1").bin_dir()


def test_hosts_file_names() -> None:
    text = render_hosts(
        namespace="ns1",
        pod_name="job-x",
        pod_ip="127.10.0.7",
        services=[("web", "ns1", "127.20.0.2"), ("api", "other", "127.20.0.3")],
    )
    lines = {line.split("\t")[0]: line.split("\t")[1].split() for line in text.splitlines()[1:]}
    assert lines["127.20.0.2"] == ["web.ns1.svc.cluster.local", "web.ns1.svc", "web.ns1", "web"]
    assert lines["127.20.0.3"] == ["api.other.svc.cluster.local", "api.other.svc", "api.other"]
    assert lines["127.10.0.7"] == ["job-x"]


def test_hosts_file_per_pod_names_for_subdomains() -> None:
    text = render_hosts(
        namespace="ns1",
        pod_name="grp-0-1",
        pod_ip="127.10.0.8",
        subdomain="grp",
        peers=[("grp-0", "grp", "ns1", "127.10.0.7"), ("grp-0-1", "grp", "ns1", "127.10.0.8")],
    )
    assert "127.10.0.8\tgrp-0-1.grp.ns1.svc.cluster.local grp-0-1.grp.ns1.svc grp-0-1\n" in text
    assert "127.10.0.7\tgrp-0.grp.ns1.svc.cluster.local grp-0.grp.ns1.svc grp-0.grp\n" in text
    assert text.count("127.10.0.8") == 1


def test_write_in_place_keeps_inode(tmp_path: Path) -> None:
    p = tmp_path / "hosts"
    write_in_place(p, "a long first version\n")
    inode = p.stat().st_ino
    write_in_place(p, "short\n")
    assert p.read_text() == "short\n" and p.stat().st_ino == inode


def test_address_pool() -> None:
    pool = AddressPool("127.20.0.0/30", skip_first=0)
    a = pool.allocate("a")
    assert pool.allocate("a") == a
    b = pool.allocate("b")
    assert a != b
    with pytest.raises(RuntimeError):
        pool.allocate("c")
    pool.release("a")
    assert pool.allocate("c") == a
    with pytest.raises(ValueError):
        AddressPool("10.0.0.0/24")


def test_claim_block_gives_each_kubelet_its_own_block() -> None:
    a, sa = claim_block("127.30.0.0/16")
    b, sb = claim_block("127.30.0.0/16")
    try:
        assert a != b and a.endswith("/24") and b.endswith("/24")
        assert "127.30.0.1" not in AddressPool(a)._hosts
    finally:
        sa.close()
        sb.close()


async def test_service_proxy_round_robin_and_loopback_only() -> None:
    async def backend(tag: bytes) -> tuple[asyncio.Server, int]:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(tag + await r.read(100))
            await w.drain()
            w.close()

        s = await asyncio.start_server(handle, "127.10.0.2" if tag == b"A" else "127.10.0.3", 0)
        return s, s.sockets[0].getsockname()[1]

    sa, pa = await backend(b"A")
    sb, pb = await backend(b"B")
    targets = [("127.10.0.2", pa), ("127.10.0.3", pb), ("10.244.0.9", 80)]
    proxy = ServiceProxy(lambda ns, sel, port, nr: targets, api_port=1, cidr="127.20.99.0/24")
    svc = {
        "metadata": {"namespace": "ns", "name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 18080, "targetPort": 8080}]},
    }
    assert await proxy.upsert(svc)
    addr = proxy.address_of("ns", "web")
    assert addr and addr.startswith("127.20.99.")
    seen = set()
    for _ in range(4):
        r, w = await asyncio.open_connection(addr, 18080)
        w.write(b"ping")
        await w.drain()
        w.write_eof()
        seen.add(await r.read())
        w.close()
    assert seen == {b"Aping", b"Bping"}
    assert ("10.244.0.9", 80) not in proxy.backends(proxy.services[("ns", "web")], 18080)
    await proxy.close()
    for s in (sa, sb):
        s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
def test_nsexec_private_hosts_and_env(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.20.0.5 web.ns.svc\n")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok\n")
    spec = {
        "argv": [
            "sh",
            "-c",
            "cat /etc/hosts /var/run/secrets/kubernetes.io/serviceaccount/token; echo $X; pwd",
        ],
        "env": {"PATH": "/usr/bin:/bin", "X": "y"},
        "cwd": str(tmp_path),
        "mounts": [
            {"src": str(hosts), "dst": "/etc/hosts"},
            {"src": str(sa), "dst": "/var/run/secrets/kubernetes.io/serviceaccount", "ro": True},
        ],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = subprocess.run(
        [sys.executable, "-I", NSEXEC, str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == ["127.20.0.5 web.ns.svc", "tok", "y", str(tmp_path)]
    assert "web.ns.svc" not in Path("/etc/hosts").read_text()  # host untouched


async def test_backends_are_ready_selected_process_pods_with_resolved_ports(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from tests.testbed.kubelet.imagemap import ImageMap as Map
    from tests.testbed.kubelet.kubelet import Kubelet

    api = SimpleNamespace(cfg=SimpleNamespace(port=6443, ca_path=None))
    k = Kubelet(api, Map([]), tmp_path, pod_cidr="127.31.0.0/16", service_cidr="127.32.0.0/16")  # type: ignore[arg-type]

    def worker(ip: str, ns: str, labels: dict[str, str], ready: bool, phase: str = "Running"):
        return SimpleNamespace(
            ip=ip,
            ns=ns,
            labels=labels,
            phase=phase,
            stopping=asyncio.Event(),
            containers=[SimpleNamespace(ready=ready)],
            pod={"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]}},
        )

    k.workers = {
        "a": worker("127.31.0.2", "ns", {"app": "web"}, True),
        "b": worker("127.31.0.3", "ns", {"app": "web"}, False),
        "c": worker("127.31.0.4", "other", {"app": "web"}, True),
        "d": worker("127.31.0.5", "ns", {"app": "db"}, True),
        "e": worker("127.31.0.6", "ns", {"app": "web"}, True, phase="Succeeded"),
    }  # type: ignore[dict-item]
    port = {"port": 80, "targetPort": "http"}
    assert k.backends("ns", {"app": "web"}, port, False) == [("127.31.0.2", 8000)]
    assert k.backends("ns", {"app": "web"}, port, True) == [
        ("127.31.0.2", 8000),
        ("127.31.0.3", 8000),
    ]
    assert k.backends("ns", {"app": "web"}, {"port": 9000}, False) == [("127.31.0.2", 9000)]
    k._pod_claim.close()
    k._svc_claim.close()


def test_an_image_from_an_invalid_registry_cannot_be_pulled() -> None:
    """``.invalid`` (RFC 2606) never resolves: such an image waits in ErrImagePull, as on a node;
    any other image (mapped or not) is not a pull failure."""
    failed = unpullable("registry.invalid/tokenscale/engine:does-not-exist")
    assert failed is not None and "lookup registry.invalid: no such host" in failed
    assert unpullable("registry.invalid:5000/x") is not None
    for fine in ("ghcr.io/tokenscale/tokenscale:0.1.0", "busybox", "invalid/x", "localhost/x"):
        assert unpullable(fine) is None, fine

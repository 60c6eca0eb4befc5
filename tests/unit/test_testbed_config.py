"""Unit checks of the test bed's generated inputs (no Go, no cluster needed).

Why: node labels, KWOK stage selectors and the PKI are what make the e2e test bed behave
like a real AMD GPU cluster; a typo there would silently change what e2e tests prove.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.testbed import build, nodes, pki


def test_default_pools_match_the_brief() -> None:
    by_pool: dict[str, list[dict]] = {}
    for m in nodes.manifests():
        by_pool.setdefault(m["metadata"]["labels"][nodes.POOL_LABEL], []).append(m)
    assert {k: len(v) for k, v in by_pool.items()} == {
        "mi300x": 2,
        "mi325x": 2,
        "mi355x": 2,
        "mi300x-cpx": 1,
        "cpu": 2,
        "mi355x-dra": 1,
        "mi300x-dra": 1,
    }
    mi355 = by_pool["mi355x"][0]
    labels = mi355["metadata"]["labels"]
    assert labels["amd.com/gpu.device-id"] == "75a3"
    assert labels["amd.com/gpu.product-name"] == "AMD_Instinct_MI355X_OAM"
    assert labels["amd.com/gpu.vram"] == "288G"
    assert labels["amd.com/gpu.cu-count"] == "256"
    assert labels["beta.amd.com/gpu.device-id.75a3"] == "8"
    assert labels["feature.node.kubernetes.io/amd-gpu"] == "true"
    assert mi355["status"]["allocatable"]["amd.com/gpu"] == "8"
    assert mi355["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert mi355["metadata"]["annotations"][nodes.FAKE_NODE_ANNOTATION] == "fake"

    cpx = by_pool["mi300x-cpx"][0]
    assert cpx["status"]["capacity"]["amd.com/cpx_nps4"] == "64"
    assert "amd.com/gpu" not in cpx["status"]["capacity"]
    assert cpx["metadata"]["labels"]["amd.com/gpu.compute-memory-partition"] == "cpx_nps4"
    assert cpx["metadata"]["labels"]["amd.com/compute-memory-partition"] == "cpx_nps4"

    cpu = by_pool["cpu"][0]
    assert not any(k.startswith(("amd.com/", "beta.amd.com/")) for k in cpu["metadata"]["labels"])

    # DRA nodes: no device plugin, so no amd.com/* resource and no node-labeller label.
    for dra_node in by_pool["mi355x-dra"] + by_pool["mi300x-dra"]:
        labels = dra_node["metadata"]["labels"]
        assert not any(k.startswith(("amd.com/", "beta.amd.com/")) for k in labels)
        assert labels["feature.node.kubernetes.io/amd-gpu"] == "true"
        assert not any(k.startswith("amd.com/") for k in dra_node["status"]["capacity"])


def test_label_keys_and_values_are_valid() -> None:
    for m in nodes.manifests():
        for key, value in m["metadata"]["labels"].items():
            name = key.rsplit("/", 1)[-1]
            assert len(name) <= 63 and len(value) <= 63, key


def test_scale_pools_spreads_exactly_n_gpu_nodes() -> None:
    pools = nodes.scale_pools(500)
    assert sum(p.count for p in pools) == 500
    assert all(p.gpu is not None and p.partition is None and p.dra is None for p in pools)
    assert len({m["metadata"]["name"] for m in nodes.manifests(pools)}) == 500


def test_kwok_pod_stages_skip_process_pods(tmp_path: Path) -> None:
    kwok_dir = build.bin_dir_for() / "kwok-stages"
    if not kwok_dir.exists():
        pytest.skip("kwok stages not built yet (python -m tests.testbed.build)")
    docs = list(
        yaml.safe_load_all(nodes.write_kwok_config(tmp_path / "k.yaml", kwok_dir).read_text())
    )
    assert docs[0]["kind"] == "KwokConfiguration"
    assert docs[0]["options"]["nodeLeaseParallelism"] > 0
    exclusion = {
        "key": '.metadata.labels["testbed.tokenscale.dev/run"]',
        "operator": "NotIn",
        "values": ["process"],
    }
    for stage in docs[1:]:
        exprs = stage["spec"]["selector"]["matchExpressions"]
        is_pod = stage["spec"]["resourceRef"]["kind"] == "Pod"
        assert (exclusion in exprs) == is_pod, stage["metadata"]["name"]


def test_pki_serving_cert_covers_loopback_and_is_signed_by_ca(tmp_path: Path) -> None:
    p = pki.generate(tmp_path)
    ca = x509.load_pem_x509_certificate(p.ca_crt.read_bytes())
    srv = x509.load_pem_x509_certificate(p.apiserver_crt.read_bytes())
    srv.verify_directly_issued_by(ca)
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1"}
    assert set(p.tokens) == set(pki.CLIENTS)
    assert len(p.tokens_csv.read_text().splitlines()) == len(pki.CLIENTS)


def test_pinned_versions_and_cache_key() -> None:
    assert build.module_version("k8s", "k8s.io/kubernetes") == "v1.34.4"
    assert build.module_version("k8s", "k8s.io/client-go") == "v0.34.4"
    assert build.module_version("etcd", "go.etcd.io/etcd/server/v3").startswith("v3.6.")
    assert build.module_version("kwok", "sigs.k8s.io/kwok") == "v0.8.0"
    assert build.module_version("helm", "helm.sh/helm/v3") == "v3.21.4"
    assert build.cache_key() == build.cache_key()
    assert len(build.cache_key()) == 16

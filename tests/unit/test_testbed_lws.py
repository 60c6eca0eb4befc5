"""The LWS test-bed component's manifests: upstream's webhooks, called on loopback.

Why: the API server must call every webhook upstream registers (a missing pod mutating hook
means pods without ``LWS_LEADER_ADDRESS``), the pod hooks must stay limited to LWS pods (a
failing hook would otherwise block every pod of the test bed), and nothing may leave loopback.
"""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.testbed import build, pki
from tests.testbed.lws import manager_config, webhook_configurations


def _hooks() -> dict[str, dict[str, object]]:
    configs = webhook_configurations(40123, b"CA PEM")
    return {h["name"]: h for cfg in configs for h in cfg["webhooks"]}


def test_every_hook_calls_the_manager_on_loopback_with_the_test_bed_ca() -> None:
    for name, hook in _hooks().items():
        client = hook["clientConfig"]
        assert isinstance(client, dict)
        assert client["url"].startswith("https://127.0.0.1:40123/"), name
        assert base64.b64decode(client["caBundle"]) == b"CA PEM"
        assert "service" not in client


def test_pod_hooks_only_see_lws_pods() -> None:
    hooks = _hooks()
    selector = {"matchExpressions": [
        {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}
    ]}  # fmt: skip
    assert hooks["mpod.kb.io"]["objectSelector"] == selector
    assert hooks["vpod.kb.io"]["objectSelector"] == selector
    assert "objectSelector" not in hooks["mleaderworkerset.kb.io"]


def test_the_hooks_are_upstreams() -> None:
    """Same names, paths, rules and failure policy as the source's config/webhook."""
    src = build.shared_lws_source()
    if src is None:
        pytest.skip("shared/third_party/lws-v0.9.0 not present")
    upstream = {
        h["name"]: h
        for doc in yaml.safe_load_all((src / "config/webhook/manifests.yaml").read_text())
        if doc
        for h in doc["webhooks"]
    }
    ours = _hooks()
    assert set(ours) == set(upstream)
    for name, hook in upstream.items():
        assert str(ours[name]["clientConfig"]["url"]).endswith(
            hook["clientConfig"]["service"]["path"]
        )  # type: ignore[index]
        assert ours[name]["rules"] == hook["rules"], name
        assert ours[name]["failurePolicy"] == hook["failurePolicy"]


def test_manager_config_turns_off_what_needs_a_cluster_service() -> None:
    cfg = manager_config(1, build.CACHE_ROOT, 2, 3)
    assert cfg["internalCertManagement"] == {"enable": False}
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["webhook"]["host"] == "127.0.0.1"
    assert cfg["metrics"]["bindAddress"] == "127.0.0.1:2"
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:3"


def test_the_webhook_serving_cert_is_signed_by_the_test_bed_ca(tmp_path: Path) -> None:
    p = pki.generate(tmp_path / "pki")
    crt, key = pki.serving_cert(p.ca_crt, p.ca_key, tmp_path / "certs", cn="lws-webhook")
    assert (crt.name, key.name) == ("tls.crt", "tls.key")  # what controller-runtime reads
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    ca = x509.load_pem_x509_certificate(p.ca_crt.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)

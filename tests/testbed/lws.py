"""The real LeaderWorkerSet controller manager (sigs.k8s.io/lws) as a lazy test-bed component.

Why: multi-node replicas render LeaderWorkerSets; only the real controller proves that the
rendered objects become leader + worker pods, that its pod webhook injects
``LWS_LEADER_ADDRESS`` & co., and that ``RecreateGroupOnPodRestart`` restarts a group.  It
is started on first use (the ``lws`` e2e fixture), so tests that do not need it pay nothing.

How it runs on loopback, without cert-manager or in-cluster Services:

- its CRDs come from the built source's ``config/crd/bases`` (applied server-side: the
  LeaderWorkerSet CRD is too big for client-side apply's annotation);
- internal cert rotation is off; the webhook server reads a serving cert signed by the test
  bed's CA (:func:`.pki.serving_cert`) from its cert dir;
- the webhook configurations are upstream's (``config/webhook``, with the kustomize
  patches' pod ``objectSelector``) but point at ``https://127.0.0.1:<port>/<path>`` with the
  test bed's CA as ``caBundle`` instead of at a Service;
- leader election is off; metrics and health probes bind free loopback ports.

It authenticates with the admin kubeconfig (``system:masters``): the test bed tests the
operator's RBAC, not the LWS controller's.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import build, pki
from .cluster import Cluster, ExtraComponent
from .procs import Proc, free_port, wait_until

log = logging.getLogger("tokenscale.testbed.lws")

NAME = "lws-manager"
CRD_NAMES = (
    "leaderworkersets.leaderworkerset.x-k8s.io",
    "disaggregatedsets.disaggregatedset.x-k8s.io",
)
# Upstream's config/webhook/manifests.yaml after its kustomize patches; path -> what it serves.
_POD_SELECTOR = {
    "matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]
}
_MUTATING = (
    ("mleaderworkerset.kb.io", "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
     "leaderworkerset.x-k8s.io", "leaderworkersets", ["CREATE", "UPDATE"], None),
    ("mpod.kb.io", "/mutate--v1-pod", "", "pods", ["CREATE"], _POD_SELECTOR),
)  # fmt: skip
_VALIDATING = (
    ("vleaderworkerset.kb.io", "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
     "leaderworkerset.x-k8s.io", "leaderworkersets", ["CREATE", "UPDATE"], None),
    ("vpod.kb.io", "/validate--v1-pod", "", "pods", ["CREATE", "UPDATE"], _POD_SELECTOR),
    ("vdisaggregatedset.kb.io", "/validate-disaggregatedset-x-k8s-io-v1-disaggregatedset",
     "disaggregatedset.x-k8s.io", "disaggregatedsets", ["CREATE", "UPDATE"], None),
)  # fmt: skip
Webhook = tuple[str, str, str, str, list[str], dict[str, Any] | None]


def webhook_configurations(port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Mutating + validating configurations calling the manager on loopback by URL."""

    def hooks(spec: tuple[Webhook, ...]) -> list[dict[str, Any]]:
        out = []
        for name, path, group, resource, ops, selector in spec:
            hook: dict[str, Any] = {
                "name": name,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}{path}",
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [group],
                        "apiVersions": ["v1"],
                        "operations": ops,
                        "resources": [resource],
                    }
                ],
            }
            if selector:
                hook["objectSelector"] = selector
            out.append(hook)
        return out

    api = "admissionregistration.k8s.io/v1"
    return [
        {
            "apiVersion": api,
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "lws-mutating-webhook-configuration"},
            "webhooks": hooks(_MUTATING),
        },
        {
            "apiVersion": api,
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "lws-validating-webhook-configuration"},
            "webhooks": hooks(_VALIDATING),
        },
    ]


def manager_config(webhook_port: int, cert_dir: Path, metrics: int, health: int) -> dict[str, Any]:
    """The manager's ``--config`` (config.lws.x-k8s.io/v1alpha1 Configuration)."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics}"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
    }


class LwsController:
    """Start once per test bed with :meth:`start`; it stops with the cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.proc: Proc | None = None
        self.build: build.LwsBuild | None = None
        self.webhook_port = 0

    def start(self) -> LwsController:
        self.build = build.ensure_lws()
        c = self.cluster
        work = c.work_dir / "lws"
        cert_dir = work / "certs"
        pki_dir = c.work_dir / "pki"
        pki.serving_cert(pki_dir / "ca.crt", pki_dir / "ca.key", cert_dir, cn="lws-webhook")
        self.webhook_port, metrics, health = free_port(), free_port(), free_port()
        cfg_path = work / "config.yaml"
        cfg_path.write_text(
            yaml.safe_dump(manager_config(self.webhook_port, cert_dir, metrics, health))
        )
        for crd in CRD_NAMES:  # a stand-in CRD another test deleted may still be terminating
            got = c.kubectl("get", f"crd/{crd}", "-o", "jsonpath={.metadata.deletionTimestamp}",
                            check=False)  # fmt: skip
            if got.returncode == 0 and got.stdout.strip():
                c.kubectl("wait", "--for=delete", f"crd/{crd}", "--timeout=120s")
        c.kubectl("apply", "--server-side", "--force-conflicts",
                  *(f"-f={p}" for p in self.build.crds))  # fmt: skip
        for crd in CRD_NAMES:  # `kubectl wait` errors while .status.conditions is still unset
            wait_until(
                lambda crd=crd: self._established(crd), timeout=60, interval=0.5,
                what=f"CRD {crd} Established",
            )  # fmt: skip
        self.proc = c.start_component(
            ExtraComponent(
                NAME,
                [str(self.build.manager), f"--config={cfg_path}", f"--kubeconfig={c.kubeconfig}",
                 "--zap-log-level=info"],
                health_url=f"http://127.0.0.1:{health}/readyz",
            )
        )  # fmt: skip
        # /readyz is a ping; the webhook handlers register once the manager runs: wait for them,
        # since the configurations below fail every LWS pod create while they answer 404.
        wait_until(self._webhooks_served, timeout=60, interval=0.5, what="LWS webhook handlers")
        hooks = webhook_configurations(self.webhook_port, c.ca_path.read_bytes())
        c.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                        "items": hooks}))  # fmt: skip
        log.info("LWS manager %s up, webhooks on 127.0.0.1:%d", self.build.dir, self.webhook_port)
        return self

    def _webhooks_served(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.cluster.ca_path))
        for _name, path, *_ in (*_MUTATING, *_VALIDATING):
            req = urllib.request.Request(
                f"https://127.0.0.1:{self.webhook_port}{path}", data=b"{}", method="POST",
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=3, context=ctx):
                    pass
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return False
            except (urllib.error.URLError, OSError):
                return False
        return True

    def _established(self, crd: str) -> bool:
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        got = self.cluster.kubectl("get", f"crd/{crd}", "-o", f"jsonpath={jsonpath}", check=False)
        return got.stdout.strip() == "True"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def log_tail(self, lines: int = 40) -> str:
        from .procs import tail

        return tail(self.cluster.logs_dir / f"{NAME}.log", lines)
